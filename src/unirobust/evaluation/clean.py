"""Metric group ``clean``: the clean logits of every point, and the clean accuracy from them.

The logits are computed once, in float32 with autocast off, the model in eval mode (restored) and
the global RNG untouched, and are stored in the per-sample table; every later group (threats,
union, calibration) reads them from there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from unirobust.attacks.context import attack_mode, preserve_rng
from unirobust.data.tokens import float_inputs
from unirobust.evaluation.autoattack import _fp32_model, _no_autocast
from unirobust.evaluation.keys import Summary
from unirobust.models import batched_logits, model_device

if TYPE_CHECKING:
    from unirobust.evaluation.results import EvalResults

__all__ = ["clean_logits", "clean_summary"]


def clean_logits(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Float32 logits (N x classes, on the CPU) of ``x`` in batches of ``batch_size``."""
    device = model_device(model)
    model = _fp32_model(model)
    with preserve_rng(), attack_mode(model), _no_autocast(device):
        logits = batched_logits(model, float_inputs(x.detach()), batch_size, out_device="cpu")
    return logits.to(torch.float32)


def clean_summary(table: EvalResults) -> dict[str, Any]:
    return {Summary.CLEAN_ACC: table.clean_acc()}
