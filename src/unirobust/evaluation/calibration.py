"""Metric group ``calibration``: computed from the clean logits stored in the per-sample table.

Nothing is re-run: ECE, MCE, NLL, Brier, accuracy and the reliability bins come from
``table.logits``. When the table also holds validation logits, a temperature is fitted on them
(never on the test rows) and the scaled test ECE and NLL are reported as well.
Definitions: :mod:`unirobust.analysis.calibration`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from unirobust.analysis.calibration import calibration_metrics, fit_temperature, reliability_bins
from unirobust.evaluation.clean import clean_logits
from unirobust.evaluation.keys import Calibration, Reliability

if TYPE_CHECKING:
    from unirobust.evaluation.results import EvalResults

__all__ = ["N_BINS", "add_calibration", "calibration_summary"]

#: Equal-width confidence bins of the ECE and the reliability diagram.
N_BINS = 15


def add_calibration(
    table: EvalResults,
    model: torch.nn.Module,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    batch_size: int = 500,
) -> EvalResults:
    """Ask for the calibration group of ``table``; with a validation split ``(x, y)``, keep its
    logits in the table so the temperature is fitted on them (at summary time)."""
    if table.logits is None:
        raise ValueError("calibration needs a table with clean logits (from evaluate)")
    table.calibration = True
    if val is not None and len(val[0]):
        table.val_logits = clean_logits(model, val[0], batch_size).numpy()
        table.val_labels = val[1].detach().cpu().numpy()
    return table


def _json_list(values: np.ndarray) -> list[float | int | None]:
    """NaN (an empty bin) becomes ``None`` so the summary stays strict JSON."""
    return [None if isinstance(v, float) and math.isnan(v) else v for v in values.tolist()]


def calibration_summary(table: EvalResults, n_bins: int = N_BINS) -> dict[str, Any] | None:
    """The ``calibration`` block of the summary, or ``None`` without logits or points."""
    if table.logits is None or table.n_points == 0:
        return None
    logits, labels = table.logits, table.labels
    out: dict[str, Any] = dict(calibration_metrics(logits, labels, n_bins))
    bins = reliability_bins(logits, labels, n_bins)
    out[Calibration.N_BINS] = n_bins
    out[Calibration.RELIABILITY] = {
        Reliability.LOWER: _json_list(bins["lower"]),
        Reliability.UPPER: _json_list(bins["upper"]),
        Reliability.COUNT: _json_list(bins["count"]),
        Reliability.ACCURACY: _json_list(bins["accuracy"]),
        Reliability.CONFIDENCE: _json_list(bins["confidence"]),
    }
    if table.val_logits is not None and table.val_labels is not None and table.val_labels.size:
        temperature = fit_temperature(table.val_logits, table.val_labels)
        scaled = calibration_metrics(logits.astype(np.float64) / temperature, labels, n_bins)
        out[Calibration.TEMPERATURE] = float(temperature)
        out[Calibration.ECE_SCALED] = scaled[Calibration.ECE]
        out[Calibration.NLL_SCALED] = scaled[Calibration.NLL]
    return out
