"""RAMP (Jiang & Singh, NeurIPS 2024): train on the worse of two attacks and pull the logits of
the key pair together (multinorm.md §4.2, TRADES variant §4.4).

Per batch, with the key pair (q, r) of :mod:`unirobust.objectives.key_pairs`::

    x_q, l_q = APGD-train(q)      x_r, l_r = APGD-train(r)      # eval mode, CE of the best point
    x_max    = x_q where l_q > l_r else x_r                     # strict: ties -> r, not recomputed
    z_r, z_q, z_max = f(x_r), f(x_q), f(x_max)                  # train mode, in this order
    mask     = argmax z_q == y (detached);  nc = mask.sum()
    L        = CE(z_max, y) + lam * L_pair(z_q, z_r; mask)      # L_pair = 0 if nc == 0

Gradients flow through both z_q and z_r; only the mask is detached; the divisor is nc, not B.
The forward order matters for BatchNorm's running statistics, hence the fixed order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from unirobust.errors import ConfigError
from unirobust.objectives.base import (
    OBJECTIVES,
    Metric,
    Objective,
    ObjectiveContext,
    ObjectiveOutput,
    scored,
)
from unirobust.objectives.key_pairs import key_pair
from unirobust.objectives.multinorm import (
    DEFAULT_STEPS,
    MultiNormObjective,
    MultiNormSpec,
    NormName,
    by_norm,
    robust_metrics,
    select_max,
    spec_kwargs,
)
from unirobust.objectives.trades import kl_rows
from unirobust.threats import ThreatModel

__all__ = [
    "PAIR_LOSSES",
    "Ramp",
    "RampSpec",
    "pair_loss_cosine",
    "pair_loss_kl",
    "pair_loss_mse",
]

PairLoss = Literal["kl", "mse", "cosine"]


def _masked_mean(rows: Tensor, mask: Tensor) -> Tensor:
    """sum over masked rows / nc, and exactly 0 when nc == 0 (no host sync, no NaN)."""
    nc = mask.sum()
    return torch.where(mask, rows, torch.zeros_like(rows)).sum() / nc.clamp_min(1)


def pair_loss_kl(zq: Tensor, zr: Tensor, mask: Tensor) -> Tensor:
    """(1/nc) sum_mask KL(softmax zq_i || softmax zr_i) = sum p_q (log p_q - log p_r) / nc."""
    return _masked_mean(kl_rows(F.log_softmax(zq, dim=1), F.log_softmax(zr, dim=1)), mask)


def pair_loss_mse(zq: Tensor, zr: Tensor, mask: Tensor) -> Tensor:
    """Reference parity: mean of (zq - zr)^2 over the nc*K masked entries, divided by nc again."""
    return _masked_mean((zq - zr).pow(2).mean(dim=1), mask) / mask.sum().clamp_min(1)


def pair_loss_cosine(zq: Tensor, zr: Tensor, mask: Tensor) -> Tensor:
    """(1/nc) sum_mask (1 - cos(zq_i, zr_i)), reduced to a scalar (the reference never reduced it,
    so its backward failed: §9)."""
    return _masked_mean(1.0 - F.cosine_similarity(zq, zr, dim=1), mask)


PAIR_LOSSES: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    "kl": pair_loss_kl,
    "mse": pair_loss_mse,
    "cosine": pair_loss_cosine,
}


def _radii(threats: Sequence[ThreatModel]) -> dict[str, float]:
    return {n: t.eps for n, t in by_norm(threats).items()}


class RampSpec(MultiNormSpec):
    """RAMP: CE on the worse of the key pair's attacks + lam * pairing loss (§4.2, §4.4).

    ``threats``: the radius configuration (all three norms, so the §4.1 table can be looked up;
    only the pair is attacked). ``pair``: explicit (q, r), required when the radii are not in the
    table. ``steps``: one count or ``{q: n_q, r: n_r}``. ``variant: trades`` replaces CE on x_max by
    CE(f(x), y) + trades_beta * mean KL(p(x) || p(x_max)) (§4.4); ``compat: official`` then runs
    the clean forward twice as the reference does (§7).
    """

    name: Literal["ramp"] = "ramp"
    pair: tuple[NormName, NormName] | None = None
    lam: float = Field(1.5, ge=0, allow_inf_nan=False)
    pair_loss: PairLoss = "kl"
    variant: Literal["ce", "trades"] = "ce"
    trades_beta: float = Field(6.0, ge=0, allow_inf_nan=False)
    compat: Literal["default", "official"] = "default"

    def attacked_norms(self) -> tuple[str, ...]:
        return key_pair(_radii(self.threats), self.pair)


class Ramp(MultiNormObjective):
    """RAMP's per-batch loss (§4.2), optionally the TRADES variant (§4.4); see the module doc.

    TRADES variant forwards, in the reference's order: z_r, z_q, f(x), f(x_max) and, with
    ``compat='official'``, f(x) again for the KL term (BN sees the clean batch twice). There the
    returned correct/count are those of the clean forward (the CE term); otherwise of z_max.
    """

    name = "ramp"

    def __init__(
        self,
        threats: Sequence[ThreatModel],
        steps: int | Mapping[str, int] = DEFAULT_STEPS,
        *,
        pair: Sequence[str] | None = None,
        lam: float = 1.5,
        pair_loss: str = "kl",
        variant: str = "ce",
        trades_beta: float = 6.0,
        compat: str = "default",
    ) -> None:
        q, r = key_pair(_radii(threats), pair)
        super().__init__(threats, steps, attacked=(q, r))
        self.q, self.r = q, r
        if pair_loss not in PAIR_LOSSES:
            raise ConfigError(f"unknown ramp pair_loss {pair_loss!r}: allowed are kl, mse, cosine")
        if variant not in ("ce", "trades") or compat not in ("default", "official"):
            raise ConfigError(f"ramp variant={variant!r}, compat={compat!r} are not allowed")
        for key, value in (("lam", lam), ("trades_beta", trades_beta)):
            if isinstance(value, bool) or not (
                isinstance(value, (int, float)) and 0 <= value < math.inf
            ):
                raise ConfigError(f"ramp {key}={value!r} is invalid: must be a finite number >= 0")
        self.lam = float(lam)
        self.pair_loss = pair_loss
        self.variant = variant
        self.trades_beta = float(trades_beta)
        self.compat = compat

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> ObjectiveOutput:
        res_q = self.attack(model, x, y, self.q)
        res_r = self.attack(model, x, y, self.r)
        # r first: a later candidate needs a strictly greater loss, so ties go to r.
        x_max, index = select_max([res_r.x_best, res_q.x_best], [res_r.loss_best, res_q.loss_best])
        zr = model(res_r.x_best)
        zq = model(res_q.x_best)
        mask = (zq.argmax(dim=1) == y).detach()
        l_pair = PAIR_LOSSES[self.pair_loss](zq, zr, mask)
        metrics: dict[str, Metric] = {}
        if self.variant == "ce":
            logits = model(x_max)
            main = F.cross_entropy(logits, y)
        else:
            logits = model(x)
            z_max = model(x_max)
            z_clean_kl = model(x) if self.compat == "official" else logits
            natural = F.cross_entropy(logits, y)
            robust = kl_rows(F.log_softmax(z_clean_kl, dim=1), F.log_softmax(z_max, dim=1)).mean()
            main = natural + self.trades_beta * robust
            metrics["loss_natural"] = Metric(natural.detach())
            metrics["loss_robust"] = Metric(robust.detach())
        loss = main + self.lam * l_pair
        return scored(
            loss,
            logits,
            y,
            loss_pair=Metric(l_pair.detach()),
            source_correct=Metric(mask.float().mean()),
            picked_q=Metric((index == 1).float().mean()),
            **metrics,
            **robust_metrics({self.q: res_q, self.r: res_r}),
        )


@OBJECTIVES.register("ramp", RampSpec)
def build_ramp(spec: RampSpec, ctx: ObjectiveContext) -> Objective:
    """RAMP: CE on the worse key-pair attack + lam * logit pairing (KL, MSE or cosine)."""
    return Ramp(**spec_kwargs(spec))
