"""``a2d2c demo``: one A²D²C layer and one converted ResNet-18 on random data."""

from __future__ import annotations

import argparse

import torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--num-kernels", type=int, default=4)
    parser.add_argument("--num-points", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)


def main(args: argparse.Namespace) -> int:
    import torchvision

    import a2d2c

    torch.manual_seed(args.seed)
    conv = a2d2c.A2D2Conv2d(64, 128, 3, stride=2, padding=1, num_kernels=args.num_kernels,
                            num_points=args.num_points)
    x = torch.randn(args.batch_size, 64, 32, 32)
    print(conv)
    print("train:", conv.describe(x.shape), "->", tuple(conv(x).shape))
    conv.eval()
    with torch.no_grad():
        same = torch.equal(conv(x), conv(x))
    print("eval: ", conv.describe(x.shape), "| deterministic:", same)

    net = torchvision.models.resnet18(num_classes=10).eval()
    img = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = net(img)
        a2d2c.convert(net, placement="3x3", num_kernels=args.num_kernels)
        n_set = a2d2c.set_temperature(net, 30.0)
        out = net(img)
    rel = ((out - ref).norm() / ref.norm()).item()
    n_params = sum(p.numel() for p in net.parameters())
    print(f"converted resnet18: {n_set} A2D2Conv2d layers, {n_params / 1e6:.2f}M params, "
          f"relative output change at tau=30: {rel:.2e}")
    return 0
