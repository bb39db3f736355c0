"""TRADES (Zhang et al. 2019; multinorm.md §5, generalist.md §3.2 robust expert variant)."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from unirobust.attacks.context import attack_mode
from unirobust.attacks.pgd import check_count, check_threat, pgd, quarter_step
from unirobust.errors import ConfigError
from unirobust.objectives.base import (
    OBJECTIVES,
    Metric,
    Objective,
    ObjectiveContext,
    ObjectiveOutput,
    scored,
)
from unirobust.objectives.pgd_at import check_step
from unirobust.schema import Spec, Threat
from unirobust.threats import ThreatModel

__all__ = ["Trades", "TradesSpec", "kl_rows"]


class TradesSpec(Spec):
    """CE(f(x), y) + beta * KL(p(x) || p(x')) with x' from PGD on the KL."""

    name: Literal["trades"] = "trades"
    threat: Threat
    steps: int = Field(10, ge=1)
    step_size: float | None = Field(None, gt=0)
    beta: float = Field(6.0, ge=0)


def kl_rows(p_log_target: Tensor, log_q: Tensor) -> Tensor:
    """Per-row KL(p || q) from log p and log q."""
    return (p_log_target.exp() * (p_log_target - log_q)).sum(dim=1)


class Trades(Objective):
    """TRADES (Zhang et al. 2019): CE(f(x), y) + beta * (1/B) sum_i KL(p(x)_i || p(x')_i).

    x' is PGD on the per-example KL against the eval-mode clean distribution, starting from
    x + 0.001 N(0, I) (drawn from ``generator``), ``steps`` steps of size ``step_size`` (default
    eps / 4, i.e. 2/255 at 8/255). The loss uses train-mode forwards on x and x'; gradients flow
    through both p(x) and p(x'). The returned logits are the clean train-mode logits.
    """

    name = "trades"

    def __init__(
        self,
        threat: ThreatModel,
        *,
        beta: float = 6.0,
        steps: int = 10,
        step_size: float | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        self.threat = check_threat(threat)
        if isinstance(beta, bool) or not isinstance(beta, (int, float)):
            raise ConfigError(f"trades beta={beta!r} is invalid: must be a finite number >= 0")
        if not math.isfinite(beta) or beta < 0:
            raise ConfigError(f"trades beta={beta!r} is invalid: must be a finite number >= 0")
        self.beta = float(beta)
        self.steps = check_count("steps", steps, 1)
        step = check_step(step_size)
        self.step_size = step if step is not None else quarter_step(self.threat)
        self.generator = generator

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> ObjectiveOutput:
        x = x.detach()
        with attack_mode(model), torch.no_grad():
            log_p_clean = F.log_softmax(model(x), dim=1)

        def kl_to_clean(logits: Tensor, _y: Tensor) -> Tensor:
            return kl_rows(log_p_clean, F.log_softmax(logits, dim=1))

        gen = self.generator
        if gen is None:
            gen = torch.Generator().manual_seed(0)
        noise = torch.randn(x.shape, generator=gen, device=gen.device, dtype=torch.float32)
        start = (x + 0.001 * noise.to(device=x.device, dtype=x.dtype)).clamp(0.0, 1.0)
        x_adv = pgd(
            model,
            x,
            y,
            self.threat,
            steps=self.steps,
            step_size=self.step_size,
            random_start=False,
            loss=kl_to_clean,
            start=start,
            generator=gen,
        )
        logits = model(x)
        logits_adv = model(x_adv)
        natural = F.cross_entropy(logits, y)
        robust = kl_rows(F.log_softmax(logits, dim=1), F.log_softmax(logits_adv, dim=1)).mean()
        loss = natural + self.beta * robust
        return scored(
            loss,
            logits,
            y,
            loss_natural=Metric(natural.detach()),
            loss_robust=Metric(robust.detach()),
        )


@OBJECTIVES.register("trades", TradesSpec)
def build_trades(spec: TradesSpec, ctx: ObjectiveContext) -> Trades:
    """TRADES: clean CE plus beta times the KL to a PGD-on-KL point."""
    return Trades(
        spec.threat,
        beta=spec.beta,
        steps=spec.steps,
        step_size=spec.step_size,
        generator=ctx.generator,
    )
