"""`googlenet report`: a markdown report with curves and the confusion matrix for a run folder."""

from __future__ import annotations

import argparse

from googlenet.cli.common import Commands


def register(commands: Commands) -> None:
    parser = commands.add("report", run, "a markdown report with curves and confusion matrix for a run folder")
    parser.add_argument("run", help="a folder written by 'googlenet train --out'")


def run(args: argparse.Namespace) -> int:
    from googlenet.viz.report import write_report

    print(f"wrote {write_report(args.run)}")
    return 0
