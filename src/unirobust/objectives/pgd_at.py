"""PGD adversarial training (Madry et al.; multinorm.md §5 "PGD-AT", generalist.md §3.2).

The attack is crafted in eval mode from the raw model (the attack functions switch modes and
restore them) and the loss is computed with the model in the caller's train mode.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from unirobust.attacks.apgd import apgd_train
from unirobust.attacks.pgd import check_count, check_threat, pgd
from unirobust.errors import ConfigError
from unirobust.objectives.base import (
    OBJECTIVES,
    Metric,
    Objective,
    ObjectiveContext,
    ObjectiveOutput,
    scored,
)
from unirobust.schema import Spec, Threat
from unirobust.threats import ThreatModel

__all__ = ["PgdAT", "PgdATSpec", "SingleThreatSpec", "check_step"]


def check_step(step_size: float | None) -> float | None:
    """A fixed attack step: ``None`` (the attack's default rule) or a finite number > 0."""
    if step_size is None:
        return None
    if isinstance(step_size, bool) or not isinstance(step_size, (int, float)):
        raise ConfigError(f"step_size={step_size!r} is invalid: must be a finite number > 0")
    if not math.isfinite(step_size) or step_size <= 0:
        raise ConfigError(f"step_size={step_size!r} is invalid: must be a finite number > 0")
    return float(step_size)


class SingleThreatSpec(Spec):
    """Base of objectives that attack one threat with a fixed number of steps."""

    threat: Threat
    steps: int = Field(10, ge=1)
    step_size: float | None = Field(None, gt=0)

    def options(self, exclude: tuple[str, ...] = ("threat",)) -> dict[str, Any]:
        """The constructor's keyword options: the threat is passed on its own."""
        return super().options(exclude)


class PgdATSpec(SingleThreatSpec):
    """CE on PGD (fixed step) or APGD-train adversarial points of one threat."""

    name: Literal["pgd_at"] = "pgd_at"
    attack: Literal["pgd", "apgd"] = "pgd"
    random_start: bool | None = None


class PgdAT(Objective):
    """PGD adversarial training: CE on adversarial points (Madry et al.).

    ``attack='pgd'``: classic fixed-step PGD (linf random start U[-eps, eps], default step
    2.5 eps / steps). ``attack='apgd'``: E-AT/RAMP APGD-train with ``steps`` iterations, training on
    its best-loss iterate (no random start; step size is adaptive, so ``step_size`` and
    ``random_start`` must be left unset). Logs ``adv_acc`` (eval-mode accuracy along the attack)
    for ``apgd``, where it is free.
    """

    name = "pgd_at"

    def __init__(
        self,
        threat: ThreatModel,
        *,
        attack: str = "pgd",
        steps: int = 10,
        step_size: float | None = None,
        random_start: bool | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        self.threat = check_threat(threat)
        if attack not in ("pgd", "apgd"):
            raise ConfigError(f"unknown pgd_at attack {attack!r}: allowed are 'pgd' and 'apgd'")
        self.attack = attack
        self.steps = check_count("steps", steps, 1)
        self.step_size = check_step(step_size)
        if attack == "apgd" and self.step_size is not None:
            raise ConfigError("step_size is not used by attack 'apgd' (adaptive); leave it unset")
        if attack == "apgd" and random_start:
            raise ConfigError("random_start is not used by attack 'apgd' (it starts at x)")
        if random_start is not None and not isinstance(random_start, bool):
            raise ConfigError(f"random_start={random_start!r} is invalid: must be true or false")
        self.random_start = random_start
        self.generator = generator

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> ObjectiveOutput:
        metrics: dict[str, Metric] = {}
        if self.attack == "pgd":
            x_adv = pgd(
                model,
                x,
                y,
                self.threat,
                steps=self.steps,
                step_size=self.step_size,
                random_start=self.random_start,
                generator=self.generator,
            )
        else:
            result = apgd_train(model, x, y, self.threat, n_iter=self.steps, is_train=True)
            x_adv = result.x_best
            metrics["adv_acc"] = Metric(result.robust.float().mean())
        logits = model(x_adv)
        return scored(F.cross_entropy(logits, y), logits, y, **metrics)


@OBJECTIVES.register("pgd_at", PgdATSpec)
def build_pgd_at(spec: PgdATSpec, ctx: ObjectiveContext) -> PgdAT:
    """CE on adversarial points of one threat (PGD or APGD-train)."""
    return PgdAT(spec.threat, **spec.options(), generator=ctx.generator)
