"""The report's NTK figure: spectra of P, F and P + F at the start of each stage (lpft.md §4).

One panel per stage with an ``ntk`` report (``RUN/ntk/<stage>.json``): σ/σ_max of each kernel on
a log scale, and the numbers the spec asks to report (Frobenius norm, rank with its tolerance,
the FT ratio, the kernel-ridge ``multiclass_acc``) in the caption.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from unirobust.report.figures import _figure, _save
from unirobust.report.fmt import _wrap
from unirobust.report.runs import RunRecord

__all__ = ["plot_ntk"]

_KERNELS = ("P", "F", "NTK")


def _acc(report: Mapping[str, Any], kernel: str) -> str:
    acc = report.get("multiclass_acc", {}).get(kernel, {})
    value = acc.get("acc") if isinstance(acc, Mapping) else None
    return "n/a" if not isinstance(value, (int, float)) else f"{100 * value:.1f}%"


def _stage_text(stage: str, report: Mapping[str, Any]) -> str:
    parts = []
    for kernel in _KERNELS:
        k = report.get(kernel, {})
        parts.append(
            f"{kernel}: FN {k.get('fn', math.nan):.4g}, rank {k.get('rank', '?')}"
            f" (rtol {k.get('rank_rtol', math.nan):.1e}, {k.get('rank_dtype', '?')}),"
            f" kernel-ridge acc {_acc(report, kernel)}"
        )
    ratio = report.get("ft_ratio")
    ratio_text = f"{ratio:.4f}" if isinstance(ratio, (int, float)) else "n/a"
    return (
        f"stage `{stage}` ({report.get('n_train', '?')} training and "
        f"{report.get('n_test', 0)} {report.get('held_out_split') or 'held-out'} samples, "
        f"{report.get('num_params', '?')} backbone parameters in θ_φ, mode "
        f"{report.get('mode', '?')}): " + "; ".join(parts) + f"; FT ratio {ratio_text}"
    )


def plot_ntk(run: RunRecord, out: Path) -> tuple[str, str] | None:
    """``ntk.png`` and its caption, or ``None`` when no stage computed the NTK."""
    stages = {name: rep for name, rep in run.ntk.items() if isinstance(rep, Mapping)}
    if not stages:
        return None
    fig, axes = _figure(1, len(stages), (4.4 * len(stages), 3.8))
    for ax, (stage, report) in zip(axes[0], stages.items(), strict=True):
        for kernel in _KERNELS:
            spectrum = report.get(kernel, {}).get("spectrum") or []
            values = [v for v in spectrum if isinstance(v, (int, float)) and v > 0]
            if values:
                ax.plot(range(1, len(values) + 1), values, label=kernel)
        ax.set_yscale("log")
        ax.set(xlabel="index", ylabel="σ / σ_max", title=f"stage {stage}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(_wrap(f"NTK spectra at the start of each stage — {run.name}", 100), fontsize=9)
    path = out / "ntk.png"
    _save(fig, path)
    caption = (
        "Normalised singular values of the train × train kernels P (head), F (backbone) and "
        "their sum, for the model each stage starts from (lpft.md §4). "
        + " ".join(_stage_text(s, r) + "." for s, r in stages.items())
        + " The FT ratio is the mean ‖u_F‖ / ‖u_P + u_F‖ over the training samples: near 1 the "
        "backbone term dominates the first update, near 0 the head term does."
    )
    return path.name, caption
