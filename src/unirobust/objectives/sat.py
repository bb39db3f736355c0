"""SAT: one norm per batch, drawn uniformly (Tramèr & Boneh 2019; multinorm.md §5)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unirobust.objectives.base import (
    OBJECTIVES,
    Metric,
    Objective,
    ObjectiveContext,
    ObjectiveOutput,
    scored,
)
from unirobust.objectives.multinorm import (
    DEFAULT_STEPS,
    MultiNormObjective,
    MultiNormSpec,
    draw_index,
    robust_metrics,
    spec_kwargs,
)
from unirobust.threats import ThreatModel

__all__ = ["Sat", "SatSpec"]


class SatSpec(MultiNormSpec):
    """CE on APGD-train points of one threat per batch, drawn uniformly from ``threats``."""

    name: Literal["sat"] = "sat"


class Sat(MultiNormObjective):
    """SAT: each batch draws one threat uniformly (from ``generator``) and trains CE on it.

    The draw is one uniform number from the expert's generator, so the sequence of norms is
    reproducible and resumes with the generator state. Logs ``norm`` (index into ``threats``,
    ``last``) and the eval-mode accuracy along the attack of the drawn norm.
    """

    name = "sat"

    def __init__(
        self,
        threats: Sequence[ThreatModel],
        steps: int | Mapping[str, int] = DEFAULT_STEPS,
        *,
        generator: torch.Generator,
    ) -> None:
        super().__init__(threats, steps)
        self.generator = generator

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> ObjectiveOutput:
        j = draw_index([1.0] * len(self.attacked), self.generator)
        norm = self.attacked[j]
        result = self.attack(model, x, y, norm)
        logits = model(result.x_best)
        return scored(
            F.cross_entropy(logits, y),
            logits,
            y,
            norm=Metric(float(j), "last"),
            **robust_metrics({norm: result}),
        )


@OBJECTIVES.register("sat", SatSpec)
def build_sat(spec: SatSpec, ctx: ObjectiveContext) -> Objective:
    """SAT: CE on APGD-train points of one uniformly drawn threat per batch."""
    return Sat(**spec_kwargs(spec), generator=ctx.generator)
