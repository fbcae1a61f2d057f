"""`googlenet report`: a markdown report with curves and the confusion matrix for a run folder."""

from __future__ import annotations

import argparse

from googlenet.cli.common import Commands


def register(commands: Commands) -> None:
    parser = commands.add(
        "report", run, "a markdown report for a run folder: curves, confusion matrix, a look inside (explain.md)"
    )
    parser.add_argument("run", help="a folder written by 'googlenet train --out'")
    parser.add_argument(
        "--no-explain",
        action="store_true",
        help="skip the page of class activation maps, branch shares and early exits (explain.md)",
    )
    parser.add_argument(
        "--explain-split",
        choices=("test", "val"),
        default="test",
        help="the split explain.md looks at (default: test, or val where the data has no test split)",
    )


def run(args: argparse.Namespace) -> int:
    from googlenet.report import write_report

    print(f"wrote {write_report(args.run, explain=not args.no_explain, explain_split=args.explain_split)}")
    return 0
