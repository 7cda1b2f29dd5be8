"""Fetch Debian packages by suite with a private apt configuration.

The machine's own apt state (lists, caches, locks) is never touched: every apt
invocation points Dir::State, Dir::Cache and the source list at a directory in
the cache. The mirror URI is read from the machine's apt sources so no host
name is written into the repository.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SYSTEM_SOURCES = (
    Path("/etc/apt/sources.list.d/debian.sources"),
    Path("/etc/apt/sources.list"),
)
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
# Suites the matrix reads. Security suites carry the newest point releases.
ARCHIVE_SUITES = ("bookworm", "bookworm-backports", "trixie")
SECURITY_SUITES = ("bookworm-security", "trixie-security")


class SourceError(RuntimeError):
    """A package or mirror could not be had; the matrix cannot be built."""


@dataclass(frozen=True)
class Mirrors:
    """The archive and security mirror URIs this machine already uses."""

    archive: str
    security: str | None


@dataclass(frozen=True)
class Fetched:
    """One downloaded .deb and the exact version apt resolved."""

    package: str
    suite: str
    version: str
    path: Path


def system_mirrors(paths: tuple[Path, ...] = SYSTEM_SOURCES) -> Mirrors:
    """Read the machine's deb822/one-line sources; reusing them keeps host names out of git."""
    archive: str | None = None
    security: str | None = None
    for path in paths:
        if not path.exists():
            continue
        for uri, suites in _parse_sources(path.read_text()):
            if any(s.endswith("-security") for s in suites):
                security = security or uri
            elif archive is None:
                archive = uri
    if archive is None:
        raise SourceError(f"no Debian archive URI found in {', '.join(map(str, paths))}")
    return Mirrors(archive=archive, security=security)


def _parse_sources(text: str) -> list[tuple[str, list[str]]]:
    """Return (uri, suites) pairs from deb822 stanzas or one-line `deb` entries."""
    out: list[tuple[str, list[str]]] = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line:
                m = re.match(r"deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", line)
                if m:
                    out.append((m.group(1), [m.group(2)]))
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if "deb" in fields.get("types", "").split() and "uris" in fields:
            out.append((fields["uris"].split()[0], fields.get("suites", "").split()))
    return out


class PrivateApt:
    """apt-get/apt-cache bound to a private state directory.

    ``arch`` other than the host's (``arm64``) gives lists and downloads of that architecture
    only, against an empty dpkg status: nothing of it is ever installed here."""

    def __init__(self, root: Path, mirrors: Mirrors, arch: str = "amd64",
                 suites: tuple[str, ...] = ARCHIVE_SUITES,
                 security_suites: tuple[str, ...] = SECURITY_SUITES) -> None:
        self.root = root
        self.mirrors = mirrors
        self.arch = arch
        self.suites, self.security_suites = suites, security_suites
        for sub in ("lists/partial", "cache/archives/partial", "state", "etc/parts",
                    "etc/prefs"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self.status = Path("/var/lib/dpkg/status")
        if arch != "amd64":
            self.status = root / "state" / "status"
            self.status.touch()
        self.sources = root / "etc" / "sources.list"
        self.sources.write_text(self._sources_text())

    def _sources_text(self) -> str:
        """One-line entries for the suites the matrix needs, signed by Debian's keyring."""
        opts = f"[signed-by={KEYRING}" + ("" if self.arch == "amd64" else f" arch={self.arch}")
        lines = [f"deb {opts}] {self.mirrors.archive} {s} main" for s in self.suites]
        if self.mirrors.security:
            lines += [f"deb {opts}] {self.mirrors.security} {s} main"
                      for s in self.security_suites]
        return "\n".join(lines) + "\n"

    def options(self) -> list[str]:
        """apt -o options that redirect every piece of state away from the system's."""
        r = self.root
        opts = {
            "Dir::Etc::SourceList": str(self.sources),
            "Dir::Etc::SourceParts": str(r / "etc" / "parts"),
            "Dir::Etc::Preferences": str(r / "etc" / "preferences"),
            "Dir::Etc::PreferencesParts": str(r / "etc" / "prefs"),
            "Dir::State": str(r / "state"),
            "Dir::State::Lists": str(r / "lists"),
            "Dir::Cache": str(r / "cache"),
            "Dir::State::status": str(self.status),
            "APT::Get::List-Cleanup": "false",
            "Acquire::Languages": "none",
            "APT::Sandbox::User": "root",
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled": "false",
            "Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled": "false",
        }
        if self.arch != "amd64":
            opts.update({"APT::Architecture": self.arch, "APT::Architectures": self.arch})
        return [x for k, v in opts.items() for x in ("-o", f"{k}={v}")]

    def update(self, max_age_s: float = 6 * 3600) -> bool:
        """Refresh the private lists unless they are recent; returns whether it ran."""
        stamp = self.root / "updated"
        if stamp.exists() and time.time() - stamp.stat().st_mtime < max_age_s \
                and stamp.read_text() == self.sources.read_text():
            return False
        subprocess.run(["apt-get", *self.options(), "-q", "update"], check=True,
                       stdout=subprocess.DEVNULL)
        stamp.write_text(self.sources.read_text())
        return True

    def candidate(self, package: str, suite: str) -> str | None:
        """The newest version of `package` in exactly `suite` (or its -security twin)."""
        out = subprocess.run(["apt-cache", *self.options(), "madison", package],
                             check=True, capture_output=True, text=True).stdout
        best: str | None = None
        for line in out.splitlines():
            parts = [p.strip() for p in line.split("|")]
            if len(parts) < 3 or "Packages" not in parts[2]:
                continue
            dist = parts[2].split()[1].split("/")[0]
            if dist in (suite, f"{suite}-security") and (
                    best is None or _dpkg_gt(parts[1], best)):
                best = parts[1]
        return best

    def names(self, pattern: str) -> list[str]:
        """Package names matching a regex in the private lists (local, no network)."""
        out = subprocess.run(["apt-cache", *self.options(), "pkgnames"], check=True,
                             capture_output=True, text=True).stdout
        return sorted(n for n in out.split() if re.fullmatch(pattern, n))

    def download(self, package: str, version: str, dest: Path) -> Path:
        """Download one exact version into dest (idempotent; reuses a complete file)."""
        dest.mkdir(parents=True, exist_ok=True)
        arch = "all" if package.startswith("linux-source") else self.arch
        name = f"{package}_{version.replace(':', '%3a')}_{arch}.deb"
        target = dest / name
        if target.exists():
            return target
        tmp = dest / "partial"
        tmp.mkdir(exist_ok=True)
        subprocess.run(["apt-get", *self.options(), "-q", "download", f"{package}={version}"],
                       check=True, cwd=tmp, stdout=subprocess.DEVNULL)
        got = list(tmp.glob(f"{package}_*.deb"))
        if len(got) != 1:
            raise SourceError(f"apt-get download {package}={version} produced {got}")
        got[0].rename(target)
        return target


def _dpkg_gt(a: str, b: str) -> bool:
    """Debian version ordering, via dpkg itself."""
    return subprocess.run(["dpkg", "--compare-versions", a, "gt", b]).returncode == 0
