"""The harness's own logic: framing, job scripts, config checks, fix detection, timeouts."""

from __future__ import annotations

import base64
import gzip
import hashlib
import lzma
import subprocess
from pathlib import Path

import pytest

from devtools.vm.guest import Knob, Mount, Run, job_script, parse_console
from devtools.vm.kernels import (
    KernelBuildError,
    copy_module,
    fix_evidence,
    missing_fragment_lines,
    module_load_order,
)
from devtools.vm.matrix import parse_repro
from tests.vm.conftest import GuestRunner


def _frame(name: str, rc: int, out: bytes, err: bytes = b"") -> list[str]:
    """What init.sh's emit() prints (base64 wraps at 76 columns, like busybox)."""
    o = base64.encodebytes(out).decode().split()
    e = base64.encodebytes(err).decode().split()
    md5 = hashlib.md5("".join(o + e).encode()).hexdigest()
    return [f"@@THPVM BEGIN {name} rc={rc} dur=1.50",
            *[f"@@THPVM OUT {x}" for x in o], *[f"@@THPVM ERR {x}" for x in e],
            f"@@THPVM END {name} md5={md5}"]


def test_parse_console_roundtrip_and_noise() -> None:
    """Records survive kernel noise between lines; a corrupted line is detected."""
    out = bytes(range(256)) * 3
    lines = ["[    1.0] boot noise", "@@THPVM BOOTED 6.12.95 1.95",
             *_frame("a", 1, out, b"warn\n"), "random kernel line\r"]
    bad = _frame("b", 0, b"x" * 200)
    bad[2] = bad[2][:20] + "[ 3.1] kernel msg" + bad[2][20:]
    text = "\r\n".join([*lines, *bad, "@@THPVM DONE"])
    records, booted, done, errors = parse_console(text)
    assert booted == 1.95 and done
    a = records["a"]
    assert (a.rc, a.duration_s, a.intact, a.stderr) == (1, 1.5, True, "warn\n")
    assert a.stdout == out.decode("utf-8", "replace")
    assert not records["b"].intact and errors == ["record b: checksum mismatch"]


def test_job_script_quotes_arguments() -> None:
    """Arguments reach the guest shell intact; names must be single words."""
    script = job_script([Mount("ext4"), Knob("/sys/x", "4294967295"),
                         Run("r", ("sh", "-c", "echo 'a b'; echo $HOME"), 5)])
    assert script.splitlines() == [
        "#THPVM-JOB v1", "vm_mount thp-ext4 ext4 /mnt/ext4", "vm_knob /sys/x 4294967295",
        "vm_run r 5 sh -c 'echo '\"'\"'a b'\"'\"'; echo $HOME'"]
    with pytest.raises(ValueError):
        job_script([Run("two words", ("true",))])


def test_missing_fragment_lines() -> None:
    """A fragment line Kconfig dropped is reported, as is an unwanted option."""
    config = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"\"\nCONFIG_D=y\n"
    frag = ["CONFIG_A=y", "CONFIG_B=y", 'CONFIG_C=""', "# CONFIG_D is not set", "CONFIG_E=y"]
    assert missing_fragment_lines(config, frag) == [
        "CONFIG_B=y (got n)", "# CONFIG_D is not set (got y)", "CONFIG_E=y (got absent)"]


UNFIXED = """static int collapse_file(struct mm_struct *mm)
{
\tif (!is_shmem) {
\t\tfilemap_nr_thps_inc(mapping);
\t}
}
"""
FIXED = """static int collapse_file(struct mm_struct *mm)
{
\tif (result == SCAN_SUCCEED && !is_shmem && !mapping_large_folio_support(mapping)) {
\t\tfilemap_nr_thps_inc(mapping);
\t\tif (inode_is_open_for_write(mapping->host) || filemap_write_and_wait(mapping)) {
\t}
}
"""


def test_fix_evidence() -> None:
    """The fix is recognised from collapse_file()'s body, with line evidence."""
    assert fix_evidence(UNFIXED)["present"] is False
    fixed = fix_evidence(FIXED)
    assert fixed["present"] is True and len(fixed["evidence"]) == 3
    assert fix_evidence("int main(void) {}\n")["function_found"] is False


def test_module_load_order() -> None:
    """Dependencies load before the modules that need them, each once."""
    dep = ("kernel/fs/btrfs/btrfs.ko: kernel/lib/libcrc32c.ko kernel/crypto/xor.ko\n"
           "kernel/lib/libcrc32c.ko:\nkernel/crypto/xor.ko:\n"
           "kernel/fs/xfs/xfs.ko: kernel/lib/libcrc32c.ko\n")
    assert module_load_order(dep, ("btrfs", "xfs", "absent")) == [
        "kernel/lib/libcrc32c.ko", "kernel/crypto/xor.ko", "kernel/fs/btrfs/btrfs.ko",
        "kernel/fs/xfs/xfs.ko"]


def test_copy_module_decompresses_what_busybox_cannot_load(tmp_path: Path) -> None:
    body = b"\x7fELF module body" * 100
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "ext4.ko.xz").write_bytes(lzma.compress(body))
    (tmp_path / "src" / "xfs.ko.gz").write_bytes(gzip.compress(body))
    (tmp_path / "src" / "btrfs.ko").write_bytes(body)
    (tmp_path / "src" / "virtio.ko.zst").write_bytes(b"(\xb5/\xfd")
    out = tmp_path / "out" / "kernel" / "fs"
    landed = [copy_module(tmp_path / "src" / name, out / name)
              for name in ("ext4.ko.xz", "xfs.ko.gz", "btrfs.ko")]
    assert [p.name for p in landed] == ["ext4.ko", "xfs.ko", "btrfs.ko"]
    assert all(p.read_bytes() == body for p in landed)
    assert sorted(p.name for p in out.iterdir()) == ["btrfs.ko", "ext4.ko", "xfs.ko"]
    with pytest.raises(KernelBuildError, match="zstd"):
        copy_module(tmp_path / "src" / "virtio.ko.zst", out / "virtio.ko.zst")


def test_parse_repro_lines() -> None:
    """The reproducer's output lines parse the same for repro7 and the agent."""
    out = ("path=/x base_size=1 append_size=2 iters=3\n"
           "REPRODUCED iter=0 bad_bytes=16384 first_bad=0 zero_count=16384 append_off=8\n"
           "first 64 got: 00\nREPRODUCED iter=1 bad_bytes=1 first_bad=0 zero_count=1 "
           "append_off=9\nSUMMARY lost_iterations=2 iters=3 skipped=0\n")
    got = parse_repro(out)
    assert got.outcome == "reproduced" and got.reproduced_lines == 2
    assert got.fields["bad_bytes"] == 16384 and got.fields["summary_lost_iterations"] == 2
    assert parse_repro("COLLAPSE_UNSUPPORTED errno=EINVAL step=2\n").fields == {"step": 2}


@pytest.mark.vm
def test_hard_timeout_kills_qemu(run_guest: GuestRunner) -> None:
    """A guest that overruns is killed: timed_out, no qemu left, partial records kept."""
    kernel = run_guest.kernel("no-rothp")
    result = run_guest(kernel, [Run("before", ("true",), 10), Run("hang", ("sleep", "600"))],
                       timeout_s=25)
    assert result.timed_out and not result.done
    assert any("timed out" in e for e in result.errors)
    assert "hang" not in result.records
    left = subprocess.run(["pgrep", "-f", str(kernel.bzimage)], capture_output=True, text=True)
    assert left.stdout == "", left.stdout
