"""``a2d2c profile``: parameters and MAdds of a model, or of every row of the paper's tables.

    a2d2c profile resnet18_odconv
    a2d2c profile resnet50 --variant v1
    a2d2c profile resnet18_a2d2c --input-size 3 32 32 --num-classes 100 --stem cifar
    a2d2c profile resnet18 --conv a2d2c --placement initial
    a2d2c profile --paper [--markdown docs/paper_counts.md] [--tables 4 5] [--no-madds]

The counting itself lives in :mod:`a2d2c.profiling`; this module only parses and prints.
Model overrides default to ``None`` and are passed on only when given.
"""

from __future__ import annotations

import argparse
import ast
import sys
from typing import Any


def _kv(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value  # a bare string such as head=mlp
    return key, parsed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", help="a registered model name (a2d2c.list_models())")
    parser.add_argument("--paper", action="store_true",
                        help="profile every buildable row of the paper's Tables 1-13")
    parser.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"), default=None,
                        help="input size (default 3 224 224; 3 32 32 with --stem cifar)")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="classifier outputs (default 1000; with --detector 81, COCO)")
    parser.add_argument("--batch-size", type=int, default=1,
                        help="batch size of the counted pass (default 1, as in the papers)")
    parser.add_argument("--conv", default=None,
                        help="conv type override (a2d2c.list_conv_layers())")
    parser.add_argument("--num-kernels", type=int, default=None)
    parser.add_argument("--placement", default=None)
    parser.add_argument("--stem", default=None, choices=("imagenet", "cifar"))
    parser.add_argument("--width-mult", type=float, default=None)
    parser.add_argument("--variant", default=None, choices=("v1", "v1.5"),
                        help="ResNet-50: stride on the first 1x1 (v1) or the 3x3 (v1.5)")
    parser.add_argument("--conv-kwarg", type=_kv, action="append", default=[],
                        metavar="KEY=VALUE", help="dynamic layer argument, e.g. head=mlp")
    parser.add_argument("--detector", choices=("maskrcnn",), default=None,
                        help="profile Mask R-CNN + FPN with MODEL as backbone (Table 7: whole "
                             "detector and backbone); --input-size defaults to 3 800 1280")
    parser.add_argument("--by-module", action="store_true", help="also print MAdds per stage")
    parser.add_argument("--tables", type=int, nargs="+", default=None,
                        help="with --paper: only these table numbers")
    parser.add_argument("--no-madds", action="store_true",
                        help="with --paper: parameters only (no forward passes)")
    parser.add_argument("--markdown", default=None, metavar="PATH",
                        help="with --paper: also write the table as Markdown to PATH")


def _fmt_count(n: float, unit: str) -> str:
    if unit == "G" and n >= 1e8:
        return f"{n / 1e9:.3f}G"
    return f"{n / 1e6:.2f}M" if unit == "M" else f"{n / 1e6:.1f}M"


def main(args: argparse.Namespace) -> int:
    if args.paper:
        from ..paper.table import paper_rows, render_markdown, render_text

        rows = paper_rows(tables=args.tables, madds=not args.no_madds, progress=sys.stderr)
        print(render_text(rows))
        if args.markdown:
            with open(args.markdown, "w", encoding="utf-8") as fh:
                fh.write(render_markdown(rows))
            print(f"wrote {args.markdown}")
        return 0
    if not args.model:
        print("a2d2c profile: error: give a MODEL name or --paper", file=sys.stderr)
        return 2

    if args.detector:
        return _profile_detector(args)
    import a2d2c
    from a2d2c.profiling import count_madds, count_params

    overrides = dict(conv=args.conv, num_kernels=args.num_kernels, placement=args.placement,
                     stem=args.stem, width_mult=args.width_mult, variant=args.variant,
                     conv_kwargs=dict(args.conv_kwarg) or None)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    try:
        model = a2d2c.create_model(args.model, num_classes=args.num_classes or 1000, **overrides)
    except (ValueError, TypeError) as exc:
        print(f"a2d2c profile: error: {exc}", file=sys.stderr)
        return 2
    input_size = args.input_size or ((3, 32, 32) if args.stem == "cifar" else (3, 224, 224))
    if min(input_size) < 1 or args.batch_size < 1:
        raise ValueError(f"--input-size and --batch-size must be >= 1, got {tuple(input_size)} "
                         f"and {args.batch_size}")
    try:
        report = count_madds(model, input_size, batch_size=args.batch_size)
    except RuntimeError as exc:  # e.g. an input smaller than a kernel: the user's shape
        raise ValueError(f"{args.model} cannot run on an input of size {tuple(input_size)}: "
                         f"{str(exc).strip().splitlines()[0]}") from None
    n = count_params(model)
    info = getattr(model, "model_args", {})
    print(f"model:   {args.model} " + " ".join(f"{k}={v}" for k, v in info.items()
                                             if k != "arch" and v not in (None, {})))
    print(f"input:   {report.input_shape} (eval mode)")
    print(f"params:  {n:,} ({_fmt_count(n, 'M')})")
    print(f"MAdds:   {report.madds:,} ({_fmt_count(report.madds, 'G')}) = conv/matmul "
          f"{_fmt_count(report.conv_matmul_madds, 'G')} + kernel aggregation "
          f"{_fmt_count(report.aggregation_madds, 'G')}")
    print(f"counted: {report.summary()}")
    if args.by_module:
        for name, madds in report.by_module.items():
            print(f"  {name:<12} {_fmt_count(madds, 'G')}")
    return 0


def _profile_detector(args: argparse.Namespace) -> int:
    """``--detector maskrcnn``: the detector's and its backbone's parameters and MAdds."""
    from a2d2c.detection import create_maskrcnn
    from a2d2c.detection.profile import count_detector

    if args.conv is not None or args.stem is not None:
        print("a2d2c profile: error: --detector takes a registry backbone name; --conv and --stem "
              "do not apply", file=sys.stderr)
        return 2
    overrides = dict(num_kernels=args.num_kernels, width_mult=args.width_mult,
                     variant=args.variant, conv_kwargs=dict(args.conv_kwarg) or None)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    try:
        model = create_maskrcnn(args.model, num_classes=args.num_classes or 81,
                                placement=args.placement or "auto", **overrides)
    except (ValueError, TypeError) as exc:
        print(f"a2d2c profile: error: {exc}", file=sys.stderr)
        return 2
    _c, h, w = args.input_size or (3, 800, 1280)
    cost = count_detector(model, image_size=(h, w))
    print(f"model:    Mask R-CNN + FPN, backbone {args.model}")
    print(f"input:    {cost.image_size[0]}x{cost.image_size[1]} after the detector's resize; "
          f"{cost.proposals} proposals, {cost.detections} masks (eval mode)")
    print(f"params:   {cost.params:,} ({_fmt_count(cost.params, 'M')}); backbone "
          f"{cost.backbone_params:,} ({_fmt_count(cost.backbone_params, 'M')})")
    print(f"MAdds:    {cost.madds:,} ({_fmt_count(cost.madds, 'G')}); backbone "
          f"{cost.backbone_madds:,} ({_fmt_count(cost.backbone_madds, 'G')})")
    print(f"counted:  {cost.dynamic_layers}")
    return 0
