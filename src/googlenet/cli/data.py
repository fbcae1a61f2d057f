"""`googlenet data inspect|prepare`: look at an image folder, or put Fashion-MNIST where training reads it."""

from __future__ import annotations

import argparse
from pathlib import Path

from googlenet.cli.common import Commands


def register(commands: Commands) -> None:
    data = commands.group("data", "look at or prepare data")
    inspect = data.add("inspect", run_inspect, "per-class counts, sizes, modes, unreadable files, sample grid")
    inspect.add_argument("folder", help="an image folder with one sub-folder per class")
    inspect.add_argument("--grid", help="where to write the sample grid PNG (default: ./FOLDERNAME-samples.png)")
    inspect.add_argument("--no-progress", action="store_true")
    prepare = data.add("prepare", run_prepare, "put Fashion-MNIST where training reads it")
    prepare.add_argument("--root", default="data", help="data root (default: data)")


def run_inspect(args: argparse.Namespace) -> int:
    from googlenet.cli.common import progress_wanted
    from googlenet.data.inspect import format_inspection, inspect_folder, sample_grid_png
    from googlenet.extras import MissingExtraError
    from googlenet.files import writable_dir

    grid = Path(args.grid) if args.grid else Path(f"{Path(args.folder).resolve().name}-samples.png")
    writable_dir(grid.parent)  # before reading every image of the folder, not after
    result = inspect_folder(args.folder, progress=progress_wanted(args))
    print(format_inspection(result))
    try:
        sample_grid_png(result, grid)
    except MissingExtraError as missing:  # the inspection itself needs no extra: it is printed, the picture skipped
        print(f"no sample grid: {missing}")
        return 0
    print(f"wrote {grid}")
    return 0


def run_prepare(args: argparse.Namespace) -> int:
    from googlenet.data import ensure_fashion_mnist

    print(f"Fashion-MNIST ready in {ensure_fashion_mnist(args.root)}")
    return 0
