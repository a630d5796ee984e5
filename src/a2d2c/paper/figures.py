"""The parameter and MAdds figures of the paper's Tables 1–13 (``paper.md``), as data.

One :class:`PaperRow` per table row, with the paper's figures transcribed as printed
(``None`` where the paper gives none) and how this project builds the row (a registered
model name and overrides; ``model=None`` where the row is not a model we provide).
:mod:`a2d2c.paper.table` builds and counts them.

Build conventions: ImageNet rows are 1000-class models at 224²; CIFAR-100 rows are
100-class models with the CIFAR stem at 32²; COCO (Table 7) rows are the backbone
without its classifier, the paper's figure in brackets. ResNet-50 rows use
``variant="v1"`` (the paper's static 3.858G is v1). A²D²C ResNet-50 rows use
``placement="block"`` (every bottleneck conv): the paper's 89.70M is only reachable that
way, whereas the ``"all"`` placement (the 3×3 convs) gives 59.5M.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["PAPER_ROWS", "PaperRow", "condconv_late"]


@dataclass(frozen=True)
class PaperRow:
    table: int
    row: str
    dataset: str  # "ImageNet", "CIFAR-100" or "COCO"
    params_m: float | None  # the paper's parameters, millions
    madds_g: float | None  # the paper's MAdds, billions
    model: str | None  # registered model name; None: not buildable here
    overrides: dict[str, Any] = field(default_factory=dict)
    note: str = ""


def condconv_late(name: str) -> bool:
    """The 3×3 convs of ResNet-18's last three blocks (``layer3.1``, ``layer4.0``, ``layer4.1``).

    With an 8-expert classifier (``classifier="dynamic"``) this reproduces the 81.35M
    that the paper quotes for CondConv ResNet-18 on CIFAR-100 (a reconstruction: the
    paper does not say which layers; CondConv's own paper puts experts in the later
    layers and the classifier).
    """
    return name.startswith(("layer3.1.", "layer4.")) and "downsample" not in name


_V1 = {"variant": "v1"}
_A2_R50 = {"variant": "v1", "placement": "block"}
_N_R50 = "placement='block' (every bottleneck conv); placement 'all' (3x3 only) gives 59.51M"
_HEAD = "A2D2C's attention head is unspecified in the paper; ours: direct (parameter-free)"
_PLUS = ("MAdds of the plus form actually executed (K convolutions); the paper counts the "
         "kernel form")
_CIFAR_COPY = "the paper's CIFAR figures equal its ImageNet (1000-class) ones"
_COPIED_R18 = "figure identical to Table 1's ResNet-18 row (copied in the paper)"
_DCN4 = ("FlashInternImage-T (DCNv4), the smallest official DCNv4 backbone; the paper's size "
         "matches no published configuration")
_INTERN = ("InternImage-T, the smallest official configuration; the paper's size matches no "
           "published configuration")

R = PaperRow
PAPER_ROWS: list[PaperRow] = [
    # Table 1: CIFAR-100, ResNet-18 (params only)
    R(1, "ResNet-18 (static)", "CIFAR-100", 11.69, None, "resnet18", {}, _CIFAR_COPY),
    R(1, "ViT-Small", "CIFAR-100", 22.12, None, "vit_small"),
    R(1, "DCNv4", "CIFAR-100", 12.22, None, "flash_internimage_t", {}, _DCN4),
    R(1, "InternImage", "CIFAR-100", 25.39, None, "internimage_t", {}, _INTERN),
    R(1, "CondConv", "CIFAR-100", 81.35, None, "resnet18_condconv",
      {"placement": condconv_late, "classifier": "dynamic"},
      "reconstruction: 8 experts in the last three blocks' 3x3 convs + an 8-expert "
      "classifier; the default (every conv) is Table 4's 89.89M"),
    R(1, "DynamicConv", "CIFAR-100", 45.47, None, "resnet18_dynamicconv"),
    R(1, "DCD", "CIFAR-100", 14.70, None, "resnet18_dcd"),
    R(1, "ODConv (4x)", "CIFAR-100", 44.90, None, "resnet18_odconv"),
    R(1, "A2D2C (4x)", "CIFAR-100", 43.93, None, "resnet18_a2d2c", {}, _HEAD),
    R(1, "A2D2C+ (4x)", "CIFAR-100", 43.93, None, "resnet18_a2d2c_plus", {}, _HEAD),
    # Table 2: CIFAR-100, ResNet-50 (params only)
    R(2, "ResNet-50 (static)", "CIFAR-100", 25.58, None, "resnet50", _V1),
    R(2, "ViT-Small", "CIFAR-100", 22.12, None, "vit_small"),
    R(2, "DCNv4", "CIFAR-100", 12.22, None, "flash_internimage_t", {}, _DCN4),
    R(2, "InternImage", "CIFAR-100", 25.39, None, "internimage_t", {}, _INTERN),
    R(2, "CondConv", "CIFAR-100", 81.35, None, "resnet50_condconv", _V1, _COPIED_R18),
    R(2, "DynamicConv", "CIFAR-100", 45.47, None, "resnet50_dynamicconv", _V1, _COPIED_R18),
    R(2, "DCD", "CIFAR-100", 14.70, None, "resnet50_dcd", _V1, _COPIED_R18),
    R(2, "ODConv (4x)", "CIFAR-100", 90.67, None, "resnet50_odconv", _V1),
    R(2, "A2D2C (4x)", "CIFAR-100", 89.70, None, "resnet50_a2d2c", _A2_R50, _N_R50),
    R(2, "A2D2C+ (4x)", "CIFAR-100", 89.70, None, "resnet50_a2d2c_plus", _A2_R50, _N_R50),
    # Table 3: CIFAR-100, MobileNetV2 (params only)
    R(3, "MobileNetV2 (0.5x)", "CIFAR-100", 2.00, None, "mobilenetv2_050"),
    R(3, "DynamicConv (0.5x)", "CIFAR-100", 4.57, None, "mobilenetv2_050_dynamicconv"),
    R(3, "ODConv (0.5x)", "CIFAR-100", 4.44, None, "mobilenetv2_050_odconv"),
    R(3, "A2D2C+ (4x) (0.5x)", "CIFAR-100", 3.32, None, "mobilenetv2_050_a2d2c_plus", {}, _HEAD),
    R(3, "MobileNetV2 (0.75x)", "CIFAR-100", 2.64, None, "mobilenetv2_075"),
    R(3, "DynamicConv (0.75x)", "CIFAR-100", 7.95, None, "mobilenetv2_075_dynamicconv"),
    R(3, "ODConv (0.75x)", "CIFAR-100", 7.50, None, "mobilenetv2_075_odconv"),
    R(3, "A2D2C+ (4x) (0.75x)", "CIFAR-100", 5.08, None, "mobilenetv2_075_a2d2c_plus", {},
      _HEAD),
    R(3, "MobileNetV2 (1.0x)", "CIFAR-100", 3.50, None, "mobilenetv2_100"),
    R(3, "DynamicConv (1.0x)", "CIFAR-100", 12.40, None, "mobilenetv2_100_dynamicconv"),
    R(3, "ODConv (1.0x)", "CIFAR-100", 11.51, None, "mobilenetv2_100_odconv"),
    R(3, "A2D2C+ (4x) (1.0x)", "CIFAR-100", 10.21, None, "mobilenetv2_100_a2d2c_plus", {},
      _HEAD),
    # Table 4: ImageNet, ResNet-18
    R(4, "ResNet-18 (static)", "ImageNet", 11.69, 1.814, "resnet18"),
    R(4, "ViT-Small (w/o P)", "ImageNet", 22.10, 4.600, "vit_small"),
    R(4, "CondConv", "ImageNet", 89.89, 1.894, "resnet18_condconv"),
    R(4, "DynamicConv", "ImageNet", 45.47, 1.861, "resnet18_dynamicconv"),
    R(4, "DCD", "ImageNet", 14.70, 1.841, "resnet18_dcd"),
    R(4, "ODConv (4x)", "ImageNet", 44.90, 1.916, "resnet18_odconv"),
    R(4, "Swin-Tiny (w/o P)", "ImageNet", 28.28, 4.500, "swin_tiny"),
    R(4, "A2D2C (4x)", "ImageNet", 44.93, 1.926, "resnet18_a2d2c", {}, _HEAD),
    R(4, "A2D2C+ (4x)", "ImageNet", 44.93, 1.934, "resnet18_a2d2c_plus", {}, _PLUS),
    # Table 5: ImageNet, ResNet-50
    R(5, "ResNet50 (static)", "ImageNet", 25.56, 3.858, "resnet50", _V1),
    R(5, "ViT-Small (w/o P)", "ImageNet", 22.1, 4.600, "vit_small"),
    R(5, "Swin-Tiny (w/o P)", "ImageNet", 28.28, 4.500, "swin_tiny"),
    R(5, "CondConv", "ImageNet", 189.92, 3.978, "resnet50_condconv", _V1),
    R(5, "DynamicConv", "ImageNet", 100.88, 3.965, "resnet50_dynamicconv", _V1),
    R(5, "DCD", "ImageNet", 29.84, 3.944, "resnet50_dcd", _V1),
    R(5, "DCNv4 (w/o P)", "ImageNet", 27.32, 4.650, "flash_internimage_t", {}, _DCN4),
    R(5, "ODConv (4x)", "ImageNet", 90.67, 4.080, "resnet50_odconv", _V1),
    R(5, "A2D2C (4x)", "ImageNet", 89.70, 4.083, "resnet50_a2d2c", _A2_R50, _N_R50),
    R(5, "A2D2C+ (4x)", "ImageNet", 89.70, 4.095, "resnet50_a2d2c_plus", _A2_R50,
      f"{_N_R50}; {_PLUS}"),
    # Table 6: ImageNet, MobileNetV2 0.5x
    R(6, "MobileNetV2 (0.5x)", "ImageNet", 2.00, 0.0971, "mobilenetv2_050"),
    R(6, "CondConv", "ImageNet", 13.61, 0.1100, "mobilenetv2_050_condconv", {},
      "CondConv's own MobileNetV2 placement (late blocks + classifier) is not reproduced; "
      "ours: 8 experts in every conv"),
    R(6, "DynamicConv", "ImageNet", 4.57, 0.1032, "mobilenetv2_050_dynamicconv"),
    R(6, "DCD", "ImageNet", 3.06, 0.1056, "mobilenetv2_050_dcd", {},
      "DCD on the dense 1x1 convs (depthwise convs stay static)"),
    R(6, "ODConv (4x)", "ImageNet", 4.44, 0.1064, "mobilenetv2_050_odconv"),
    R(6, "A2D2C (4x)", "ImageNet", 4.05, 0.1052, "mobilenetv2_050_a2d2c", {}, _HEAD),
    R(6, "A2D2C+ (4x)", "ImageNet", 4.05, 0.1052, "mobilenetv2_050_a2d2c_plus", {}, _PLUS),
    # Table 7: COCO Mask R-CNN, backbone without the classifier (the bracketed figures)
    R(7, "ResNet50", "COCO", 23.51, None, "resnet50", _V1),
    R(7, "CondConv (8x)", "COCO", 113.46, None, "resnet50_condconv", _V1),
    R(7, "DynamicConv (4x)", "COCO", 98.83, None, "resnet50_dynamicconv", _V1),
    R(7, "DCD", "COCO", 27.79, None, "resnet50_dcd", _V1),
    R(7, "Swin-tiny", "COCO", 25.23, None, "swin_tiny"),
    R(7, "ODConv (1x)", "COCO", 26.59, None, "resnet50_odconv_1x", _V1),
    R(7, "ODConv (4x)", "COCO", 88.62, None, "resnet50_odconv", _V1),
    R(7, "A2D2C+ (4x)", "COCO", 87.95, None, "resnet50_a2d2c_plus", _A2_R50, _N_R50),
    # Table 8: ImageNet, A2D2C+ placements in ResNet-18
    R(8, "ResNet18 (Static)", "ImageNet", 11.69, 1.814, "resnet18"),
    R(8, "+ A2D2C+ (Initial)", "ImageNet", 11.72, 1.920, "resnet18_a2d2c_plus",
      {"placement": "initial"}, _PLUS),
    R(8, "+ A2D2C+ (Median)", "ImageNet", 10.58, 1.920, "resnet18_a2d2c_plus",
      {"placement": "median"}, f"adding kernels cannot shrink the network; {_PLUS}"),
    R(8, "+ A2D2C+ (Terminal)", "ImageNet", 12.74, 1.920, "resnet18_a2d2c_plus",
      {"placement": "terminal"}, _PLUS),
    # Table 9: CIFAR-100, the same placements
    R(9, "ResNet18 (Static)", "CIFAR-100", 11.69, 1.814, "resnet18", {}, _CIFAR_COPY),
    R(9, "+ A2D2C+ (Initial)", "CIFAR-100", 11.72, 1.920, "resnet18_a2d2c_plus",
      {"placement": "initial"}, _CIFAR_COPY),
    R(9, "+ A2D2C+ (Median)", "CIFAR-100", 10.58, 1.920, "resnet18_a2d2c_plus",
      {"placement": "median"}, _CIFAR_COPY),
    R(9, "+ A2D2C+ (Terminal)", "CIFAR-100", 12.74, 1.920, "resnet18_a2d2c_plus",
      {"placement": "terminal"}, _CIFAR_COPY),
    # Table 10: the number of points M (A2D2C+ ResNet-18, CIFAR-100; params only)
    *[R(10, f"M={m}", "CIFAR-100", 44.93, None, "resnet18_a2d2c_plus",
        {"conv_kwargs": {"num_points": m}}, _HEAD) for m in (50, 100, 150, 200)],
    # Table 11: ImageNet, A2D2C+ (8x) in the first conv of every block
    R(11, "ResNet18", "ImageNet", 11.69, 1.814, "resnet18"),
    R(11, "+ A2D2C+ (8x, Initial)", "ImageNet", 44.78, 1.920, "resnet18_a2d2c_plus",
      {"placement": "block-initial", "num_kernels": 8}, _PLUS),
    R(11, "ResNet50", "ImageNet", 25.56, 3.858, "resnet50", _V1),
    R(11, "+ A2D2C+ (8x, Initial)", "ImageNet", 55.95, 3.900, "resnet50_a2d2c_plus",
      {"placement": "block-initial", "num_kernels": 8, "variant": "v1"}, _PLUS),
    # Table 12: the number of kernels K (A2D2C+ ResNet-18, CIFAR-100; params only)
    *[R(12, f"K={k}", "CIFAR-100", p, None, "resnet18_a2d2c_plus", {"num_kernels": k}, _HEAD)
      for k, p in ((4, 44.93), (8, 88.87), (12, 132.82), (16, 176.76))],
    # Table 13: ImageNet, sampling ablation (A2D2C+ ResNet-18)
    R(13, "Baseline (ResNet-18)", "ImageNet", 11.69, 1.814, "resnet18"),
    R(13, "A2D2C+ (RS)", "ImageNet", 44.93, 1.934, "resnet18_a2d2c_plus", {}, _PLUS),
    R(13, "A2D2C+ (w/o LS)", "ImageNet", 43.21, 1.880, "resnet18_a2d2c_plus",
      {"conv_kwargs": {"sampling": "global"}},
      f"sampling has no parameters, the three rows cannot differ in size; {_PLUS}"),
    R(13, "A2D2C+ (FS)", "ImageNet", 43.90, 1.920, "resnet18_a2d2c_plus",
      {"conv_kwargs": {"sampling": "fixed"}}, _PLUS),
]
