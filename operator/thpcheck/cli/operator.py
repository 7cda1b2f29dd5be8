"""``thpcheck operator``: run the Kubernetes operator (kopf, cluster-wide) until SIGTERM."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import structlog

from thpcheck.cli.args import add_common_options


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "operator", help="run the operator: ThpChecks -> agent DaemonSets -> ThpNodeResults",
        description="Watch ThpChecks cluster-wide, run the agent on the selected nodes, record "
        "ThpNodeResults and apply the requested remediation. Configured by THPCHECK_* "
        "environment variables (see docs/operator-design.md); credentials from the "
        "in-cluster service account or the kubeconfig. Exits 2 if the CRDs are missing or "
        "older than this operator.")
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, "
                        "then $KUBECONFIG or ~/.kube/config)")
    add_common_options(parser)
    parser.set_defaults(func=main, log_level="info")


def _route_stdlib_logging(log_format: str, level: str) -> None:
    """kopf logs through ``logging``: render it like structlog's own lines."""
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=False))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processor=renderer,
        foreign_pre_chain=[structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name,
                           structlog.processors.TimeStamper(fmt="iso", utc=True)]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))
    # kopf's per-object handler chatter is debug-level noise at fleet scale.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    # One access line per kubelet probe of /healthz is noise; errors still show.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def main(args: argparse.Namespace) -> int:
    from thpcheck.controller import operator, settings

    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
    _route_stdlib_logging(args.log_format, args.log_level)
    try:
        config = settings.from_env()
    except settings.SettingsError as exc:
        print(f"thpcheck operator: {exc}", file=sys.stderr)
        return 2
    return operator.run(config)
