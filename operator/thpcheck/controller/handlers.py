"""kopf handlers: small functions that wake the right ThpCheck's daemon, run it, or clean up.

Watch events only *poke*; each ThpCheck's daemon does the work, at most once per debounce
interval and at least once per status interval, so a burst of 5,000 pod updates becomes a
handful of reconciles, and nothing is written from an event handler.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any

import kopf
import structlog

from thpcheck.contract import names
from thpcheck.contract.views import AgentPodView, NodeView, ResultView, annotated_check, node_view
from thpcheck.controller import events
from thpcheck.controller.api import ApiError
from thpcheck.controller.context import OperatorContext, context_of
from thpcheck.controller.indexes import KOPF_INDEXES, Indexes
from thpcheck.controller.reconciler import (
    CheckReconciler,
    apply_node_change,
    bounded,
    manage_mitigation_daemonset,
)
from thpcheck.controller.watched import handled_listings
from thpcheck.planning.cleanup import CLEANUP_BLOCKED, backoff, blocked_conditions, blocked_message
from thpcheck.planning.remediation import NodeChange, event_reason, plan_cleanup, plan_orphans

log = structlog.get_logger("thpcheck.operator")
# How often, until kopf's first event, the API is asked whether kopf has anything to handle.
NOTHING_TO_HANDLE_RECHECK = 2.0
# How long shutdown waits for submitted Events to be posted.
EVENT_FLUSH_TIMEOUT = 5.0


# -- wake-ups ------------------------------------------------------------------------------


async def poke_for_check(name: str, memo: kopf.Memo, **kwargs: Any) -> None:
    """A spec change (or any change) of a ThpCheck: re-plan it."""
    ctx = context_of(memo)
    ctx.triggers.poke(name)
    kopf_indexed(ctx, Indexes.of(kwargs, ctx.watches))


async def poke_everyone(memo: kopf.Memo, **kwargs: Any) -> None:
    """The shared DaemonSet (like nodes and mitigation pods) matters to every check.

    With no ThpCheck left there is no daemon to poke, yet the shared mitigation DaemonSet may
    still exist for a node an admin labelled, and the restore DaemonSet until it confirmed the
    restore everywhere; once neither is needed, they are deleted here.
    """
    ctx = context_of(memo)
    await _everyone(ctx, Indexes.of(kwargs, ctx.watches))


async def _everyone(ctx: OperatorContext, idx: Indexes) -> None:
    ctx.triggers.poke_all()
    kopf_indexed(ctx, idx)
    await tend_without_checks(ctx, idx)


async def tend_without_checks(ctx: OperatorContext, idx: Indexes) -> None:
    """With no ThpCheck (so no daemon), keep the shared DaemonSets decided: the mitigation
    one goes with the last label, the restore one once it has confirmed the restore."""
    if not idx.check_summaries() and any(idx.daemonset(name) is not None for name in (
            names.MITIGATION_DAEMONSET, names.RESTORE_DAEMONSET)):
        await manage_mitigation_daemonset(ctx, idx)


# -- the lean watches ----------------------------------------------------------------------


async def start_watches(memo: kopf.Memo, **kwargs: Any) -> None:
    """Start-up: list every node, agent and mitigation pod and result, then keep watching
    them (``controller/leanwatch.py``). kopf starts its watches only after this returns, so
    every handler sees them all. The orphan sweep starts here (it needs the nodes, and
    confirms with the API what the indexes propose), and a task marks the operator indexed
    if kopf has nothing to handle."""
    ctx = context_of(memo)
    ctx.kopf_indexes = {key: kwargs[key] for key in KOPF_INDEXES}  # live for the process
    poster = events.EventPoster(ctx.kube.create_event,
                                workers=events.workers_for(ctx.settings.api_workers),
                                dropped=ctx.metrics.events_dropped.inc)
    ctx.metrics.events_pending.set_function(lambda: poster.pending)
    events.install(poster)

    def everyone(_: object) -> None:  # a node or mitigation pod: every check may care
        ctx.triggers.poke_all()
        if ctx.indexed is not None:  # else kopf's indexes may not be filled yet
            _background(ctx, tend_without_checks(ctx, ctx.indexes()))

    def its_check(view: AgentPodView | ResultView | None) -> None:
        if view is not None and view.check:
            ctx.triggers.poke(view.check)
        else:  # a listing changed the set
            ctx.triggers.poke_all()

    watches = ctx.watches
    await asyncio.gather(watches.nodes.start(on_change=everyone),
                         watches.agent_pods.start(on_change=its_check),
                         watches.mitigation_pods.start(on_change=everyone),
                         watches.results.start(on_change=its_check))
    start_sweeper(ctx)
    _background(ctx, indexed_when_nothing_to_handle(ctx))


def _background(ctx: OperatorContext, work: Coroutine[Any, Any, None]) -> None:
    """Run ``work`` as a task the context keeps until it is done (so it is not collected)."""
    task = asyncio.create_task(work)
    ctx.background.add(task)
    task.add_done_callback(ctx.background.discard)


async def stop_watches(memo: kopf.Memo, **_: Any) -> None:
    context_of(memo).watches.stop()


async def flush_events(**_: Any) -> None:
    """Shutdown: let the Events already submitted land (a few seconds at most)."""
    poster = events.installed()
    if poster is None:
        return
    if not await poster.flush(EVENT_FLUSH_TIMEOUT):
        log.warning("events not posted at shutdown", pending=poster.pending)
    await poster.close()


async def poke_for_daemonset(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    check = annotated_check(body)
    if check:
        ctx = context_of(memo)
        kopf_indexed(ctx, Indexes.of(kwargs, ctx.watches))
        ctx.triggers.poke(check)
    else:
        await poke_everyone(memo, **kwargs)


# -- the orphan sweep ----------------------------------------------------------------------


def kopf_indexed(ctx: OperatorContext, idx: Indexes, *, how: str = "first watch event") -> None:
    """kopf's indexes are filled: the operator is ready (``/readyz``, with what it indexed),
    and index-dependent work may start. Known at kopf's first event (kopf runs no event
    handler before every index is filled), or ``indexed_when_nothing_to_handle``."""
    if ctx.indexed is None:
        ctx.indexed = idx.counts()
        log.info("start-up indexing done: ready", how=how, **ctx.indexed)


async def indexed_when_nothing_to_handle(ctx: OperatorContext) -> None:
    """A cluster holding nothing kopf handles (no ThpCheck or DaemonSet of ours: nodes, pods
    and results come through the operator's own watches) gives kopf no event to
    run, so the first event never says its indexes are filled. Ask the API instead, until
    either happens: when no listing kopf fires on holds an item, kopf's indexes are as full as
    they get."""
    while ctx.indexed is None:
        try:
            if not await _anything_to_handle(ctx):
                kopf_indexed(ctx, ctx.indexes(), how="nothing to handle")
                return
        except ApiError as exc:
            log.warning("cannot tell whether kopf has anything to index", error=str(exc))
        await asyncio.sleep(NOTHING_TO_HANDLE_RECHECK)


async def _anything_to_handle(ctx: OperatorContext) -> bool:
    """Whether any listing kopf fires on holds an item (stops at the first that does)."""
    for path, query in handled_listings(ctx.settings.namespace):
        if (await ctx.kube.request("GET", path, query=query)).get("items"):
            return True
    return False


def start_sweeper(ctx: OperatorContext) -> None:
    """Start the orphan sweep once the nodes are listed."""
    if ctx.sweeper is None:
        ctx.sweeper = asyncio.get_running_loop().create_task(sweep_forever(ctx),
                                                             name="orphan sweep")


async def stop_sweeper(memo: kopf.Memo, **_: Any) -> None:
    task = context_of(memo).sweeper
    if task is not None:
        task.cancel()


async def sweep_forever(ctx: OperatorContext) -> None:
    """Undo orphaned marks, then again every status interval (the resync); with no ThpCheck
    left, also decide the shared DaemonSets (no watch event may come to do it) once kopf's
    indexes are filled."""
    while True:
        try:
            await sweep_orphans(ctx)
            if ctx.indexed is not None:
                await tend_without_checks(ctx, ctx.indexes())
        except asyncio.CancelledError:
            raise
        except Exception:  # the next sweep tries again
            log.exception("orphan sweep failed")
        await asyncio.sleep(ctx.settings.status_interval)


async def sweep_orphans(ctx: OperatorContext) -> None:
    """Node marks and results of ThpChecks that no longer exist (their finalizer removed by
    hand, or deleted while the operator was down) are undone, with an Event on each node.

    kopf's index proposes which checks are gone; the API confirms (one list of ThpChecks,
    made after the nodes and results were read), so the sweep is right even while the index
    is still filling: a mark or result read before the list was written by a check that
    existed before it, so that check is in the list unless it is gone.
    """
    idx = ctx.indexes()
    nodes = {n.name: n for n in ctx.recent.overlay_nodes(idx.all_nodes())}
    live = {c.name for c in idx.check_summaries()}
    results = {r.check for key in set(idx.results) - {""} for r in idx.results_of(key)
               if not r.mismatch}
    if not plan_orphans(nodes.values(), live) and results <= live:
        return
    live |= await ctx.kube.check_names()
    changes = plan_orphans(nodes.values(), live)
    if changes:
        failures = await _undo(ctx, changes, nodes)
        log.info("orphaned marks undone", nodes=len(changes) - len(failures),
                 failed=sorted(failures))
        unlabelled = {c.node for c in changes
                      if names.MITIGATE_LABEL in c.labels and c.node not in failures}
        if ctx.indexed is not None:  # it reads the DaemonSets' index
            await manage_mitigation_daemonset(ctx, ctx.indexes(), unlabelled)
    # Results of gone checks that the operator wrote (name and labels as it writes them: the
    # deletion by label removes them); others are not its to delete.
    gone = results - live
    for check in sorted(gone):
        try:
            await ctx.kube.delete_results(check)
        except ApiError as exc:
            log.warning("orphaned results not deleted", check=check, error=str(exc))
        else:
            log.info("orphaned results deleted", check=check)


# -- the per-check daemon ------------------------------------------------------------------


async def run_check(name: str, body: kopf.Body, memo: kopf.Memo,
                    stopped: kopf.DaemonStopped, **kwargs: Any) -> None:
    """Reconcile the check whenever poked (debounced) and every status interval."""
    ctx = context_of(memo)
    settings = ctx.settings
    flag = ctx.triggers.flag(name)
    bound = log.bind(check=name)
    bound.info("check daemon started")
    while not stopped:
        flag.clear()
        started = time.monotonic()
        try:
            async with ctx.lock(name):
                if not body.get("metadata", {}).get("deletionTimestamp"):
                    await CheckReconciler(ctx, body, Indexes.of(kwargs, ctx.watches),
                                          datetime.now(UTC)).run()
        except asyncio.CancelledError:
            raise
        except Exception:  # one bad reconcile must not end the daemon
            bound.exception("reconcile failed")
            ctx.metrics.reconcile_errors.labels(check=name).inc()
        finally:
            ctx.metrics.reconcile_seconds.observe(time.monotonic() - started)
        await _wait_for_poke(flag, stopped, within=settings.status_interval)
        rest = settings.debounce - (time.monotonic() - started)
        if rest > 0 and not stopped:
            await stopped.wait(rest)
    bound.info("check daemon stopped", reason=str(stopped.reason))


async def _wait_for_poke(flag: asyncio.Event, stopped: kopf.DaemonStopped, *,
                         within: float) -> None:
    """Return when poked, when stopping, or after ``within`` seconds (the resync)."""
    poke = asyncio.ensure_future(flag.wait())
    stop = asyncio.ensure_future(stopped.wait())
    try:
        await asyncio.wait({poke, stop}, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        poke.cancel()
        stop.cancel()


# -- deletion ------------------------------------------------------------------------------


async def clean_up_check(name: str, body: kopf.Body, memo: kopf.Memo, retry: int = 0,
                         **kwargs: Any) -> None:
    """Undo every label, annotation, cordon and mitigation label the check made; delete its
    DaemonSet and results. The finalizer stays until every node is clean: while a node
    refuses, a Warning Event and the CleanupBlocked condition name it and the API error, and
    the next attempt follows a backoff (planning.cleanup). There is no last attempt."""
    ctx = context_of(memo)
    idx = Indexes.of(kwargs, ctx.watches)
    async with ctx.lock(name):
        nodes = {n.name: n for n in ctx.recent.overlay_nodes(idx.all_nodes())}
        changes = plan_cleanup(name, nodes.values())
        failures = await _undo(ctx, changes, nodes)
        # What our writes left (a refused write, or a mark the watch shows only now).
        for left in plan_cleanup(name, ctx.recent.overlay_nodes(idx.all_nodes())):
            failures.setdefault(left.node, "its marks are still present")
        if failures:
            await _report_blocked(ctx, name, body, failures)
            raise kopf.TemporaryError(
                blocked_message(failures),
                delay=backoff(retry, ctx.settings.cleanup_backoff_max))
        try:  # the garbage collector removes both too (ownerReferences): not worth a wait
            await ctx.kube.delete_daemonset(ctx.settings.namespace,
                                            names.agent_daemonset_name(name))
            await ctx.kube.delete_results(name)
        except ApiError as exc:
            log.warning("agent daemonset or results not deleted; the garbage collector will",
                        check=name, error=str(exc))
        unlabelled = {c.node for c in changes if names.MITIGATE_LABEL in c.labels}
        await manage_mitigation_daemonset(ctx, _without(idx, name), unlabelled)
        events.on_check(body, reason="CleanedUp",
                        message=f"undid changes on {len(changes)} nodes")
        log.info("check deleted; changes undone", check=name, nodes=len(changes))
        ctx.forget(name)


async def _report_blocked(ctx: OperatorContext, name: str, body: kopf.Body,
                          failures: dict[str, str]) -> None:
    """A Warning Event and the CleanupBlocked condition naming the nodes and errors."""
    message = blocked_message(failures)
    log.warning("clean-up blocked; retrying", check=name, nodes=sorted(failures))
    events.on_check(body, reason=CLEANUP_BLOCKED, warning=True, message=message)
    status = body.get("status") or {}
    conditions = blocked_conditions(list(status.get("conditions") or []), failures,
                                    datetime.now(UTC),
                                    int(body.get("metadata", {}).get("generation") or 0))
    try:
        await ctx.kube.patch_check_status(name, {"status": {"conditions": conditions}})
    except ApiError as exc:
        log.warning("clean-up condition not written", check=name, error=str(exc))


async def _undo(ctx: OperatorContext, changes: list[NodeChange],
                nodes: dict[str, NodeView]) -> dict[str, str]:
    """Apply the undo changes; returns the nodes that refused, with the API error."""
    async def undo(change: NodeChange) -> str:
        try:
            written = await apply_node_change(ctx, change)
        except ApiError as exc:
            log.warning("node not restored", node=change.node, error=str(exc))
            return str(exc)
        ctx.recent.wrote_node(node_view(written), nodes[change.node].resource_version)
        events.on_node(nodes[change.node], reason=event_reason(change.actions, applied=True),
                       message="; ".join(f"{a.action.value.lower()}: {a.reason}"
                                         for a in change.actions))
        return ""

    done = await bounded(ctx.settings.api_workers,
                         [undo(change) for change in changes])
    return {c.node: error for c, error in zip(changes, done, strict=True) if error}


def _without(idx: Indexes, check: str) -> Indexes:
    """The indexes as if ``check`` were already gone (for the shared DaemonSet decision)."""
    others = {key: store for key, store in idx.checks.items() if key != check}
    return Indexes(idx.nodes, idx.agent_pods, idx.mitigation_pods, idx.results,
                   idx.daemonsets, others)

