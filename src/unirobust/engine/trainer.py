"""The training loop shared by every method (DESIGN.md: one engine, pluggable experts and merge).

A run is a list of stages; epochs are numbered across the whole run. When an epoch belongs to a
new stage, the stage's experts are built from the previous stage's global model. Per batch, every
local expert sets its lr for (stage epoch, iteration) and takes one step on the same batch
(generalist.md pitfall 21); then the merge rule is told if it runs every step. Losses, accuracies
and metrics are summed on the device and read once per ``train.log_every`` steps. Per epoch, the
global model is validated on the held-out validation split (never the test set), the best by the
recipe's selection score is exported, the last one is always exported, and a train state that
resumes bit-exactly (stage boundaries included) is written. Metrics go to ``metrics.jsonl``.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unirobust.build import Built
from unirobust.config import RunConfig
from unirobust.engine.checkpoint import (
    capture_rng,
    export_model,
    load_train_state,
    model_state,
    restore_rng,
    save_train_state,
)
from unirobust.engine.diagnostics import EpochDiagnostics
from unirobust.engine.distributed import DistContext
from unirobust.engine.progress import EpochProgress
from unirobust.engine.rundir import RunDir
from unirobust.engine.running import RunningSums
from unirobust.engine.selection import validate
from unirobust.errors import CheckpointError
from unirobust.experts.tensors import unwrap


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    """One line per epoch for logs (the progress bar's stand-in when it is off)."""
    train = " ".join(
        f"{name} loss {v.get('loss', math.nan):.3f} acc {100 * v.get('acc', math.nan):.1f}%"
        for name, v in record["train"].items()
    )
    line = f"epoch {record['epoch']}/{epochs} {record['time_s']:.0f}s {train}"
    val = record.get("val")
    if val:
        line += f" | val clean {100 * val['clean_acc']:.1f}%"
        if val.get("robust_acc") is not None:
            line += f" robust {100 * val['robust_acc']:.1f}%"
    return line + (" *best*" if record.get("is_best") else "")


@dataclass
class TrainerState:
    epoch: int = 0
    step: int = 0
    best_select: float = -math.inf
    best_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


StageBuilder = Callable[[int, nn.Module, bool], tuple[Built, Any]]
"""``(stage index, initial model, fresh) -> (Built, loader)``: the pipeline's closure over config,
data and device. ``fresh`` is False when the stage is rebuilt only to load a train state into it,
so one-off work at a stage start (a logreg head fit) is skipped."""


class Trainer:
    """Runs the stages for their epochs; see the module docstring."""

    def __init__(
        self,
        config: RunConfig,
        run: RunDir,
        build_stage: StageBuilder,
        initial_model: nn.Module,
        val_data: tuple[torch.Tensor, torch.Tensor] | None,
        model_meta: dict[str, Any],
        ctx: DistContext | None = None,
        progress: bool = True,
    ) -> None:
        self.config = config
        self.run = run
        self.stages = config.train.resolved_stages()
        self.build_stage = build_stage
        self.initial_model = initial_model
        self.val_data = val_data
        self.model_meta = model_meta
        self.ctx = ctx or DistContext(local_experts=list(range(len(self.stages[0].experts))))
        self.progress = progress and self.ctx.is_main
        self.state = TrainerState()
        self.stage_index = -1
        self.built: Built | None = None
        self.loader: Any = None
        names = config.validation.diagnostics
        self.diagnostics = (
            EpochDiagnostics(names, *val_data) if names and val_data is not None else None
        )

    # ----------------------------------------------------------------------------- stages
    @property
    def total_epochs(self) -> int:
        return sum(s.epochs for s in self.stages)

    def locate(self, epoch: int) -> tuple[int, int]:
        """(stage index, epoch within the stage) of a run epoch (both 1-based epochs)."""
        start = 0
        for index, stage in enumerate(self.stages):
            if epoch <= start + stage.epochs:
                return index, epoch - start
            start += stage.epochs
        raise ValueError(f"epoch {epoch} is past the run's {self.total_epochs} epochs")

    def _enter_stage(self, index: int, fresh: bool = True) -> None:
        """Build stage ``index`` from the current global model (the initial one for the first)."""
        start = self.initial_model if self.built is None else self.built.merge.global_model()
        self.built, self.loader = self.build_stage(index, start, fresh)
        self.stage_index = index
        if fresh and self.diagnostics is not None and self.ctx.is_main:
            self.diagnostics.start_stage(self.built.merge.global_model())

    # ----------------------------------------------------------------------------- checkpoints
    def _state_path(self) -> Path:
        return self.run.train_state_path(self.ctx.rank if self.ctx.enabled else None)

    def save_state(self) -> None:
        experts = self.built.experts
        state = {
            "epoch": self.state.epoch,
            "step": self.state.step,
            "stage": self.stage_index,
            "best_select": self.state.best_select,
            "best_epoch": self.state.best_epoch,
            "world_size": self.ctx.world_size,
            "expert_names": [e.name for e in experts],
            "experts": {
                e.name: {
                    "model": model_state(e.model),
                    "optimizer": e.optimizer.state_dict(),
                    "objective": e.objective.state_dict(),
                }
                for e in experts
            },
            "merge": self.built.merge.state_dict(),
            "generators": {n: g.get_state() for n, g in self.built.generators.items()},
            "rng": capture_rng(),
            "diagnostics": self.diagnostics.state_dict() if self.diagnostics else {},
        }
        save_train_state(self._state_path(), state)

    def resume(self) -> None:
        """Restore everything a train state holds; the next epoch continues bit-exactly."""
        path = self._state_path()
        state = load_train_state(path)
        stage = int(state.get("stage", 0))
        if not 0 <= stage < len(self.stages):
            raise CheckpointError(f"'{path}' is at stage {stage}; this run has {len(self.stages)}")
        self._enter_stage(stage, fresh=False)
        names = [e.name for e in self.built.experts]
        if state.get("expert_names") != names or state.get("world_size") != self.ctx.world_size:
            raise CheckpointError(
                f"'{path}' was written by experts {state.get('expert_names')} on "
                f"{state.get('world_size')} process(es); this run has {names} on "
                f"{self.ctx.world_size}"
            )
        for expert in self.built.experts:
            part = state["experts"][expert.name]
            try:
                unwrap(expert.model).load_state_dict(part["model"])
                expert.optimizer.load_state_dict(part["optimizer"])
                expert.objective.load_state_dict(part.get("objective", {}))
            except (RuntimeError, ValueError, KeyError) as err:
                first = str(err).splitlines()[0] if str(err) else type(err).__name__
                raise CheckpointError(
                    f"'{path}' does not fit expert '{expert.name}' of this run ({first[:200]})"
                ) from None
        self.built.merge.load_state_dict(state["merge"])
        for name, generator in self.built.generators.items():
            generator.set_state(state["generators"][name])
        restore_rng(state["rng"])
        if self.diagnostics is not None:
            self.diagnostics.load_state_dict(state.get("diagnostics", {}))
        self.state.epoch = int(state["epoch"])
        self.state.step = int(state["step"])
        self.state.best_select = float(state["best_select"])
        self.state.best_epoch = int(state["best_epoch"])

    def _export(self, which: str) -> None:
        meta = {**self.model_meta, "epoch": self.state.epoch, "checkpoint": which}
        export_model(self.run.model_path(which), self.built.merge.global_model(), meta)

    # ----------------------------------------------------------------------------- loop
    def fit(self, stop_after_epoch: int | None = None) -> TrainerState:
        """Train from the current state to the last epoch (or stop early, for tests)."""
        epochs = self.total_epochs
        last = epochs if stop_after_epoch is None else min(epochs, stop_after_epoch)
        for epoch in range(self.state.epoch + 1, last + 1):
            stage, local_epoch = self.locate(epoch)
            if stage != self.stage_index:
                self._enter_stage(stage)
            record = self._train_epoch(epoch, local_epoch)
            self.state.epoch = epoch
            if self.ctx.is_main:
                record.update(self._select_and_export(epoch))
                # logged before the state is saved: a resume from an older state drops the line
                self.run.log(record)
                self.state.history.append(record)
            if (
                epoch % self.config.checkpoint_every == 0
                or epoch == epochs
                or (
                    local_epoch == self.stages[stage].epochs  # every stage boundary
                )
            ):
                self.save_state()  # every rank writes its own file under torchrun
            if self.ctx.is_main and not self.progress:
                print(epoch_line(record, epochs), file=sys.stderr, flush=True)
            self.ctx.barrier()
        return self.state

    def _check_finite(self, sums: dict[str, RunningSums]) -> None:
        """Raise for the earliest non-finite loss of any expert (one read per expert)."""
        for expert in self.built.experts:
            bad = sums[expert.name].first_bad()
            if bad is not None:
                raise expert.diverged(*bad)

    def _train_epoch(self, epoch: int, local_epoch: int) -> dict[str, Any]:
        experts, merge = self.built.experts, self.built.merge
        stage = self.stages[self.stage_index]
        self.loader.set_epoch(epoch)
        n_iters = len(self.loader)
        sums = {e.name: RunningSums() for e in experts}
        skipped = dict.fromkeys(sums, 0)  # train.check_finite: skip
        lrs: dict[str, float] = {}
        images = 0
        channels_last = self.config.train.channels_last
        log_every = self.config.train.log_every
        merge.before_epoch(experts, local_epoch)
        start = time.perf_counter()
        with EpochProgress(epoch, self.total_epochs, n_iters, enabled=self.progress) as bar:
            for i, (x, y) in enumerate(self.loader):
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                for expert in experts:
                    lrs[expert.name] = expert.set_lr(local_epoch, i, n_iters)
                    out = expert.train_step(x, y, self.state.step)
                    if out is None:
                        skipped[expert.name] += 1
                    else:
                        sums[expert.name].add(out, self.state.step)
                if merge.every_step:
                    merge.after_step(experts, local_epoch, i, n_iters)
                self.state.step += 1
                images += y.numel()
                if (i + 1) % log_every == 0 or i + 1 == n_iters:
                    self._check_finite(sums)
                    first = sums[experts[0].name].read()
                    bar.update(
                        loss=first.get("loss", math.nan),  # absent: every batch skipped
                        acc=first.get("acc", math.nan),
                        images_per_s=images * len(experts) / (time.perf_counter() - start),
                    )
        if merge.every_epoch:
            merge.after_epoch(experts, local_epoch)
        elapsed = time.perf_counter() - start
        record = {
            "event": "epoch",
            "epoch": epoch,
            "time_s": round(elapsed, 3),
            "images_per_s": round(images * len(experts) * self.ctx.replicas / elapsed, 1),
            "lr": lrs,
            "group_lrs": {e.name: e.group_lrs() for e in experts},
            "mix_weights": {},
            "train": {name: s.read() for name, s in sums.items()},
        }
        if self.config.train.check_finite == "skip":
            for name, count in skipped.items():
                record["train"][name]["skipped"] = count
        if len(self.stages) > 1:
            record["stage"] = stage.name
        record.update(merge.log(local_epoch, n_iters))
        return record

    def _validate_members(self, n: int | None) -> dict[str, Any]:
        """``validation.members``: each model behind the global one, on the first ``n`` points
        (the same seeded attack as the global model's validation); not used for selection."""
        val = self.config.validation
        x, y = self.val_data
        x, y = (x, y) if n is None else (x[:n], y[:n])
        models = self.built.merge.member_models(self.built.experts)
        return {
            label: validate(
                model,
                x,
                y,
                list(val.threats),
                steps=val.steps,
                seed=self.config.seed,
                select=val.select,
            ).as_dict()
            for label, model in models.items()
        }

    def _select_and_export(self, epoch: int) -> dict[str, Any]:
        """Validate G, export last (always) and best (by the validation selection score)."""
        out: dict[str, Any] = {"is_best": False}
        model = self.built.merge.global_model()
        val = self.config.validation
        if self.val_data is not None and epoch % val.every == 0:
            result = validate(
                model,
                *self.val_data,
                list(val.threats),
                steps=val.steps,
                seed=self.config.seed,
                select=val.select,
            )
            out["val"] = result.as_dict()
            if self.diagnostics is not None:
                out["val"]["diagnostics"] = self.diagnostics(model)
            if val.members is not None and epoch % val.members.every == 0:
                out["val"]["members"] = self._validate_members(val.members.n)
            if result.select > self.state.best_select:
                self.state.best_select = result.select
                self.state.best_epoch = epoch
                out["is_best"] = True
        elif self.val_data is None and self.state.best_epoch < epoch:
            # val_size: 0 -> no selection possible; best is the last (said in the report)
            self.state.best_epoch = epoch
            out["is_best"] = True
        self._export("last")
        if out["is_best"]:
            self._export("best")
        return out
