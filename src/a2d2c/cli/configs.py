"""``a2d2c configs [PATTERN]``: the recipes shipped in the package, by name.

    a2d2c configs                    # every recipe
    a2d2c configs 'table1_*'         # a shell-style pattern (a plain word: a substring)
    a2d2c configs --show fashion_mnist_default    # print one recipe's file
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pattern", nargs="?", default=None,
                        help="shell-style pattern or substring, e.g. 'table1_*' or detection")
    parser.add_argument("--show", metavar="NAME", default=None,
                        help="print this recipe's YAML file (as shipped, before _base_ includes)")
    parser.epilog = "Use a name with: a2d2c train --config NAME (or detect train --config NAME)."


def main(args: argparse.Namespace) -> int:
    from ..resources import configs_root, list_configs, resolve_config

    if args.show:
        path = resolve_config(args.show)
        print(f"# {path}")
        print(path.read_text(), end="")
        return 0
    names = list_configs(args.pattern)
    if not names:
        what = f"matching {args.pattern!r}" if args.pattern else f"in {configs_root()}"
        print(f"a2d2c configs: error: no recipe {what} (a2d2c configs lists them all)",
              file=sys.stderr)
        return 2
    for n in names:
        print(n)
    return 0
