"""``thpcheck check``: facts, prediction and reproduction per path, combined into verdicts."""

from __future__ import annotations

import os
import posixpath
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace

from thpcheck.host import facts as host_facts
from thpcheck.host import repro as reproducer
from thpcheck.host.discovery import scratch_roots
from thpcheck.host.hostroot import HostRoot
from thpcheck.host.scratch import (
    BadInput,
    Scratch,
    check_bind_source,
    own_mounts,
    required_bytes,
    validate,
)
from thpcheck.host.space import Registry, fs_space
from thpcheck.host.statfs import fs_name
from thpcheck.logs import get_logger
from thpcheck.model.distro import lookup
from thpcheck.model.facts import NodeFacts
from thpcheck.model.headroom import Headroom, fs_role
from thpcheck.model.hugepage import HugePages
from thpcheck.model.mounts import Mount, Skipped, discover, memory_backed, resolve
from thpcheck.model.paths import IMAGE_DIRS, KUBELET_DIRS
from thpcheck.model.predict import (
    ConfigKnowledge,
    knowledge_from_config,
    knowledge_from_distro,
    predict,
)
from thpcheck.model.report import CheckReport, PathReport
from thpcheck.model.repro import ReproOutcome, ReproResult
from thpcheck.model.timestamps import RFC3339
from thpcheck.model.verdict import PathVerdict, Verdict, combine

log = get_logger("thpcheck.check")


@dataclass(frozen=True)
class CheckOptions:
    paths: Sequence[str]
    host_root: str = "/"
    run_repro: bool = True
    repro: reproducer.ReproConfig = field(default_factory=reproducer.ReproConfig)
    # In a pod a bad path must become an error verdict (the run always yields a result);
    # on the command line it is bad input (exit 2) before anything is written.
    bad_paths_are_errors: bool = False
    # Also test <mountpoint>/.thpcheck on every local writable filesystem of the host.
    discover: bool = False
    headroom: Headroom = field(default_factory=Headroom)


@dataclass(frozen=True)
class Prepared:
    """A path that passed every check: where it is visible, and whether the run writes."""

    visible: str
    writes: bool
    fstype: str | None = None


def config_knowledge(facts: NodeFacts) -> ConfigKnowledge:
    """The kernel's own config when readable, else the distro table row."""
    if facts.kernel.config is not None:
        return knowledge_from_config(facts.kernel.config)
    os_text = facts.os_release.pretty_name if facts.os_release else ""
    match = lookup(os_text, facts.kernel.release or "", facts.machine) if os_text else None
    return knowledge_from_distro(match)


def _present(root: HostRoot, options: CheckOptions, dirs: tuple[str, ...]
             ) -> tuple[str, ...]:
    """The state dirs present on the node when the host's tree is visible here (on the host
    itself, or the host's / in a pod), else all candidates (the strict side)."""
    if root.root != "/" and not options.discover:
        return dirs
    return tuple(d for d in dirs if os.path.isdir(root.path(d)))


def prepare(root: HostRoot, path: str, options: CheckOptions, mounts: list[Mount],
            mine: list[Mount], registry: Registry | None, stack: ExitStack) -> Prepared:
    """Every check before a path is written: its spelling and place, symlinks (in a pod: the
    bind mount's source against the host's mountinfo), memory-backed filesystems, and disk
    headroom with a reservation held until the run ends. Raises BadInput."""
    visible = validate(root, path, will_write=options.run_repro)
    if root.root != "/":
        check_bind_source(posixpath.normpath(path), visible, mounts, mine)
    try:
        fstype: str | None = fs_name(visible)
    except OSError:
        fstype = None
    if registry is None or memory_backed(fstype):
        return Prepared(visible, False, fstype)
    config = options.repro
    need = required_bytes(config.base_size, config.append_size, config.iterations)
    resolved = resolve(path, mounts)
    device = resolved.backing.device if resolved else None
    role = fs_role(path, mounts, _present(root, options, KUBELET_DIRS),
                   _present(root, options, IMAGE_DIRS))
    decision, reservation = registry.claim(device, fs_space(visible), need, role,
                                           options.headroom)
    if not decision.ok:
        raise BadInput(f"{path}: refusing to write: {decision.detail}; free space there, "
                       "lower --base-size or --iterations, or pass a path on another "
                       "filesystem")
    if reservation is not None:
        stack.callback(reservation.release)
    return Prepared(visible, True, fstype)


def prepare_paths(root: HostRoot, options: CheckOptions, mounts: list[Mount],
                  stack: ExitStack, snapshot: bool = False) -> dict[str, Prepared | BadInput]:
    """Prepare every path first, so bad input stops the run before anything is written.

    A snapshot holds no scratch directories: an absolute path is all there is to check.
    """
    registry = stack.enter_context(Registry(root)) if options.run_repro else None
    mine = own_mounts() if root.root != "/" else []
    results: dict[str, Prepared | BadInput] = {}
    for path in options.paths:
        try:
            results[path] = (Prepared(root.path(path), False) if snapshot
                             and path.startswith("/") else
                             prepare(root, path, options, mounts, mine, registry, stack))
        except BadInput as exc:
            if not options.bad_paths_are_errors:
                raise
            results[path] = exc
    return results


def _run_repro(visible: str, config: reproducer.ReproConfig,
               hugepages: HugePages) -> ReproResult:
    pmd = reproducer.pmd_or_skip(config, hugepages)
    if isinstance(pmd, ReproResult):
        return pmd
    with Scratch(visible) as scratch:
        if scratch.reaped:
            log.warning("reaped_stale_scratch", dirs=scratch.reaped, path=visible)
        return reproducer.run(scratch, config, pmd)


def check(options: CheckOptions) -> CheckReport:
    """Run the whole check. Raises BadInput (CLI mode) before writing anything."""
    root = HostRoot(options.host_root)
    snapshot = host_facts.is_snapshot(root)  # a saved copy: <host_root>/proc is not procfs
    if snapshot and options.run_repro:
        raise BadInput(f"--host-root {options.host_root} is a saved snapshot, not a live host "
                       "(its proc/ is not procfs): the reproducer cannot run there; add "
                       "--no-repro to predict from the saved files")
    facts = host_facts.collect(root, snapshot)
    if not options.discover:
        return _check(root, options, facts)
    found = discover(list(facts.mounts))
    discovered = [p for p in found.paths if p not in options.paths]
    if not options.run_repro:  # nothing is written: classify the mount points themselves
        discovered = [posixpath.dirname(p) for p in discovered]
    log.info("discovered_filesystems", paths=discovered, skipped=len(found.skipped))
    options = replace(options, paths=[*options.paths, *discovered])
    with scratch_roots(root, discovered if options.run_repro else []):
        return _check(root, options, facts, found.skipped)


def _memory_backed_skip(fstype: str | None) -> ReproResult:
    return ReproResult(ReproOutcome.SKIPPED, message=(
        f"reproducer not run: {fstype} is memory-backed (its page cache is RAM and the bug "
        "needs a disk filesystem), nothing was written"))


def _check(root: HostRoot, options: CheckOptions, facts: NodeFacts,
           skipped: Sequence[Skipped] = ()) -> CheckReport:
    with ExitStack() as stack:
        prepared = prepare_paths(root, options, list(facts.mounts), stack, facts.snapshot)
        return _run_paths(root, options, facts, prepared, skipped)


def _run_paths(root: HostRoot, options: CheckOptions, facts: NodeFacts,
               prepared: dict[str, Prepared | BadInput],
               skipped: Sequence[Skipped]) -> CheckReport:
    knowledge = config_knowledge(facts)
    kernel = facts.kernel.version
    report = CheckReport(
        facts=facts,
        config=knowledge,
        node_prediction=predict(kernel, knowledge, thp=facts.thp, node_only=True,
                                hugepages=facts.kernel.hugepages),
        checked_at=time.strftime(RFC3339, time.gmtime()),  # no datetime import
        skipped=list(skipped),
    )
    for path in options.paths:
        ready = prepared[path]
        if isinstance(ready, BadInput):
            report.paths.append(PathReport(path, None, None, None,
                                           PathVerdict(Verdict.ERROR, str(ready), None)))
            continue
        path_facts = host_facts.path_facts(root, path, facts.mounts, facts.snapshot)
        if path_facts.error:
            report.paths.append(PathReport(path, path_facts, None, None,
                                           PathVerdict(Verdict.ERROR, path_facts.error, None)))
            continue
        backing = path_facts.resolved.backing if path_facts.resolved else None
        prediction = predict(kernel, knowledge, path_facts.fstype, backing, facts.thp,
                             hugepages=facts.kernel.hugepages)
        repro: ReproResult | None = None
        if ready.writes:
            repro = _run_repro(ready.visible, options.repro, facts.kernel.hugepages)
        elif options.run_repro and memory_backed(ready.fstype):
            repro = _memory_backed_skip(ready.fstype)
        if repro is not None and repro.madv_collapse_known is not None:
            report.madv_collapse = repro.madv_collapse_known
        verdict = combine(prediction, repro)
        log.info("path_checked", path=path, fstype=path_facts.fstype,
                 verdict=verdict.verdict.value, rule=verdict.rule,
                 repro=repro.outcome.value if repro else ReproOutcome.SKIPPED.value)
        if verdict.disagreement:
            log.error("model_disagreement", path=path, detail=verdict.disagreement)
        report.paths.append(PathReport(path, path_facts, prediction, repro, verdict))
    return report
