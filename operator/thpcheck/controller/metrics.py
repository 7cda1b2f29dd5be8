"""Prometheus metrics on ``/metrics``: what the fleet looks like and what the operator costs.

A private registry (not the process-global one) keeps the metrics testable and the
exposition free of duplicates when the operator is started twice in one process (tests).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from thpcheck.model.verdict import Verdict
from thpcheck.planning.results import ResultWrite
from thpcheck.planning.runs import Outcome

RUN_OUTCOMES = tuple(o.value for o in Outcome)


class Metrics:
    """The operator's metrics (names as in docs/operator-design.md)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.nodes = Gauge("thpcheck_nodes", "Selected nodes by verdict of their current result "
                           "(verdict=unchecked: no result yet).", ["check", "verdict"],
                           registry=r)
        self.mitigated = Gauge("thpcheck_nodes_mitigated",
                               "Selected nodes with khugepaged stopped (verified).", ["check"],
                               registry=r)
        self.cordoned = Gauge("thpcheck_nodes_cordoned", "Nodes cordoned by the check.",
                              ["check"], registry=r)
        self.results_written = Counter("thpcheck_results_written_total",
                                       "ThpNodeResults created or rewritten.", ["check"],
                                       registry=r)
        self.check_duration = Histogram(
            "thpcheck_check_duration_seconds",
            "Reproducer time per node (sum over its paths), from written results.",
            buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800), registry=r)
        self.api_errors = Counter("thpcheck_api_errors_total", "Failed Kubernetes API calls.",
                                  ["verb"], registry=r)
        self.api_writes = Counter("thpcheck_api_writes_total",
                                  "Kubernetes API writes by verb and resource.",
                                  ["verb", "resource"], registry=r)
        self.oldest_result_age = Gauge("thpcheck_oldest_result_age_seconds",
                                       "Age of the oldest current result of the check.",
                                       ["check"], registry=r)
        self.results_failed = Gauge("thpcheck_results_failed",
                                    "Selected nodes whose check could not run (error).",
                                    ["check"], registry=r)
        self.mitigation_unverified = Gauge(
            "thpcheck_mitigation_unverified",
            "Nodes labelled for mitigation whose mitigation pod is not Ready.", ["check"],
            registry=r)
        self.affected_unmitigated = Gauge(
            "thpcheck_affected_nodes_unmitigated",
            "Selected nodes whose current verdict is affected and that are not mitigated.",
            ["check"], registry=r)
        self.disagreements = Gauge(
            "thpcheck_prediction_disagreements",
            "Selected nodes whose agent result contradicts the preflight prediction (the "
            "model or the distro table is wrong for them).", ["check"], registry=r)
        self.schedule_interval = Gauge(
            "thpcheck_schedule_interval_seconds",
            "spec.schedule.interval of a full-mode check (absent without an interval): "
            "results should never be much older.", ["check"], registry=r)
        self.reconcile_errors = Counter(
            "thpcheck_reconcile_errors_total",
            "Reconciles of a ThpCheck that failed with an unexpected error.", ["check"],
            registry=r)
        self.runs = Counter(
            "thpcheck_runs_total",
            "Agent runs by how they ended: completed (the agent's result), crashed (OOM-killed, "
            "crash-looping or unable to start), timed_out (past spec.runDeadline), "
            "unschedulable (never scheduled until the deadline).", ["check", "outcome"],
            registry=r)
        self.leader = Gauge(
            "thpcheck_leader", "1 while this replica holds the operator's Lease and acts (always "
            "1 without leader election), 0 while it stands by.", registry=r)
        self.events_pending = Gauge(
            "thpcheck_events_pending", "Kubernetes Events submitted and not yet posted.",
            registry=r)
        self.events_dropped = Counter(
            "thpcheck_events_dropped_total", "Kubernetes Events dropped because the backlog "
            "was full (the API refused or stalled them).", registry=r)
        self.reconcile_seconds = Histogram(
            "thpcheck_reconcile_duration_seconds", "Time of one reconcile of a ThpCheck.",
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60), registry=r)

    def serve(self, port: int) -> None:
        """Serve ``/metrics`` on ``port`` (a daemon thread)."""
        start_http_server(port, registry=self.registry)

    def record_check(self, check: str, by_verdict: Mapping[str, int], *, unchecked: int,
                     mitigated: int, cordoned: int, unverified: int,
                     oldest_age: float | None, affected_unmitigated: int = 0,
                     disagreements: int = 0, interval: float | None = None) -> None:
        for verdict in Verdict:
            self.nodes.labels(check=check, verdict=verdict.value).set(
                by_verdict.get(verdict.value, 0))
        self.nodes.labels(check=check, verdict="unchecked").set(unchecked)
        self.mitigated.labels(check=check).set(mitigated)
        self.cordoned.labels(check=check).set(cordoned)
        self.results_failed.labels(check=check).set(by_verdict.get(Verdict.ERROR.value, 0))
        self.mitigation_unverified.labels(check=check).set(unverified)
        if oldest_age is not None:
            self.oldest_result_age.labels(check=check).set(oldest_age)
        self.affected_unmitigated.labels(check=check).set(affected_unmitigated)
        self.disagreements.labels(check=check).set(disagreements)
        if interval:
            self.schedule_interval.labels(check=check).set(interval)
        else:
            with contextlib.suppress(KeyError):
                self.schedule_interval.remove(check)

    def wrote_result(self, check: str, write: ResultWrite) -> None:
        """A result written: counted, and a new run's duration and outcome observed."""
        self.results_written.labels(check=check).inc()
        if write.duration_seconds is not None and write.new_run:
            self.check_duration.observe(write.duration_seconds)
        if write.outcome and write.new_run:
            self.runs.labels(check=check, outcome=write.outcome).inc()

    def forget_check(self, check: str) -> None:
        """Drop a deleted check's series, so dashboards do not show ghosts."""
        for metric in (self.mitigated, self.cordoned, self.results_failed,
                       self.mitigation_unverified, self.oldest_result_age,
                       self.results_written, self.affected_unmitigated, self.disagreements,
                       self.schedule_interval, self.reconcile_errors):
            with contextlib.suppress(KeyError):
                metric.remove(check)
        for verdict in [*(v.value for v in Verdict), "unchecked"]:
            with contextlib.suppress(KeyError):
                self.nodes.remove(check, verdict)
        for outcome in RUN_OUTCOMES:
            with contextlib.suppress(KeyError):
                self.runs.remove(check, outcome)
