"""The objective contract shared by every training loss (DESIGN.md, "objectives/").

An objective is called with the model in **train mode** and a clean batch. It may craft adversarial
examples (attacks switch the model to eval mode themselves and restore it), and returns the scalar
loss to minimise plus a few floats to log. It never switches the model's mode for the update, never
calls ``backward`` and never steps an optimizer: the expert does that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn


@dataclass
class ObjectiveOutput:
    """What one objective call returns.

    ``loss`` is the scalar to minimise. ``logits`` are the train-mode logits on the inputs the
    update trained on (adversarial ones for adversarial training), used only for the running
    training accuracy. ``logs`` holds extra scalars (already Python floats) such as the attack's
    accuracy.
    """

    loss: Tensor
    logits: Tensor
    logs: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class Objective(Protocol):
    """A training loss: ``objective(model, x, y) -> ObjectiveOutput``."""

    name: str

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> ObjectiveOutput: ...


class NaturalObjective:
    """Clean cross-entropy (the natural expert of generalist.md §2 step 4)."""

    name = "natural"

    def __init__(self, generator: torch.Generator | None = None) -> None:
        del generator  # no randomness; accepted so every objective is built the same way

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> ObjectiveOutput:
        logits = model(x)
        return ObjectiveOutput(nn.functional.cross_entropy(logits, y), logits)
