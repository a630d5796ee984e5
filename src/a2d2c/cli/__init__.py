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

from .errors import pop_debug_flag, run_command

__all__ = ["COMMANDS", "main"]

# command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("a2d2c.cli.demo", "run the layer on random data and print what it computed"),
    "train": ("a2d2c.cli.train", "train a registered model with a YAML recipe (no arguments: "
              "the offline Fashion-MNIST default)"),
    "eval": ("a2d2c.cli.eval", "evaluate a checkpoint on its dataset's validation split"),
    "profile": ("a2d2c.cli.profile", "parameters and MAdds of a model, or of the paper's tables"),
    "detect": ("a2d2c.cli.detect", "Mask R-CNN + FPN on COCO: train, eval, profile, make-shapes"),
    "visualize": ("a2d2c.cli.visualize", "sampled points, feature maps and kernel attention of "
                  "A2D2Conv2d layers as PNG (the paper's Fig. 4)"),
    "study": ("a2d2c.cli.study", "run a named study (variants x seeds, resumable) and write "
              "its table and plot under results/"),
    "bench": ("a2d2c.cli.bench", "speed and memory of static, A2D2C and baselines"),
    "configs": ("a2d2c.cli.configs", "list the shipped recipes (or print one with --show)"),
    "models": ("a2d2c.cli.models", "list the registered models"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="a2d2c", description="Adaptive Attention-Driven Dynamic Convolution toolkit",
        epilog="--debug (or A2D2C_DEBUG=1) shows the traceback of an error."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from ..allocator import tune_allocator
    from ..logs import install_cli_handler

    install_cli_handler()  # the library logs to "a2d2c"; the command shows it on stdout

    tune_allocator()  # glibc keeps freed blocks (a2d2c.allocator; A2D2C_MALLOC_TUNING=0: off)
    argv = list(sys.argv[1:] if argv is None else argv)
    argv, debug = pop_debug_flag(argv)  # --debug / A2D2C_DEBUG=1: tracebacks (cli/errors.py)
    parser = build_parser()
    if not argv or argv[0] not in COMMANDS:
        if argv and not argv[0].startswith("-"):
            parser.error(f"unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}")
        parser.parse_args(argv)  # prints help / errors and exits
        parser.print_help()
        return 2
    name, rest = argv[0], argv[1:]

    def run() -> int:
        module = importlib.import_module(COMMANDS[name][0])
        cmd_parser = argparse.ArgumentParser(prog=f"a2d2c {name}",
                                             description=COMMANDS[name][1])
        module.add_arguments(cmd_parser)
        if getattr(module, "ACCEPTS_OVERRIDES", False):
            # `--section.key value` pairs the command's parser does not know become overrides
            args, extra = cmd_parser.parse_known_args(rest)
            args.overrides = extra
        else:
            args = cmd_parser.parse_args(rest)
        return int(module.main(args) or 0)

    # one error path: anticipated errors are one line and exit 2, run-time failures exit 1
    return run_command(name, run, debug)


if __name__ == "__main__":
    raise SystemExit(main())
