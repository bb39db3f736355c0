"""AVG: train on the adversarial points of every threat at once (Tramèr & Boneh 2019;
multinorm.md §5)."""

from __future__ import annotations

from typing import Literal

import torch
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
    ce_on,
    robust_metrics,
    spec_kwargs,
)

__all__ = ["Avg", "AvgSpec"]


class AvgSpec(MultiNormSpec):
    """Mean CE over the APGD-train points of every threat (one forward on n_threats * B rows)."""

    name: Literal["avg"] = "avg"


class Avg(MultiNormObjective):
    """AVG: attack every threat on the pre-update model, then **one** train-mode forward on the
    concatenated batch (n_threats * B rows, threats in the order given) and the mean CE.

    One forward, not one per threat, so BN sees the same 3B-row batch as the reference;
    ``count`` is n_threats * B.
    """

    name = "avg"

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> ObjectiveOutput:
        results = self.attack_all(model, x, y)
        x_all = torch.cat([r.x_best for r in results.values()])
        return ce_on(model, x_all, y.repeat(len(results)), **robust_metrics(results))


@OBJECTIVES.register("avg", AvgSpec)
def build_avg(spec: AvgSpec, ctx: ObjectiveContext) -> Objective:
    """AVG: mean CE over the APGD-train points of every threat, one forward on 3B rows."""
    return Avg(**spec_kwargs(spec))
