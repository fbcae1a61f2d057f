"""`googlenet data inspect|prepare|pack`: look at an image folder, put Fashion-MNIST where training reads it,
or pack an image folder into shards."""

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
    pack = data.add("pack", run_pack, "pack an image folder into shards of pre-resized JPEGs (WebDataset tar)")
    pack.add_argument("folder", help="train/ and val/ (and test/) of class folders, or class folders alone")
    pack.add_argument("--out", required=True, help="the folder for the shards and their index")
    pack.add_argument("--max-side", type=int, default=256, help="longer side of the stored images (default: 256)")
    pack.add_argument("--quality", type=int, default=90, help="JPEG quality (default: 90)")
    pack.add_argument("--shard-size", default="1GB", help="bytes per shard (default: 1GB)")
    pack.add_argument("--workers", type=int, default=0, help="processes encoding images (default: every core)")
    pack.add_argument("--no-progress", action="store_true")


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


def run_pack(args: argparse.Namespace) -> int:
    from googlenet.cli.common import progress_wanted
    from googlenet.data.pack import PackSettings, pack_folder, parse_size

    settings = PackSettings(max_side=args.max_side, quality=args.quality, shard_bytes=parse_size(args.shard_size))
    result = pack_folder(args.folder, args.out, settings, workers=args.workers, progress=progress_wanted(args))
    for split, count in result.samples.items():
        print(f"{split}: {count:,} images in {result.shards[split]} shard(s)")
    if result.resumed_shards:
        print(f"resumed: {result.resumed_shards} shard(s) were already complete")
    for skipped in result.skipped:
        print(f"skipped {skipped['path']}: {skipped['reason']}")
    print(f'wrote {result.out} (train with data.dataset = "shards", data.root = "{result.out}")')
    return 0
