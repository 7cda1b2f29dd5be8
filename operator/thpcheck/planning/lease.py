"""Leader election on a ``coordination.k8s.io/v1`` Lease: which write, if any, to make now.

The semantics of client-go's leader election, so operators of other stacks read the Lease
the same way: the holder renews ``renewTime`` every few seconds; another candidate takes the
Lease over only once its record has not changed for ``leaseDurationSeconds`` *as that
candidate observed it* (its own monotonic clock, never a comparison of clocks across
machines). Every write carries the resourceVersion it was planned from, so of two candidates
racing for an expired Lease exactly one wins (the other gets 409 Conflict). A holder that
stops cleanly empties ``holderIdentity``, which any candidate may take at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

API_VERSION = "coordination.k8s.io/v1"


class Decision(StrEnum):
    CREATE = "create"  # no Lease yet: create it, holding it
    ACQUIRE = "acquire"  # free or expired: take it over (optimistic concurrency)
    RENEW = "renew"  # ours: renew it
    WAIT = "wait"  # someone else holds it


@dataclass(frozen=True)
class LeaseRecord:
    """What matters of a Lease (``spec``, and the version to write against)."""

    holder: str
    duration_seconds: int
    renew_time: str
    acquire_time: str
    transitions: int
    resource_version: str

    @property
    def token(self) -> tuple[str, str, str]:
        """Changes whenever the holder writes: what a candidate watches for staleness."""
        return self.holder, self.renew_time, self.resource_version


@dataclass(frozen=True)
class LeaseStep:
    decision: Decision
    body: dict[str, Any] | None = None  # the Lease to POST (CREATE) or PUT (ACQUIRE, RENEW)


def lease_record(body: Mapping[str, Any]) -> LeaseRecord:
    spec = body.get("spec") or {}
    meta = body.get("metadata") or {}
    return LeaseRecord(holder=str(spec.get("holderIdentity") or ""),
                       duration_seconds=int(spec.get("leaseDurationSeconds") or 0),
                       renew_time=str(spec.get("renewTime") or ""),
                       acquire_time=str(spec.get("acquireTime") or ""),
                       transitions=int(spec.get("leaseTransitions") or 0),
                       resource_version=str(meta.get("resourceVersion") or ""))


def micro_time(now: datetime) -> str:
    """A metav1.MicroTime."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _lease(name: str, namespace: str, spec: Mapping[str, Any],
           resource_version: str = "") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if resource_version:
        meta["resourceVersion"] = resource_version
    return {"apiVersion": API_VERSION, "kind": "Lease", "metadata": meta, "spec": dict(spec)}


def plan_lease(record: LeaseRecord | None, me: str, *, name: str, namespace: str,
               now: datetime, duration_seconds: int, unchanged_for: float) -> LeaseStep:
    """The write that makes (or keeps) ``me`` the holder, or WAIT.

    ``unchanged_for``: seconds since this process first saw the record's current
    ``token`` (0 when it just changed).
    """
    stamp = micro_time(now)
    if record is None:
        return LeaseStep(Decision.CREATE, _lease(name, namespace, {
            "holderIdentity": me, "leaseDurationSeconds": duration_seconds,
            "acquireTime": stamp, "renewTime": stamp, "leaseTransitions": 0}))
    if record.holder == me:
        return LeaseStep(Decision.RENEW, _lease(name, namespace, {
            "holderIdentity": me, "leaseDurationSeconds": duration_seconds,
            "acquireTime": record.acquire_time or stamp, "renewTime": stamp,
            "leaseTransitions": record.transitions}, record.resource_version))
    if record.holder and unchanged_for < max(record.duration_seconds, 1):
        return LeaseStep(Decision.WAIT)
    return LeaseStep(Decision.ACQUIRE, _lease(name, namespace, {
        "holderIdentity": me, "leaseDurationSeconds": duration_seconds,
        "acquireTime": stamp, "renewTime": stamp,
        "leaseTransitions": record.transitions + 1}, record.resource_version))


def release(record: LeaseRecord, me: str, *, name: str, namespace: str,
            now: datetime) -> dict[str, Any] | None:
    """The Lease with no holder, for a clean stop (None unless ``me`` holds it)."""
    if record.holder != me:
        return None
    return _lease(name, namespace, {
        "holderIdentity": "", "leaseDurationSeconds": record.duration_seconds,
        "acquireTime": record.acquire_time, "renewTime": micro_time(now),
        "leaseTransitions": record.transitions}, record.resource_version)
