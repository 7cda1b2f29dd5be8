"""Kernel release strings, parsed into comparable mainline-equivalent versions.

Distribution release strings (``uname -r``) do not always carry the stable sublevel: Debian
bookworm prints ``6.1.0-28-amd64`` for 6.1.119, RHEL/SUSE/Oracle print ``6.12.0-<build>``.
A sublevel we cannot trust is recorded as ``None`` so the fixed-stable gate never guesses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_RELEASE = re.compile(r"^(?P<major>\d+)\.(?P<minor>\d+)(?:\.(?P<sub>\d+))?(?P<rest>.*)$")
# "Debian 6.1.119-1" or "Debian 6.12.57-1~bpo12+1" in /proc/version carries the real sublevel.
_DEBIAN_PROC_VERSION = re.compile(r"Debian (?P<major>\d+)\.(?P<minor>\d+)\.(?P<sub>\d+)")
# "-<digits>" right after "X.Y.0" marks a vendor ABI/build number, not an upstream sublevel.
_VENDOR_ABI = re.compile(r"^-\d+")


@dataclass(frozen=True, order=True)
class KernelVersion:
    """A mainline-equivalent kernel version; ``sublevel`` is None when the release hides it."""

    major: int
    minor: int
    sublevel: int | None = None

    @property
    def branch(self) -> tuple[int, int]:
        """The stable branch, e.g. (6, 12)."""
        return (self.major, self.minor)

    def at_least(self, major: int, minor: int) -> bool:
        """True when this kernel's branch is ``major.minor`` or newer."""
        return self.branch >= (major, minor)

    def __str__(self) -> str:
        sub = "?" if self.sublevel is None else str(self.sublevel)
        return f"{self.major}.{self.minor}.{sub}"


def parse_release(release: str, proc_version: str | None = None) -> KernelVersion | None:
    """Parse ``uname -r`` (and optionally ``/proc/version``) into a KernelVersion.

    Returns None for strings that are not kernel releases at all.
    """
    match = _RELEASE.match(release.strip())
    if match is None:
        return None
    major, minor = int(match["major"]), int(match["minor"])
    sub_text = match["sub"]
    rest = match["rest"]
    sublevel: int | None = int(sub_text) if sub_text is not None else None
    if sublevel == 0 and _VENDOR_ABI.match(rest):
        sublevel = None  # 6.1.0-28-amd64, 6.12.0-124.el10: vendor build, sublevel unknown
    if proc_version:
        debian = _DEBIAN_PROC_VERSION.search(proc_version)
        if debian and (int(debian["major"]), int(debian["minor"])) == (major, minor):
            sublevel = int(debian["sub"])
    return KernelVersion(major, minor, sublevel)
