"""``a2d2c models [PATTERN]``: the registered model names (``a2d2c.list_models``).

    a2d2c models                     # every model
    a2d2c models 'resnet18*'         # a shell-style pattern (a plain word: a substring)
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pattern", nargs="?", default=None,
                        help="shell-style pattern or substring, e.g. 'resnet18*' or odconv")
    parser.epilog = ("Use a name with: a2d2c train --model.name NAME, or "
                     "a2d2c.create_model(NAME) in Python.")


def main(args: argparse.Namespace) -> int:
    from ..models import list_models

    pattern = args.pattern or "*"
    if not any(c in pattern for c in "*?["):
        pattern = f"*{pattern}*"
    names = list_models(pattern)
    if not names:
        print(f"a2d2c models: error: no registered model matches {args.pattern!r} "
              f"(a2d2c models lists them all)", file=sys.stderr)
        return 2
    for n in names:
        print(n)
    return 0
