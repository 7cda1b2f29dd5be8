"""The C library, for the few syscalls Python does not wrap (mmap at an address, madvise,
prctl, statfs).

``CDLL(None)`` resolves symbols in the already-loaded libc, unlike ``ctypes.util.find_library``
which forks ``ldconfig`` or a compiler: costly on a node and very slow in an emulated guest.
"""

from __future__ import annotations

import ctypes

LIBC = ctypes.CDLL(None, use_errno=True)
