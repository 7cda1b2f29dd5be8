"""``thpcheck operator``: run the Kubernetes operator (kopf, cluster-wide) until SIGTERM."""

from __future__ import annotations

import argparse
import sys
import textwrap

from thpcheck import logs
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


def main(args: argparse.Namespace) -> int:
    from thpcheck.controller import operator, settings

    logs.route_stdlib_logging(args.log_format, args.log_level)
    try:
        config = settings.from_env()
    except settings.SettingsError as exc:
        print(f"thpcheck operator: {exc}", file=sys.stderr)
        return 2
    return operator.run(config, args.kubeconfig)
