"""Model registry :data:`MODELS`: a name maps to a builder and the pydantic spec of its options.

``build_model(name, num_classes=..., input_shape=..., **options)`` validates ``options`` with the
model's spec (:func:`model_spec`: an unknown option or a bad type is a one-line ``ConfigError``
naming the option, the closest valid one and all of the model's options), then calls the builder
``builder(spec, num_classes, input_shape) -> nn.Module``. The recipe's ``model:`` section is
validated with the same spec at load time (``config.ModelConfig``).

Image models take images in [0, 1]; text models (``hf_sequence_classifier``, the ``text`` extra,
:mod:`unirobust.models.hf_text`) take packed token ids. Options common to all models
(:class:`ModelSpec`):
``normalize`` (bool, default False) with ``mean``/``std`` (one value or one per channel; ignored
unless ``normalize`` is true), which puts a :class:`~unirobust.models.normalize.Normalize` layer
first inside the model.

A new model is one module with its class and one call ``register_model("name", Class, "summary")``.
Its spec is *derived* from the constructor: each keyword-only parameter other than
``num_classes``, ``input_shape`` and ``normalize`` becomes a field with the parameter's annotation
and default (``pydantic.create_model`` over ``inspect.signature(..., eval_str=True)``). Derived
rather than written out because the constructor already states every option's type and default
exactly once; a second, hand-written class would repeat them and could drift. Options fixed by
the name (``wrn_28_10``: depth 28, widen 10) are left out of its spec, so setting one is an unknown
option. A model whose options need more than a type and a default (a range, a choice), or that is
not built by a class, registers its own :class:`ModelSpec` subclass and builder with
``@MODELS.register(name, Spec)``.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, Field, ValidationError, create_model
from torch import nn

from unirobust.data.tokens import check_token_shape
from unirobust.errors import ConfigError
from unirobust.models.lenet import LeNet
from unirobust.models.mlp import MLP
from unirobust.models.normalize import IMAGENET_MEAN, IMAGENET_STD, Normalize, make_normalize
from unirobust.models.preact_resnet import PreActResNet18
from unirobust.models.resnet import ResNet18
from unirobust.models.resnet50 import ResNet50
from unirobust.models.wide_resnet import WideResNet
from unirobust.models.xcit import XCiT
from unirobust.registry import Entry, Registry
from unirobust.schema import Spec

__all__ = [
    "MODELS",
    "ImageNetModelSpec",
    "ModelSpec",
    "build_model",
    "list_models",
    "model_inputs",
    "model_options",
    "model_spec",
    "register_model",
]


class ModelSpec(Spec):
    """Options every model takes: an input ``Normalize`` layer when ``normalize`` is true.

    ``inputs`` (a class variable) says what the model reads: images ``(C, H, W)`` in [0, 1], or
    packed token ids ``(K, L)`` (:mod:`unirobust.data.tokens`; text models)."""

    inputs: ClassVar[Literal["images", "tokens"]] = "images"
    normalize: bool = False
    mean: float | list[float] | None = None
    std: float | list[float] | None = None

    def normalize_layer(self, channels: int) -> Normalize | None:
        """The optional first layer (``None`` when ``normalize`` is false)."""
        return make_normalize(self.normalize, self.mean, self.std, channels)


class ImageNetModelSpec(ModelSpec):
    """ImageNet architectures: normalisation on by default, with the ImageNet mean and std.

    Every published weight file of these architectures (robustness library, RobustBench, timm)
    was trained on ImageNet-normalised inputs, so the layer belongs to the model; set
    ``normalize: false`` (or other ``mean``/``std``) only for weights trained otherwise.
    """

    normalize: bool = True
    mean: float | list[float] | None = Field(list(IMAGENET_MEAN))
    std: float | list[float] | None = Field(list(IMAGENET_STD))


MODELS: Registry[nn.Module] = Registry("model", modules=("unirobust.models.hf_text",))
"""Every model by name; a builder is ``(spec, num_classes, input_shape) -> nn.Module``."""

_STRUCTURAL = ("num_classes", "input_shape", "normalize")


def derive_spec(
    name: str,
    cls: type[nn.Module],
    fixed: Mapping[str, Any],
    base: type[ModelSpec] = ModelSpec,
) -> type[ModelSpec]:
    """The spec of ``cls``'s keyword-only options (annotation and default each), minus ``fixed``,
    on top of ``base``'s fields."""
    params = inspect.signature(cls.__init__, eval_str=True).parameters
    fields: dict[str, Any] = {
        key: (
            Any if p.annotation is p.empty else p.annotation,
            ... if p.default is p.empty else p.default,
        )
        for key, p in params.items()
        if p.kind is p.KEYWORD_ONLY and key not in _STRUCTURAL and key not in fixed
    }
    title = "".join(part.title() for part in name.split("_"))
    return create_model(
        f"{title}Spec",
        __base__=base,
        __module__=cls.__module__,
        name=(Literal[name], name),  # type: ignore[valid-type]
        **fields,
    )


def register_model(
    name: str,
    cls: type[nn.Module],
    summary: str,
    *,
    base: type[ModelSpec] = ModelSpec,
    **fixed: Any,
) -> type[ModelSpec]:
    """Register ``cls`` under ``name`` with a spec derived from its constructor; ``fixed`` options
    are set by the name and cannot be given; ``base`` supplies the common options and their
    defaults (:class:`ImageNetModelSpec` for ImageNet models). Returns the spec class."""
    spec_cls = derive_spec(name, cls, fixed, base)
    own = [k for k in spec_cls.model_fields if k not in ModelSpec.model_fields]

    def build(spec: ModelSpec, num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
        options = {k: getattr(spec, k) for k in own}
        norm = spec.normalize_layer(input_shape[0])
        return cls(
            num_classes=num_classes, input_shape=input_shape, normalize=norm, **fixed, **options
        )

    build.__doc__ = summary
    MODELS.register(name, spec_cls)(build)
    return spec_cls


register_model(
    "lenet", LeNet, "LeNet-style CNN: two 5x5 convolutions (optional BatchNorm), one hidden layer"
)
register_model("mlp", MLP, "Fully connected network on the flattened image")
register_model("preact_resnet18", PreActResNet18, "Pre-activation ResNet-18 (E-AT / RAMP)")
register_model("resnet18", ResNet18, "ResNet-18 (CIFAR variant: 3x3 stem, no max-pool)")
register_model("wide_resnet", WideResNet, "WideResNet-depth-widen (depth 6n+4)")
register_model("wrn_28_10", WideResNet, "WideResNet-28-10", depth=28, widen=10)
register_model("wrn_34_10", WideResNet, "WideResNet-34-10", depth=34, widen=10)
register_model(
    "resnet50",
    ResNet50,
    "ImageNet ResNet-50 (torchvision names; Engstrom2019Robustness weights)",
    base=ImageNetModelSpec,
)
register_model(
    "xcit_s12",
    XCiT,
    "XCiT-S12/16 (timm xcit_small_12_p16_224 names; Debenedetti2022Light weights)",
    base=ImageNetModelSpec,
    embed_dim=384,
    depth=12,
    num_heads=8,
    mlp_ratio=4.0,
    cls_attn_layers=2,
    eta=1.0,
    tokens_norm=True,
)


def list_models() -> list[str]:
    return MODELS.names()


def _entry(name: str) -> Entry[nn.Module]:
    """A model by name, case and ``-``/``_`` ignored; an unknown one is named as given."""
    key = str(name).strip().lower().replace("-", "_")
    return MODELS.get(key if key in MODELS.names() else str(name))


def model_options(name: str) -> dict[str, Any]:
    """The options a model accepts (besides num_classes and input_shape), with defaults."""
    spec = _entry(name).spec
    return {k: f.default for k, f in spec.model_fields.items() if k != "name"}


def _option_error(error: Mapping[str, Any], spec: type[Spec], model: str) -> ConfigError:
    key = ".".join(str(part) for part in error["loc"]) or "<options>"
    valid = sorted(k for k in spec.model_fields if k != "name")
    listed = f"(valid options: {', '.join(valid) or 'none'})"
    if error["type"] == "extra_forbidden":
        close = difflib.get_close_matches(key, valid, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return ConfigError(f"unknown option '{key}' for model '{model}'{hint} {listed}")
    msg = error["msg"].removeprefix("Value error, ")
    return ConfigError(
        f"bad value for option '{key}' of model '{model}': got {error.get('input')!r}; {msg} "
        f"{listed}"
    )


def model_spec(name: str, options: Mapping[str, Any]) -> BaseModel:
    """A model's options validated by its spec; a one-line ConfigError names a bad option."""
    entry = _entry(name)
    try:
        return entry.spec.model_validate({"name": entry.name, **options})
    except ValidationError as err:
        raise _option_error(err.errors()[0], entry.spec, entry.name) from None


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


def model_inputs(name: str) -> str:
    """What a registered model reads: ``"images"`` or ``"tokens"`` (see :class:`ModelSpec`)."""
    return getattr(_entry(name).spec, "inputs", "images")


def build_model(
    name: str, *, num_classes: int, input_shape: tuple[int, ...], **options: Any
) -> nn.Module:
    """Build a registered model. Unknown names or options raise ConfigError naming them.

    ``input_shape`` is ``(C, H, W)`` for an image model and ``(K, L)`` for a text model."""
    spec = model_spec(name, options)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive int, got {num_classes!r}")
    tokens = getattr(spec, "inputs", "images") == "tokens"
    shape = check_token_shape(input_shape) if tokens else _check_input_shape(input_shape)
    return MODELS.build(spec, num_classes, shape)


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
