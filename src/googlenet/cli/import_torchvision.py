"""`googlenet import-torchvision`: a checkpoint of torchvision's ImageNet weights."""

from __future__ import annotations

import argparse

from googlenet.cli.common import Commands


def register(commands: Commands) -> None:
    parser = commands.add("import-torchvision", run, "make a checkpoint of torchvision's weights")
    parser.add_argument("weights", nargs="?", help="googlenet-1378be20.pth (default: torch's hub cache)")
    parser.add_argument("--out", required=True, help="checkpoint to write")


def run(args: argparse.Namespace) -> int:
    from googlenet.deploy.interop import import_torchvision

    print(f"wrote {import_torchvision(args.weights, args.out)}")
    return 0
