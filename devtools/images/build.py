"""Build the project image here, without a container registry: ``python -m devtools.images.build``.

Steps (each cached under ``${THPCHECK_CACHE:-~/.cache/thp-checker}/images/``):

1. base rootfs: ``debootstrap --variant=minbase --include=python3,python3-venv bookworm``,
   trimmed (apt caches and lists, docs except copyrights, man pages, locales) and kept as a
   tarball keyed by suite + package list + trim recipe (the debootstrap takes 45-100 s);
2. ``podman import`` of that tarball as ``localhost/thpcheck-base:bookworm`` (only when the
   image in storage carries another key);
3. wheels: ``pip download`` on the host, for the image's Python (3.11) and platform, of the
   project's runtime dependencies and its build backend, keyed by that list; the image build
   then installs offline (``--no-index``) from a staged copy of the build context. Offline
   because a build that reaches PyPI itself depends on the container's network, DNS and
   trust store: here PyPI is reached through a TLS-intercepting proxy whose CA only the
   host trusts, so pip inside the build fails with CERTIFICATE_VERIFY_FAILED. The host's pip
   has the cert (and its cache), warm builds touch no network, and the wheel set is fixed;
4. ``podman build --pull=never --network host`` of ``images/Dockerfile`` with
   ``--build-arg BASE_IMAGE=localhost/thpcheck-base:bookworm``, tagged
   ``localhost/thp-checker:<version>`` and ``localhost/thp-checker:<version>-<content hash>``;
   skipped when the content-hash tag already exists;
5. optionally ``podman save`` to an oci-archive (or docker-archive) that
   ``ctr -n k8s.io images import`` loads (``--archive``; prints the path).

podman runs with private storage and a private containers.conf under the cache (runc, the
cgroupfs manager and default ulimits this machine allows; see ../shared/containers.md), set
through ``CONTAINERS_STORAGE_CONF``/``CONTAINERS_CONF``/``CONTAINERS_REGISTRIES_CONF``: the
machine's own containers config is never changed. Use :func:`podman` to run podman against that
storage: it also removes what podman 4.3 leaves outside it (``STRAY_PATHS``); the exports of
``python -m devtools.images.build --env`` do not.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
IMAGE_REPO = "localhost/thp-checker"
BASE_IMAGE = "localhost/thpcheck-base:bookworm"
SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv")  # python3-venv: ensurepip, the build stage's pip
TARGET_PYTHON = "3.11"  # bookworm's python3, and the default base python:3.11-slim-bookworm
GLIBC_MINOR = 36  # bookworm's glibc 2.36: manylinux wheels up to manylinux_2_36 run there
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# Paths of the repository the Dockerfile copies (the build context holds only these).
CONTEXT_PATHS = ("pyproject.toml", "README.md", "operator", "images/Dockerfile",
                 "images/wheels/README.md")
# Bump when the trim recipe changes, so cached rootfs tarballs are rebuilt.
TRIM_VERSION = "1"
TRIM = (
    "var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*",
    "var/cache/debconf/*-old", "var/log/*", "usr/share/man/*", "usr/share/info/*",
    "usr/share/locale/*", "usr/share/lintian/*", "etc/hostname", "etc/resolv.conf",
)
NOT_IN_TARBALL = ("./dev/*", "./proc/*", "./sys/*", "./run/*", "./tmp/*")
BASE_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["python3"]',
)
KEY_LABEL = "io.thpcheck.key"
# Image architectures (OCI/Debian names) and their kernel machine names (wheel platform tags).
MACHINES = {"amd64": "x86_64", "arm64": "aarch64"}
BINFMT = Path("/proc/sys/fs/binfmt_misc")


class BuildError(RuntimeError):
    """A step failed; the message names the step and the command's output tail."""


def cache_root() -> Path:
    return Path(os.environ.get("THPCHECK_CACHE") or Path.home() / ".cache" / "thp-checker")


def images_dir() -> Path:
    return cache_root() / "images"


def _digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


def _log(message: str) -> None:
    print(f"images: {message}", file=sys.stderr, flush=True)


def _run(args: Sequence[str], *, env: Mapping[str, str] | None = None,
         step: str = "", capture: bool = True,
         timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command; raise BuildError with its output tail when it fails."""
    result = subprocess.run(list(args), env=dict(env) if env is not None else None, text=True,
                            capture_output=capture, timeout=timeout, check=False)
    if result.returncode != 0:
        tail = "\n".join(((result.stdout or "") + (result.stderr or "")).splitlines()[-30:])
        raise BuildError(f"{step or args[0]} failed (exit {result.returncode}): "
                         f"{shlex.join(args)}\n{tail}")
    return result


# ---- podman with private storage and config ----------------------------------------------

def podman_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for podman/buildah against the private store under the cache."""
    root = images_dir() / "podman"
    env = dict(os.environ if base is None else base)
    env.update(CONTAINERS_STORAGE_CONF=str(root / "storage.conf"),
               CONTAINERS_CONF=str(root / "containers.conf"),
               CONTAINERS_REGISTRIES_CONF=str(root / "registries.conf"),
               TMPDIR=str(root / "tmp"))
    return env


def setup_podman() -> dict[str, str]:
    """Write the private podman config (idempotent) and return its environment.

    runroot and tmp_dir hold run-time state that podman expects on a tmpfs (it detects a
    reboot by their absence); they live in the cache too, so they are wiped when the boot id
    changed since the last use.
    """
    root = images_dir() / "podman"
    root.mkdir(parents=True, exist_ok=True)
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    stamp = root / "boot_id"
    if not stamp.exists() or stamp.read_text().strip() != boot_id:
        for name in ("runroot", "libpod-tmp", "tmp"):
            shutil.rmtree(root / name, ignore_errors=True)
        stamp.write_text(boot_id + "\n")
    for name in ("storage", "runroot", "libpod-tmp", "tmp", "cni"):
        (root / name).mkdir(exist_ok=True)
    files = {
        "storage.conf": f"""[storage]
driver = "overlay"
graphroot = "{root / 'storage'}"
runroot = "{root / 'runroot'}"
""",
        # crun 1.8.1 fails on this v1/v2 hybrid ("cgroups in hybrid mode not supported"); no
        # CAP_SYS_RESOURCE here, so podman's root default ulimits (nofile=1048576) fail in runc.
        "containers.conf": f"""[containers]
default_ulimits = ["nofile=16384:16384", "nproc=16384:16384"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{root / 'events.log'}"
tmp_dir = "{root / 'libpod-tmp'}"
image_copy_tmp_dir = "{root / 'tmp'}"

[network]
# podman's CNI backend otherwise creates /etc/cni/net.d/cni.lock; builds use --network host
# and test runs --network none, so no network config is ever needed.
network_config_dir = "{root / 'cni'}"
""",
        # Nothing is ever pulled: a short name fails at once instead of asking a registry.
        "registries.conf": 'unqualified-search-registries = []\nshort-name-mode = "enforcing"\n',
    }
    for name, text in files.items():
        path = root / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
    return podman_env()


# podman 4.3 leaves two things outside its configured directories: containers/image's
# blob-info cache (a 64 KiB boltdb of blob digests) in /var/lib/containers/cache, written on
# every image copy (import, build, save, run) whatever the storage config says, and runc's
# default state root /run/runc (empty once the container is gone; builds pass runc a root
# under the cache, but `podman run` has no such setting that its cleanup process also uses).
# Each goes again after a podman call when it did not exist before this process first ran
# podman and holds nothing but those files.
STRAY_PATHS: dict[Path, frozenset[str]] = {
    Path("/var/lib/containers"): frozenset({"cache", "cache/blob-info-cache-v1.boltdb"}),
    Path("/run/runc"): frozenset(),
}
_stray_before: dict[Path, bool] = {}


def _remove_strays() -> None:
    for path, allowed in STRAY_PATHS.items():
        if _stray_before.get(path, True):
            continue
        with contextlib.suppress(FileNotFoundError):
            entries = {p.relative_to(path).as_posix() for p in path.rglob("*")}
            if entries <= allowed:
                shutil.rmtree(path)


@contextlib.contextmanager
def no_global_leftovers() -> Iterator[None]:
    for path in STRAY_PATHS:
        _stray_before.setdefault(path, path.exists())
    try:
        yield
    finally:
        _remove_strays()


def podman(*args: str, check: bool = True, timeout: float | None = None,
           capture: bool = True) -> subprocess.CompletedProcess[str]:
    """``podman ARGS`` against the private store; see STRAY_PATHS."""
    env = setup_podman()
    with no_global_leftovers():
        if check:
            return _run(["podman", *args], env=env, step=f"podman {args[0]}", capture=capture,
                        timeout=timeout)
        return subprocess.run(["podman", *args], env=env, text=True, capture_output=capture,
                              timeout=timeout, check=False)


def image_label(ref: str, label: str) -> str | None:
    """A label of a local image, or None when the image does not exist."""
    result = podman("image", "inspect", "--format", f'{{{{index .Labels "{label}"}}}}', ref,
                    check=False)
    if result.returncode != 0:
        return None
    return result.stdout.strip()


def image_exists(ref: str) -> bool:
    return podman("image", "exists", ref, check=False).returncode == 0


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One builder at a time per cache (tests and the real-node harness may race)."""
    images_dir().mkdir(parents=True, exist_ok=True)
    with open(images_dir() / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ---- 1-2. base rootfs and base image -------------------------------------------------------

def mirror() -> str:
    return os.environ.get("THPCHECK_DEBIAN_MIRROR", DEFAULT_MIRROR)


def native_arch() -> str:
    """This machine's image architecture (amd64, arm64)."""
    machine = platform.machine()
    for arch, name in MACHINES.items():
        if name == machine:
            return arch
    raise BuildError(f"no image architecture for this machine ({machine})")


def base_image(arch: str) -> str:
    """The base image's name: the native one keeps its plain tag."""
    return BASE_IMAGE if arch == native_arch() else f"{BASE_IMAGE}-{arch}"


def base_key(arch: str | None = None) -> str:
    return _digest("base", SUITE, "minbase", ",".join(sorted(BASE_PACKAGES)), TRIM_VERSION,
                   MACHINES[arch or native_arch()])[:16]


def ensure_binfmt(arch: str) -> None:
    """Let this machine run ``arch`` binaries (debootstrap's second stage, the Dockerfile's RUN
    steps, the image tests): binfmt_misc mounted, Debian's qemu-user-static registered with the
    F flag (the interpreter is opened now, so it works inside containers and chroots too)."""
    if arch == native_arch():
        return
    name = f"qemu-{MACHINES[arch]}"
    if not (BINFMT / "register").exists():
        _run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], step="mount binfmt_misc")
    entry = BINFMT / name
    if entry.exists():
        state = entry.read_text()
        if state.startswith("enabled") and "flags: " in state and \
                "F" in state.split("flags: ", 1)[1].split("\n", 1)[0]:
            return
        raise BuildError(f"{entry} is registered without the F flag or disabled; remove it "
                         f"(echo -1 > {entry}) and rerun")
    conf = Path("/usr/lib/binfmt.d") / f"{name}.conf"
    if not conf.exists():
        raise BuildError(f"{conf} missing: building {arch} images here needs qemu-user-static "
                         "(apt-get install qemu-user-static)")
    (BINFMT / "register").write_text(conf.read_text().strip() + "\n")


def _trim(rootfs: Path) -> None:
    for pattern in TRIM:
        for path in rootfs.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    # Documentation goes, its copyright files stay (they travel with the binaries).
    doc = rootfs / "usr/share/doc"
    for path in sorted(doc.rglob("*"), reverse=True):
        if path.is_dir() and not path.is_symlink():
            with contextlib.suppress(OSError):
                path.rmdir()
        elif path.name != "copyright":
            path.unlink()


def rootfs_name(arch: str) -> str:
    """The tarball's name stem (the native one keeps its name)."""
    return f"{SUITE}-minbase" if arch == native_arch() else f"{SUITE}-{arch}-minbase"


def build_rootfs(timings: dict[str, float], arch: str | None = None) -> Path:
    """The cached base rootfs tarball of ``arch`` (default: this machine's), debootstrapped
    when missing. Another architecture's is debootstrapped in two stages: ``--foreign``
    unpacks it here, the second stage runs its own binaries under qemu-user (binfmt_misc)."""
    arch = arch or native_arch()
    key = base_key(arch)
    tarball = images_dir() / "rootfs" / f"{rootfs_name(arch)}-{key}.tar"
    if tarball.exists():
        return tarball
    tarball.parent.mkdir(parents=True, exist_ok=True)
    if shutil.which("debootstrap") is None:
        raise BuildError("debootstrap is not installed (apt-get install debootstrap)")
    ensure_binfmt(arch)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=tarball.parent, prefix="rootfs.") as tmp:
        rootfs = Path(tmp) / "root"
        _log(f"debootstrap {SUITE} {arch} minbase +{','.join(BASE_PACKAGES)} from {mirror()}")
        foreign = [] if arch == native_arch() else [f"--arch={arch}", "--foreign"]
        _run(["debootstrap", *foreign, "--variant=minbase",
              f"--include={','.join(BASE_PACKAGES)}", SUITE, str(rootfs), mirror()],
             step="debootstrap", timeout=1800)
        if foreign:
            _run(["chroot", str(rootfs), "/debootstrap/debootstrap", "--second-stage"],
                 step=f"debootstrap --second-stage ({arch}, emulated)", timeout=3600)
        timings["debootstrap_s"] = round(time.monotonic() - started, 1)
        python = rootfs / "usr/bin" / f"python{TARGET_PYTHON}"
        if not python.exists():
            raise BuildError(f"{SUITE}'s python3 is not {TARGET_PYTHON} ({python} missing); "
                             "update TARGET_PYTHON")
        _trim(rootfs)
        partial = tarball.with_suffix(".partial")
        _run(["tar", "--numeric-owner", "--xattrs", "--sort=name", "-C", str(rootfs),
              *(f"--exclude={p}" for p in NOT_IN_TARBALL), "-cf", str(partial), "."],
             step="tar rootfs")
        partial.rename(tarball)
    for old in tarball.parent.glob(f"{rootfs_name(arch)}-*.tar"):
        if old != tarball:
            old.unlink()
    timings["rootfs_s"] = round(time.monotonic() - started, 1)
    return tarball


def import_base(tarball: Path, timings: dict[str, float], arch: str | None = None) -> str:
    """``localhost/thpcheck-base:bookworm[-<arch>]`` from the tarball, unless already imported."""
    arch = arch or native_arch()
    key = base_key(arch)
    if image_label(base_image(arch), KEY_LABEL) == key:
        return key
    started = time.monotonic()
    changes = [*BASE_CHANGES, f"LABEL {KEY_LABEL}={key}"]
    podman("import", "--arch", arch, "--os", "linux",
           *(a for c in changes for a in ("--change", c)), str(tarball), base_image(arch))
    timings["base_import_s"] = round(time.monotonic() - started, 1)
    return key


# ---- 3. wheels --------------------------------------------------------------------------

def project_metadata() -> dict[str, object]:
    with open(REPO / "pyproject.toml", "rb") as handle:
        return tomllib.load(handle)


def project_version() -> str:
    project = project_metadata()["project"]
    assert isinstance(project, dict)
    return str(project["version"])


def wheel_requirements() -> list[str]:
    """Runtime dependencies plus the build backend: all the offline build installs."""
    meta = project_metadata()
    project, build_system = meta["project"], meta["build-system"]
    assert isinstance(project, dict) and isinstance(build_system, dict)
    return [*build_system["requires"], *project["dependencies"]]


def target_platforms(arch: str | None = None) -> list[str]:
    machine = MACHINES[arch or native_arch()]
    legacy = [f"manylinux2014_{machine}"] if machine in ("x86_64", "aarch64") else []
    return [*legacy, *(f"manylinux_2_{minor}_{machine}" for minor in range(17, GLIBC_MINOR + 1))]


def download_wheels(timings: dict[str, float], arch: str | None = None) -> Path:
    """Wheels of every requirement for the image's Python and architecture, cached by the
    requirement list."""
    requirements = wheel_requirements()
    arch = arch or native_arch()
    platforms = target_platforms(arch)
    key = _digest("wheels", TARGET_PYTHON, *platforms, *requirements)[:16]
    dest = images_dir() / "wheels" / f"{arch}-{key}"
    if (dest / ".complete").exists():
        return dest
    started = time.monotonic()
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    abi = "cp" + TARGET_PYTHON.replace(".", "")
    pip = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check",
           "--quiet", "--dest", str(dest), "--only-binary=:all:",
           "--python-version", TARGET_PYTHON, "--implementation", "cp", "--abi", abi,
           *(a for p in platforms for a in ("--platform", p)), *requirements]
    _log(f"pip download {len(requirements)} requirements for cp{TARGET_PYTHON} ({arch})")
    _run(pip, step="pip download", timeout=900)
    (dest / ".complete").write_text("\n".join(sorted(p.name for p in dest.glob("*.whl"))))
    for old in dest.parent.iterdir():
        if old != dest and (old.name.startswith(f"{arch}-") or "-" not in old.name):
            shutil.rmtree(old, ignore_errors=True)
    timings["wheels_download_s"] = round(time.monotonic() - started, 1)
    return dest


# ---- 4. the build context and the image ----------------------------------------------------

def _ignored(name: str) -> bool:
    return name == "__pycache__" or name.endswith((".pyc", ".pyo", ".egg-info"))


def stage_context(wheels: Path) -> tuple[Path, str]:
    """A fresh copy of what the Dockerfile copies, plus the wheels; returns (dir, hash)."""
    context = images_dir() / "context"
    shutil.rmtree(context, ignore_errors=True)
    for rel in CONTEXT_PATHS:
        src, dst = REPO / rel, context / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=lambda _d, names: [n for n in names if _ignored(n)])
        else:
            shutil.copy2(src, dst)
    for wheel in sorted(wheels.glob("*.whl")):
        os.link(wheel, context / "images" / "wheels" / wheel.name)
    h = hashlib.sha256()
    for path in sorted(p for p in context.rglob("*") if p.is_file()):
        rel = path.relative_to(context).as_posix()
        h.update(_digest(rel, oct(path.stat().st_mode & 0o777),
                         path.read_bytes() if "wheels/" not in rel else path.name).encode())
    return context, h.hexdigest()


def git_revision() -> str:
    """HEAD's commit, with ``-dirty`` when the image's inputs differ from it."""
    try:
        head = _run(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"]).stdout.strip()
        dirty = _run(["git", "-C", str(REPO), "status", "--porcelain", "--",
                      *CONTEXT_PATHS]).stdout.strip()
    except (BuildError, OSError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


@dataclass
class Built:
    """What a build produced; ``archive`` is set when an archive was asked for."""

    image: str
    tags: list[str]
    image_id: str
    size_bytes: int
    base_image: str
    base_size_bytes: int
    version: str
    revision: str
    content_hash: str
    rootfs_tarball: str
    built: bool
    archive: str | None = None
    archive_format: str | None = None
    archive_bytes: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    arch: str = "amd64"


def _image_size(ref: str) -> int:
    return int(podman("image", "inspect", "--format", "{{.Size}}", ref).stdout.strip())


def image_tags(version: str, content_hash: str, arch: str) -> tuple[str, str]:
    """(version tag, content-hash tag): ``<version>`` and ``<version>-<hash>`` for this
    machine's architecture, ``<version>-<arch>`` and ``<version>-<arch>-<hash>`` for another."""
    suffix = "" if arch == native_arch() else f"-{arch}"
    return (f"{IMAGE_REPO}:{version}{suffix}", f"{IMAGE_REPO}:{version}{suffix}-{content_hash}")


def _is_hash_tag(ref: str, arch: str) -> bool:
    """A content-hash tag of ``arch``'s project image (see image_tags)."""
    suffix = "" if arch == native_arch() else f"-{arch}"
    return re.fullmatch(rf"[^-]+{suffix}-[0-9a-f]{{12}}", ref.rpartition(":")[2]) is not None


def _drop_old_images(keep: str, deps_key: str, arch: str) -> None:
    """Remove earlier content-hash tags of the project image (of this architecture); bound the
    layer cache.

    The untagged intermediate images are podman's build cache (the dependency layer is most
    of the build time), so they are pruned only when the dependency inputs changed.
    """
    listing = podman("images", "--format", "{{.Repository}}:{{.Tag}}", IMAGE_REPO).stdout
    old = [ref for ref in listing.split()
           if ref != keep and ref.startswith(f"{IMAGE_REPO}:") and _is_hash_tag(ref, arch)]
    for ref in old:
        podman("rmi", ref, check=False)
    stamp = images_dir() / "podman" / ("deps-key" if arch == native_arch() else
                                       f"deps-key-{arch}")
    if stamp.exists() and stamp.read_text().strip() != deps_key:
        podman("image", "prune", "--force", check=False)
    stamp.write_text(deps_key + "\n")


def build(*, refresh: bool = False, arch: str | None = None) -> Built:
    """Build (or reuse) the base and the project image for ``arch`` (default: this machine's;
    another architecture's RUN steps run under qemu-user); see the module docstring."""
    for tool in ("podman", "debootstrap", "tar"):
        if shutil.which(tool) is None:
            raise BuildError(f"{tool} is not installed (apt-get install podman buildah "
                             "debootstrap skopeo runc)")
    arch = arch or native_arch()
    if arch not in MACHINES:
        raise BuildError(f"unknown architecture {arch!r}; use one of {', '.join(MACHINES)}")
    timings: dict[str, float] = {}
    started = time.monotonic()
    base = base_image(arch)
    with _locked():
        setup_podman()
        ensure_binfmt(arch)
        tarball = build_rootfs(timings, arch)
        key = import_base(tarball, timings, arch)
        wheels = download_wheels(timings, arch)
        context, content = stage_context(wheels)
        version, revision = project_version(), git_revision()
        base_id = podman("image", "inspect", "--format", "{{.Id}}", base).stdout.strip()
        # The recipe (this file: build args, labels) is part of what the image is built from.
        content_hash = _digest(content, base_id, revision, key,
                               Path(__file__).read_bytes())[:12]
        tag, hash_tag = image_tags(version, content_hash, arch)
        built = refresh or not image_exists(hash_tag)
        if built:
            build_started = time.monotonic()
            _log(f"podman build {hash_tag}")
            # runc's state for RUN steps goes under the cache too (default: /run/runc).
            runc_root = images_dir() / "podman" / "runc"
            runc_root.mkdir(exist_ok=True)
            podman("build", "--pull=never", "--network", "host", "--layers",
                   "--arch", arch, "--os", "linux",
                   "--runtime-flag", f"root={runc_root}",
                   "--file", str(context / "images" / "Dockerfile"),
                   "--build-arg", f"BASE_IMAGE={base}",
                   "--build-arg", f"VERSION={version}",
                   "--build-arg", f"REVISION={revision}",
                   # buildah 1.28 reuses a cached LABEL step whatever the build-arg values
                   # in it, so the labels that come from build args are also set here.
                   "--label", f"org.opencontainers.image.version={version}",
                   "--label", f"org.opencontainers.image.revision={revision}",
                   "--label", f"org.opencontainers.image.base.name={base}",
                   "--tag", tag, "--tag", hash_tag, str(context), timeout=3600)
            timings["image_build_s"] = round(time.monotonic() - build_started, 1)
            _drop_old_images(keep=hash_tag, deps_key=_digest(
                key, wheels.name, (REPO / "pyproject.toml").read_text())[:16], arch=arch)
        else:
            podman("tag", hash_tag, tag)
        image_id = podman("image", "inspect", "--format", "{{.Id}}", hash_tag).stdout.strip()
        timings["total_s"] = round(time.monotonic() - started, 1)
        _log(f"{hash_tag} ({'built' if built else 'cached'}); timings {timings}")
        return Built(image=tag, tags=[tag, hash_tag], image_id=image_id,
                     size_bytes=_image_size(hash_tag), base_image=base,
                     base_size_bytes=_image_size(base), version=version,
                     revision=revision, content_hash=content_hash,
                     rootfs_tarball=str(tarball), built=built, timings=timings, arch=arch)


# ---- 5. archives for containerd ------------------------------------------------------------

ARCHIVE_FORMATS = {"oci-archive": "oci.tar", "docker-archive": "docker.tar"}


def default_archive(built: Built, fmt: str = "oci-archive") -> Path:
    """``thp-checker-<content-hash tag>.<ext>`` under the cache (see image_tags)."""
    tag = built.tags[1].rpartition(":")[2]
    return images_dir() / "archives" / f"thp-checker-{tag}.{ARCHIVE_FORMATS[fmt]}"


def export_archive(built: Built, path: Path | None = None, fmt: str = "oci-archive") -> Path:
    """Save the image for ``ctr -n k8s.io images import``; returns the archive's path.

    The archive names the image ``localhost/thp-checker:<version>``: in an oci-archive as the
    index's ``org.opencontainers.image.ref.name``, in a docker-archive as its RepoTags. The
    default path (under the cache, named by the content hash) is reused while it holds this
    image; an explicit ``path`` is always written.
    """
    if fmt not in ARCHIVE_FORMATS:
        raise BuildError(f"unknown archive format {fmt!r}; use one of {sorted(ARCHIVE_FORMATS)}")
    target = path or default_archive(built, fmt)
    stamp = target.with_name(target.name + ".id")
    reuse = path is None and target.exists() and stamp.exists() and \
        stamp.read_text().strip() == built.image_id
    if not reuse:
        started = time.monotonic()
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        partial.unlink(missing_ok=True)
        with _locked():
            # Another build may have moved the version tag since; point it back at this image.
            podman("tag", built.tags[1], built.image)
            podman("save", "--format", fmt, "--output", str(partial), built.image)
        partial.rename(target)
        built.timings["archive_s"] = round(time.monotonic() - started, 1)
        if path is None:
            stamp.write_text(built.image_id + "\n")
            ext = ARCHIVE_FORMATS[fmt]
            for old in target.parent.glob(f"thp-checker-*.{ext}*"):
                tag = old.name.removeprefix("thp-checker-").partition(f".{ext}")[0]
                if old.name not in (target.name, stamp.name) and \
                        _is_hash_tag(f":{tag}", built.arch):
                    old.unlink()
    built.archive, built.archive_format = str(target), fmt
    built.archive_bytes = target.stat().st_size
    return target


MULTIARCH_SUFFIX = "multiarch.oci.tar"


def export_multiarch(builds: Sequence[Built], path: Path | None = None) -> Path:
    """One oci-archive holding an image index over every architecture built, named
    ``localhost/thp-checker:<version>``: the reference the chart's DaemonSets and Deployment
    use, so ``ctr images import`` on a node of either architecture (or a registry push) gives
    each node its own platform's image under one name, with no per-architecture selector.

    Written with ``podman manifest push --all`` from a local manifest list
    (``localhost/thp-checker:<version>-multiarch``); the default path under the cache is named
    by the content hashes and reused while it exists.
    """
    version = builds[0].version
    name = f"{IMAGE_REPO}:{version}"
    hashes = "-".join(f"{b.arch}.{b.content_hash}" for b in builds)
    default = images_dir() / "archives" / f"thp-checker-{version}-{hashes}.{MULTIARCH_SUFFIX}"
    target = path or default
    if path is None and target.exists():
        return target
    started = time.monotonic()
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    manifest_list = f"{name}-multiarch"
    with _locked():
        podman("manifest", "rm", manifest_list, check=False)
        podman("manifest", "create", manifest_list)
        for built in builds:
            podman("manifest", "add", "--arch", built.arch, "--os", "linux", manifest_list,
                   f"containers-storage:{built.tags[1]}")
        podman("manifest", "push", "--all", "--format", "oci", manifest_list,
               f"oci-archive:{partial}:{name}", timeout=1800)
    partial.rename(target)
    if path is None:
        for old in target.parent.glob(f"thp-checker-*.{MULTIARCH_SUFFIX}"):
            if old != target:
                old.unlink()
    for built in builds:
        built.timings["multiarch_archive_s"] = round(time.monotonic() - started, 1)
    return target


def _arches(text: str) -> list[str]:
    arches = [a.strip() for a in text.split(",") if a.strip()]
    unknown = [a for a in arches if a not in MACHINES]
    if unknown or not arches:
        raise argparse.ArgumentTypeError(
            f"{text!r}: use a comma-separated list of {', '.join(MACHINES)}")
    return arches


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.images.build", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", nargs="?", const="", metavar="PATH",
                        help="also save an archive for `ctr images import` (default path "
                        "under the cache) and print its path on stdout")
    parser.add_argument("--format", choices=sorted(ARCHIVE_FORMATS), default="oci-archive",
                        help="archive format (default oci-archive)")
    parser.add_argument("--arch", type=_arches, default=None, metavar="ARCH[,ARCH]",
                        help="image architectures (amd64, arm64; default this machine's). "
                        "Another architecture builds under qemu-user-static (binfmt_misc); "
                        "with more than one, --archive saves one multi-arch OCI archive "
                        "(an image index named localhost/thp-checker:<version>)")
    parser.add_argument("--refresh", action="store_true",
                        help="rebuild the project image even when its content hash exists")
    parser.add_argument("--json", action="store_true", help="print the build record as JSON")
    parser.add_argument("--env", action="store_true",
                        help="print `export` lines for running podman on the private store")
    args = parser.parse_args(argv)
    if args.env:
        env = setup_podman()
        for name in ("CONTAINERS_STORAGE_CONF", "CONTAINERS_CONF", "CONTAINERS_REGISTRIES_CONF",
                     "TMPDIR"):
            print(f"export {name}={shlex.quote(env[name])}")
        return 0
    arches = args.arch or [native_arch()]
    try:
        builds = [build(refresh=args.refresh, arch=arch) for arch in arches]
        target = Path(args.archive) if args.archive else None
        if args.archive is not None and len(builds) > 1:
            if args.format != "oci-archive":
                raise BuildError("a multi-arch archive is an oci-archive (an image index)")
            multi = export_multiarch(builds, target)
            for built in builds:
                built.archive, built.archive_format = str(multi), "oci-archive"
                built.archive_bytes = multi.stat().st_size
        elif args.archive is not None:
            export_archive(builds[0], target, args.format)
    except BuildError as exc:
        print(f"images: {exc}", file=sys.stderr)
        return 1
    if len(builds) > 1:
        if args.json:
            print(json.dumps([asdict(b) for b in builds], indent=2))
        else:
            print(builds[0].archive or "\n".join(b.tags[0] for b in builds))
        for built in builds:
            _log(f"{built.arch}: {built.tags[1]} {built.size_bytes / 1e6:.1f} MB; "
                 f"{built.timings}")
        return 0
    built = builds[0]
    if args.json:
        print(json.dumps(asdict(built), indent=2))
    elif built.archive:
        print(built.archive)
    else:
        print(built.image)
    _log(f"{built.image} ({built.tags[1]}) {built.size_bytes / 1e6:.1f} MB, "
         f"base {built.base_size_bytes / 1e6:.1f} MB"
         + (f", {built.archive_format} {(built.archive_bytes or 0) / 1e6:.1f} MB"
            if built.archive else "") + f"; {built.timings}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
