"""An injectable host root: read ``/host/...`` inside a pod and ``/`` on the machine itself.

Modelled on node-feature-discovery's hostpath package: every host file is read through one
object, so tests point it at a fixture tree and pods point it at their host mounts.
"""

from __future__ import annotations

import os
import posixpath


class HostRoot:
    """Maps host paths (``/proc/...``) to where they are visible (``<root>/proc/...``)."""

    def __init__(self, root: str = "/") -> None:
        self.root = os.path.abspath(root)

    def path(self, host_path: str) -> str:
        """Where the host path ``host_path`` is visible from this process."""
        relative = posixpath.normpath("/" + host_path).lstrip("/")
        return self.root if not relative else posixpath.join(self.root, relative)

    def read_bytes(self, host_path: str) -> bytes | None:
        """File contents, or None when it does not exist or cannot be read."""
        try:
            with open(self.path(host_path), "rb") as handle:
                return handle.read()
        except OSError:
            return None

    def read_text(self, host_path: str) -> str | None:
        """Text contents (undecodable bytes replaced), or None when unreadable."""
        data = self.read_bytes(host_path)
        return None if data is None else data.decode("utf-8", "replace")

    def read_line(self, host_path: str) -> str | None:
        """The first line, stripped: the shape of sysfs and sysctl files."""
        text = self.read_text(host_path)
        return None if text is None else text.strip().splitlines()[0] if text.strip() else ""

    def listdir(self, host_path: str) -> list[str]:
        """Directory entries, or an empty list when the directory is missing."""
        try:
            return sorted(os.listdir(self.path(host_path)))
        except OSError:
            return []
