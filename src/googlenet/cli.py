"""The `googlenet` command: argument parsing and subcommands only.

Library code raises GoogLeNetError for problems a user can fix; here they become one line on stderr and
exit code 2. Anything else is an internal error: one line and exit code 1. `--debug` shows tracebacks.
"""

from __future__ import annotations

import argparse
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
