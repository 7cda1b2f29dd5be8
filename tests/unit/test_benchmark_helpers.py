"""The benchmarks' parsing and arithmetic (they print figures; these keep the figures honest)."""

from __future__ import annotations

import collections
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.measure import measure
from benchmarks.object_cost import object_cost
from benchmarks.operator_scale import (
    OPERATOR_USER,
    audit_counts,
    by_verb,
    choose_faults,
    crash_loop_status,
    difference,
    lists_of,
    peak_kib,
    request_totals,
    running_status,
    terminated_status,
    wait_events_landed,
    writes_of,
)
from benchmarks.vm_cost import cost_steps, in_process_repro_s, summarise

from devtools.vm.guest import Run
from devtools.vm.matrix import Plan

LABELS = 'component="apiserver",group="",scope="x",version="v1"'
METRICS = "\n".join([
    "# HELP apiserver_request_total x",
    f'apiserver_request_total{{code="201",{LABELS},resource="pods",subresource="",verb="POST"}} 7',
    f'apiserver_request_total{{code="200",{LABELS},resource="pods",subresource="status",'
    'verb="PATCH"} 3',
    f'apiserver_request_total{{code="409",{LABELS},resource="pods",subresource="",verb="POST"}} 1',
    'apiserver_request_duration_seconds_bucket{verb="POST",le="0.1"} 99',
])


def test_request_totals_sum_codes_and_keep_subresources() -> None:
    totals = request_totals(METRICS)
    assert totals == {("POST", "pods"): 8.0, ("PATCH", "pods/status"): 3.0}
    grown = difference({**totals, ("POST", "pods"): 10.0}, totals)
    assert grown == {("POST", "pods"): 2}
    assert by_verb({("POST", "pods"): 2, ("POST", "events"): 3, ("PATCH", "nodes"): 1}) == {
        "PATCH": 1, "POST": 5}


def test_audit_counts_each_operator_request_once_within_the_window(tmp_path: Path) -> None:
    def event(stage: str, user: str, verb: str, resource: str, at: str,
              sub: str | None = None) -> str:
        ref = {"resource": resource, **({"subresource": sub} if sub else {})}
        return json.dumps({"stage": stage, "user": {"username": user}, "verb": verb,
                           "objectRef": ref, "requestReceivedTimestamp": at})

    log = tmp_path / "audit.log"
    log.write_text("\n".join([
        event("ResponseStarted", OPERATOR_USER, "watch", "pods", "2026-11-28T10:00:01Z"),
        event("ResponseComplete", OPERATOR_USER, "watch", "pods", "2026-11-28T10:00:01Z"),
        event("ResponseComplete", OPERATOR_USER, "create", "events", "2026-11-28T10:00:02Z"),
        event("ResponseComplete", OPERATOR_USER, "patch", "thpchecks", "2026-11-28T10:00:03Z",
              "status"),
        event("ResponseComplete", "system:kube-scheduler", "create", "pods",
              "2026-11-28T10:00:03Z", "binding"),
        event("ResponseComplete", OPERATOR_USER, "create", "events", "2026-11-28T09:00:00Z"),
    ]) + "\n")
    since = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
    assert audit_counts(log, since) == {("watch", "pods"): 1, ("create", "events"): 1,
                                        ("patch", "thpchecks/status"): 1}


def test_writes_and_lists_are_picked_out_of_the_operators_requests() -> None:
    counts = {("patch", "thpchecks/status"): 2, ("create", "events"): 3, ("delete", "pods"): 1,
              ("list", "pods"): 2, ("list", "nodes"): 3, ("watch", "pods"): 4, ("get", "x"): 9}
    assert writes_of(counts) == 6
    assert lists_of(counts) == {"nodes": 3, "pods": 2}
    assert writes_of({("list", "pods"): 5}) == 0 and lists_of({}) == {}


def test_a_phase_peak_is_the_top_sample_or_the_high_water_mark_it_raised() -> None:
    samples = [(0.0, 100), (0.2, 300), (0.4, 150)]
    # the process's peak was earlier (the high-water mark did not move): the samples say
    assert peak_kib(samples, hwm_before=900, hwm_after=900) == 300
    # the phase raised the high-water mark: its peak fell between two samples
    assert peak_kib(samples, hwm_before=250, hwm_after=420) == 420
    assert peak_kib([], hwm_before=10, hwm_after=10) == 0


def test_terminated_status_writes_only_the_check_container() -> None:
    pod = {"status": {"initContainerStatuses": [
        {"name": "check", "state": {"terminated": {"exitCode": 0, "startedAt": "t0"}}},
        {"name": "other", "state": {"running": {}}}]}}
    patch = terminated_status(pod, '{"verdict":"not-affected"}')
    check, other = patch["status"]["initContainerStatuses"]
    terminated = check["state"]["terminated"]
    assert (terminated["message"], terminated["exitCode"], terminated["startedAt"]) == (
        '{"verdict":"not-affected"}', 0, "t0")
    assert other == {"name": "other", "state": {"running": {}}}


def test_measure_reports_a_command_s_cost_and_leftovers(tmp_path: Path) -> None:
    left = tmp_path / "left"
    run = measure(str(tmp_path), [sys.executable, "-c",
                                  f"open({str(left)!r}, 'w').write('x'); print('hi')"])
    assert run["rc"] == 0 and run["stdout"] == "hi\n"
    assert run["wall_s"] > 0 and run["cpu_s"] > 0 and run["peak_rss_kib"] > 0
    assert run["left_on_disk"] == [str(left)]


def test_vm_cost_interleaves_and_summarises() -> None:
    steps = cost_steps(Plan(), ["ext4"], ["repro7", "check"], 2, profile=False)
    runs = [s.name for s in steps if isinstance(s, Run)]
    assert runs == ["facts", "repro7:ext4:0", "check:ext4:0", "check:ext4:1", "repro7:ext4:1"]
    stdout = json.dumps({"paths": [{"verdict": "affected",
                                    "repro": {"outcome": "reproduced", "duration_s": 0.5}}]})
    assert in_process_repro_s("check", stdout) == 0.5
    runs_data = [{"wall_s": w, "cpu_s": 0.1, "peak_rss_kib": 2048, "device_bytes_written": 10,
                  "left_on_disk": [], "rc": 1, "stdout": stdout} for w in (1.0, 3.0, 2.0)]
    summary = summarise(runs_data, "check")
    assert (summary["wall_s_median"], summary["wall_s_min"], summary["repro_s_median"],
            summary["peak_rss_mib_max"], summary["outcomes"]) == (
        2.0, 1.0, 0.5, 2.0, ["affected/reproduced"])


def test_faults_are_spread_disjoint_and_sized() -> None:
    faults = choose_faults(1000, 2.0, 1.0)
    assert sorted(collections.Counter(faults.values()).items()) == [
        ("crash", 20), ("notready", 10)]
    assert choose_faults(1000, 0.0, 0.0) == {}


def test_the_injected_fault_states_read_as_the_operator_expects() -> None:
    from thpcheck.contract.views import agent_pod_view

    pod = {"metadata": {"name": "p", "namespace": "n", "uid": "u",
                        "creationTimestamp": "2026-12-04T10:00:00Z",
                        "labels": {"thpcheck.io/template": "check"}},
           "spec": {"nodeName": "bench-00001"},
           "status": {"phase": "Running", "initContainerStatuses": [
               {"name": "check", "state": {"terminated": {"exitCode": 0}}}]}}
    crashed = agent_pod_view({**pod, **crash_loop_status(pod)})
    assert crashed.run is None and crashed.trouble is not None
    assert crashed.trouble.reason == "CrashLoopBackOff"
    running = agent_pod_view({**pod, **running_status(pod)})
    assert running.run is None and running.trouble is None and running.started_at


class EventCounts:
    """A fake ``Api`` whose operator-Event listing grows by the given counts, then stays."""

    def __init__(self, counts: list[int]) -> None:
        self.counts = counts
        self.asked: list[str] = []

    def call(self, method: str, path: str, body: object = None, content_type: str = "",
             accept: str = "") -> dict[str, list[object]]:
        self.asked.append(path)
        count = self.counts.pop(0) if len(self.counts) > 1 else self.counts[0]
        return {"items": [{}] * count}


def test_the_writes_are_counted_once_the_operators_events_stop_growing() -> None:
    api = EventCounts([10, 10, 40, 55, 55])
    waited, landed = wait_events_landed(api, timeout=30, quiet=0.2, poll=0.01)  # type: ignore[arg-type]
    assert landed == 55  # not 10: the Events still queued when the status completed
    assert 0 <= waited < 5
    assert all("fieldSelector=source%3Dthpcheck-operator" in p for p in api.asked)


def test_waiting_for_events_gives_up_at_the_timeout() -> None:
    grows = EventCounts(list(range(1000)))
    _, landed = wait_events_landed(grows, timeout=0.1, quiet=1.0, poll=0.01)  # type: ignore[arg-type]
    assert 0 < landed < 1000


def test_object_cost_tells_a_body_from_the_view_kept_of_it() -> None:
    """A body whose view keeps one short field: parsed, it costs several times its JSON; the
    view, a small fraction of either (what the lean watches save per object)."""
    bodies = [{"metadata": {"name": f"n{i}", "managedFields": [{"f:x": {}} for _ in range(50)]},
               "status": {"images": [{"names": [f"image-{i}-{j}" * 4]} for j in range(50)]}}
              for i in range(200)]
    cost = object_cost(bodies, lambda body: body["metadata"]["name"])
    assert cost["objects"] == 200
    assert cost["parsed_kib"] > cost["json_kib"] > 10 * cost["view_kib"] > 0
    assert object_cost([], lambda body: body) == {}
