"""`googlenet export`: a checkpoint as ONNX, a torch.export program, safetensors or a Triton model repository,
each checked against the eager model."""

from __future__ import annotations

import argparse

from googlenet.cli.common import Commands


def register(commands: Commands) -> None:
    parser = commands.add("export", run, "export a checkpoint: onnx, torch-export, safetensors or a triton repository")
    parser.add_argument("checkpoint")
    parser.add_argument("--format", required=True, choices=("onnx", "torch-export", "safetensors", "triton"))
    parser.add_argument("--out", required=True, help="file to write; for triton, the model repository folder")
    parser.add_argument("--check-images", nargs="*", default=[], help="real images to compare outputs on too")
    triton = parser.add_argument_group("triton", "a model in a Triton model repository (--format triton)")
    triton.add_argument("--name", default="googlenet", help="the model's name and folder in the repository")
    triton.add_argument("--engine", choices=("onnx", "openvino"), default="onnx", help="Triton backend's model format")
    triton.add_argument("--max-batch", type=int, default=32, help="max_batch_size: the largest batch Triton forms")
    triton.add_argument(
        "--queue-delay-us", type=int, default=2000, help="how long Triton holds a request for others to batch with"
    )


def run(args: argparse.Namespace) -> int:
    if args.format == "triton":
        return _triton(args)
    from googlenet.deploy.export import export_checkpoint

    result = export_checkpoint(args.checkpoint, args.format, args.out, check_images=args.check_images)
    print(
        f"wrote {result.path} ({result.format}); max |difference| from the eager model on "
        f"{result.random_inputs} random and {result.real_inputs} real images: {result.max_abs_diff:.3g}"
    )
    return 0


def _triton(args: argparse.Namespace) -> int:
    from googlenet.deploy.triton import export_triton

    model = export_triton(
        args.checkpoint,
        args.out,
        name=args.name,
        engine=args.engine,
        max_batch=args.max_batch,
        queue_delay_us=args.queue_delay_us,
    )
    print(
        f"wrote {model.folder} (Triton, {model.engine}, batches up to {model.max_batch}); max |difference| from "
        f"the eager model: {model.max_abs_diff:.3g}"
    )
    print(f"serve it with: tritonserver --model-repository {model.folder.parent}")
    return 0
