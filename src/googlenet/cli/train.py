"""`googlenet train`: train a model from a TOML preset, or resume a run."""

from __future__ import annotations

import argparse
import json
import sys

from googlenet.cli.common import Commands, UsageError, positive_minutes, progress_wanted


def register(commands: Commands) -> None:
    parser = commands.add("train", run, "train a model on Fashion-MNIST or an image folder")
    parser.add_argument("--config", help="TOML preset, e.g. configs/fashion-mnist.toml")
    parser.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override one config value"
    )
    parser.add_argument("--out", required=True, help="run folder: metrics, TensorBoard logs, checkpoints")
    parser.add_argument(
        "--max-minutes",
        type=positive_minutes,
        help="wall-clock budget: the run measures its speed and fits its whole schedule, validations and the test "
        "evaluation into it",
    )
    parser.add_argument("--init", help="fine-tune: start from this checkpoint (classifier reset if classes differ)")
    parser.add_argument("--freeze-features", action="store_true", help="fine-tune only the classifier heads")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from checkpoints/last.pt")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (epoch lines only)")


def run(args: argparse.Namespace) -> int:
    from googlenet.config import load_config
    from googlenet.training.loop import resume, train

    overrides = list(args.set)
    if args.max_minutes is not None:
        overrides.append(f"train.max_minutes={args.max_minutes}")
    if args.init is not None:
        overrides.append(f"model.init={json.dumps(args.init)}")
    if args.freeze_features:
        overrides.append("model.freeze_features=true")

    def log(line: str) -> None:
        print(line, flush=True)

    if args.resume:
        result = resume(args.out, overrides, progress=progress_wanted(args), log=log)
    else:
        if args.config is None:
            raise UsageError("train needs --config FILE (e.g. configs/fashion-mnist.toml), or --resume")
        result = train(load_config(args.config, overrides), args.out, progress=progress_wanted(args), log=log)
    if result.stopped == "interrupted":
        print(f"interrupted: resume with 'googlenet train --resume --out {args.out}'", file=sys.stderr)
        return 130
    if result.best_checkpoint is not None:
        print(f"best checkpoint: {result.best_checkpoint}")
    return 0
