"""MSD training: CE on the points of the multi steepest descent attack (Maini et al. 2020;
multinorm.md §3, §5)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from unirobust.attacks.msd import msd
from unirobust.attacks.pgd import check_count, threats_by_norm
from unirobust.objectives.base import (
    OBJECTIVES,
    Objective,
    ObjectiveContext,
    ObjectiveOutput,
)
from unirobust.objectives.multinorm import NormName, by_norm, ce_on
from unirobust.schema import Spec, Threat
from unirobust.threats import ThreatModel

__all__ = ["MsdAT", "MsdSpec"]

DEFAULT_MSD_ITERS = 50  # §3 "Defaults: N = 50"


class MsdSpec(Spec):
    """CE on x + MSD(x) over one linf, one l2 and one l1 threat."""

    name: Literal["msd"] = "msd"
    threats: list[Threat]
    steps: int = Field(DEFAULT_MSD_ITERS, ge=1)
    step_sizes: dict[NormName, float] | None = None

    @model_validator(mode="after")
    def _check_threats(self) -> MsdSpec:
        threats_by_norm(self.threats, ("linf", "l2", "l1"), "msd")
        return self


class MsdAT(Objective):
    """MSD training: one MSD attack (§3: one gradient per iteration, three candidate steps, the
    highest-CE one kept, best iterate returned) from the expert's generator (the l1 step's k), then
    CE on it in train mode. ``steps`` is MSD's iteration count N (default 50, §3), not APGD's.
    """

    name = "msd"

    def __init__(
        self,
        threats: Sequence[ThreatModel],
        *,
        steps: int = DEFAULT_MSD_ITERS,
        step_sizes: Mapping[str, float] | None = None,
        generator: torch.Generator,
    ) -> None:
        self.threats = list(by_norm(threats).values())
        self.steps = check_count("steps", steps, 1)
        self.step_sizes = dict(step_sizes or {})
        self.generator = generator

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> ObjectiveOutput:
        x_adv = msd(
            model,
            x,
            y,
            self.threats,
            n_iter=self.steps,
            step_sizes=self.step_sizes,
            generator=self.generator,
        )
        return ce_on(model, x_adv, y)


@OBJECTIVES.register("msd", MsdSpec)
def build_msd(spec: MsdSpec, ctx: ObjectiveContext) -> Objective:
    """MSD training: CE on the multi steepest descent point over linf, l2 and l1."""
    return MsdAT(
        spec.threats, steps=spec.steps, step_sizes=spec.step_sizes, generator=ctx.generator
    )
