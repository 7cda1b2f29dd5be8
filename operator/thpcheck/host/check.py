"""``thpcheck check``: facts, prediction and reproduction per path, combined into verdicts."""

from __future__ import annotations

import posixpath
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from thpcheck.host import facts as host_facts
from thpcheck.host import repro as reproducer
from thpcheck.host.discovery import scratch_roots
from thpcheck.host.hostroot import HostRoot
from thpcheck.host.scratch import BadInput, Scratch, required_bytes, validate
from thpcheck.logs import get_logger
from thpcheck.model.distro import lookup
from thpcheck.model.facts import NodeFacts
from thpcheck.model.mounts import discover
from thpcheck.model.predict import (
    ConfigKnowledge,
    knowledge_from_config,
    knowledge_from_distro,
    predict,
)
from thpcheck.model.report import CheckReport, PathReport
from thpcheck.model.repro import ReproOutcome, ReproResult
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


def config_knowledge(facts: NodeFacts) -> ConfigKnowledge:
    """The kernel's own config when readable, else the distro table row."""
    if facts.kernel.config is not None:
        return knowledge_from_config(facts.kernel.config)
    os_text = facts.os_release.pretty_name if facts.os_release else ""
    match = lookup(os_text, facts.kernel.release or "", facts.machine) if os_text else None
    return knowledge_from_distro(match)


def validate_paths(root: HostRoot, options: CheckOptions,
                   snapshot: bool = False) -> dict[str, str | BadInput]:
    """Validate every path first, so bad input stops the run before anything is written.

    A snapshot holds no scratch directories: an absolute path is all there is to check.
    """
    need = required_bytes(options.repro.base_size, options.repro.append_size,
                          options.repro.iterations) if options.run_repro else 0
    results: dict[str, str | BadInput] = {}
    for path in options.paths:
        try:
            results[path] = root.path(path) if snapshot and path.startswith("/") else \
                validate(root, path, need, will_write=options.run_repro)
        except BadInput as exc:
            if not options.bad_paths_are_errors:
                raise
            results[path] = exc
    return results


def _run_repro(visible: str, config: reproducer.ReproConfig) -> ReproResult:
    with Scratch(visible) as scratch:
        if scratch.reaped:
            log.warning("reaped_stale_scratch", dirs=scratch.reaped, path=visible)
        return reproducer.run(scratch, config)


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
    discovered = [p for p in discover(list(facts.mounts)) if p not in options.paths]
    if not options.run_repro:  # nothing is written: classify the mount points themselves
        discovered = [posixpath.dirname(p) for p in discovered]
    log.info("discovered_filesystems", paths=discovered)
    options = replace(options, paths=[*options.paths, *discovered])
    with scratch_roots(root, discovered if options.run_repro else []):
        return _check(root, options, facts)


def _check(root: HostRoot, options: CheckOptions, facts: NodeFacts) -> CheckReport:
    validated = validate_paths(root, options, facts.snapshot)
    knowledge = config_knowledge(facts)
    kernel = facts.kernel.version
    report = CheckReport(
        facts=facts,
        config=knowledge,
        node_prediction=predict(kernel, knowledge, thp=facts.thp, node_only=True),
        checked_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),  # no datetime import
    )
    for path in options.paths:
        visible = validated[path]
        if isinstance(visible, BadInput):
            report.paths.append(PathReport(path, None, None, None,
                                           PathVerdict(Verdict.ERROR, str(visible), None)))
            continue
        path_facts = host_facts.path_facts(root, path, facts.mounts, facts.snapshot)
        if path_facts.error:
            report.paths.append(PathReport(path, path_facts, None, None,
                                           PathVerdict(Verdict.ERROR, path_facts.error, None)))
            continue
        backing = path_facts.resolved.backing if path_facts.resolved else None
        prediction = predict(kernel, knowledge, path_facts.fstype, backing, facts.thp)
        repro = _run_repro(visible, options.repro) if options.run_repro else None
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
