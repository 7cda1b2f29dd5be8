"""The reproducer's data pattern and comparison (the syscalls are tested on real kernels)."""

from __future__ import annotations

from thpcheck.host.repro import _compare, pattern


def test_pattern_is_deterministic_and_never_zero() -> None:
    data = pattern(7, 1 << 20)
    assert data == pattern(7, 1 << 20) and data != pattern(8, 1 << 20)
    assert data.count(0) == 0


def test_compare_counts_lost_bytes() -> None:
    want = pattern(1, 16384)
    assert _compare(want, want, 0, 100) is None
    got = want[:4096] + bytes(12288)
    loss = _compare(got, want, 3, 100)
    assert loss is not None
    assert (loss.iteration, loss.bad_bytes, loss.first_bad, loss.zero_count, loss.append_off) == (
        3, 12288, 4096, 12288, 100)
    assert loss.want_head == want[:64] and loss.got_head == got[:64]


def test_short_read_counts_as_zeros() -> None:
    want = pattern(2, 8192)
    loss = _compare(want[:1000], want, 0, 0)
    assert loss is not None and loss.bad_bytes == 8192 - 1000 and loss.first_bad == 1000
