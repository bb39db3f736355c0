"""SAT: one norm per batch, drawn uniformly (Tramèr & Boneh 2019; multinorm.md §5)."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from unirobust.objectives.base import (
    OBJECTIVES,
    Objective,
    ObjectiveContext,
    ObjectiveOutput,
)
from unirobust.objectives.multinorm import (
    MultiNormObjective,
    MultiNormSpec,
    draw_index,
    spec_kwargs,
)

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

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> ObjectiveOutput:
        j = draw_index([1.0] * len(self.attacked), self.generator)
        return self.train_on_norm(model, x, y, j)[0]


@OBJECTIVES.register("sat", SatSpec)
def build_sat(spec: SatSpec, ctx: ObjectiveContext) -> Objective:
    """SAT: CE on APGD-train points of one uniformly drawn threat per batch."""
    return Sat(**spec_kwargs(spec), generator=ctx.generator)
