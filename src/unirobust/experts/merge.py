"""The merge-rule seam (DESIGN.md): how a set of experts becomes the model that is evaluated.

A merge rule is told after every optimizer step and after every epoch, and names the global model.
Its state is a flat dict of tensors and plain Python values so that checkpoints load with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from typing import Any, Protocol

from torch import nn

from unirobust.experts.expert import Expert


class MergeRule(Protocol):
    """Hooks the Trainer calls; see ``NoMerge`` (plain training) and ``EmaMix`` (Generalist)."""

    def setup(self, experts: list[Expert]) -> None:
        """Create any shadow state from the (initial) experts."""

    def after_step(self, experts: list[Expert], epoch: int, iteration: int, n_iters: int) -> None:
        """Called after every expert stepped on batch ``iteration`` (0-based) of ``epoch``."""

    def after_epoch(self, experts: list[Expert], epoch: int) -> None:
        """Called once the epoch's last step and its ``after_step`` are done."""

    def global_model(self) -> nn.Module:
        """The model that is evaluated, selected, saved and exported."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class NoMerge:
    """Single-expert training: the global model is the expert's own model (no EMA)."""

    def __init__(self) -> None:
        self._model: nn.Module | None = None

    def setup(self, experts: list[Expert]) -> None:
        if len(experts) != 1:
            raise ValueError(f"merge 'none' takes exactly one expert, got {len(experts)}")
        self._model = experts[0].model

    def after_step(self, experts: list[Expert], epoch: int, iteration: int, n_iters: int) -> None:
        return None

    def after_epoch(self, experts: list[Expert], epoch: int) -> None:
        return None

    def global_model(self) -> nn.Module:
        if self._model is None:
            raise RuntimeError("NoMerge.setup was not called")
        return self._model

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None
