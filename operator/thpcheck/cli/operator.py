"""``thpcheck operator``: run the Kubernetes operator (kopf, cluster-wide) until SIGTERM."""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap

import structlog

from thpcheck.cli.args import KUBECONFIG_HELP, add_common_options


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from thpcheck.controller.settings import help_text

    description = ("Watch ThpChecks cluster-wide, run the agent on the selected nodes, record "
                   "ThpNodeResults and apply the requested remediation. Configured by the "
                   "THPCHECK_* environment variables below (also in docs/operator-design.md). "
                   "Exits 2 on a bad kubeconfig or setting, 5 if the API server cannot be "
                   "reached, 6 if it rejects the credentials, 7 if RBAC denies a list the "
                   "operator needs, 8 if the CRDs are missing or older than this operator.")
    parser = subparsers.add_parser(
        "operator", help="run the operator: ThpChecks -> agent DaemonSets -> ThpNodeResults",
        description=textwrap.fill(description, width=79),
        epilog="environment (all optional):\n" + help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kubeconfig", metavar="FILE", help=KUBECONFIG_HELP)
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
    # urllib3's "Retrying ..." per connection attempt: a failed call is logged (and counted)
    # once by the operator itself.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)


def main(args: argparse.Namespace) -> int:
    from thpcheck.controller import operator, settings

    _route_stdlib_logging(args.log_format, args.log_level)
    try:
        config = settings.from_env()
    except settings.SettingsError as exc:
        print(f"thpcheck operator: {exc}", file=sys.stderr)
        return 2
    return operator.run(config, args.kubeconfig)
