"""Per-epoch diagnostics of the global model on the validation split (lpft.md §3; issue 13).

Asked for with ``validation.diagnostics``; each is logged under ``val.diagnostics`` of the
epoch record:

* ``head_norm``: ||V||_F and ||b|| of the linear head (pitfall 10: the norm excludes the bias);
* ``feature_change``: Diff(F) = mean ||phi(x) - phi0(x)||_2 and mean | ||phi|| - ||phi0|| | on
  the same validation images, phi0 being the backbone at the **start of the stage** (for LP-FT,
  the pretrained one: LP leaves it untouched);
* ``feature_cosine``: the mean pairwise cosine CS(F);
* ``fdr``: the Fisher discriminant ratio (``fisher``; compare only at equal n, pitfall 17);
* ``calibration``: ECE, MCE, NLL and Brier of the validation logits (before any temperature).

phi0 is part of the train state, so a run resumed in the middle of a stage measures the change
from the same start.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from unirobust.analysis.calibration import calibration_metrics
from unirobust.analysis.features import (
    cosine_similarity_mean,
    extract_features,
    feature_change,
    fisher_discriminant_ratio,
    head_norms,
)
from unirobust.errors import CheckpointError
from unirobust.finetune.head import head_of
from unirobust.models import batched_logits

DIAGNOSTICS: tuple[str, ...] = (
    "head_norm",
    "feature_change",
    "feature_cosine",
    "fdr",
    "calibration",
)


class EpochDiagnostics:
    """The diagnostics a recipe asks for, on fixed validation data (see the module docstring)."""

    def __init__(self, names: list[str], x: Tensor, y: Tensor) -> None:
        self.names = list(names)
        self.x, self.y = x, y
        self.phi0: Tensor | None = None

    def _features(self, model: nn.Module) -> Tensor:
        return extract_features(model, self.x)

    def start_stage(self, model: nn.Module) -> None:
        """Remember phi0, the features of the model a stage starts from."""
        if "feature_change" in self.names:
            self.phi0 = self._features(model).float()

    def __call__(self, model: nn.Module) -> dict[str, Any]:
        out: dict[str, Any] = {}
        needs_phi = {"feature_change", "feature_cosine", "fdr"} & set(self.names)
        phi = self._features(model) if needs_phi else None
        if "head_norm" in self.names:
            out["head_norm"] = head_norms(head_of(model))
        if "feature_change" in self.names and self.phi0 is not None:
            out["feature_change"] = feature_change(phi, self.phi0.double())
        if "feature_cosine" in self.names:
            out["feature_cosine"] = cosine_similarity_mean(phi)
        if "fdr" in self.names:
            out["fdr"] = fisher_discriminant_ratio(phi, self.y.cpu())
        if "calibration" in self.names:
            logits = batched_logits(model, self.x)
            metrics = calibration_metrics(logits, self.y)
            out["calibration"] = {k: float(metrics[k]) for k in ("ece", "mce", "nll", "brier")}
        return out

    def state_dict(self) -> dict[str, Any]:
        return {} if self.phi0 is None else {"phi0": self.phi0.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        phi0 = state.get("phi0")
        if phi0 is not None and (not isinstance(phi0, Tensor) or len(phi0) != len(self.x)):
            raise CheckpointError("the train state's phi0 does not fit the validation split")
        self.phi0 = phi0 if phi0 is None else phi0.to(torch.float32)
