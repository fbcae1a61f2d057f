"""`googlenet evaluate`: metrics of one checkpoint on a split, or of an ensemble with multi-crop testing."""

from __future__ import annotations

import argparse
from pathlib import Path

from googlenet.cli.common import Commands, UsageError, add_engine_arguments, progress_bar, progress_wanted


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
    parser.add_argument(
        "--heads",
        choices=("main", "all"),
        default="main",
        help="all: also the top-1 of the auxiliary heads (after 4a and 4d), per class: the early exits",
    )
    parser.add_argument("--split", default="test", choices=("test", "val", "train"))
    parser.add_argument("--data-root", help="where the data is (default: the root recorded in the checkpoint)")
    parser.add_argument("--out", help="folder for eval_SPLIT.json and confusion_SPLIT.png (default: the run folder)")
    parser.add_argument("--json", help="also write the metrics to this JSON file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_engine_arguments(parser, int8=True)


def run(args: argparse.Namespace) -> int:
    if args.heads == "all":
        return _heads(args)
    if len(args.checkpoint) > 1 or args.crops != 1:
        if args.tta != "none":
            raise UsageError("--tta works on one checkpoint at --crops 1; multi-crop testing already mirrors")
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


def _heads(args: argparse.Namespace) -> int:
    if len(args.checkpoint) > 1 or args.crops != 1 or args.tta != "none":
        raise UsageError("--heads all measures one checkpoint at --crops 1 without --tta")
    import json

    from googlenet.explain.early_exits import format_heads
    from googlenet.explain.run import early_exits
    from googlenet.files import atomic_write_text, writable_dir
    from googlenet.run.checkpoint import run_folder

    checkpoint = Path(args.checkpoint[0])
    out = writable_dir(args.out if args.out else run_folder(checkpoint))
    result = early_exits(checkpoint, args.split, data_root=args.data_root, progress=progress_bar(progress_wanted(args)))
    path = Path(args.json) if args.json else out / f"heads_{args.split}.json"
    atomic_write_text(
        path, json.dumps({"checkpoint": str(checkpoint), "split": args.split, **result.as_dict()}, indent=2)
    )
    print(f"{checkpoint} on {args.split}: top-1 of each head (the auxiliary heads are early exits)")
    print(format_heads(result))
    if result.heads == ["main"]:
        print("this checkpoint has no auxiliary heads (trained with model.aux off, or imported without them)")
    print(f"wrote {path}")
    return 0
