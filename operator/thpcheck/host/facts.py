"""Collect a node's facts from its host root: kernel, config, THP knobs, mounts."""

from __future__ import annotations

import os
import zlib

from thpcheck.host import mm
from thpcheck.host.hostroot import HostRoot
from thpcheck.host.statfs import PROC_NAME, fs_name, same_filesystem
from thpcheck.model.facts import KernelFacts, NodeFacts, OsRelease, PathFacts, ThpKnobs
from thpcheck.model.hugepage import HugePages, kernel_hugepages
from thpcheck.model.kconfig import KernelConfig, parse_config
from thpcheck.model.kernel import parse_release
from thpcheck.model.mounts import Mount, MountinfoError, parse_mountinfo, resolve

THP_DIR = "/sys/kernel/mm/transparent_hugepage"
GZIP_WBITS = 16 + zlib.MAX_WBITS  # a gzip header and trailer around the deflate stream
WRITEBACK_SYSCTLS = (
    "dirty_expire_centisecs",
    "dirty_writeback_centisecs",
    "dirty_ratio",
    "dirty_background_ratio",
)
MEMINFO_KEYS = ("FileHugePages", "FilePmdMapped", "ShmemHugePages", "Dirty", "Writeback")
VMSTAT_KEYS = (
    "nr_file_hugepages",
    "nr_file_pmdmapped",
    "thp_collapse_alloc",
    "thp_collapse_alloc_failed",
    "thp_file_alloc",
    "thp_file_mapped",
)


def _bracketed(value: str | None) -> str | None:
    """``always [madvise] never`` -> ``madvise``; plain values pass through."""
    if value is None:
        return None
    if "[" in value and "]" in value:
        return value[value.index("[") + 1 : value.index("]")]
    return value.strip()


def read_config(root: HostRoot, release: str | None) -> tuple[KernelConfig | None, str | None]:
    """The kernel config from /proc/config.gz, /boot/config-R or /lib/modules/R/config."""
    problems: list[str] = []
    raw = root.read_bytes("/proc/config.gz")
    if raw is not None:
        try:
            # The kernel writes one gzip member; zlib reads it without importing gzip.
            return parse_config(zlib.decompress(raw, GZIP_WBITS).decode("utf-8", "replace"),
                                "proc/config.gz"), None
        except zlib.error as exc:
            problems.append(f"proc/config.gz unreadable: {exc}")
    if release:
        for candidate in (f"/boot/config-{release}", f"/lib/modules/{release}/config"):
            text = root.read_text(candidate)
            if text is not None:
                return parse_config(text, candidate.lstrip("/")), None
    problems.append(
        "no kernel config: /proc/config.gz, /boot/config-<release> and "
        "/lib/modules/<release>/config are all missing"
    )
    return None, "; ".join(problems)


def read_hugepages(root: HostRoot, config: KernelConfig | None = None,
                   machine: str | None = None, snapshot: bool = False) -> HugePages:
    """The kernel's PMD size: its ``hpage_pmd_size``, else from arch and page size.

    The agent runs on the kernel it checks (a pod shares the node's kernel), so the machine and
    the page size are this process's; a snapshot has only its saved files (its machine, and the
    page size its config gives)."""
    if not snapshot:
        machine = machine or os.uname().machine
    return kernel_hugepages(root.read_line(f"{THP_DIR}/hpage_pmd_size"), machine,
                            None if snapshot else mm.PAGE_SIZE, config)


def read_kernel(root: HostRoot, machine: str | None = None, snapshot: bool = False
                ) -> KernelFacts:
    release = root.read_line("/proc/sys/kernel/osrelease")
    proc_version = root.read_line("/proc/version")
    config, config_error = read_config(root, release)
    return KernelFacts(
        release=release,
        version=parse_release(release, proc_version) if release else None,
        proc_version=proc_version,
        config=config,
        config_error=config_error,
        boot_id=root.read_line("/proc/sys/kernel/random/boot_id"),
        cmdline=root.read_line("/proc/cmdline"),
        hugepages=read_hugepages(root, config, machine, snapshot),
    )


def read_thp(root: HostRoot) -> ThpKnobs:
    khugepaged: dict[str, str] = {}
    for name in root.listdir(f"{THP_DIR}/khugepaged"):
        value = root.read_line(f"{THP_DIR}/khugepaged/{name}")
        if value is not None:
            khugepaged[name] = value
    return ThpKnobs(
        enabled=_bracketed(root.read_line(f"{THP_DIR}/enabled")),
        defrag=_bracketed(root.read_line(f"{THP_DIR}/defrag")),
        shmem_enabled=_bracketed(root.read_line(f"{THP_DIR}/shmem_enabled")),
        khugepaged=khugepaged,
    )


def _key_values(text: str | None, keys: tuple[str, ...]) -> dict[str, int]:
    values: dict[str, int] = {}
    for line in (text or "").splitlines():
        parts = line.replace(":", " ").split()
        if len(parts) >= 2 and parts[0] in keys and parts[1].isdigit():
            values[parts[0]] = int(parts[1])
    return values


def read_evidence(root: HostRoot) -> dict[str, int]:
    """File-THP counters (meminfo kB, vmstat pages): exposure hints, not proof (§6.4)."""
    evidence = _key_values(root.read_text("/proc/meminfo"), MEMINFO_KEYS)
    evidence.update(_key_values(root.read_text("/proc/vmstat"), VMSTAT_KEYS))
    return evidence


def read_writeback(root: HostRoot) -> dict[str, int]:
    values: dict[str, int] = {}
    for name in WRITEBACK_SYSCTLS:
        value = root.read_line(f"/proc/sys/vm/{name}")
        if value is not None and value.isdigit():
            values[name] = int(value)
    return values


def read_os_release(root: HostRoot) -> OsRelease | None:
    text = root.read_text("/etc/os-release") or root.read_text("/usr/lib/os-release")
    if text is None:
        return None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip().strip('"').strip("'")
    return OsRelease(
        id=fields.get("ID", ""),
        version_id=fields.get("VERSION_ID", ""),
        pretty_name=fields.get("PRETTY_NAME", ""),
        id_like=fields.get("ID_LIKE", ""),
    )


def read_mounts(root: HostRoot) -> tuple[list[Mount], str | None, str | None]:
    """Host mounts: PID 1's view first (the host's namespace), else our own."""
    for source in ("/proc/1/mountinfo", "/proc/self/mountinfo"):
        text = root.read_text(source)
        if text:
            try:
                return parse_mountinfo(text), source.lstrip("/"), None
            except MountinfoError as exc:
                return [], source.lstrip("/"), str(exc)
    return [], None, "no readable mountinfo (proc/1/mountinfo, proc/self/mountinfo)"


def is_snapshot(root: HostRoot) -> bool:
    """A host root whose ``proc`` is not procfs is a saved copy (a support bundle), not a host.

    A live root is ``/`` or a pod's ``/host`` with the host's ``/proc`` mounted there: both
    are procfs. A snapshot's ``proc/`` is a plain directory of saved files.
    """
    try:
        return fs_name(root.path("/proc")) != PROC_NAME
    except OSError:
        return True


def path_facts(root: HostRoot, host_path: str, mounts: tuple[Mount, ...],
               snapshot: bool = False) -> PathFacts:
    """Which filesystem stores ``host_path``, checked against statfs of the visible path.

    In a snapshot the path is not on this machine: the saved mountinfo alone decides.
    """
    resolved = resolve(host_path, list(mounts))
    if snapshot:
        if resolved is None:
            return PathFacts(host_path, None, None, "the snapshot has no mountinfo entry for "
                             f"{host_path}: save the host's /proc/1/mountinfo with it")
        return PathFacts(host_path, resolved)
    try:
        statfs_type = fs_name(root.path(host_path))
    except OSError as exc:
        return PathFacts(host_path, resolved, None, f"statfs failed: {exc.strerror}")
    if resolved is not None and not same_filesystem(statfs_type, resolved.mount.fstype):
        return PathFacts(
            host_path,
            resolved,
            statfs_type,
            f"{root.path(host_path)} is on {statfs_type} but the host mountinfo puts "
            f"{host_path} on {resolved.mount.fstype} ({resolved.mount.mount_point}): mount the "
            f"host path at {root.path(host_path)} (hostPath) or fix --host-root",
        )
    return PathFacts(host_path, resolved, statfs_type)


def collect(root: HostRoot, snapshot: bool = False) -> NodeFacts:
    """Everything node-wide the model needs; paths are resolved separately."""
    mounts, mount_source, mount_error = read_mounts(root)
    machine = root.read_line("/proc/sys/kernel/arch") if snapshot else os.uname().machine
    return NodeFacts(
        kernel=read_kernel(root, machine, snapshot),
        thp=read_thp(root),
        os_release=read_os_release(root),
        writeback=read_writeback(root),
        evidence=read_evidence(root),
        mounts=tuple(mounts),
        mountinfo_source=mount_source,
        mountinfo_error=mount_error,
        hostname=root.read_line("/proc/sys/kernel/hostname"),
        machine=machine,
        snapshot=snapshot,
    )
