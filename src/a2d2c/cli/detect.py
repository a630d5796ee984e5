"""``a2d2c detect``: Mask R-CNN + FPN on COCO-format data (train, eval, profile, make-shapes).

    a2d2c detect train --config detection/maskrcnn_r50_a2d2c_plus_fpn_1x --train.lr 0.01
    torchrun --nproc_per_node 8 -m a2d2c detect train --config ...   # DDP
    a2d2c detect eval --checkpoint runs/detection/x/checkpoint.pth
    a2d2c detect profile --config detection/maskrcnn_r50_fpn_1x
    a2d2c detect make-shapes --out data/shapes                     # the synthetic dataset
"""

from __future__ import annotations

import argparse
import json

__all__ = ["add_arguments", "main"]

#: `--section.key value` options the parser does not know become config overrides, as in
#: `a2d2c train` (one syntax for every command); the dispatcher puts them in args.overrides
ACCEPTS_OVERRIDES = True
_WITH_OVERRIDES = ("train", "profile")


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.epilog = ("Any config key can be overridden as --section.key value, e.g. --train.lr "
                "0.01 --data.root data/coco (values are YAML).")
    p.add_argument("--set", dest="set_overrides", action="append", default=[],
                   metavar="KEY=VALUE", help=argparse.SUPPRESS)  # deprecated: --section.key


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    p = sub.add_parser("train", help="train a detector from a YAML config (DDP under torchrun)")
    p.add_argument("--config", required=True,
                   help="a shipped recipe (a2d2c configs detection) or a YAML file")
    p.add_argument("--data-root", default=None, help="COCO root (overrides data.root)")
    p.add_argument("--output-dir", default=None, help="run folder (overrides output_dir)")
    p.add_argument("--pretrained", default=None,
                   help="classification checkpoint of the backbone (overrides model.pretrained)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda (overrides device)")
    p.add_argument("--resume", default=None, help="continue from a detection checkpoint.pth")
    _add_overrides(p)

    p = sub.add_parser("eval", help="evaluate a detection checkpoint with pycocotools")
    p.add_argument("--checkpoint", required=True, help="checkpoint.pth written by detect train")
    p.add_argument("--config", default=None,
                   help="config of a checkpoint that carries none (a plain state_dict)")
    p.add_argument("--data-root", default=None, help="COCO root (default: the run's)")
    p.add_argument("--split", default=None, help="split to evaluate (default: val2017)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=1, help="images per process")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast on CUDA")
    p.add_argument("--json", default=None, help="also write the figures to this file")

    p = sub.add_parser("profile", help="parameters and MAdds: detector and backbone (Table 7)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="YAML recipe of the detector")
    src.add_argument("--backbone", help="registry backbone name, e.g. resnet50_a2d2c_plus")
    p.add_argument("--num-classes", type=int, default=81, help="classes + background (81)")
    p.add_argument("--size", type=int, nargs=2, default=(800, 1280), metavar=("H", "W"),
                   help="input image size before the detector's resize (800 1280)")
    _add_overrides(p)

    p = sub.add_parser("make-shapes", help="write the synthetic COCO-format shapes dataset")
    p.add_argument("--out", required=True, help="dataset root to create")
    p.add_argument("--num-train", type=int, default=64)
    p.add_argument("--num-val", type=int, default=16)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)


def _overrides(args: argparse.Namespace) -> list[str]:
    """The ``--section.key value`` tokens, then the deprecated ``--set key=value`` ones."""
    return [*getattr(args, "overrides", []), *(f"--{kv}" for kv in args.set_overrides)]


def _train(args: argparse.Namespace) -> int:
    from ..detection import load_config, run_train

    overrides = _overrides(args)
    for key, value in (("data.root", args.data_root), ("output_dir", args.output_dir),
                       ("model.pretrained", args.pretrained), ("device", args.device)):
        if value is not None:
            overrides.append(f"--{key}={json.dumps(value)}")
    config = load_config(args.config, overrides)
    run_train(config, resume=args.resume)
    return 0


def _eval(args: argparse.Namespace) -> int:
    import torch.distributed

    from ..detection import load_config, run_eval
    from ..engine.distributed import is_distributed

    config = load_config(args.config) if args.config else None
    stats = run_eval(args.checkpoint, config=config, data_root=args.data_root, split=args.split,
                     device=args.device, batch_size=args.batch_size, workers=args.workers,
                     amp=args.amp)
    if args.json and (not is_distributed() or torch.distributed.get_rank() == 0):
        with open(args.json, "w") as f:
            json.dump(stats, f, indent=2)
    return 0


def _profile(args: argparse.Namespace) -> int:
    from ..detection import build_detector, load_config
    from ..detection.profile import count_detector

    overrides = _overrides(args)
    if args.backbone:
        overrides.append(f"--model.backbone={args.backbone}")
    config = load_config(args.config, overrides)
    model = build_detector(config, num_classes=args.num_classes, load_pretrained=False)
    cost = count_detector(model, image_size=tuple(args.size))
    print(f"{config.model.backbone}: {cost}")
    return 0


def _make_shapes(args: argparse.Namespace) -> int:
    from ..detection import make_shapes_dataset

    root = make_shapes_dataset(args.out, num_train=args.num_train, num_val=args.num_val,
                               image_size=args.image_size, seed=args.seed)
    print(f"wrote {args.num_train} training and {args.num_val} validation images to {root}")
    return 0


def main(args: argparse.Namespace) -> int:
    import sys

    from ..engine.config import ConfigError

    actions = {"train": _train, "eval": _eval, "profile": _profile, "make-shapes": _make_shapes}
    extra = getattr(args, "overrides", [])
    if extra and args.action not in _WITH_OVERRIDES:
        print(f"a2d2c detect {args.action}: error: unrecognized arguments: {' '.join(extra)}",
              file=sys.stderr)
        return 2
    try:
        return actions[args.action](args)
    except ConfigError as e:  # a bad recipe name, key or value: one line, not a traceback
        print(f"a2d2c detect: error: {e}", file=sys.stderr)
        return 2
