"""Which convolutions of a backbone become dynamic: placements and the conv maker.

A backbone never imports a layer class. It asks a :class:`ConvMaker` for each of its
convolutions by *qualified name* (the name the module will have in
``model.named_modules()``, e.g. ``"layer3.0.conv1"``) together with the conv's role
(``stem``, ``block``, ``downsample``, ``terminal``, ``head``). The maker decides, from
the placement, whether that conv is ``nn.Conv2d`` or the requested dynamic type, and
builds it through :func:`a2d2c.create_conv2d`.

Placements (SPEC §3, plus the baselines' own):

``"default"``
    The conv type's own paper configuration, :data:`PAPER_CONFIGS` (``"all"`` for
    A²D²C).
``"all"``
    ResNet: every 3×3 conv inside the residual blocks. MobileNetV2: the convs ODConv
    replaces, i.e. every conv but the stem (the blocks' 1×1 expansion, 3×3 depthwise and
    1×1 projection, and the last 1×1 conv).
``"block"``
    Every conv inside the residual / inverted-residual blocks (for ResNet-50 the
    bottlenecks' 1×1s too; no shortcut projections).
``"no-stem"``
    Every conv except the stem: blocks, the 1×1 shortcut projections of ResNet and the
    last 1×1 conv of MobileNetV2.
``"every"``
    Every conv, the stem included.
``"pointwise"``
    Every dense 1×1 conv of the blocks, and MobileNetV2's last 1×1 (depthwise and stem
    stay static).
``"initial"``
    The stem conv only.
``"median"``
    ``layer3.0.conv1`` (the first conv of the middle stage; ResNet only).
``"terminal"``
    A 1×1, C→C layer (conv + norm + ReLU) appended after the last stage; only it is
    dynamic.
``"block-initial"``
    The first conv of every residual / inverted-residual block.
``"stages2-4-3x3"``
    ResNet: every 3×3 conv inside the residual blocks of ``layer2``–``layer4`` (the
    Mask R-CNN backbone of :mod:`a2d2c.detection`; 13 convs in ResNet-50).
``"3x3"``, ``"3x3-dense"``, ``"1x1"``
    By kernel shape wherever the conv is (``"3x3-dense"``: ``groups == 1``).
a predicate ``f(qualified_conv_name) -> bool``
    Any set of convs by name, e.g. ``lambda n: n == "layer2.0.conv2"``.

This one table serves the model builders and :func:`a2d2c.convert` (``a2d2c.PLACEMENTS``
is this dict).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from ..layers.factory import create_conv2d, list_conv_layers

__all__ = [
    "BASELINE_PLACEMENTS",
    "BUILDER_ONLY",
    "CLASSIFIERS",
    "PAPER_CONFIGS",
    "PLACEMENTS",
    "ConvMaker",
    "ConvSite",
    "PooledConvClassifier",
    "TerminalLayer",
    "backbone_modules",
    "infer_sites",
]

ROLES = ("stem", "block", "downsample", "terminal", "head")


@dataclass(frozen=True)
class ConvSite:
    """One convolution of a backbone, as the placement sees it."""

    name: str
    role: str
    kernel_size: int
    groups: int = 1
    first_in_block: bool = False


def _all(site: ConvSite, arch: str) -> bool:
    if arch == "mobilenetv2":  # the convs ODConv replaces (SPEC §3)
        return site.role in ("block", "head")
    return site.role == "block" and site.kernel_size == 3


PLACEMENTS: dict[str, Callable[[ConvSite, str], bool]] = {
    "all": _all,
    "block": lambda s, arch: s.role == "block",
    "no-stem": lambda s, arch: s.role in ("block", "downsample", "head"),
    "every": lambda s, arch: s.role in ("stem", "block", "downsample", "head"),
    "pointwise": lambda s, arch: (s.role in ("block", "downsample", "head")
                                  and s.kernel_size == 1 and s.groups == 1),
    "initial": lambda s, arch: s.role == "stem",
    "median": lambda s, arch: s.name == "layer3.0.conv1",
    "terminal": lambda s, arch: s.role == "terminal",
    "block-initial": lambda s, arch: s.role == "block" and s.first_in_block,
    # detection (a2d2c.detection): the 3×3 block convs of the stages the 1x recipe trains
    "stages2-4-3x3": lambda s, arch: (arch == "resnet" and s.role == "block"
                                      and s.kernel_size == 3
                                      and s.name.startswith(("layer2.", "layer3.", "layer4."))),
    # by kernel shape, wherever the conv is (stem and shortcuts included)
    "3x3": lambda s, arch: s.kernel_size == 3,
    "3x3-dense": lambda s, arch: s.kernel_size == 3 and s.groups == 1,
    "1x1": lambda s, arch: s.kernel_size == 1,
}

#: placements that need a backbone's own structure (an appended layer, block boundaries):
#: the model builders have it, :func:`a2d2c.convert` on an arbitrary network does not
BUILDER_ONLY = ("terminal", "block-initial")


def infer_sites(model: nn.Module) -> list[tuple[ConvSite, nn.Conv2d]]:
    """The ``nn.Conv2d`` modules of any network as placement sites (for ``a2d2c.convert``).

    Roles are inferred from the module tree, torchvision-style: the first conv of the
    network is the ``stem``; a conv whose qualified name contains ``downsample`` or
    ``shortcut`` is a ``downsample`` projection; every other conv is a ``block`` conv.
    So ``"all"`` means the same as in the builders: ResNet's 3×3 block convs.
    """
    convs = [(n, m) for n, m in model.named_modules() if type(m) is nn.Conv2d]
    sites = []
    for i, (name, conv) in enumerate(convs):
        parts = name.split(".")
        if i == 0 and len(convs) > 1:
            role = "stem"
        elif any(("downsample" in p or "shortcut" in p) for p in parts):
            role = "downsample"
        else:
            role = "block"
        kh, kw = conv.kernel_size
        sites.append((ConvSite(name, role, kh if kh == kw else -1, conv.groups), conv))
    return sites

# What "default" means for each conv type on each backbone ("resnet18", "resnet50",
# "mobilenetv2"): (placement, default conv_kwargs, classifier), from each method's paper
# and official code, checked against the published parameter counts (SPEC §3; the
# paper's tables in docs/paper_counts.md):
# * ODConv (od_resnet.py / od_mobilenetv2.py): every conv of the residual blocks; in
#   MobileNetV2 also the last 1×1 (44.90M / 90.67M / 4.44M, 7.50M, 11.51M).
# * DynamicConv: every conv but the stem, shortcut projections included
#   (45.47M / 100.88M / 4.57M, 7.95M, 12.40M).
# * CondConv (8 experts): every conv (89.89M / 189.92M, the paper's Tables 4 and 5).
# * DCD: the block convs with the authors' latent size and pooling (ResNet-18:
#   L = ⌊√(4C)⌋, 2×2 pooling; ResNet-50: L = ⌊√C⌋) and their dynamic classifier
#   (DCDLinear) (14.70M / 29.84M); MobileNetV2: the dense 1×1 convs (groups = 1 only).
PAPER_CONFIGS: dict[tuple[str, str], tuple[str, dict[str, Any], str]] = {
    **{(a, c): ("all", {}, "linear") for a in ("resnet18", "resnet50", "mobilenetv2")
       for c in ("a2d2c", "a2d2c+")},
    ("resnet18", "odconv"): ("block", {}, "linear"),
    ("resnet50", "odconv"): ("block", {}, "linear"),
    ("mobilenetv2", "odconv"): ("no-stem", {}, "linear"),
    ("resnet18", "dynamicconv"): ("no-stem", {}, "linear"),
    ("resnet50", "dynamicconv"): ("no-stem", {}, "linear"),
    ("mobilenetv2", "dynamicconv"): ("no-stem", {}, "linear"),
    ("resnet18", "condconv"): ("every", {}, "linear"),
    ("resnet50", "condconv"): ("every", {}, "linear"),
    ("mobilenetv2", "condconv"): ("every", {}, "linear"),
    ("resnet18", "dcd"): ("block", {"latent_dim": "sqrt", "pool_size": 2}, "dynamic"),
    ("resnet50", "dcd"): ("block", {"latent_dim": "sqrt"}, "dynamic"),
    ("mobilenetv2", "dcd"): ("pointwise", {}, "dynamic"),
}
CLASSIFIERS = ("linear", "dynamic")
# The conv types with a dynamic classifier of their own.
_DYNAMIC_CLASSIFIERS = ("condconv", "dcd")
BASELINE_PLACEMENTS = {k: v[0] for k, v in PAPER_CONFIGS.items()}


PlacementArg = str | Callable[[str], bool] | None


@dataclass
class ConvMaker:
    """Builds each conv of a backbone: dynamic where the placement says, else static.

    Args:
        arch: ``"resnet18"``, ``"resnet50"`` or ``"mobilenetv2"`` (selects the
            conv type's paper configuration for ``placement="default"``).
        conv: a conv-factory name (``a2d2c.list_conv_layers()``).
        num_kernels: ``K`` for the dynamic layers (``None``: the layer's default).
        placement: a placement name, a predicate on the qualified conv name, or
            ``None`` for ``"default"``.
        conv_kwargs: extra keyword arguments of the dynamic layer; they update the
            conv type's paper defaults for this backbone (:data:`PAPER_CONFIGS`).
        classifier: ``"linear"`` (``nn.Linear``), ``"dynamic"`` (the conv type's own
            dynamic classifier: DCD's ``DCDLinear``, CondConv's K-expert 1×1
            ``CondConv2d`` on the pooled features) or ``None`` (the paper config's).
    """

    arch: str
    conv: str = "static"
    num_kernels: int | None = None
    placement: PlacementArg = None
    conv_kwargs: dict[str, Any] = field(default_factory=dict)
    classifier: str | None = None
    built: list[str] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        if self.conv not in list_conv_layers():
            from ..layers.factory import get_conv_layer

            get_conv_layer(self.conv)  # raises with close matches
        if self.conv_kwargs is None:
            self.conv_kwargs = {}
        if not isinstance(self.conv_kwargs, dict):
            raise TypeError(f"conv_kwargs must be a dict, got {self.conv_kwargs!r}")
        if self.conv == "static" and (self.num_kernels is not None or self.conv_kwargs):
            raise ValueError(
                "conv='static' takes no num_kernels or conv_kwargs (got "
                f"num_kernels={self.num_kernels!r}, conv_kwargs={self.conv_kwargs!r}); "
                "choose a dynamic conv type"
            )
        if "num_kernels" in self.conv_kwargs:
            raise ValueError("pass num_kernels as its own argument, not inside conv_kwargs")
        paper_placement, paper_kwargs, paper_classifier = PAPER_CONFIGS.get(
            (self.arch, self.conv), ("all", {}, "linear"))
        self.conv_kwargs = {**paper_kwargs, **self.conv_kwargs}
        classifier = paper_classifier if self.classifier is None else self.classifier
        if classifier not in CLASSIFIERS:
            raise ValueError(f"classifier must be one of {CLASSIFIERS}, got {classifier!r}")
        if classifier == "dynamic" and self.conv not in _DYNAMIC_CLASSIFIERS:
            raise ValueError(
                f"classifier='dynamic' exists for conv types {_DYNAMIC_CLASSIFIERS}, not "
                f"{self.conv!r}"
            )
        self.resolved_classifier = classifier
        p = "default" if self.placement is None else self.placement
        if isinstance(p, str):
            if p == "default":
                p = paper_placement
            if p not in PLACEMENTS:
                import difflib

                close = difflib.get_close_matches(p, list(PLACEMENTS), n=2)
                hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
                raise ValueError(
                    f"unknown placement {self.placement!r}{hint}; use one of "
                    f"{['default', *PLACEMENTS]} or a predicate f(conv_name) -> bool"
                )
            if p == "median" and not self.arch.startswith("resnet"):
                raise ValueError(f"placement 'median' is defined for ResNet only, not {self.arch}")
        elif not callable(p):
            raise TypeError(f"placement must be a name or a callable, got {p!r}")
        self.resolved_placement = p

    @property
    def terminal(self) -> bool:
        """Whether the backbone must append the terminal 1×1 layer."""
        return self.resolved_placement == "terminal"

    def is_dynamic(self, site: ConvSite) -> bool:
        if self.conv == "static":
            return False
        p = self.resolved_placement
        if isinstance(p, str):
            family = "mobilenetv2" if self.arch == "mobilenetv2" else "resnet"
            return PLACEMENTS[p](site, family)
        return bool(p(site.name))

    def __call__(
        self,
        site: ConvSite,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        bias: bool = False,
    ) -> nn.Module:
        if site.role not in ROLES:
            raise ValueError(f"unknown conv role {site.role!r}")
        if self.is_dynamic(site):
            self.built.append(site.name)
            kwargs = dict(self.conv_kwargs)
            if self.num_kernels is not None:
                kwargs["num_kernels"] = self.num_kernels
            return create_conv2d(self.conv, in_channels, out_channels, kernel_size, stride,
                                 padding, 1, groups, bias, **kwargs)
        return nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups,
                         bias=bias)

    def make_classifier(self, name: str, in_features: int, num_classes: int) -> nn.Module:
        """The classifier ``(B, in_features) → (B, num_classes)``; identity for 0 classes."""
        if not num_classes:
            return nn.Identity()
        if self.resolved_classifier == "linear":
            return nn.Linear(in_features, num_classes)
        self.built.append(name)
        if self.conv == "dcd":
            from ..layers.dcd import DCDLinear

            # the dynamic classifier normalises its latent space like the convs
            norm = self.conv_kwargs.get("latent_norm")
            return DCDLinear(in_features, num_classes,
                             **({} if norm is None else {"latent_norm": norm}))
        kwargs = {} if self.num_kernels is None else {"num_kernels": self.num_kernels}
        conv = create_conv2d(self.conv, in_features, num_classes, 1, bias=True, **kwargs)
        return PooledConvClassifier(conv)

    def check_used(self, model_name: str) -> None:
        """A dynamic conv type whose placement selected nothing is almost surely a typo."""
        if self.conv != "static" and not self.built:
            raise ValueError(
                f"{model_name}: placement {self.placement!r} selected no convolution for "
                f"conv={self.conv!r}; check the conv names (model.named_modules())"
            )


class PooledConvClassifier(nn.Module):
    """A 1×1 dynamic conv applied as a classifier to pooled features ``(B, C)``."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x[:, :, None, None]).flatten(1)


class TerminalLayer(nn.Module):
    """The ``terminal`` placement's layer: a 1×1, C→C conv + norm + activation.

    Appended after a backbone's last stage (SPEC §3); its conv is ``terminal.conv``.
    A module of its own (not an ``nn.Sequential``) so that feature extractors that
    flatten sequentials still see it as one stage.
    """

    def __init__(self, make: ConvMaker, channels: int, norm_layer: Callable[[int], nn.Module],
                 act_layer: Callable[..., nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.conv = make(ConvSite("terminal.conv", "terminal", 1), channels, channels, 1)
        self.bn = norm_layer(channels)
        self.act = act_layer(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


def backbone_modules(model: nn.Module, dynamic: list[str]):
    """``model.modules()`` minus the insides of the dynamic layers named in ``dynamic``.

    Backbones initialise their own convs, norms and classifier; a dynamic layer's
    parameters (and the ``nn.Linear``/``nn.Conv2d`` of its attention) keep the layer's
    own initialisation.
    """
    skip = tuple(name + "." for name in dynamic)
    for name, module in model.named_modules():
        if name in dynamic or name.startswith(skip):
            continue
        yield module
