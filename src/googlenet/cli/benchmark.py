"""`googlenet benchmark`: our engines and training step against torchvision, ONNX Runtime and OpenVINO."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from googlenet.cli.common import Commands, positive_int, progress_wanted


def register(commands: Commands) -> None:
    parser = commands.add("benchmark", run, "speed against torchvision, ONNX Runtime and OpenVINO, one run")
    parser.add_argument("--batch", type=positive_int, default=32, help="inference batch (default: 32)")
    parser.add_argument("--size", type=positive_int, default=224, help="image size for the 224 px sections")
    parser.add_argument("--train-batch", type=positive_int, default=32, help="training batch at --size")
    parser.add_argument("--fashion-batch", type=positive_int, default=128, help="batch of the Fashion-MNIST section")
    parser.add_argument("--rounds", type=positive_int, default=5, help="interleaved rounds; medians are reported")
    parser.add_argument("--roof-size", type=positive_int, default=4096, help="n of the n^3 matmul roof")
    parser.add_argument("--sections", default="inference,training,fashion", help="comma-separated sections to run")
    parser.add_argument("--engines", nargs="*", choices=("onnxruntime", "openvino"), help="limit the external engines")
    parser.add_argument(
        "--checkpoint", help="also measure each engine's top-1 agreement on this checkpoint's test split"
    )
    parser.add_argument("--profile", action="store_true", help="also show where our training step's time goes")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the PyTorch cases run")
    parser.add_argument("--compile", action="store_true", help="add torch.compile as a case (compiles ~20 s)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from googlenet.benchmark import BenchmarkOptions, format_report, run_benchmark
    from googlenet.files import atomic_write_text, writable_dir

    if args.json:
        writable_dir(Path(args.json).parent)  # before minutes of measuring, not after

    options = BenchmarkOptions(
        batch=args.batch,
        size=args.size,
        train_batch=args.train_batch,
        fashion_batch=args.fashion_batch,
        rounds=args.rounds,
        roof_size=args.roof_size,
        sections=tuple(s.strip() for s in args.sections.split(",") if s.strip()),
        compile=args.compile,
        engines=tuple(args.engines or ()),
        device=args.device,
        checkpoint=args.checkpoint,
        profile=args.profile,
    )
    report = run_benchmark(options, progress=progress_wanted(args), log=lambda m: print(m, file=sys.stderr))
    print(format_report(report))
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(report.as_dict(), indent=2))
        print(f"\nwrote {args.json}")
    return 0
