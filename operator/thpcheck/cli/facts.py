"""``thpcheck facts``: what the static model reads from the host, and what it predicts."""

from __future__ import annotations

import argparse
import json

from thpcheck.cli.args import add_common_options, add_host_root_option
from thpcheck.host.check import CheckOptions, check


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "facts", help="print the node facts and the static prediction as JSON (writes nothing)")
    parser.add_argument("paths", nargs="*", metavar="PATH",
                        help="host paths whose filesystem to classify (default /)")
    add_host_root_option(parser)
    add_common_options(parser)
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from thpcheck.model.report import to_document
    from thpcheck.model.verdict import describe_sources

    options = CheckOptions(paths=args.paths or ["/"], host_root=args.host_root,
                           run_repro=False, bad_paths_are_errors=True)
    report = check(options)
    document = to_document(report)
    rule_ids = {p.prediction.rule for p in report.paths if p.prediction}
    rule_ids.add(report.node_prediction.rule)
    sources = sorted({s for p in report.paths if p.prediction for s in p.prediction.sources})
    document["sources"] = describe_sources(sources)
    document["rules_applied"] = sorted(rule_ids)
    print(json.dumps(document, indent=2))
    return 0
