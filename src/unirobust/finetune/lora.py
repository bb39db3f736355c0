"""LoRA stages through the ``peft`` library (lpft.md §1.5; the ``lora`` extra).

A stage with ``trainable: lora`` wraps each expert's model with
``LoraConfig(r, lora_alpha, lora_dropout, target_modules, bias="none",
modules_to_save=[head])``: the LoRA adapters and a trainable copy of the head train, every base
weight stays bit for bit. peft's default init (A Kaiming-uniform, B = 0) matches the official code;
``init: gaussian`` is the option the paper's text describes. LP-LoRA is a stage with
``head_init: {mode: logreg}`` and ``trainable: lora``: the probe is fitted on the unwrapped model
first, so peft's head copy starts from the LP head (pitfall 9).

The trainable parameter count is checked against the adapters plus the head (lpft.md §1.5). An
exported model is the merged plain model (``merge_and_unload`` on a copy), so evaluation,
``load_model`` and ``init_from`` never need peft.
"""

from __future__ import annotations

import copy
from typing import Literal

from pydantic import Field
from torch import nn

from unirobust.errors import ConfigError
from unirobust.schema import Strict

__all__ = ["LoraSpec", "is_peft_model", "plain_model", "submodule", "wrap_lora"]


class LoraSpec(Strict):
    """LoRA adapters (lpft.md §1.5 defaults: r = alpha = 8, no dropout, query/value targets)."""

    r: int = Field(8, ge=1)
    alpha: float = Field(8.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["query", "value"], min_length=1)
    init: Literal["default", "gaussian"] = "default"


def _peft():
    try:
        import peft
    except ImportError:
        raise ConfigError(
            "trainable: lora needs the peft library: pip install 'unirobust[lora]'"
        ) from None
    return peft


def is_peft_model(model: nn.Module) -> bool:
    return type(model).__module__.startswith("peft.")


def wrap_lora(model: nn.Module, spec: LoraSpec) -> nn.Module:
    """The model with LoRA adapters on ``target_modules`` and a trainable head copy."""
    peft = _peft()
    head_name = getattr(model, "head_name", None)
    head = submodule(model, head_name) if head_name else None
    if not isinstance(head, nn.Linear):
        raise ConfigError(
            f"trainable: lora needs a model with a linear head (head_name); "
            f"{type(model).__name__} has none"
        )
    config = peft.LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=list(spec.target_modules),
        bias="none",
        modules_to_save=[head_name],
        init_lora_weights=True if spec.init == "default" else "gaussian",
    )
    try:
        wrapped = peft.get_peft_model(model, config)
    except ValueError as err:
        names = sorted({n.split(".")[-1] for n, _ in model.named_modules() if n})
        raise ConfigError(
            f"lora target_modules {spec.target_modules} do not fit {type(model).__name__} "
            f"({str(err).splitlines()[0][:120]}); its modules: {', '.join(names)}"
        ) from None
    adapters = sum(p.numel() for n, p in wrapped.named_parameters() if "lora_" in n)
    expected = adapters + sum(p.numel() for p in head.parameters())
    trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    if trainable != expected:
        raise RuntimeError(f"LoRA wrap trains {trainable} parameters, expected {expected}")
    return wrapped


def submodule(model: nn.Module, name: str) -> nn.Module | None:
    """``model``'s module at a (possibly dotted) name, or None."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def plain_model(model: nn.Module) -> nn.Module:
    """A LoRA model merged into a plain copy (the live model is untouched); others as they are."""
    if not is_peft_model(model):
        return model
    return copy.deepcopy(model).merge_and_unload()
