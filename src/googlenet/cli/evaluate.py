"""`googlenet evaluate`: metrics of one checkpoint on a split, or of an ensemble with multi-crop testing."""

from __future__ import annotations

import argparse
from pathlib import Path

from googlenet.cli.common import Commands, UsageError, add_engine_arguments, progress_wanted


def register(commands: Commands) -> None:
    parser = commands.add("evaluate", run, "top-1/top-5, loss, per-class accuracy and confusion matrix")
    parser.add_argument("checkpoint", nargs="+", help="checkpoint(s); several make an ensemble")
    parser.add_argument("--crops", type=int, choices=(1, 10, 144), default=1, help="views per image (the paper's)")
    parser.add_argument(
        "--tta",
        choices=("none", "flip"),
        default="none",
        help="test-time augmentation: flip averages each image with its mirror image (default: none)",
    )
    parser.add_argument("--split", default="test", choices=("test", "val", "train"))
    parser.add_argument("--data-root", help="where the data is (default: the root recorded in the checkpoint)")
    parser.add_argument("--out", help="folder for eval_SPLIT.json and confusion_SPLIT.png (default: the run folder)")
    parser.add_argument("--json", help="also write the metrics to this JSON file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_engine_arguments(parser, int8=True)


def run(args: argparse.Namespace) -> int:
    if len(args.checkpoint) > 1 or args.crops != 1:
        if args.tta != "none":
            raise UsageError("--tta flip works on one checkpoint at --crops 1; multi-crop testing already mirrors")
        return _multicrop(args)
    from googlenet.evaluation.evaluate import evaluate_checkpoint, format_result

    report = evaluate_checkpoint(
        args.checkpoint[0],
        split=args.split,
        data_root=args.data_root,
        out_dir=args.out,
        json_path=args.json,
        progress=progress_wanted(args),
        backend=args.backend,
        precision=args.precision,
        tta=args.tta,
    )
    print(format_result(report))
    return 0


def _multicrop(args: argparse.Namespace) -> int:
    from googlenet.evaluation.multicrop import default_root, ensemble_table, format_table

    root = Path(args.data_root) / args.split if args.data_root else default_root(args.checkpoint[0], args.split)
    rows, images = ensemble_table(args.checkpoint, root, sorted({1, args.crops}), progress=progress_wanted(args))
    print(format_table(rows, images))
    return 0
