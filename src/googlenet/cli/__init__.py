"""The `googlenet` command: one module per subcommand, each with its arguments and its printing.

Library code raises GoogLeNetError for problems a user can fix; here they become one line on stderr and
exit code 2. Anything else is an internal error: one line and exit code 1. `--debug` shows tracebacks.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from googlenet.cli import (
    benchmark,
    costs,
    data,
    evaluate,
    explain,
    export,
    import_torchvision,
    models,
    predict,
    report,
    serve,
    visualize,
)
from googlenet.cli import summary as summary_command
from googlenet.cli import train as train_command
from googlenet.cli.common import PROG, Commands, Parser, UsageError
from googlenet.errors import GoogLeNetError

__all__ = ["PROG", "UsageError", "build_parser", "main"]

# In the order `googlenet --help` lists them: the paper's numbers, then the work on data, then deployment.
COMMANDS = (
    models,
    summary_command,
    costs,
    train_command,
    evaluate,
    predict,
    explain,
    visualize,
    serve,
    report,
    benchmark,
    import_torchvision,
    export,
    data,
)


def build_parser() -> Parser:
    parser = Parser(prog=PROG, description="The reference GoogLeNet (Inception v1) for PyTorch.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    commands = Commands(parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser))
    for command in COMMANDS:
        command.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
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
