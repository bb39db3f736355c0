"""The report's per-member validation figure (``validation.members``; issue 12).

Two panels, clean and robust validation accuracy per epoch, with one line for the global model
and one for each member the merge rule exposes (each expert and, for ``ema_mix``, each expert's
EMA), so the report shows where along the way clean accuracy is lost: in an expert, in its EMA,
or in the mix.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from unirobust.report.figures import _figure, _integer_x, _save
from unirobust.report.fmt import _wrap
from unirobust.report.runs import RunRecord, _val_split_text

__all__ = ["plot_members"]


def _series(epochs: list[dict], label: str | None, key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for e in epochs:
        val = e["val"] if label is None else e["val"].get("members", {}).get(label)
        if isinstance(val, Mapping) and isinstance(val.get(key), (int, float)):
            xs.append(e["epoch"])
            ys.append(100 * val[key])
    return xs, ys


def plot_members(run: RunRecord, out: Path) -> tuple[str, str] | None:
    """``members.png`` and its caption, or ``None`` when no epoch logged ``val.members``."""
    epochs = run.val_epochs
    labels: list[str] = []
    for e in epochs:
        for label in e["val"].get("members") or {}:
            if label not in labels:
                labels.append(label)
    if not labels:
        return None
    keys = [("clean_acc", "clean")]
    if any(isinstance(e["val"].get("robust_acc"), (int, float)) for e in epochs):
        keys.append(("robust_acc", "robust"))
    bases = list(dict.fromkeys(label.removeprefix("ema_") for label in labels))
    fig, axes = _figure(1, len(keys), (5.2 * len(keys), 4.0))
    for ax, (key, title) in zip(axes[0], keys, strict=True):
        ax.plot(*_series(epochs, None, key), color="black", lw=2, label="global")
        for label in labels:
            ema = label.startswith("ema_")
            color = f"C{bases.index(label.removeprefix('ema_')) % 10}"
            ax.plot(
                *_series(epochs, label, key),
                ls="--" if ema else "-",
                marker=".",
                color=color,
                label=label,
            )
        ax.set(xlabel="epoch", ylabel=f"validation {title} accuracy (%)", title=title)
        _integer_x(ax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    members = [e["val"].get("members") for e in epochs if e["val"].get("members")]
    first = next(iter(members[0].values()))
    points = first.get("attack", "") if isinstance(first, Mapping) else ""
    fig.suptitle(_wrap(f"Validation accuracy of each member — {run.name}", 100), fontsize=9)
    path = out / "members.png"
    _save(fig, path)
    caption = (
        f"Validation accuracy per epoch of the global model (black, on the "
        f"{_val_split_text(run)}) and of each member (solid: the experts' own weights; dashed: "
        f"their EMAs), the members on a subset ({points or 'clean only'}). Members play no part "
        "in the selection of the best checkpoint."
    )
    return path.name, caption
