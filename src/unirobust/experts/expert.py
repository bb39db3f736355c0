"""An expert: one model trained by one objective with its own optimizer and lr schedule.

DESIGN.md: robust training is a set of experts merged by a rule. Standard adversarial training is
a single expert and no merge; Generalist is N experts merged by an EMA-mix (generalist.md §3.3).
The expert owns the train-mode update; objectives only compute losses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor, nn

from unirobust.errors import TrainingDivergedError
from unirobust.objectives.base import Objective


class Schedule(Protocol):
    """A value (lr or mix weight) at batch ``iteration`` (0-based) of 1-based ``epoch``.

    Each schedule kind owns its time convention (``experts.schedules``): Generalist kinds are
    constant within an epoch (generalist.md §3.1), the multinorm kinds use t = epoch-1 + (i+1)/I
    (multinorm.md §6).
    """

    def at(self, epoch: int, iteration: int, n_iters: int) -> float: ...


@dataclass
class Expert:
    """A model, its objective, optimizer and schedules.

    ``lr_schedule`` sets the lr of every parameter group whose ``group_follows_schedule`` flag is
    true (all by default; multinorm.md §7 ``compat: official`` keeps one group at its own lr).
    ``mix_weight`` is the Generalist w_k(t); single-expert runs leave it None. ``grad_sync``
    averages gradients over data-parallel replicas (``engine.distributed``).
    """

    name: str
    model: nn.Module
    objective: Objective
    optimizer: torch.optim.Optimizer
    lr_schedule: Schedule
    mix_weight: Schedule | None = None
    grad_clip: float | None = None
    autocast_bf16: bool = False
    group_follows_schedule: list[bool] = field(default_factory=list)
    grad_sync: Callable[[list[Tensor]], None] | None = None

    def set_lr(self, epoch: int, iteration: int, n_iters: int) -> float:
        """Set the lr of every group that follows the schedule; return the scheduled lr."""
        lr = float(self.lr_schedule.at(epoch, iteration, n_iters))
        follows = self.group_follows_schedule or [True] * len(self.optimizer.param_groups)
        for group, follow in zip(self.optimizer.param_groups, follows, strict=True):
            if follow:
                group["lr"] = lr
        return lr

    def train_step(self, x: Tensor, y: Tensor) -> dict[str, float]:
        """One update on the batch (generalist.md §2 steps 1-2 / 4): returns logged scalars.

        Raises :class:`TrainingDivergedError` on a non-finite loss before any weight changes.
        """
        self.model.train()
        with torch.autocast(
            device_type=x.device.type, dtype=torch.bfloat16, enabled=self.autocast_bf16
        ):
            out = self.objective(self.model, x, y)
        loss = out.loss.float()
        if not torch.isfinite(loss):
            raise TrainingDivergedError(
                f"expert '{self.name}': loss became {loss.item()} (objective "
                f"{self.objective.name}); lower the lr or check the data; last checkpoint kept"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_sync is not None:
            self.grad_sync([p.grad for p in self.model.parameters() if p.grad is not None])
        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        with torch.no_grad():
            correct = (out.logits.argmax(1) == y).sum().item()
        logs = {"loss": loss.item(), "correct": float(correct), "count": float(y.numel())}
        logs.update(out.logs)
        return logs
