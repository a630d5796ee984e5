"""``a2d2c visualize``: sampled points, feature maps and kernel attention (the paper's Fig. 4).

    a2d2c visualize --checkpoint runs/x/best.pt --dataset fashion_mnist --index 0
    a2d2c visualize --checkpoint runs/x/best.pt --image shoe.png --layer layer1.0.conv1
    a2d2c visualize --model resnet18_a2d2c_plus --image cat.jpg --img-size 224 --mode eval
    a2d2c visualize --model resnet18_a2d2c_plus --in-chans 1 --stem cifar --width-mult 0.25 \\
        --dataset fashion_mnist --index 3 --seed 1 --out-dir runs/vis

One PNG per A2D2Conv2d layer (all of them up to --max-layers, or those named by
--layer) is written to --out-dir and its path printed.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", metavar="PATH",
                     help="last.pt / best.pt written by a2d2c train, or model.safetensors")
    src.add_argument("--model", metavar="NAME",
                     help="a registered model with random weights (a quick look)")
    img = parser.add_mutually_exclusive_group(required=True)
    img.add_argument("--image", metavar="PATH", help="a PNG/JPEG file")
    img.add_argument("--dataset", metavar="NAME",
                     help="take --index N of this registered dataset's test/val split")
    parser.add_argument("--index", type=int, default=0, help="image index with --dataset")
    parser.add_argument("--data-root", metavar="DIR", default=None,
                        help="dataset folder (default: the checkpoint's, else the dataset's)")
    parser.add_argument("--layer", action="append", default=None, metavar="NAME",
                        help="qualified name of an A2D2Conv2d (repeatable; default: all of "
                             "them, up to --max-layers)")
    parser.add_argument("--max-layers", type=int, default=8,
                        help="at most this many layers when --layer is not given (default 8)")
    parser.add_argument("--mode", choices=("train", "eval"), default="train",
                        help="train: random points as in training (normalisation layers in "
                             "eval mode); eval: the layers' eval_sampling (default train)")
    parser.add_argument("--eval-sampling", choices=("global", "fixed"), default=None,
                        help="override every layer's eval_sampling (with --mode eval)")
    parser.add_argument("--seed", type=int, default=0,
                        help="torch.manual_seed before the pass: which random points")
    parser.add_argument("--img-size", type=int, default=None,
                        help="resize an --image file to this square side (default: the "
                             "checkpoint's data.img_size, else the file's own size)")
    parser.add_argument("--out-dir", default="runs/visualize", metavar="DIR",
                        help="where the PNGs go (default runs/visualize)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    m = parser.add_argument_group("registered model options (--model)")
    m.add_argument("--num-classes", type=int, default=None)
    m.add_argument("--in-chans", type=int, default=None,
                   help="input channels (default: the dataset's, else 3)")
    m.add_argument("--stem", choices=("imagenet", "cifar"), default=None)
    m.add_argument("--width-mult", type=float, default=None)
    m.add_argument("--num-points", type=int, default=None, help="M of every A2D2Conv2d")


def main(args: argparse.Namespace) -> int:
    import torch

    from ..data import DatasetNotFoundError
    from ..engine import CheckpointError, ConfigError
    from ..engine.config import DataConfig
    from ..visualize import (
        _normalization,
        dataset_image,
        load_image,
        load_model,
        model_in_chans,
        visualize,
    )

    try:
        kwargs = {}
        if args.model is not None:
            for key in ("stem", "width_mult"):
                if getattr(args, key) is not None:
                    kwargs[key] = getattr(args, key)
            if args.num_points is not None:
                kwargs["conv_kwargs"] = {"num_points": args.num_points}
        elif any(getattr(args, k) is not None for k in ("stem", "width_mult", "num_points")):
            raise ValueError("--stem, --width-mult and --num-points apply to --model only; a "
                             "checkpoint is rebuilt from its stored config")
        data_over = {"root": args.data_root} if args.data_root else None
        in_chans = args.in_chans
        if args.model is not None and in_chans is None and args.dataset is not None:
            from ..data import dataset_info

            in_chans = dataset_info(DataConfig(name=args.dataset, root=args.data_root)).in_chans
        model, data_cfg = load_model(checkpoint=args.checkpoint, model_name=args.model,
                                     num_classes=args.num_classes, in_chans=in_chans,
                                     model_kwargs=kwargs, data_overrides=data_over)
        device = torch.device(args.device)
        model.to(device)
        if args.dataset is not None:
            if data_cfg is None or data_cfg.name != args.dataset:
                data_cfg = DataConfig(name=args.dataset, root=args.data_root)
            x, label = dataset_image(data_cfg, args.index)
            what, prefix = f"{args.dataset}[{args.index}] (label {label})", (
                f"{args.dataset}{args.index}_")
        else:
            norm = None
            size = args.img_size
            if data_cfg is not None:
                size = size or data_cfg.img_size
                try:
                    from ..data import get_dataset_spec

                    norm = _normalization(get_dataset_spec(data_cfg.name).build("val",
                                                                                 data_cfg)[1])
                    if size is None:
                        from ..data import dataset_info

                        size = dataset_info(data_cfg).img_size
                except (FileNotFoundError, ValueError) as e:
                    print(f"a2d2c visualize: note: the checkpoint's dataset is not here ({e}); "
                          "the image is used unnormalised", file=sys.stderr)
            x = load_image(args.image, model_in_chans(model), img_size=size, normalization=norm)
            from pathlib import Path

            what, prefix = args.image, f"{Path(args.image).stem}_"
        paths = visualize(model, x.to(device), args.out_dir, layers=args.layer, mode=args.mode,
                          seed=args.seed, max_layers=args.max_layers,
                          eval_sampling=args.eval_sampling, prefix=prefix)
    except (ValueError, TypeError, FileNotFoundError, ConfigError, CheckpointError,
            DatasetNotFoundError) as e:
        print(f"a2d2c visualize: error: {e}", file=sys.stderr)
        return 2
    print(f"{args.checkpoint or args.model} on {what}, mode={args.mode}, seed={args.seed}:")
    for p in paths:
        print(p)
    return 0
