"""The model registry: names → entrypoints, one place.

Entrypoints are small functions registered with :func:`register_model` (timm style)::

    @register_model
    def resnet18_odconv(**kwargs) -> ResNet:
        return _resnet("resnet18", conv="odconv", **kwargs)

:func:`create_model` looks a name up and calls its entrypoint with ``num_classes``,
``in_chans`` and the overrides. Duplicate names are an error; unknown names and unknown
override arguments raise with the closest valid choices (``difflib``).
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import os
from collections.abc import Callable

from torch import nn

__all__ = [
    "create_model",
    "get_model_entrypoint",
    "list_models",
    "model_arguments",
    "register_builder",
    "register_model",
]

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_builder(module: str, builder: Callable[..., nn.Module]) -> None:
    """Declare the private builder that the entrypoints of ``module`` call.

    Its keyword arguments are the overrides :func:`create_model` accepts for those
    models (checked before building, so a misspelling names the closest argument).
    """
    _BUILDERS[module] = builder


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn`` under ``fn.__name__``; registering a name twice is an error."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(
            f"model {name!r} is already registered (by {_MODELS[name].__module__}); "
            "model names must be unique"
        )
    _MODELS[name] = fn
    # Late import: timm is optional and the bridge module imports this one.
    from ._timm import register_with_timm

    register_with_timm(name)
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching the shell-style ``pattern`` (``"resnet18*"``)."""
    return sorted(n for n in _MODELS if fnmatch.fnmatchcase(n, pattern))


def _close(word: str, choices: list[str] | set[str], n: int = 3) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=n, cutoff=0.5)
    return f"; did you mean {' or '.join(map(repr, close))}?" if close else ""


def get_model_entrypoint(name: str) -> Callable[..., nn.Module]:
    """The entrypoint registered under ``name`` (``ValueError`` with close matches if none)."""
    if not isinstance(name, str):
        raise TypeError(f"model name must be a str, got {name!r}")
    try:
        return _MODELS[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}{_close(name, list(_MODELS))} "
            f"({len(_MODELS)} models registered; see a2d2c.list_models())"
        ) from None


def model_arguments(name: str) -> list[str] | None:
    """The override arguments the entrypoint of ``name`` accepts.

    ``None`` when they cannot be known before building (an entrypoint registered
    outside this package that takes ``**kwargs`` and no declared builder).
    """
    fn = get_model_entrypoint(name)
    target = _BUILDERS.get(fn.__module__, fn)
    params = inspect.signature(target).parameters.values()
    if target is fn and any(p.kind == p.VAR_KEYWORD for p in params):
        return None
    names = [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
             and p.name not in ("num_classes", "in_chans")]
    # impl= reaches the A²D²C layers through conv_kwargs (see create_model)
    return [*names, "impl"] if "conv_kwargs" in names else names


def create_model(name: str, *, num_classes: int = 1000, in_chans: int = 3,
                 pretrained: bool | str | os.PathLike | None = None,
                 **overrides) -> nn.Module:
    """Build the registered model ``name``.

    Args:
        name: a registered name (:func:`list_models`), e.g. ``"resnet18_a2d2c"``.
        num_classes: classifier outputs.
        in_chans: input image channels.
        pretrained: initial weights: ``True`` (torchvision's ImageNet weights of the static
            architecture, from the torch hub cache), a ``.pth``/``.pt``/``.safetensors``
            file, or ``"timm:<name>"``; dynamic layers receive static weights by the rule
            of :func:`a2d2c.layers.transfer.init_from_static` (see
            :func:`a2d2c.models._pretrained.load_pretrained`). ``None``/``False``: random.
        **overrides: builder arguments, e.g. ``conv``, ``num_kernels``, ``placement``,
            ``conv_kwargs``, ``stem``, ``width_mult``, ``norm_layer``, ``variant``
            (ResNet-50). An argument the model does not take raises ``TypeError``
            naming the closest ones it does.

    Example::

        model = create_model("resnet18_a2d2c", num_classes=10, in_chans=1, stem="cifar",
                             width_mult=0.25)
    """
    fn = get_model_entrypoint(name)
    accepted = model_arguments(name)
    if "impl" in overrides and (accepted is None or "conv_kwargs" in accepted):
        # impl= of the A²D²C layers ("auto", "kernel", "unfold", "plus"), as a shorthand
        # for conv_kwargs={"impl": ...}
        overrides["conv_kwargs"] = {**(overrides.get("conv_kwargs") or {}),
                                    "impl": overrides.pop("impl")}
    unknown = [] if accepted is None else [k for k in overrides if k not in accepted]
    if unknown:
        hints = "".join(f" {k!r}{_close(k, accepted, 2)}" for k in unknown)
        raise TypeError(
            f"model {name!r} got unexpected argument(s):{hints}; it accepts {sorted(accepted)}"
        )
    model = fn(num_classes=num_classes, in_chans=in_chans, **overrides)
    if pretrained is not None and pretrained is not False:
        from ._pretrained import load_pretrained

        load_pretrained(model, pretrained)
    return model
