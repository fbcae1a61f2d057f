"""`googlenet predict`: top-k classes for image files or folders, from a checkpoint alone."""

from __future__ import annotations

import argparse

from googlenet.cli.common import Commands, add_engine_arguments, positive_int


def register(commands: Commands) -> None:
    parser = commands.add("predict", run, "top-k classes for images or folders of images")
    parser.add_argument("checkpoint", help="a checkpoint written by 'googlenet train'")
    parser.add_argument("paths", nargs="+", help="image files or folders (searched recursively)")
    parser.add_argument("--top-k", type=positive_int, default=3)
    parser.add_argument("--format", choices=("table", "json", "csv"), default="table")
    add_engine_arguments(parser, int8=False)


def run(args: argparse.Namespace) -> int:
    from googlenet.evaluation.predict import format_predictions, predict_paths

    predictions = predict_paths(
        args.checkpoint, args.paths, top_k=args.top_k, backend=args.backend, precision=args.precision
    )
    print(format_predictions(predictions, args.format))
    return 0
