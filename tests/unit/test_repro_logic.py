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


def test_pattern_is_the_random_module_s_bytes_without_zeros() -> None:
    """pattern() uses the C generator directly; the bytes are random.Random's, as before."""
    import random

    from thpcheck.host.repro import _NO_ZERO

    for seed, size in ((7, 1 << 20), (0x7C0FFEE + 1, 16384), (3, 1)):
        assert pattern(seed, size) == random.Random(seed).randbytes(size).translate(_NO_ZERO)


def test_log_levels_are_the_logging_module_s() -> None:
    import logging

    from thpcheck import logs

    assert {name: getattr(logging, name.upper()) for name in logs.LEVELS} == logs._NUMERIC


def test_appends_differ_every_iteration_and_are_never_zero() -> None:
    from thpcheck.host.repro import APPEND_SHIFTS, AppendData

    appends = AppendData(0x7C0FFEE + 1, 16384)
    data = [appends.data(i) for i in range(64)]
    assert all(len(d) == 16384 and d.count(0) == 0 for d in data)
    assert len(set(data)) == len(data)
    assert appends.data(APPEND_SHIFTS + 3) == data[3]  # the cycle, at other file offsets
    assert AppendData(0x7C0FFEE + 1, 16384).data(5) == data[5]  # deterministic
