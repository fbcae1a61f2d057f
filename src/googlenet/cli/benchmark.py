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
    parser.add_argument(
        "--fashion-size",
        type=positive_int,
        default=64,
        help="image size of the Fashion-MNIST section (64: the 10- and 15-minute presets; 80: the 30-minute one)",
    )
    parser.add_argument("--rounds", type=positive_int, default=5, help="interleaved rounds; medians are reported")
    parser.add_argument("--roof-size", type=positive_int, default=4096, help="n of the n^3 matmul roof")
    parser.add_argument(
        "--sections",
        default="inference,training,fashion",
        help="comma-separated sections to run: inference, training, fashion, data (the input pipeline)",
    )
    parser.add_argument(
        "--data-work", help="data section: keep its photo folder and shards here (default: a temporary folder)"
    )
    parser.add_argument("--data-images", type=positive_int, default=512, help="data section: images per round")
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
    from googlenet.files import writable_dir

    if args.json:
        writable_dir(Path(args.json).parent)  # before minutes of measuring, not after

    from googlenet.benchmark import SECTIONS, BenchmarkError

    sections = tuple(s.strip() for s in args.sections.split(",") if s.strip())
    if not sections or set(sections) - {*SECTIONS, "data"}:  # before minutes of measuring, not after
        raise BenchmarkError(f"--sections must name some of {', '.join((*SECTIONS, 'data'))}; got {args.sections!r}")
    results: dict[str, object] = {}
    if "data" in sections:
        results["data"] = _data_section(args)
        sections = tuple(s for s in sections if s != "data")
        if not sections:
            _write_json(args.json, results)
            return 0
    options = BenchmarkOptions(
        batch=args.batch,
        size=args.size,
        train_batch=args.train_batch,
        fashion_batch=args.fashion_batch,
        fashion_size=args.fashion_size,
        rounds=args.rounds,
        roof_size=args.roof_size,
        sections=sections,
        compile=args.compile,
        engines=tuple(args.engines or ()),
        device=args.device,
        checkpoint=args.checkpoint,
        profile=args.profile,
    )
    report = run_benchmark(options, progress=progress_wanted(args), log=lambda m: print(m, file=sys.stderr))
    print(format_report(report))
    _write_json(args.json, {**report.as_dict(), **results})
    return 0


def _data_section(args: argparse.Namespace) -> dict[str, object]:
    import dataclasses
    import tempfile

    from googlenet.benchmark import machine_name
    from googlenet.benchmark_data import format_data_report, run_data_benchmark

    def log(message: str) -> None:
        print(message, file=sys.stderr)

    if args.data_work:
        report = run_data_benchmark(Path(args.data_work), images=args.data_images, log=log)
    else:
        with tempfile.TemporaryDirectory(prefix="googlenet-data-") as work:
            report = run_data_benchmark(Path(work), images=args.data_images, log=log)
    print(format_data_report(report, machine_name()))
    print()
    return dataclasses.asdict(report)


def _write_json(path: str | None, results: dict[str, object]) -> None:
    from googlenet.files import atomic_write_text

    if path:
        atomic_write_text(Path(path), json.dumps(results, indent=2))
        print(f"\nwrote {path}")
