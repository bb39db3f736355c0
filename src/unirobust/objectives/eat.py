"""E-AT: sample one norm per batch, more often the one the model is least robust to (Croce & Hein
2022; multinorm.md §5, oracle §11.9)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from unirobust.errors import CheckpointError
from unirobust.objectives.base import (
    OBJECTIVES,
    Metric,
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

__all__ = ["EAT_NORMS", "Eat", "EatSpec", "eat_weights"]

EAT_NORMS: tuple[str, ...] = ("linf", "l1")
"""E-AT samples only the two extreme norms (an l2 threat may be given; it is not attacked)."""


class EatSpec(MultiNormSpec):
    """CE on APGD-train points of linf or l1, drawn per batch with probability ∝ 1 - robust rate."""

    name: Literal["eat"] = "eat"

    def attacked_norms(self) -> tuple[str, ...]:
        return EAT_NORMS


def eat_weights(robust: Sequence[int], seen: Sequence[int]) -> list[float]:
    """Sampling probabilities from the accumulators (§5).

    w_j = 1 - robust_j / seen_j once every seen_j > 0; uniform before that and when every w_j is
    0 (robust everywhere). Returned normalised to sum 1.
    """
    n = len(seen)
    if any(s <= 0 for s in seen):
        return [1.0 / n] * n
    w = [1.0 - r / s for r, s in zip(robust, seen, strict=True)]
    total = sum(w)
    if total <= 0:
        return [1.0 / n] * n
    return [v / total for v in w]


class Eat(MultiNormObjective):
    """E-AT: per batch draw linf or l1 ∝ :func:`eat_weights`, attack it, CE on the attack point.

    Per norm it accumulates robust_j (rows still correctly classified along the whole attack,
    APGD-train's ``robust``) and seen_j (rows attacked), from 0 and **never reset** across epochs;
    they are the objective's state, so a resume draws the same norms (the draw itself uses the
    expert's generator, saved by the Trainer). robust_j stays on the batch's device; reading it
    for the next draw is the one host sync per batch that choosing an attack needs.
    """

    name = "eat"

    fixed_norms = EAT_NORMS

    def setup_state(self) -> None:
        self._robust = torch.zeros(len(EAT_NORMS), dtype=torch.long)
        self._seen = [0] * len(EAT_NORMS)

    def weights(self) -> list[float]:
        """The current sampling probabilities (linf, l1)."""
        return eat_weights(self._robust.tolist(), self._seen)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> ObjectiveOutput:
        probs = self.weights()
        j = draw_index(probs, self.generator)
        p_metrics = {f"p_{n}": Metric(p, "last") for n, p in zip(EAT_NORMS, probs, strict=True)}
        out, result = self.train_on_norm(model, x, y, j, **p_metrics)
        self._robust = self._robust.to(result.robust.device)
        self._robust[j] += result.robust.sum()
        self._seen[j] += int(y.shape[0])
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "robust": self._robust.detach().cpu().clone(),
            "seen": torch.tensor(self._seen, dtype=torch.long),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        n = len(EAT_NORMS)
        ok = set(state) == {"robust", "seen"} and all(
            isinstance(state[k], Tensor) and state[k].shape == (n,) for k in state
        )
        if not ok:
            raise CheckpointError(
                f"objective 'eat' expects state {{robust, seen}} of {n} counts, got {sorted(state)}"
            )
        self._robust = state["robust"].to(device=self._robust.device, dtype=torch.long).clone()
        self._seen = [int(v) for v in state["seen"].tolist()]


@OBJECTIVES.register("eat", EatSpec)
def build_eat(spec: EatSpec, ctx: ObjectiveContext) -> Objective:
    """E-AT: CE on linf or l1 APGD-train points, the norm drawn ∝ 1 - its robust rate."""
    return Eat(**spec_kwargs(spec), generator=ctx.generator)
