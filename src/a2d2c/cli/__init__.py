"""The ``a2d2c`` command line: ``a2d2c <command> [options]``.

Each command lives in its own module of this package exposing
``add_arguments(parser)`` and ``main(args) -> int``; modules are imported only when
their command runs, so ``a2d2c --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["COMMANDS", "main"]

# command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("a2d2c.cli.demo", "run the layer on random data and print what it computed"),
    "profile": ("a2d2c.cli.profile", "parameters and MAdds of a model, or of the paper's tables"),
    "bench": ("a2d2c.cli.bench", "speed and memory of static, A2D2C and baselines"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="a2d2c", description="Adaptive Attention-Driven Dynamic Convolution toolkit"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from ..allocator import tune_allocator

    tune_allocator()  # glibc keeps freed blocks (a2d2c.allocator; A2D2C_MALLOC_TUNING=0: off)
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in COMMANDS:
        if argv and not argv[0].startswith("-"):
            parser.error(f"unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}")
        parser.parse_args(argv)  # prints help / errors and exits
        parser.print_help()
        return 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name][0])
    cmd_parser = argparse.ArgumentParser(prog=f"a2d2c {name}", description=COMMANDS[name][1])
    module.add_arguments(cmd_parser)
    return int(module.main(cmd_parser.parse_args(rest)) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
