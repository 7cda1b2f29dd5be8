"""Skip a test tier with a reason, or fail it when CI says the tier is required.

CI sets ``THPCHECK_REQUIRE_<TIER>=1`` so a missing prerequisite is a failure, never a silent
skip; a developer without root or qemu gets a skip that says what is missing.
"""

from __future__ import annotations

import os

import pytest

from devtools.host.loopfs import loop_devices_missing


def required(tier: str) -> bool:
    return os.environ.get(f"THPCHECK_REQUIRE_{tier.upper()}") == "1"


def skip_or_fail(tier: str, reason: str) -> None:
    """Fail under CI's requirement for this tier, otherwise skip; always says why."""
    if required(tier):
        pytest.fail(f"{tier} tier required (THPCHECK_REQUIRE_{tier.upper()}=1) but {reason}",
                    pytrace=False)
    pytest.skip(reason)


def require_loop_devices() -> None:
    """Skip (or fail under CI) when loop devices cannot be used here, saying which part lacks."""
    reason = loop_devices_missing()
    if reason is not None:
        skip_or_fail("host", reason)
