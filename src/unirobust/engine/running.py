"""On-device running sums of an expert's training outputs (issue 7 point 11).

Every step adds its :class:`~unirobust.objectives.base.ObjectiveOutput` with tensor ops only, so
an accelerator never waits for the host. :meth:`RunningSums.read` copies everything to the host
in one go, once per logging interval and at the end of the epoch. The first non-finite loss is
remembered (its step and value) on the device as well, so the guard still names the step.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from unirobust.objectives.base import ObjectiveOutput


class RunningSums:
    """Sums of loss*rows, correct, rows and each metric by its reduction, over one epoch."""

    def __init__(self) -> None:
        self._count = 0
        self._sums: dict[str, Tensor] = {}
        self._reductions: dict[str, str] = {}
        self._bad: Tensor | None = None  # [first bad step, its loss], +inf when none

    def _add(self, key: str, value: Tensor) -> None:
        current = self._sums.get(key)
        self._sums[key] = value if current is None else current + value

    def add(self, out: ObjectiveOutput, step: int) -> None:
        loss = out.loss.detach().float()
        self._count += out.count
        self._add("loss", loss * out.count)
        self._add("correct", out.correct.detach().to(loss.dtype))
        for name, metric in out.metrics.items():
            value = torch.as_tensor(metric.value, dtype=loss.dtype, device=loss.device).detach()
            self._reductions[name] = metric.reduction
            if metric.reduction == "last":
                self._sums[name] = value
            else:
                self._add(name, value * out.count if metric.reduction == "mean" else value)
        finite = torch.isfinite(loss)
        here = torch.stack([torch.full_like(loss, float(step)), loss])
        none = torch.full_like(here, math.inf)
        candidate = torch.where(finite, none, here)
        self._bad = (
            candidate
            if self._bad is None
            else torch.where(self._bad[0] <= candidate[0], self._bad, candidate)
        )

    def first_bad(self) -> tuple[int, float] | None:
        """(step, loss) of the first non-finite loss since the epoch began, or None (one read)."""
        if self._bad is None:
            return None
        step, value = self._bad.tolist()
        return None if math.isinf(step) else (int(step), value)

    def read(self) -> dict[str, float]:
        """``loss`` (row mean), ``acc``, and each metric by its reduction, as floats (one copy)."""
        if not self._sums or self._count == 0:
            return {}
        keys = list(self._sums)
        values = torch.stack([self._sums[k] for k in keys]).tolist()
        raw = dict(zip(keys, values, strict=True))
        out: dict[str, Any] = {"loss": raw.pop("loss") / self._count}
        correct = raw.pop("correct")
        for name, value in raw.items():
            out[name] = value / self._count if self._reductions[name] == "mean" else value
        out["acc"] = correct / self._count
        return out
