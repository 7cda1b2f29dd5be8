"""Kernel build configuration (``.config`` text) parsing."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

_SET = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_NOT_SET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")

READ_ONLY_THP_FOR_FS = "CONFIG_READ_ONLY_THP_FOR_FS"
BTRFS_EXPERIMENTAL = "CONFIG_BTRFS_EXPERIMENTAL"
TRANSPARENT_HUGEPAGE = "CONFIG_TRANSPARENT_HUGEPAGE"
HAVE_ARCH_TRANSPARENT_HUGEPAGE = "CONFIG_HAVE_ARCH_TRANSPARENT_HUGEPAGE"


@dataclass(frozen=True)
class KernelConfig:
    """A parsed kernel config and where it came from (a file, or the distro table)."""

    values: Mapping[str, str] = field(default_factory=dict)
    source: str = ""

    def enabled(self, name: str) -> bool:
        """True for ``=y`` or ``=m``; a missing or ``is not set`` option is off."""
        return self.values.get(name, "n") in ("y", "m")

    @property
    def partial(self) -> bool:
        """A config that leaves THP out although the architecture offers it: a stub such as
        OrbStack's ``/proc/config.gz``, where a missing option does not mean "not set"."""
        offered = self.enabled(HAVE_ARCH_TRANSPARENT_HUGEPAGE)
        return offered and self.raw(TRANSPARENT_HUGEPAGE) is None

    def raw(self, name: str) -> str | None:
        """The literal value, ``"n"`` for "is not set", None when the option is absent."""
        return self.values.get(name)


def parse_config(text: str, source: str) -> KernelConfig:
    """Parse ``.config`` text; ``# CONFIG_X is not set`` becomes ``"n"``."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if match := _SET.match(line):
            values[match[1]] = match[2].strip('"')
        elif match := _NOT_SET.match(line):
            values[match[1]] = "n"
    return KernelConfig(values, source)
