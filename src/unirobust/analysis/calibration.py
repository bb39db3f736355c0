"""Calibration metrics and temperature scaling.

Definitions (N points, logits z, labels y, softmax p = softmax(z)):

* confidence c_i = max_k p_ik, prediction ŷ_i = argmax_k p_ik (ties: lowest index, as argmax).
* **ECE** (expected calibration error, Guo et al. 2017): partition (0, 1] into ``n_bins``
  equal-width bins ((0, 1/B], (1/B, 2/B], ..., a confidence of exactly 0 goes to the first bin);
  ECE = Σ_b (|b|/N) · |acc(b) − conf(b)| over non-empty bins.
* **MCE** (maximum calibration error): max_b |acc(b) − conf(b)| over non-empty bins.
* **NLL**: mean of −log p_{i, y_i} (computed with log-softmax, float64).
* **Brier**: mean over points of Σ_k (p_ik − 1[k = y_i])² (the multi-class form, range [0, 2]).
* **acc**: mean of 1[ŷ_i = y_i].

:func:`fit_temperature` fits a single T > 0 minimising the NLL of softmax(z / T) on held-out data;
dividing by a positive scalar never changes the argmax, so accuracy is unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "apply_temperature",
    "calibration_metrics",
    "fit_temperature",
    "reliability_bins",
]


def _as_tensors(logits: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
    z = torch.as_tensor(logits).detach().to("cpu", torch.float64)
    t = torch.as_tensor(y).detach().to("cpu", torch.int64).reshape(-1)
    if z.ndim != 2:
        raise ValueError(f"logits must be 2-D (N, classes), got shape {tuple(z.shape)}")
    if z.shape[0] != t.shape[0]:
        raise ValueError(f"{z.shape[0]} logits rows but {t.shape[0]} labels")
    if z.shape[0] == 0:
        raise ValueError("calibration metrics need at least one point")
    if t.min() < 0 or t.max() >= z.shape[1]:
        raise ValueError("labels out of range for the number of classes")
    return z, t


def _bin_ids(conf: torch.Tensor, n_bins: int) -> torch.Tensor:
    # bin b holds confidences in (b/B, (b+1)/B]; conf == 0 goes to bin 0.
    ids = torch.ceil(conf * n_bins).to(torch.int64) - 1
    return ids.clamp_(0, n_bins - 1)


def reliability_bins(logits: Any, y: Any, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Per-bin statistics for a reliability diagram.

    Returns a dict of numpy arrays of length ``n_bins``: ``lower``, ``upper`` (bin edges),
    ``count`` (points per bin), ``accuracy`` and ``confidence`` (mean per bin, NaN for empty bins)
    and ``gap`` = accuracy − confidence (NaN for empty bins).
    """
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    z, t = _as_tensors(logits, y)
    probs = torch.softmax(z, dim=1)
    conf, pred = probs.max(dim=1)
    correct = (pred == t).to(torch.float64)
    ids = _bin_ids(conf, n_bins)
    count = torch.bincount(ids, minlength=n_bins).to(torch.float64)
    acc_sum = torch.bincount(ids, weights=correct, minlength=n_bins)
    conf_sum = torch.bincount(ids, weights=conf, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = (acc_sum / count).numpy()
        confidence = (conf_sum / count).numpy()
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return {
        "lower": edges[:-1],
        "upper": edges[1:],
        "count": count.numpy().astype(np.int64),
        "accuracy": accuracy,
        "confidence": confidence,
        "gap": accuracy - confidence,
    }


def calibration_metrics(logits: Any, y: Any, n_bins: int = 15) -> dict[str, float]:
    """Return ``{"ece", "mce", "nll", "brier", "acc"}`` for logits and labels (see module doc)."""
    z, t = _as_tensors(logits, y)
    bins = reliability_bins(z, t, n_bins)
    n = float(z.shape[0])
    nonempty = bins["count"] > 0
    abs_gap = np.abs(bins["gap"][nonempty])
    weights = bins["count"][nonempty] / n
    log_probs = torch.log_softmax(z, dim=1)
    probs = log_probs.exp()
    onehot = F.one_hot(t, z.shape[1]).to(torch.float64)
    return {
        "ece": float((weights * abs_gap).sum()),
        "mce": float(abs_gap.max()) if abs_gap.size else 0.0,
        "nll": float(F.nll_loss(log_probs, t).item()),
        "brier": float(((probs - onehot) ** 2).sum(dim=1).mean().item()),
        "acc": float((z.argmax(dim=1) == t).to(torch.float64).mean().item()),
    }


def apply_temperature(logits: Any, temperature: float) -> torch.Tensor:
    """Return ``logits / temperature`` as a tensor (temperature must be > 0)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return torch.as_tensor(logits) / temperature


def fit_temperature(
    logits_val: Any,
    y_val: Any,
    *,
    bounds: tuple[float, float] = (1e-2, 1e2),
    tol: float = 1e-7,
) -> float:
    """Fit the temperature T minimising the validation NLL of softmax(z / T).

    Minimises over log T in ``log(bounds)`` with a golden-section search. The NLL of softmax(s·z)
    is convex in the inverse temperature s = 1/T, hence unimodal in log T (a monotone
    reparametrisation), so the bounded 1-d search finds the global optimum within ``tol`` (in
    log T) without any of LBFGS's line-search failure modes. If the optimum lies on a bound the
    bound is returned (e.g. a perfectly separable set drives T -> 0). Float64 throughout.

    Fit on a validation split, never on the test points that are then reported.
    """
    z, t = _as_tensors(logits_val, y_val)
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    if not lo < hi:
        raise ValueError(f"invalid bounds {bounds}")

    def nll(log_t: float) -> float:
        return float(F.cross_entropy(z / math.exp(log_t), t).item())

    inv_phi = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = lo, hi
    c = b - inv_phi * (b - a)
    d = a + inv_phi * (b - a)
    fc, fd = nll(c), nll(d)
    while b - a > tol:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - inv_phi * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + inv_phi * (b - a)
            fd = nll(d)
    best = (a + b) / 2.0
    candidates = [(nll(best), best), (nll(lo), lo), (nll(hi), hi)]
    return float(math.exp(min(candidates)[1]))
