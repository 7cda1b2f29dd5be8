"""Leader election on a Lease (pure): client-go's reading of a Lease, decided per round."""

from __future__ import annotations

import urllib.error
import urllib.request
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import cast

import pytest

from devtools.cluster.harness import free_ports
from thpcheck.controller.leader import Leadership, healthy_while_waiting
from thpcheck.controller.settings import SettingsError, from_env
from thpcheck.planning.lease import Decision, lease_record, plan_lease, release

NOW = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)
WHERE = {"name": "thpcheck-operator", "namespace": "thp-checker"}


def stored(holder: str, version: str = "7", renew: str = "2026-12-04T09:59:58.000000Z",
           transitions: int = 2) -> dict:
    return {"metadata": {"name": "thpcheck-operator", "resourceVersion": version},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                     "renewTime": renew, "acquireTime": "2026-12-04T09:00:00.000000Z",
                     "leaseTransitions": transitions}}


def plan(body: dict | None, me: str, unchanged_for: float = 0.0):  # type: ignore[no-untyped-def]
    record = lease_record(body) if body is not None else None
    return plan_lease(record, me, now=NOW, duration_seconds=15, unchanged_for=unchanged_for,
                      **WHERE)


def test_the_first_replica_creates_the_lease_holding_it() -> None:
    step = plan(None, "a")
    assert step.decision is Decision.CREATE and step.body is not None
    spec = step.body["spec"]
    assert (spec["holderIdentity"], spec["leaseDurationSeconds"], spec["leaseTransitions"]) == (
        "a", 15, 0)
    assert spec["renewTime"] == "2026-12-04T10:00:00.000000Z"


def test_the_holder_renews_against_the_version_it_read() -> None:
    step = plan(stored("a"), "a")
    assert step.decision is Decision.RENEW and step.body is not None
    assert step.body["metadata"]["resourceVersion"] == "7"
    assert step.body["spec"]["acquireTime"] == "2026-12-04T09:00:00.000000Z"
    assert step.body["spec"]["leaseTransitions"] == 2


@pytest.mark.parametrize("seconds", [0.0, 5.0, 14.9])
def test_a_standby_waits_while_the_holders_record_keeps_changing(seconds: float) -> None:
    assert plan(stored("a"), "b", unchanged_for=seconds).decision is Decision.WAIT


def test_a_standby_takes_over_once_the_record_stood_still_for_the_duration() -> None:
    # Its own observation counts, not the renewTime (the clocks of two machines differ).
    step = plan(stored("a", renew="2030-01-01T00:00:00.000000Z"), "b", unchanged_for=15.0)
    assert step.decision is Decision.ACQUIRE and step.body is not None
    assert step.body["metadata"]["resourceVersion"] == "7"  # one of two racers wins
    assert (step.body["spec"]["holderIdentity"], step.body["spec"]["leaseTransitions"]) == (
        "b", 3)


def test_a_released_lease_is_taken_at_once() -> None:
    body = release(lease_record(stored("a")), "a", now=NOW, **WHERE)
    assert body is not None and body["spec"]["holderIdentity"] == ""
    body["metadata"]["resourceVersion"] = "8"
    assert plan(body, "b").decision is Decision.ACQUIRE


def test_only_the_holder_releases() -> None:
    assert release(lease_record(stored("a")), "b", now=NOW, **WHERE) is None


def test_leader_election_settings() -> None:
    settings = from_env({"THPCHECK_NAMESPACE": "x"})
    assert (settings.leader_election, settings.lease_name, settings.lease_duration) == (
        False, "thpcheck-operator", 15.0)
    chosen = from_env({"THPCHECK_NAMESPACE": "x", "THPCHECK_LEADER_ELECTION": "true",
                       "THPCHECK_LEASE_NAME": "rel-operator", "THPCHECK_LEASE_DURATION": "20"})
    assert (chosen.leader_election, chosen.lease_name, chosen.lease_duration) == (
        True, "rel-operator", 20.0)
    with pytest.raises(SettingsError, match="THPCHECK_LEADER_ELECTION='yes' must be true or"):
        from_env({"THPCHECK_LEADER_ELECTION": "yes"})
    with pytest.raises(SettingsError, match="THPCHECK_LEASE_DURATION"):
        from_env({"THPCHECK_LEASE_DURATION": "1"})


def _status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_waiting_replica_is_ready_only_as_a_standby_behind_a_leader() -> None:
    """While it waits for the Lease a replica is live; it is ready only while another one
    holds the Lease (a rolling update needs that), not while it is about to lead itself:
    then it is ready once it has indexed the cluster (controller/health.py)."""
    (port,) = free_ports(1)
    lease = SimpleNamespace(holder="", me="me")
    with healthy_while_waiting(port, cast(Leadership, lease)):
        assert _status(port, "/healthz") == 200
        assert _status(port, "/readyz") == 503  # nobody holds it: this one takes it next
        lease.holder = "other"
        assert _status(port, "/readyz") == 200  # a standby behind a live leader
        lease.holder = "me"
        assert _status(port, "/readyz") == 503  # leading: not ready before indexing
        assert _status(port, "/elsewhere") == 404
