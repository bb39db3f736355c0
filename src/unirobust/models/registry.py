"""Model registry: ``build_model(name, num_classes=..., input_shape=..., **options)``.

Every model takes images in [0, 1]. Options common to all models: ``normalize`` (bool, default
False) with ``mean``/``std`` (one value or one per channel; ignored unless ``normalize`` is true),
which puts a :class:`~unirobust.models.normalize.Normalize` layer first inside the model.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from unirobust.errors import ConfigError
from unirobust.models.lenet import LeNet
from unirobust.models.mlp import MLP
from unirobust.models.normalize import ImageClassifier, make_normalize
from unirobust.models.preact_resnet import PreActResNet18
from unirobust.models.resnet import ResNet18
from unirobust.models.wide_resnet import WideResNet

__all__ = ["build_model", "list_models", "model_options"]

# name -> (class, options fixed by the name)
_REGISTRY: dict[str, tuple[type[ImageClassifier], dict[str, Any]]] = {
    "lenet": (LeNet, {}),
    "mlp": (MLP, {}),
    "preact_resnet18": (PreActResNet18, {}),
    "resnet18": (ResNet18, {}),
    "wide_resnet": (WideResNet, {}),
    "wrn_28_10": (WideResNet, {"depth": 28, "widen": 10}),
    "wrn_34_10": (WideResNet, {"depth": 34, "widen": 10}),
}
_COMMON = ("normalize", "mean", "std")
_STRUCTURAL = {"num_classes", "input_shape", "normalize", "self"}


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def _canonical(name: str) -> str:
    key = str(name).strip().lower().replace("-", "_")
    if key not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return key


def model_options(name: str) -> dict[str, Any]:
    """The options a model accepts (besides num_classes and input_shape), with defaults."""
    cls, fixed = _REGISTRY[_canonical(name)]
    params = inspect.signature(cls.__init__).parameters
    opts = {
        k: p.default
        for k, p in params.items()
        if k not in _STRUCTURAL and k not in fixed and p.kind is p.KEYWORD_ONLY
    }
    return {"normalize": False, "mean": None, "std": None, **opts}


def _check_input_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    try:
        shape = tuple(int(v) for v in input_shape)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 3 or shape[0] < 1 or min(shape[1:]) < 8:
        raise ConfigError(
            f"input_shape must be (channels, height, width) with height, width >= 8, "
            f"got {input_shape!r}"
        )
    return shape  # type: ignore[return-value]


def build_model(
    name: str, *, num_classes: int, input_shape: tuple[int, int, int], **kwargs: Any
) -> nn.Module:
    """Build a registry model. Unknown names or options raise ConfigError naming them."""
    key = _canonical(name)
    cls, fixed = _REGISTRY[key]
    allowed = model_options(key)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for model {key!r}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive int, got {num_classes!r}")
    shape = _check_input_shape(input_shape)
    norm = make_normalize(
        kwargs.pop("normalize", False), kwargs.pop("mean", None), kwargs.pop("std", None), shape[0]
    )
    return cls(num_classes=num_classes, input_shape=shape, normalize=norm, **fixed, **kwargs)


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter (or buffer); CPU for a stateless module."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def batched_logits(
    model: nn.Module,
    x: torch.Tensor,
    batch_size: int = 1000,
    *,
    out_device: torch.device | str | None = None,
) -> torch.Tensor:
    """Eval-mode logits of ``x``, ``batch_size`` rows at a time, without gradients.

    The library's one batched prediction helper (validation, calibration, the clean pass and
    attack checks of the evaluation, corruptions). Each batch is moved to the model's device; the
    logits are returned on ``out_device`` (default: the model's device). The model's train/eval
    mode is restored afterwards. Predictions are ``batched_logits(...).argmax(1)``.
    """
    device = model_device(model)
    target = torch.device(out_device) if out_device is not None else device
    was_training = model.training
    model.eval()
    try:
        starts = range(0, len(x), batch_size) if len(x) else [0]  # an empty x gives (0, K)
        return torch.cat([model(x[i : i + batch_size].to(device)).to(target) for i in starts])
    finally:
        model.train(was_training)
