"""Feature diagnostics of LP-FT (spec lpft.md §3): head norms, feature change, cosine, FDR.

All functions take feature matrices φ of shape [n, h] (the head's input, spec §7 pitfall 3) and
work in float64. :func:`extract_features` produces them from a model in eval mode on identical,
non-augmented inputs, which Diff(F) needs on both sides (pitfall 13).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor, nn

from unirobust.models.registry import model_device

__all__ = [
    "cosine_similarity_mean",
    "extract_features",
    "feature_change",
    "fisher_discriminant_ratio",
    "head_norms",
]

FDRKind = Literal["fisher", "trace_ratio"]


def _features_of(model: nn.Module) -> Callable[[Tensor], Tensor]:
    fn = getattr(model, "features", None)
    if not callable(fn):
        raise TypeError(f"{type(model).__name__} has no features(x) method")
    return fn


@torch.no_grad()
def extract_features(
    model: nn.Module,
    x: Tensor,
    batch_size: int = 500,
    *,
    feature_fn: Callable[[Tensor], Tensor] | None = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """φ(x) = ``model.features(x)`` in eval mode (no dropout, BN running stats), batched.

    Every module's train/eval flag is restored afterwards; no graph is built. ``feature_fn``
    replaces ``model.features`` for models without it. Returns a CPU tensor of ``dtype``.
    """
    fn = feature_fn if feature_fn is not None else _features_of(model)
    device = model_device(model)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            parts = [
                fn(x[i : i + batch_size].to(device)).to("cpu", dtype)
                for i in range(0, len(x), batch_size)
            ]
    finally:
        for module, training in modes:  # per module: a frozen-BN stage keeps its eval layers
            module.training = training
    if not parts:
        raise ValueError("extract_features needs at least one input")
    return torch.cat(parts).flatten(1)


def _as_matrix(phi: Any, name: str = "phi") -> Tensor:
    m = torch.as_tensor(phi).detach().to("cpu", torch.float64)
    if m.ndim != 2 or m.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty [n, h] matrix, got {tuple(m.shape)}")
    return m


def head_norms(head: nn.Linear) -> dict[str, float]:
    """``{"weight_norm": ‖V‖_F, "bias_norm": ‖b‖}``; ‖V‖ excludes the bias (pitfall 10)."""
    bias = head.bias.detach() if head.bias is not None else torch.zeros(0)
    return {
        "weight_norm": float(torch.linalg.norm(head.weight.detach().to(torch.float64))),
        "bias_norm": float(torch.linalg.norm(bias.to(torch.float64))),
    }


def feature_change(phi: Any, phi0: Any) -> dict[str, float | int]:
    """Diff(F) = mean_x ‖φ(x) − φ0(x)‖₂ on identical inputs (row i of both is the same x).

    Also ``norm_diff`` = mean_x |‖φ(x)‖ − ‖φ0(x)‖|, because the paper's wording allows either
    reading (spec §3), and ``n``.
    """
    a, b = _as_matrix(phi), _as_matrix(phi0, "phi0")
    if a.shape != b.shape:
        raise ValueError(f"phi {tuple(a.shape)} and phi0 {tuple(b.shape)} differ in shape")
    norms, norms0 = a.norm(dim=1), b.norm(dim=1)
    return {
        "diff": float((a - b).norm(dim=1).mean()),
        "norm_diff": float((norms - norms0).abs().mean()),
        "n": int(a.shape[0]),
    }


def cosine_similarity_mean(phi: Any) -> float:
    """CS(F): the mean cosine similarity over pairs i ≠ j, in O(nh) (spec §3).

    With unit rows u_i and s = Σ u_i, Σ_{i≠j} ⟨u_i, u_j⟩ = ‖s‖² − n, so
    CS = (‖s‖² − n) / (n(n − 1)). A zero row counts as cosine 0 with every other row (its unit
    vector is taken as 0 and it contributes 0, not 1, to ‖s‖² − n).
    """
    m = _as_matrix(phi)
    n = m.shape[0]
    if n < 2:
        raise ValueError("CS needs at least two rows")
    units = torch.nn.functional.normalize(m, dim=1)
    s = units.sum(dim=0)
    diag = (units * units).sum()  # n, less one per zero row
    return float((s @ s - diag) / (n * (n - 1)))


def _scatter_matrices(m: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    n = m.shape[0]
    classes, inverse, counts = torch.unique(y, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(classes), m.shape[1], dtype=m.dtype).index_add_(0, inverse, m)
    means = sums / counts.unsqueeze(1).to(m.dtype)
    within = m - means[inverse]
    between = means - m.mean(dim=0)
    s_w = within.T @ within / n
    s_b = (between * counts.unsqueeze(1).to(m.dtype)).T @ between / n
    return s_w, s_b


def fisher_discriminant_ratio(
    phi: Any, y: Any, kind: FDRKind = "fisher", *, rcond: float = 1e-10
) -> dict[str, Any]:
    """FDR(F) in float64 (spec §3; the paper gives no formula, this definition is the spec's).

    S_W = (1/n) Σ_k Σ_{y_i=k} (φ_i − μ_k)(φ_i − μ_k)ᵀ and S_B = (1/n) Σ_k n_k (μ_k − μ)(μ_k − μ)ᵀ.
    ``fisher`` = tr(S_W⁺ S_B) with eigenvalues of S_W below ``rcond``·λ_max cut off;
    ``trace_ratio`` = tr(S_B) / tr(S_W). Both are invariant to φ → aφ + c (a > 0) and to
    rotations. ``fisher`` blows up when n ≤ h (pitfall 17), so ``n`` and ``h`` are returned
    with the value: compare only at equal n.
    """
    m = _as_matrix(phi)
    labels = torch.as_tensor(y).detach().to("cpu").reshape(-1)
    if labels.shape[0] != m.shape[0]:
        raise ValueError(f"{m.shape[0]} feature rows but {labels.shape[0]} labels")
    s_w, s_b = _scatter_matrices(m, labels)
    if kind == "fisher":
        evals, evecs = torch.linalg.eigh(s_w)
        keep = evals > rcond * evals.max().clamp_min(0.0)
        q = evecs[:, keep]
        value = float(((q.T @ s_b @ q).diagonal() / evals[keep]).sum()) if keep.any() else 0.0
    elif kind == "trace_ratio":
        value = float(s_b.trace() / s_w.trace())
    else:
        raise ValueError(f"unknown FDR kind {kind!r}; use 'fisher' or 'trace_ratio'")
    return {
        "fdr": value,
        "kind": kind,
        "n": int(m.shape[0]),
        "h": int(m.shape[1]),
        "classes": int(torch.unique(labels).numel()),
    }
