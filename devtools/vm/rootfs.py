"""Guest artifacts: the initramfs pieces and the test disk images.

The initramfs is assembled from concatenated newc archives (Linux unpacks them
in order): a cached base (busybox, a trimmed copy of a Debian python3.11,
repro7, /init), an optional per-kernel overlay (modules for a Debian binary
kernel), and an app archive built from the working tree for every test session
(the thpcheck package and structlog), so the agent under test is never stale.

The x86-64 base copies the host's own python3.11 and busybox; the arm64 base takes
them from Debian's arm64 packages (unpacked, never run here) and a cross-compiled
repro7. The app archive (bytecode, pure Python) and the disk images serve both.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import BinaryIO

VM_DIR = Path(__file__).resolve().parent
REPO = VM_DIR.parent.parent
INIT = VM_DIR / "init.sh"
REPRO7_SRC = REPO / "benchmarks" / "repro7" / "repro7.c"
AGENT_SRC = REPO / "operator" / "thpcheck"
PYTHON = "usr/bin/python3.11"  # relative to a sysroot: "/" for the host's
STDLIB = "usr/lib/python3.11"
HOST_PYTHON = Path("/") / PYTHON
BUSYBOX = Path("/bin/busybox")
LDCONFIG = Path("/sbin/ldconfig")
DISK_SIZE = 512 << 20
# The 64K-page kernel's base file is one PMD (512 MiB): it needs a larger disk.
LARGE_DISK_SIZE = 1 << 30
LARGE_DISK_FILESYSTEMS = ("ext4",)
FILESYSTEMS = ("ext4", "btrfs", "xfs")
TRIPLETS = {"x86_64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu"}
CROSS_CC = {"x86_64": "gcc", "arm64": "aarch64-linux-gnu-gcc"}
# Debian's arm64 packages the arm64 guest is made of: busybox, python3.11 and the libraries
# of the interpreter and of the extension modules it keeps (checked: stage_python fails on a
# library missing from this list).
ARM64_PACKAGES = ("busybox-static", "python3.11-minimal", "libpython3.11-minimal",
                  "libpython3.11-stdlib", "libc6", "zlib1g", "libexpat1", "libffi8", "libbz2-1.0",
                  "liblzma5", "libuuid1")
ARM64_SUITE = "bookworm"
# Stdlib parts the agent cannot need; dropping them keeps the initramfs small
# (TCG copies and unpacks every byte at each boot).
STDLIB_DROP = {
    "test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data",
    "distutils", "config-3.11-x86_64-linux-gnu", "config-3.11-aarch64-linux-gnu",
    "site-packages", "dist-packages", "__pycache__", "sqlite3", "curses", "dbm", "venv",
    "turtle.py", "pydoc.py",
}
DYNLOAD_DROP = ("_test", "_ctypes_test", "xx", "_curses", "readline", "_dbm", "_sqlite3",
                "_ssl", "_hashlib", "nis", "audioop", "ossaudiodev", "_tkinter", "_crypt")


def write_cpio(root: Path, out: Path, nodes: dict[str, tuple[int, int]] | None = None) -> None:
    """Write `root` as a newc archive owned by root:root, plus char-device `nodes`.

    Pure Python so no mknod (and no root) is needed for /dev/console.
    """
    entries: list[tuple[str, int, bytes, int]] = []  # name, mode, data, rdev
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        for name in [*dirnames, *sorted(filenames)]:
            p = base / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                entries.append((rel, st.st_mode, os.readlink(p).encode(), 0))
            elif stat.S_ISDIR(st.st_mode):
                entries.append((rel, st.st_mode, b"", 0))
            elif stat.S_ISREG(st.st_mode):
                entries.append((rel, st.st_mode, p.read_bytes(), 0))
    for name, (major, minor) in (nodes or {}).items():
        entries.append((name, stat.S_IFCHR | 0o600, b"", os.makedev(major, minor)))
    tmp = out.with_suffix(".tmp")
    with tmp.open("wb") as fh:
        for ino, (name, mode, data, rdev) in enumerate(entries, start=1):
            _cpio_entry(fh, ino, name, mode, data, rdev)
        _cpio_entry(fh, 0, "TRAILER!!!", 0, b"", 0)
    os.replace(tmp, out)


def _cpio_entry(fh: BinaryIO, ino: int, name: str, mode: int, data: bytes, rdev: int) -> None:
    """One newc header + name + data, each padded to 4 bytes."""
    nameb = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, os.major(rdev), os.minor(rdev),
              len(nameb), 0)
    hdr = b"070701" + b"".join(f"{v:08x}".encode() for v in fields)
    fh.write(hdr + nameb)
    fh.write(b"\0" * (-(len(hdr) + len(nameb)) % 4))
    fh.write(data)
    fh.write(b"\0" * (-len(data) % 4))


def _elf_dynamic(path: Path) -> tuple[list[str], str | None]:
    """(NEEDED libraries, program interpreter) of an ELF file of any architecture (readelf)."""
    out = subprocess.run(["readelf", "--wide", "--dynamic", "--program-headers", str(path)],
                         check=True, capture_output=True, text=True).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^]]+)\]", out)
    interp = re.search(r"\[Requesting program interpreter: ([^]]+)\]", out)
    return needed, interp[1] if interp else None


def needed_libraries(elfs: list[Path], sysroot: Path, triplet: str) -> set[str]:
    """Every library (a path inside `sysroot`) the ELF files need, transitively: what `ldd`
    gives, without running anything (so it works for another architecture's files)."""
    search = [f"lib/{triplet}", f"usr/lib/{triplet}", "lib", "usr/lib", "lib64"]
    found: set[str] = set()
    todo = list(elfs)
    while todo:
        needed, interp = _elf_dynamic(todo.pop())
        wanted = [interp.lstrip("/")] if interp else []
        for name in needed:
            hit = next((f"{d}/{name}" for d in search if (sysroot / d / name).exists()), None)
            if hit is None:
                raise FileNotFoundError(f"{name} (needed by a guest binary) is not in {sysroot}: "
                                        "add its package to rootfs.ARM64_PACKAGES")
            wanted.append(hit)
        for rel in wanted:
            if rel not in found:
                found.add(rel)
                todo.append(sysroot / rel)
    return found


def stage_python(root: Path, sysroot: Path = Path("/"), arch: str = "x86_64") -> None:
    """A Debian python3.11 from `sysroot` + trimmed stdlib + its libraries, with .pyc compiled
    here (bytecode is the same on every architecture)."""
    (root / "usr/bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(sysroot / PYTHON, root / PYTHON)
    os.symlink("python3.11", root / "usr/bin/python3")
    lib = root / STDLIB
    shutil.copytree(sysroot / STDLIB, lib, symlinks=False,
                    ignore=lambda d, names: [n for n in names if n in STDLIB_DROP])
    dyn = lib / "lib-dynload"
    for so in list(dyn.iterdir()):
        if so.name.startswith(DYNLOAD_DROP):
            so.unlink()
    for rel in needed_libraries([sysroot / PYTHON, *dyn.iterdir()], sysroot, TRIPLETS[arch]):
        dest = root / rel  # at its own path, the real file behind any symlink
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2((sysroot / rel).resolve(), dest)
    compile_tree(lib, HOST_PYTHON)


def compile_tree(tree: Path, python: Path) -> None:
    """Precompile .pyc (unchecked-hash: valid whatever the mtimes in the cpio)."""
    subprocess.run([str(python), "-m", "compileall", "-q", "-j0", "--invalidation-mode",
                    "unchecked-hash", str(tree)], check=True, stdout=subprocess.DEVNULL)


def stage_busybox(root: Path) -> None:
    """busybox-static with a symlink per applet in /bin and /sbin."""
    for d in ("bin", "sbin", "usr/sbin", "usr/local/bin"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, root / "bin/busybox")
    applets = subprocess.run([str(BUSYBOX), "--list"], check=True, capture_output=True,
                             text=True).stdout.split()
    for a in applets:
        link = root / "bin" / a
        if a != "busybox" and not link.exists():
            os.symlink("busybox", link)
    for a in ("init", "reboot", "poweroff", "halt", "modprobe", "insmod", "depmod"):
        link = root / "sbin" / a
        if not link.exists():
            os.symlink("/bin/busybox", link)


def build_repro7(out: Path, arch: str = "x86_64") -> None:
    """Static repro7 for the guest (cross-compiled for arm64), via its Makefile."""
    subprocess.run(["make", "-s", "-B", "-C", str(REPRO7_SRC.parent), f"OUT={out}",
                    f"CC={CROSS_CC[arch]}"], check=True)


def stage_etc(root: Path, arch: str = "x86_64") -> None:
    """Minimal /etc, the mount points and /init."""
    for d in ("etc", "proc", "sys", "dev", "tmp", "run", "mnt", "root", "lib64", "boot",
              "opt/thpcheck"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\n")
    (root / "etc/hostname").write_text("thpvm\n")
    triplet = TRIPLETS[arch]
    (root / "etc/ld.so.conf").write_text(f"/lib/{triplet}\n/usr/lib/{triplet}\n")
    shutil.copy2(INIT, root / "init")
    (root / "init").chmod(0o755)


def base_key() -> str:
    """Cache key of the base archive: everything that goes into it."""
    h = hashlib.sha256()
    for p in (INIT, REPRO7_SRC, REPRO7_SRC.parent / "Makefile", Path(__file__)):
        h.update(p.read_bytes())
    for p in (HOST_PYTHON, BUSYBOX):
        st = p.stat()
        h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


def build_base(cache: Path) -> Path:
    """Build (or reuse) base.cpio: busybox, python3, repro7, /init."""
    dest = cache / "guest" / f"base-{base_key()}"
    out = dest / "base.cpio"
    if out.exists():
        return out
    stage = dest / "stage"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    stage_etc(stage)
    stage_busybox(stage)
    stage_python(stage)
    build_repro7(stage / "usr/local/bin/repro7")
    # ctypes.util.find_library() asks `ldconfig -p`; ship it and a cache.
    shutil.copy2(LDCONFIG, stage / "sbin/ldconfig")
    subprocess.run([str(LDCONFIG), "-r", str(stage)], check=True)
    write_cpio(stage, out, nodes={"dev/console": (5, 1), "dev/null": (1, 3)})
    shutil.rmtree(stage)
    return out


def build_base_arm64(cache: Path, debs: list[Path]) -> Path:
    """Build (or reuse) the arm64 base.cpio from Debian's arm64 packages (`debs`, unpacked with
    dpkg-deb: nothing of them runs here) and a cross-compiled repro7. busybox makes its applet
    links at boot (init.sh), python3.11 is trimmed as the host's is."""
    h = hashlib.sha256()
    for p in (INIT, REPRO7_SRC, REPRO7_SRC.parent / "Makefile", Path(__file__)):
        h.update(p.read_bytes())
    h.update(json.dumps(sorted(d.name for d in debs)).encode())
    dest = cache / "guest" / f"base-arm64-{h.hexdigest()[:12]}"
    out = dest / "base.cpio"
    if out.exists():
        return out
    sysroot, stage = dest / "sysroot", dest / "stage"
    for tree in (sysroot, stage):
        shutil.rmtree(tree, ignore_errors=True)
        tree.mkdir(parents=True)
    for deb in debs:
        subprocess.run(["dpkg-deb", "-x", str(deb), str(sysroot)], check=True)
    stage_etc(stage, "arm64")
    for d in ("bin", "sbin", "usr/sbin", "usr/local/bin"):
        (stage / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(sysroot / "bin/busybox", stage / "bin/busybox")
    os.symlink("busybox", stage / "bin/sh")
    stage_python(stage, sysroot, "arm64")
    build_repro7(stage / "usr/local/bin/repro7", "arm64")
    write_cpio(stage, out, nodes={"dev/console": (5, 1), "dev/null": (1, 3)})
    shutil.rmtree(stage)
    shutil.rmtree(sysroot)
    return out


def build_app(out: Path, agent_src: Path = AGENT_SRC) -> bool:
    """app.cpio: /opt/thpcheck with thpcheck (if it exists yet) and structlog."""
    import structlog  # imported here: only the host side needs it

    stage = out.parent / "app-stage"
    shutil.rmtree(stage, ignore_errors=True)
    opt = stage / "opt" / "thpcheck"
    opt.mkdir(parents=True)
    shutil.copytree(Path(structlog.__file__).parent, opt / "structlog",
                    ignore=shutil.ignore_patterns("__pycache__"))
    has_agent = (agent_src / "__main__.py").exists()
    if has_agent:
        shutil.copytree(agent_src, opt / "thpcheck",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    compile_tree(opt, HOST_PYTHON)
    write_cpio(stage, out)
    shutil.rmtree(stage)
    return has_agent


def build_disks(cache: Path, size: int = DISK_SIZE,
                filesystems: tuple[str, ...] = FILESYSTEMS) -> dict[str, Path]:
    """Sparse ext4/btrfs/xfs images (512 MiB by default) labelled thp-<fs>, made on files (no
    loop); other sizes go to their own directory."""
    dest = cache / "guest" / ("disks" if size == DISK_SIZE else f"disks-{size >> 20}M")
    dest.mkdir(parents=True, exist_ok=True)
    mkfs = {
        "ext4": ["mkfs.ext4", "-q", "-F", "-L", "thp-ext4"],
        "btrfs": ["mkfs.btrfs", "-q", "-f", "-L", "thp-btrfs"],
        "xfs": ["mkfs.xfs", "-q", "-f", "-L", "thp-xfs"],
    }
    images = {}
    for fs in filesystems:
        img = dest / f"{fs}.img"
        if not img.exists():
            tmp = dest / f"{fs}.img.tmp"
            tmp.unlink(missing_ok=True)
            with tmp.open("wb") as fh:
                fh.truncate(size)
            subprocess.run([*mkfs[fs], str(tmp)], check=True, stdout=subprocess.DEVNULL)
            os.replace(tmp, img)
        images[fs] = img
    return images


if __name__ == "__main__":  # pragma: no cover - manual use
    print(build_base(Path(sys.argv[1])))
