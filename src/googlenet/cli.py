"""The `googlenet` command: argument parsing and subcommands only.

Library code raises GoogLeNetError for problems a user can fix; here they become one line on stderr and
exit code 2. Anything else is an internal error: one line and exit code 1. `--debug` shows tracebacks.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from googlenet.errors import GoogLeNetError
from googlenet.model import VARIANTS, get_variant, list_models

PROG = "googlenet"


class UsageError(GoogLeNetError):
    """Bad command-line arguments."""


class _Parser(argparse.ArgumentParser):
    """argparse prints usage plus a message and exits; we want one line and the common exit path."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of at least 1, got {value}")
    return value


def _model_spec(args: argparse.Namespace) -> tuple[str, int]:
    spec = get_variant(args.model)
    return spec.name, args.in_channels or spec.default_in_channels


def _engine_arguments(parser: argparse.ArgumentParser, *, int8: bool) -> None:
    from googlenet.backends import BACKENDS
    from googlenet.evaluate import CALIBRATION_IMAGES

    parser.add_argument(
        "--backend",
        choices=("auto", *BACKENDS),
        default="auto",
        help="inference engine; auto measures the installed ones on large jobs and takes the fastest (default)",
    )
    precisions = ("fp32", "bf16", "int8") if int8 else ("fp32", "bf16")
    parser.add_argument(
        "--precision",
        choices=precisions,
        default="fp32",
        help="fp32 (answers as the plain model), bf16"
        + (f", or int8 (calibrated on {CALIBRATION_IMAGES} training images; OpenVINO)" if int8 else "")
        + " (default: fp32)",
    )


def cmd_models(args: argparse.Namespace) -> int:
    import torch

    from googlenet.model import count_parameters, create_model

    width = max(len(n) for n in VARIANTS)
    print(f"{'name':<{width}}  {'params':>10}  {'with aux':>10}  {'input':>5}  description")
    for name in list_models():
        spec = VARIANTS[name]
        with torch.device("meta"):
            plain = create_model(name, in_channels=spec.default_in_channels, aux=False)
            full = create_model(name, in_channels=spec.default_in_channels)
        size = f"{spec.default_input_size}"
        print(
            f"{name:<{width}}  {count_parameters(plain):>10,}  {count_parameters(full):>10,}  {size:>5}  "
            f"{spec.description}"
        )
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from googlenet.summary import FORMATS, summary_for

    name, in_channels = _model_spec(args)
    summary = summary_for(name, args.input_size, in_channels=in_channels, aux=not args.no_aux)
    print(FORMATS[args.format](summary))
    return 0


def cmd_costs(args: argparse.Namespace) -> int:
    from googlenet.costs import cost_report, format_json, format_text

    get_variant(args.model)
    report = cost_report(args.model, args.input_size)
    if args.format == "json":
        print(format_json(report))
    else:
        print(format_text(report, markdown=args.format == "markdown"))
    return 0


def _progress_wanted(args: argparse.Namespace) -> bool:
    return not args.no_progress and sys.stderr.isatty()


def cmd_train(args: argparse.Namespace) -> int:
    from googlenet.config import load_config
    from googlenet.train import train

    if args.max_minutes is not None:
        args.set.append(f"train.max_minutes={args.max_minutes}")
    if args.init is not None:
        args.set.append(f"model.init={json.dumps(args.init)}")
    if args.freeze_features:
        args.set.append("model.freeze_features=true")
    if args.resume:
        config = load_config(None)
    else:
        if args.config is None:
            raise UsageError("train needs --config FILE (e.g. configs/fashion-mnist.toml), or --resume")
        config = load_config(args.config, args.set)
    result = train(
        config,
        args.out,
        resume=args.resume,
        resume_overrides=args.set if args.resume else None,
        progress=_progress_wanted(args),
        log=lambda line: print(line, flush=True),
    )
    if result.stopped == "interrupted":
        print(f"interrupted: resume with 'googlenet train --resume --out {args.out}'", file=sys.stderr)
        return 130
    if result.best_checkpoint is not None:
        print(f"best checkpoint: {result.best_checkpoint}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from googlenet.evaluate import evaluate_checkpoint, format_result

    if len(args.checkpoint) > 1 or args.crops != 1:
        return _evaluate_multicrop(args)
    report = evaluate_checkpoint(
        args.checkpoint[0],
        split=args.split,
        data_root=args.data_root,
        out_dir=args.out,
        json_path=args.json,
        progress=_progress_wanted(args),
        backend=args.backend,
        precision=args.precision,
    )
    print(format_result(report))
    return 0


def _evaluate_multicrop(args: argparse.Namespace) -> int:
    from pathlib import Path

    from googlenet.multicrop import default_root, ensemble_table, format_table

    root = Path(args.data_root) / args.split if args.data_root else default_root(args.checkpoint[0], args.split)
    rows, images = ensemble_table(args.checkpoint, root, sorted({1, args.crops}), progress=_progress_wanted(args))
    print(format_table(rows, images))
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from pathlib import Path

    from googlenet.benchmark import BenchmarkOptions, format_report, run_benchmark
    from googlenet.checkpoint import atomic_write

    sections = tuple(s.strip() for s in args.sections.split(",") if s.strip())
    options = BenchmarkOptions(
        batch=args.batch,
        size=args.size,
        train_batch=args.train_batch,
        fashion_batch=args.fashion_batch,
        rounds=args.rounds,
        roof_size=args.roof_size,
        sections=sections,
        compile=args.compile,
        engines=tuple(args.engines or ()),
        device=args.device,
        checkpoint=args.checkpoint,
        profile=args.profile,
    )
    if args.size < 47:
        raise UsageError(f"--size {args.size} is below the torchvision graph's smallest input, 47 px")
    report = run_benchmark(options, progress=_progress_wanted(args), log=lambda m: print(m, file=sys.stderr))
    print(format_report(report))
    if args.json:
        text = json.dumps(report.as_dict(), indent=2)
        atomic_write(Path(args.json), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        print(f"\nwrote {args.json}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from pathlib import Path

    from googlenet.inspect_data import format_inspection, inspect_folder, sample_grid_png

    result = inspect_folder(args.folder, progress=_progress_wanted(args))
    print(format_inspection(result))
    grid = Path(args.grid) if args.grid else Path(f"{Path(args.folder).resolve().name}-samples.png")
    sample_grid_png(result, grid)
    print(f"wrote {grid}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from googlenet.predict import format_predictions, predict_paths

    predictions = predict_paths(
        args.checkpoint, args.paths, top_k=args.top_k, backend=args.backend, precision=args.precision
    )
    print(format_predictions(predictions, args.format))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from googlenet.report import write_report

    print(f"wrote {write_report(args.run)}")
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from googlenet.data import ensure_fashion_mnist

    print(f"Fashion-MNIST ready in {ensure_fashion_mnist(args.root)}")
    return 0


def cmd_import_torchvision(args: argparse.Namespace) -> int:
    from googlenet.interop import import_torchvision

    print(f"wrote {import_torchvision(args.weights, args.out)}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from googlenet.export import export_checkpoint

    result = export_checkpoint(args.checkpoint, args.format, args.out, check_images=args.check_images)
    print(
        f"wrote {result.path} ({result.format}); max |difference| from the eager model on "
        f"{result.random_inputs} random and {result.real_inputs} real images: {result.max_abs_diff:.3g}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="The reference GoogLeNet (Inception v1) for PyTorch.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def command(name: str, handler: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    command("models", cmd_models, "list the model variants with their parameter counts")

    summary = command("summary", cmd_summary, "the paper's Table 1 recomputed from a live model")
    summary.add_argument("--model", default="paper", help=f"variant: {', '.join(list_models())} (default: paper)")
    summary.add_argument("--input-size", type=_positive_int, help="input side in px (default: the variant's own)")
    summary.add_argument("--in-channels", type=_positive_int, help="input channels (default: the variant's own)")
    summary.add_argument("--no-aux", action="store_true", help="leave the auxiliary classifiers out")
    summary.add_argument("--format", choices=("table", "markdown", "csv", "json"), default="table")

    costs = command("costs", cmd_costs, "naive vs 1x1-reduced Inception cost, and the published counts")
    costs.add_argument("--model", default="paper", help="variant whose Inception modules to cost (default: paper)")
    costs.add_argument("--input-size", type=_positive_int, default=224, help="input side in px (default: 224)")
    costs.add_argument("--format", choices=("table", "markdown", "json"), default="table")

    train = command("train", cmd_train, "train a model on Fashion-MNIST or an image folder")
    train.add_argument("--config", help="TOML preset, e.g. configs/fashion-mnist.toml")
    train.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override one config value"
    )
    train.add_argument("--out", required=True, help="run folder: metrics, TensorBoard logs, checkpoints")
    train.add_argument("--max-minutes", type=float, help="wall-clock budget; the run stops with a checkpoint")
    train.add_argument("--init", help="fine-tune: start from this checkpoint (classifier reset if classes differ)")
    train.add_argument("--freeze-features", action="store_true", help="fine-tune only the classifier heads")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from checkpoints/last.pt")
    train.add_argument("--no-progress", action="store_true", help="no progress bar (epoch lines only)")

    evaluate = command("evaluate", cmd_evaluate, "top-1/top-5, loss, per-class accuracy and confusion matrix")
    evaluate.add_argument("checkpoint", nargs="+", help="checkpoint(s); several make an ensemble")
    evaluate.add_argument("--crops", type=int, choices=(1, 10, 144), default=1, help="views per image (the paper's)")
    evaluate.add_argument("--split", default="test", choices=("test", "val", "train"))
    evaluate.add_argument("--data-root", help="where the data is (default: the root recorded in the checkpoint)")
    evaluate.add_argument("--out", help="folder for eval_SPLIT.json and confusion_SPLIT.png (default: the run folder)")
    evaluate.add_argument("--json", help="also write the metrics to this JSON file")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bar")
    _engine_arguments(evaluate, int8=True)

    predict = command("predict", cmd_predict, "top-k classes for images or folders of images")
    predict.add_argument("checkpoint", help="a checkpoint written by 'googlenet train'")
    predict.add_argument("paths", nargs="+", help="image files or folders (searched recursively)")
    predict.add_argument("--top-k", type=_positive_int, default=3)
    predict.add_argument("--format", choices=("table", "json", "csv"), default="table")
    _engine_arguments(predict, int8=False)

    report = command("report", cmd_report, "a markdown report with curves and confusion matrix for a run folder")
    report.add_argument("run", help="a folder written by 'googlenet train --out'")

    bench = command("benchmark", cmd_benchmark, "speed against torchvision, ONNX Runtime and OpenVINO, one run")
    bench.add_argument("--batch", type=_positive_int, default=32, help="inference batch (default: 32)")
    bench.add_argument("--size", type=_positive_int, default=224, help="image size for the 224 px sections")
    bench.add_argument("--train-batch", type=_positive_int, default=32, help="training batch at --size")
    bench.add_argument("--fashion-batch", type=_positive_int, default=128, help="batch of the Fashion-MNIST section")
    bench.add_argument("--rounds", type=_positive_int, default=5, help="interleaved rounds; medians are reported")
    bench.add_argument("--roof-size", type=_positive_int, default=4096, help="n of the n^3 matmul roof")
    bench.add_argument("--sections", default="inference,training,fashion", help="comma-separated sections to run")
    bench.add_argument("--engines", nargs="*", choices=("onnxruntime", "openvino"), help="limit the external engines")
    bench.add_argument(
        "--checkpoint", help="also measure each engine's top-1 agreement on this checkpoint's test split"
    )
    bench.add_argument("--profile", action="store_true", help="also show where our training step's time goes")
    bench.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the PyTorch cases run")
    bench.add_argument("--compile", action="store_true", help="add torch.compile as a case (compiles ~20 s)")
    bench.add_argument("--json", help="also write the results to this JSON file")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar")

    importer = command("import-torchvision", cmd_import_torchvision, "make a checkpoint of torchvision's weights")
    importer.add_argument("weights", nargs="?", help="googlenet-1378be20.pth (default: torch's hub cache)")
    importer.add_argument("--out", required=True, help="checkpoint to write")

    export = command("export", cmd_export, "export a checkpoint: onnx, torch-export or safetensors")
    export.add_argument("checkpoint")
    export.add_argument("--format", required=True, choices=("onnx", "torch-export", "safetensors"))
    export.add_argument("--out", required=True, help="file to write")
    export.add_argument("--check-images", nargs="*", default=[], help="real images to compare outputs on too")

    data = commands.add_parser("data", help="look at or prepare data", description="look at or prepare data")
    data_commands = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", parser_class=_Parser)
    data_commands.required = True
    inspect = data_commands.add_parser("inspect", help="per-class counts, sizes, modes, unreadable files, sample grid")
    inspect.set_defaults(handler=cmd_inspect)
    inspect.add_argument("folder", help="an image folder with one sub-folder per class")
    inspect.add_argument("--grid", help="where to write the sample grid PNG (default: ./FOLDERNAME-samples.png)")
    inspect.add_argument("--no-progress", action="store_true")
    prepare = data_commands.add_parser("prepare", help="put Fashion-MNIST where training reads it")
    prepare.set_defaults(handler=cmd_data_prepare)
    prepare.add_argument("--root", default="data", help="data root (default: data)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            build_parser().print_help()
            return 2
        code: int = args.handler(args)
        return code
    except GoogLeNetError as error:
        if debug:
            raise
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # the last line of defence: one line, not a traceback
        if debug:
            raise
        print(
            f"{PROG}: internal error: {type(error).__name__}: {error} (rerun with --debug for details)", file=sys.stderr
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
