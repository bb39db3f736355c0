"""Clean cross-entropy: the natural expert of generalist.md §2 step 4 and of RAMP's GP (§4.3)."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch.nn.functional as F
from torch import Tensor, nn

from unirobust.objectives.base import (
    OBJECTIVES,
    Objective,
    ObjectiveContext,
    ObjectiveOutput,
    scored,
)
from unirobust.schema import Spec


class NaturalSpec(Spec):
    """Clean cross-entropy; no threat."""

    perturbs_inputs: ClassVar[bool] = False
    name: Literal["natural"] = "natural"


class NaturalObjective(Objective):
    """CE on the clean batch."""

    name = "natural"

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> ObjectiveOutput:
        logits = model(x)
        return scored(F.cross_entropy(logits, y), logits, y)


@OBJECTIVES.register("natural", NaturalSpec)
def build_natural(spec: NaturalSpec, ctx: ObjectiveContext) -> NaturalObjective:
    """Clean cross-entropy (no attack)."""
    return NaturalObjective()
