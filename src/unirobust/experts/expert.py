"""An expert: one model trained by one objective with its own optimizer and lr schedule.

DESIGN.md: robust training is a set of experts merged by a rule. Standard adversarial training is
a single expert and no merge; Generalist is N experts merged by an EMA-mix (generalist.md §3.3);
RAMP's gradient projection is an adversarial and a natural expert merged once per epoch
(multinorm.md §4.3). The expert owns the train-mode update; objectives only compute losses, and
merge-rule knobs (mix weights) live in the rule's own spec.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from unirobust.errors import TrainingDivergedError
from unirobust.objectives.base import Objective, ObjectiveOutput

BnMode = Literal["train", "frozen"]


class Schedule(Protocol):
    """A value (lr or mix weight) at batch ``iteration`` (0-based) of 1-based ``epoch``.

    Each schedule kind owns its time convention (``experts.schedules``): Generalist kinds are
    constant within an epoch (generalist.md §3.1), the multinorm kinds use t = epoch-1 + (i+1)/I
    (multinorm.md §6).
    """

    def at(self, epoch: int, iteration: int, n_iters: int) -> float: ...


def set_train_mode(model: nn.Module, bn_mode: BnMode) -> None:
    """Train mode, except BatchNorm layers under ``bn_mode='frozen'``, which stay in eval mode so
    their running statistics are neither used for normalisation updates nor changed."""
    model.train()
    if bn_mode == "frozen":
        for module in model.modules():
            if isinstance(module, _BatchNorm):
                module.eval()


@dataclass
class Expert:
    """A model, its objective, optimizer and lr schedule.

    ``lr_schedule`` sets the lr of every parameter group whose ``group_follows_schedule`` flag is
    true (all by default; multinorm.md §7 ``compat: official`` keeps one group at its own lr).
    ``grad_sync`` averages gradients over data-parallel replicas (``engine.distributed``).
    ``check_finite``: raise on a non-finite loss before the update (one host sync per step);
    otherwise the Trainer checks its on-device running sums once per logging interval.
    ``skip_non_finite`` (with ``check_finite``): skip the batch instead -- no backward, no
    optimizer step -- and return ``None``. The check needs the loss on the host before the update,
    so it is always per step. Only the loss is checked; an objective's own state (E-AT's
    accumulators) has already seen the batch.
    """

    name: str
    model: nn.Module
    objective: Objective
    optimizer: torch.optim.Optimizer
    lr_schedule: Schedule
    grad_clip: float | None = None
    autocast_bf16: bool = False
    group_follows_schedule: list[bool] = field(default_factory=list)
    grad_sync: Callable[[list[Tensor]], None] | None = None
    bn_mode: BnMode = "train"
    check_finite: bool = False
    skip_non_finite: bool = False

    def set_lr(self, epoch: int, iteration: int, n_iters: int) -> float:
        """Set the lr of every group that follows the schedule; return the scheduled lr."""
        lr = float(self.lr_schedule.at(epoch, iteration, n_iters))
        follows = self.group_follows_schedule or [True] * len(self.optimizer.param_groups)
        for group, follow in zip(self.optimizer.param_groups, follows, strict=True):
            if follow:
                group["lr"] = lr
        return lr

    def group_lrs(self) -> list[float]:
        """Every parameter group's current lr (logged: multinorm.md §7)."""
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def train_step(self, x: Tensor, y: Tensor, step: int = 0) -> ObjectiveOutput | None:
        """One update on the batch (generalist.md §2 steps 1-2 / 4); the loss comes back detached.

        Nothing here reads a value back to the host unless ``check_finite`` is set. ``None``: the
        loss was not finite and ``skip_non_finite`` skipped the batch.
        """
        set_train_mode(self.model, self.bn_mode)
        with torch.autocast(
            device_type=x.device.type, dtype=torch.bfloat16, enabled=self.autocast_bf16
        ):
            out = self.objective(self.model, x, y)
        loss = out.loss.float()
        if self.check_finite and not torch.isfinite(loss):
            if self.skip_non_finite:
                self.optimizer.zero_grad(set_to_none=True)
                return None
            raise self.diverged(step, float(loss.detach()))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_sync is not None:
            self.grad_sync([p.grad for p in self.model.parameters() if p.grad is not None])
        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        return ObjectiveOutput(loss.detach(), out.correct, out.count, out.metrics)

    def diverged(self, step: int, value: float) -> TrainingDivergedError:
        return TrainingDivergedError(
            f"expert '{self.name}': loss became {value} at step {step} (objective "
            f"{self.objective.name}); lower the lr or check the data; last checkpoint kept"
        )
