"""`googlenet summary`: the paper's Table 1 recomputed from a live model."""

from __future__ import annotations

import argparse

from googlenet.cli.common import Commands, positive_int
from googlenet.model import list_models


def register(commands: Commands) -> None:
    parser = commands.add("summary", run, "the paper's Table 1 recomputed from a live model")
    parser.add_argument("--model", default="paper", help=f"variant: {', '.join(list_models())} (default: paper)")
    parser.add_argument("--input-size", type=positive_int, help="input side in px (default: the variant's own)")
    parser.add_argument("--in-channels", type=positive_int, help="input channels (default: the variant's own)")
    parser.add_argument("--no-aux", action="store_true", help="leave the auxiliary classifiers out")
    parser.add_argument("--format", choices=("table", "markdown", "csv", "json"), default="table")


def run(args: argparse.Namespace) -> int:
    from googlenet.summary import FORMATS, summary_for

    summary = summary_for(args.model, args.input_size, in_channels=args.in_channels, aux=not args.no_aux)
    print(FORMATS[args.format](summary))
    return 0
