"""The training loop shared by every method (DESIGN.md: one engine, pluggable experts and merge).

Per batch, every local expert sets its lr for (epoch, iteration) and takes one step on the same
batch (generalist.md pitfall 21); then the merge rule is told. Per epoch, the global model is
validated on the held-out validation split (never the test set), the best one by clean + robust
accuracy is exported, the last one is always exported, and a train state that resumes bit-exactly
is written. Metrics go to ``metrics.jsonl``.
"""

from __future__ import annotations

import math
import sys
import time
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
    unwrap,
)
from unirobust.engine.distributed import DistContext
from unirobust.engine.progress import EpochProgress
from unirobust.engine.rundir import RunDir
from unirobust.errors import CheckpointError
from unirobust.models import batched_logits
from unirobust.seeding import derive_seed


@dataclass
class ValidationResult:
    clean_acc: float
    robust_acc: float | None
    select: float
    attack: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "clean_acc": self.clean_acc,
            "robust_acc": self.robust_acc,
            "select": self.select,
            "attack": self.attack,
        }


def clean_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample correctness of the model in eval mode (its mode is restored afterwards)."""
    return batched_logits(model, x).argmax(1) == y


def validate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: RunConfig
) -> ValidationResult:
    """generalist.md §3.6: clean accuracy and PGD-K (step eps/4, random start) on validation.

    With several threats the robust number is the mean of their accuracies; selection is
    clean + robust. The attack draws from its own generator seeded by the run seed, so validation
    never moves the training RNG streams.
    """
    from unirobust.attacks import pgd
    from unirobust.threats import parse_threat

    val = config.validation
    clean = clean_correct(model, x, y).float().mean().item()
    if not val.threats:
        return ValidationResult(clean, None, clean, "clean only")
    accs, labels = [], []
    for i, text in enumerate(val.threats):
        threat = parse_threat(text)
        generator = torch.Generator().manual_seed(derive_seed(config.seed, 2, i))
        correct = []
        for j in range(0, len(x), 500):
            xb, yb = x[j : j + 500], y[j : j + 500]
            x_adv = pgd(
                model,
                xb,
                yb,
                threat,
                steps=val.steps,
                step_size=threat.eps / 4,
                random_start=True,
                generator=generator,
            )
            correct.append(clean_correct(model, x_adv, yb))
        accs.append(torch.cat(correct).float().mean().item())
        labels.append(threat.label)
    robust = sum(accs) / len(accs)
    attack = f"PGD-{val.steps} {', '.join(labels)}, {len(x)} validation points"
    return ValidationResult(clean, robust, clean + robust, attack)


def _accumulate(sums: dict[str, float], logs: dict[str, float], batch: int) -> None:
    """Sum counts as they are and per-batch means weighted by the batch size."""
    for key, value in logs.items():
        weight = 1 if key in ("correct", "count") else batch
        sums[key] = sums.get(key, 0.0) + value * weight


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    """One line per epoch for logs (the progress bar's stand-in when it is off)."""
    train = " ".join(
        f"{name} loss {v['loss']:.3f} acc {100 * v['acc']:.1f}%"
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


class Trainer:
    """Runs the experts for the configured epochs; see the module docstring."""

    def __init__(
        self,
        config: RunConfig,
        run: RunDir,
        built: Built,
        loader: Any,
        val_data: tuple[torch.Tensor, torch.Tensor] | None,
        model_meta: dict[str, Any],
        ctx: DistContext | None = None,
        progress: bool = True,
    ) -> None:
        self.config = config
        self.run = run
        self.built = built
        self.loader = loader
        self.val_data = val_data
        self.model_meta = model_meta
        self.ctx = ctx or DistContext(local_experts=built.expert_indices)
        self.progress = progress and self.ctx.is_main
        self.state = TrainerState()

    # ----------------------------------------------------------------------------- checkpoints
    def _state_path(self) -> Path:
        return self.run.train_state_path(self.ctx.rank if self.ctx.enabled else None)

    def save_state(self) -> None:
        experts = self.built.experts
        state = {
            "epoch": self.state.epoch,
            "step": self.state.step,
            "best_select": self.state.best_select,
            "best_epoch": self.state.best_epoch,
            "world_size": self.ctx.world_size,
            "expert_names": [e.name for e in experts],
            "experts": {
                e.name: {"model": model_state(e.model), "optimizer": e.optimizer.state_dict()}
                for e in experts
            },
            "merge": self.built.merge.state_dict(),
            "generators": {n: g.get_state() for n, g in self.built.generators.items()},
            "rng": capture_rng(),
        }
        save_train_state(self._state_path(), state)

    def resume(self) -> None:
        """Restore everything a train state holds; the next epoch continues bit-exactly."""
        path = self._state_path()
        state = load_train_state(path)
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
            except (RuntimeError, ValueError, KeyError) as err:
                first = str(err).splitlines()[0] if str(err) else type(err).__name__
                raise CheckpointError(
                    f"'{path}' does not fit expert '{expert.name}' of this run ({first[:200]})"
                ) from None
        self.built.merge.load_state_dict(state["merge"])
        for name, generator in self.built.generators.items():
            generator.set_state(state["generators"][name])
        restore_rng(state["rng"])
        self.state.epoch = int(state["epoch"])
        self.state.step = int(state["step"])
        self.state.best_select = float(state["best_select"])
        self.state.best_epoch = int(state["best_epoch"])

    def _export(self, which: str) -> None:
        meta = {**self.model_meta, "epoch": self.state.epoch, "checkpoint": which}
        export_model(self.run.model_path(which), self.built.merge.global_model(), meta)

    # ----------------------------------------------------------------------------- loop
    def fit(self, stop_after_epoch: int | None = None) -> TrainerState:
        """Train from the current state to ``train.epochs`` (or stop early, for tests)."""
        epochs = self.config.train.epochs
        last = epochs if stop_after_epoch is None else min(epochs, stop_after_epoch)
        for epoch in range(self.state.epoch + 1, last + 1):
            record = self._train_epoch(epoch)
            self.state.epoch = epoch
            if self.ctx.is_main:
                record.update(self._select_and_export(epoch))
            if epoch % self.config.checkpoint_every == 0 or epoch == epochs:
                self.save_state()  # every rank writes its own file under torchrun
            if self.ctx.is_main:
                self.run.log(record)
                self.state.history.append(record)
                if not self.progress:
                    print(epoch_line(record, epochs), file=sys.stderr, flush=True)
            self.ctx.barrier()
        return self.state

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        experts, merge = self.built.experts, self.built.merge
        self.loader.set_epoch(epoch)
        n_iters = len(self.loader)
        sums: dict[str, dict[str, float]] = {e.name: {} for e in experts}
        lrs: dict[str, float] = {}
        images = 0
        channels_last = self.config.train.channels_last
        start = time.perf_counter()
        with EpochProgress(epoch, self.config.train.epochs, n_iters, enabled=self.progress) as bar:
            for i, (x, y) in enumerate(self.loader):
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                for expert in experts:
                    lrs[expert.name] = expert.set_lr(epoch, i, n_iters)
                    logs = expert.train_step(x, y)
                    _accumulate(sums[expert.name], logs, y.numel())
                merge.after_step(experts, epoch, i, n_iters)
                self.state.step += 1
                images += y.numel()
                first = sums[experts[0].name]
                bar.update(
                    loss=first["loss"] / first["count"],
                    acc=first["correct"] / first["count"],
                    images_per_s=images * len(experts) / (time.perf_counter() - start),
                )
        merge.after_epoch(experts, epoch)
        elapsed = time.perf_counter() - start
        train = {}
        for name, acc in sums.items():
            count = acc.pop("count")
            correct = acc.pop("correct")
            train[name] = {k: v / count for k, v in acc.items()} | {"acc": correct / count}
        weights = {
            e.name: float(e.mix_weight.at(epoch, n_iters - 1, n_iters))
            for e in experts
            if e.mix_weight is not None
        }
        return {
            "event": "epoch",
            "epoch": epoch,
            "time_s": round(elapsed, 3),
            "images_per_s": round(images * len(experts) * self.ctx.replicas / elapsed, 1),
            "lr": lrs,
            "mix_weights": weights,
            "train": train,
        }

    def _select_and_export(self, epoch: int) -> dict[str, Any]:
        """Validate G, export last (always) and best (by validation clean + robust)."""
        out: dict[str, Any] = {"is_best": False}
        model = self.built.merge.global_model()
        if self.val_data is not None and epoch % self.config.validation.every == 0:
            result = validate(model, *self.val_data, self.config)
            out["val"] = result.as_dict()
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
