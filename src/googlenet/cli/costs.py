"""`googlenet costs`: naive vs 1x1-reduced Inception modules, and the counts the paper publishes."""

from __future__ import annotations

import argparse

from googlenet.cli.common import Commands, positive_int


def register(commands: Commands) -> None:
    parser = commands.add("costs", run, "naive vs 1x1-reduced Inception cost, and the published counts")
    parser.add_argument("--model", default="paper", help="variant whose Inception modules to cost (default: paper)")
    parser.add_argument("--input-size", type=positive_int, default=224, help="input side in px (default: 224)")
    parser.add_argument("--format", choices=("table", "markdown", "json"), default="table")


def run(args: argparse.Namespace) -> int:
    from googlenet.costs import cost_report, format_json, format_text
    from googlenet.model import get_variant

    get_variant(args.model)  # an unknown name fails here, with the valid ones listed
    report = cost_report(args.model, args.input_size)
    print(format_json(report) if args.format == "json" else format_text(report, markdown=args.format == "markdown"))
    return 0
