"""`googlenet export`: a checkpoint as ONNX, a torch.export program or safetensors, checked against eager."""

from __future__ import annotations

import argparse

from googlenet.cli.common import Commands


def register(commands: Commands) -> None:
    parser = commands.add("export", run, "export a checkpoint: onnx, torch-export or safetensors")
    parser.add_argument("checkpoint")
    parser.add_argument("--format", required=True, choices=("onnx", "torch-export", "safetensors"))
    parser.add_argument("--out", required=True, help="file to write")
    parser.add_argument("--check-images", nargs="*", default=[], help="real images to compare outputs on too")


def run(args: argparse.Namespace) -> int:
    from googlenet.deploy.export import export_checkpoint

    result = export_checkpoint(args.checkpoint, args.format, args.out, check_images=args.check_images)
    print(
        f"wrote {result.path} ({result.format}); max |difference| from the eager model on "
        f"{result.random_inputs} random and {result.real_inputs} real images: {result.max_abs_diff:.3g}"
    )
    return 0
