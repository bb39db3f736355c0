"""The objective contract shared by every training loss (DESIGN.md "seams", issue 7 point 1).

An objective is called with the model in **train mode** and a clean batch. It may craft adversarial
examples (attacks switch the model to eval mode themselves and restore it) and returns an
:class:`ObjectiveOutput`: the scalar loss, its own correct/count over the rows it trained on (AVG
trains on 3B rows, so the Trainer never assumes B), and extra metrics, each with a declared
reduction. Values stay tensors on the model's device: the Trainer sums them on the device and
reads them once per logging interval, so a step never waits for the accelerator.

It never switches the model's mode for the update, never calls ``backward`` and never steps an
optimizer: the expert does that. Objectives with state (E-AT's never-reset accumulators) override
:meth:`Objective.state_dict` / :meth:`Objective.load_state_dict`; the train state saves it, so a
resume is bit-exact.

Plug-ins register a spec class and a builder in :data:`OBJECTIVES`
(``unirobust.objectives.natural`` is the smallest example).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from unirobust.errors import CheckpointError
from unirobust.registry import Registry

Reduction = Literal["mean", "sum", "last"]
"""How a metric is reduced over an epoch: ``mean`` weighted by rows, ``sum``, or the ``last``."""


@dataclass(frozen=True)
class Metric:
    """An extra value to log, e.g. the attack's accuracy (``mean``) or a sampled norm (``last``)."""

    value: Tensor | float
    reduction: Reduction = "mean"


@dataclass
class ObjectiveOutput:
    """What one objective call returns.

    ``loss``: the scalar to minimise. ``correct``: how many of the ``count`` rows trained on were
    classified correctly by the train-mode forward (a 0-dim tensor, no host sync). ``metrics``:
    extra values with their reduction; ``mean`` metrics are weighted by ``count``.
    """

    loss: Tensor
    correct: Tensor
    count: int
    metrics: dict[str, Metric] = field(default_factory=dict)


def scored(loss: Tensor, logits: Tensor, y: Tensor, **metrics: Metric) -> ObjectiveOutput:
    """An output whose correct/count come from the train-mode ``logits`` of the rows trained on."""
    with torch.no_grad():
        correct = (logits.argmax(1) == y).sum()
    return ObjectiveOutput(loss, correct, int(y.numel()), dict(metrics))


class Objective(ABC):
    """A training loss: ``objective(model, x, y) -> ObjectiveOutput``; stateless by default."""

    name: ClassVar[str] = ""

    @abstractmethod
    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> ObjectiveOutput: ...

    def state_dict(self) -> dict[str, Any]:
        """Plain values and tensors only (the train state loads with ``weights_only=True``)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise CheckpointError(
                f"objective '{self.name}' keeps no state, but the checkpoint holds {sorted(state)}"
            )


def perturbs_inputs(spec: Any) -> bool:
    """Whether an objective trains on perturbed inputs (an attack): true unless its spec says
    ``perturbs_inputs: ClassVar[bool] = False``. Token inputs allow only the others."""
    return bool(getattr(spec, "perturbs_inputs", True))


@dataclass(frozen=True)
class ObjectiveContext:
    """What a builder gets besides its spec: the expert's own random stream."""

    generator: torch.Generator


OBJECTIVES: Registry[Objective] = Registry(
    "objective",
    modules=(
        "unirobust.objectives.natural",
        "unirobust.objectives.pgd_at",
        "unirobust.objectives.trades",
        "unirobust.objectives.sat",
        "unirobust.objectives.avg",
        "unirobust.objectives.max",
        "unirobust.objectives.msd",
        "unirobust.objectives.eat",
        "unirobust.objectives.ramp",
    ),
)
"""Every training loss by name; a builder is ``(spec, ObjectiveContext) -> Objective``."""
