"""MAX: per example, train on the threat whose attack found the highest loss (Tramèr & Boneh
2019; multinorm.md §5)."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from unirobust.objectives.base import (
    OBJECTIVES,
    Metric,
    Objective,
    ObjectiveContext,
    ObjectiveOutput,
)
from unirobust.objectives.multinorm import (
    MAX_TIE_ORDER,
    MultiNormObjective,
    MultiNormSpec,
    ce_on,
    robust_metrics,
    select_max,
    spec_kwargs,
)

__all__ = ["Max", "MaxSpec"]


class MaxSpec(MultiNormSpec):
    """CE on the per-example worst APGD-train point over ``threats``."""

    name: Literal["max"] = "max"


class Max(MultiNormObjective):
    """MAX: attack every threat, keep per example the point with the highest **eval-mode** attack
    loss (APGD-train's ``loss_best``, not recomputed), then CE in train mode.

    Ties go to the first norm in the order linf, l1, l2 (§5), whatever order ``threats`` has;
    the tie order is encoded in :func:`select_max`, not left to ``torch.max``. Logs
    ``picked_<norm>``: the fraction of rows taken from each threat.
    """

    name = "max"

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> ObjectiveOutput:
        results = self.attack_all(model, x, y)
        order = [n for n in MAX_TIE_ORDER if n in results]
        x_adv, index = select_max(
            [results[n].x_best for n in order], [results[n].loss_best for n in order]
        )
        picked = {f"picked_{n}": Metric((index == j).float().mean()) for j, n in enumerate(order)}
        return ce_on(model, x_adv, y, **picked, **robust_metrics(results))


@OBJECTIVES.register("max", MaxSpec)
def build_max(spec: MaxSpec, ctx: ObjectiveContext) -> Objective:
    """MAX: CE on the per-example highest-loss APGD-train point over every threat."""
    return Max(**spec_kwargs(spec))
