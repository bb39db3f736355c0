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
* With ``extended=True`` (spec lpft.md §3, as the official ``utils/custom_metric.py``):
  ``brier_repo`` = Brier / C (the mean over all N·C entries), ``mean_confidence`` = mean c_i,
  ``logit_l1`` / ``logit_l2`` = mean ‖z_i‖₁ / ‖z_i‖₂.

ECE and MCE are fractions here; the spec's tables quote them ×100.

:func:`fit_temperature` fits a single T > 0 minimising the NLL of softmax(z / T) on held-out data;
dividing by a positive scalar never changes the argmax, so accuracy is unchanged.
:func:`temperature_scaling` also reports the metrics before and after (spec §3).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "apply_temperature",
    "calibration_metrics",
    "fit_temperature",
    "reliability_bins",
    "temperature_scaling",
]

TemperatureMethod = Literal["lbfgs", "adam", "golden"]


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


def calibration_metrics(
    logits: Any, y: Any, n_bins: int = 15, *, extended: bool = False
) -> dict[str, float]:
    """Return ``{"ece", "mce", "nll", "brier", "acc"}`` for logits and labels (see module doc).

    ``extended=True`` adds ``brier_repo``, ``mean_confidence``, ``logit_l1`` and ``logit_l2``.
    """
    z, t = _as_tensors(logits, y)
    bins = reliability_bins(z, t, n_bins)
    n = float(z.shape[0])
    nonempty = bins["count"] > 0
    abs_gap = np.abs(bins["gap"][nonempty])
    weights = bins["count"][nonempty] / n
    log_probs = torch.log_softmax(z, dim=1)
    probs = log_probs.exp()
    onehot = F.one_hot(t, z.shape[1]).to(torch.float64)
    brier = float(((probs - onehot) ** 2).sum(dim=1).mean().item())
    out = {
        "ece": float((weights * abs_gap).sum()),
        "mce": float(abs_gap.max()) if abs_gap.size else 0.0,
        "nll": float(F.nll_loss(log_probs, t).item()),
        "brier": brier,
        "acc": float((z.argmax(dim=1) == t).to(torch.float64).mean().item()),
    }
    if extended:
        out["brier_repo"] = brier / z.shape[1]
        out["mean_confidence"] = float(probs.max(dim=1).values.mean())
        out["logit_l1"] = float(z.abs().sum(dim=1).mean())
        out["logit_l2"] = float(z.norm(dim=1).mean())
    return out


def apply_temperature(logits: Any, temperature: float) -> torch.Tensor:
    """Return ``logits / temperature`` as a tensor (temperature must be > 0)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return torch.as_tensor(logits) / temperature


def _golden_log_t(z: torch.Tensor, t: torch.Tensor, lo: float, hi: float, tol: float) -> float:
    """Golden-section search for log T on [lo, hi]; NLL is unimodal in log T (see below)."""

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
    return min(candidates)[1]


def _lbfgs_log_t(z: torch.Tensor, t: torch.Tensor, tol: float) -> float:
    """Full-batch LBFGS with a strong-Wolfe line search on log T, from T = 1 (float64)."""
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [log_t],
        lr=1.0,
        max_iter=200,
        tolerance_grad=tol,
        tolerance_change=1e-15,
        history_size=10,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z * torch.exp(-log_t), t)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach())


def _adam_t(
    z: torch.Tensor, t: torch.Tensor, lr: float, max_steps: int, patience: int, t_min: float
) -> float:
    """The paper's fit: Adam on T itself from T = 1; stop after ``patience`` steps without a
    lower NLL (or ``max_steps``) and return the best T seen."""
    temp = torch.ones((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([temp], lr=lr)
    best, best_t, stale = math.inf, 1.0, 0
    for _ in range(max_steps):
        opt.zero_grad()
        loss = F.cross_entropy(z / temp, t)
        value = float(loss.detach())
        if value < best:
            best, best_t, stale = value, float(temp.detach()), 0
        else:
            stale += 1
            if stale >= patience:
                break
        loss.backward()
        opt.step()
        with torch.no_grad():
            temp.clamp_(min=t_min)
    return best_t


def fit_temperature(
    logits_val: Any,
    y_val: Any,
    *,
    bounds: tuple[float, float] = (1e-2, 1e2),
    tol: float = 1e-7,
    method: TemperatureMethod = "lbfgs",
    lr: float = 1e-3,
    max_steps: int = 100_000,
    patience: int = 10,
) -> float:
    """Fit the temperature T minimising the validation NLL of softmax(z / T) (spec lpft.md §3).

    ``method``:

    * ``"lbfgs"`` (default, spec §3): log T, float64, full batch, strong-Wolfe line search,
      start at T = 1; ``tol`` is the gradient tolerance.
    * ``"adam"`` (the paper's): Adam on T with ``lr`` 1e-3, at most ``max_steps`` 1e5 steps,
      early stop after ``patience`` 10 steps without improvement.
    * ``"golden"``: a bounded golden-section search on log T to within ``tol``. The NLL of
      softmax(s·z) is convex in s = 1/T, hence unimodal in log T, so it finds the global optimum
      on the interval with no line-search failure modes (the library's former default).

    The result is clipped to ``bounds``: a perfectly separable set drives T -> 0, and the bound
    is returned. Fit on a validation split, never on the test points that are then reported.
    """
    z, t = _as_tensors(logits_val, y_val)
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    if not lo < hi:
        raise ValueError(f"invalid bounds {bounds}")
    if method == "golden":
        log_t = _golden_log_t(z, t, lo, hi, tol)
    elif method == "lbfgs":
        log_t = _lbfgs_log_t(z, t, tol)
    elif method == "adam":
        log_t = math.log(_adam_t(z, t, lr, max_steps, patience, bounds[0]))
    else:
        raise ValueError(f"unknown temperature method {method!r}; use lbfgs, adam or golden")
    if not math.isfinite(log_t):
        raise RuntimeError(f"temperature fit ({method}) diverged")
    return float(math.exp(min(max(log_t, lo), hi)))


def temperature_scaling(
    logits_val: Any,
    y_val: Any,
    logits_eval: Any | None = None,
    y_eval: Any | None = None,
    *,
    method: TemperatureMethod = "lbfgs",
    n_bins: int = 15,
    **fit_kwargs: Any,
) -> dict[str, Any]:
    """Fit T on validation and report ``{"temperature", "method", "before", "after"}``.

    ``before``/``after`` are :func:`calibration_metrics` (extended) of the evaluation logits
    (the validation logits when none are given) at T = 1 and at the fitted T.
    """
    temperature = fit_temperature(logits_val, y_val, method=method, **fit_kwargs)
    if (logits_eval is None) != (y_eval is None):
        raise ValueError("give both logits_eval and y_eval, or neither")
    z, t = _as_tensors(*((logits_val, y_val) if logits_eval is None else (logits_eval, y_eval)))
    return {
        "temperature": temperature,
        "method": method,
        "before": calibration_metrics(z, t, n_bins, extended=True),
        "after": calibration_metrics(z / temperature, t, n_bins, extended=True),
    }
