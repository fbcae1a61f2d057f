"""What every command shares: the error type for bad arguments, the parser class, small argument types."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

from googlenet.errors import GoogLeNetError

PROG = "googlenet"


class UsageError(GoogLeNetError):
    """Bad command-line arguments."""


class Parser(argparse.ArgumentParser):
    """argparse prints usage plus a message and exits; we want one line and the common exit path."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of at least 1, got {value}")
    return value


def positive_minutes(text: str) -> float:
    """A budget in minutes: a finite number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of minutes, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of minutes above 0, got {text!r}")
    return value


def progress_wanted(args: argparse.Namespace) -> bool:
    """A progress bar only for a person at a terminal, and not when they asked for none."""
    return not getattr(args, "no_progress", False) and sys.stderr.isatty()


def progress_bar(enabled: bool) -> Callable[[Iterable[Any], int, str], Iterable[Any]]:
    """A function wrapping a stream of ``total`` items in a tqdm bar labelled ``label`` (or leaving it be)."""

    def progress(stream: Iterable[Any], total: int, label: str) -> Iterable[Any]:
        from tqdm import tqdm

        return tqdm(stream, total=total, desc=label, disable=not enabled, leave=False)

    return progress


def add_engine_arguments(parser: argparse.ArgumentParser, *, int8: bool) -> None:
    """--backend and --precision, as evaluate and predict take them."""
    from googlenet.engines import BACKENDS
    from googlenet.evaluation.evaluate import CALIBRATION_IMAGES

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


Handler = Callable[[argparse.Namespace], int]


class Commands:
    """The subcommand table: each command module registers its parser and handler here."""

    def __init__(self, subparsers: argparse._SubParsersAction[Parser]) -> None:
        self._subparsers = subparsers

    def add(self, name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        parser = self._subparsers.add_parser(name, help=help_text, description=help_text)
        parser.set_defaults(handler=handler)
        return parser

    def group(self, name: str, help_text: str) -> Commands:
        """A command with subcommands of its own (``googlenet data inspect``)."""
        parser = self._subparsers.add_parser(name, help=help_text, description=help_text)
        sub = parser.add_subparsers(dest=f"{name}_command", metavar=f"{name.upper()}_COMMAND", parser_class=Parser)
        sub.required = True
        return Commands(sub)
