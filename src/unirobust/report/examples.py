"""Adversarial-example figures: a few test points per threat, clean / adversarial / perturbation.

Read from the per-sample table next to an evaluation summary (``eval/<stem>.npz``, written by
:meth:`~unirobust.evaluation.results.EvalResults.save`); nothing is attacked again. Tables written
before adversarial examples were kept have none, and get no figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unirobust.evaluation.keys import Summary as S
from unirobust.evaluation.results import AdvExamples, load_examples
from unirobust.report.figures import _ckpt_title, _figure, _save
from unirobust.report.fmt import _slug, _threats, _which_points, _wrap
from unirobust.report.runs import EvalRecord, RunRecord

_ROWS = ("clean", "adversarial", "perturbation")


def class_names(dataset: Any) -> list[str] | None:
    """Human class names of a dataset when the library knows them without reading the data."""
    if dataset == "fashion_mnist":
        from unirobust.data.idx import FASHION_MNIST_CLASSES

        return list(FASHION_MNIST_CLASSES)
    return None


def _label(names: Sequence[str] | None, y: int) -> str:
    return names[y] if names is not None and 0 <= y < len(names) else str(y)


def _norm(delta: np.ndarray, norm: str) -> float:
    flat = np.abs(delta.reshape(-1).astype(np.float64))
    if norm == "l2":
        return float(np.sqrt((flat**2).sum()))
    if norm == "l1":
        return float(flat.sum())
    return float(flat.max(initial=0.0))


def _image(ax: Any, img: np.ndarray, scale: float | None = None) -> None:
    """Show a (C, H, W) image in [0, 1]; with ``scale`` a signed perturbation on +-scale."""
    ax.set_xticks([])
    ax.set_yticks([])
    if img.shape[0] == 1:
        if scale is None:
            ax.imshow(img[0], cmap="gray", vmin=0.0, vmax=1.0)
        else:
            ax.imshow(img[0], cmap="seismic", vmin=-scale, vmax=scale)
        return
    rgb = np.transpose(img[:3], (1, 2, 0))
    if scale is not None:
        rgb = 0.5 + rgb / (2 * scale)
    ax.imshow(np.clip(rgb, 0.0, 1.0))


def _suite_attacks(suite: str) -> str:
    from unirobust.evaluation.suites import SUITES

    return f"{suite}: " + " + ".join(SUITES[suite].attacks) if suite in SUITES else suite


def _draw(ex: AdvExamples, spec: str, names: Sequence[str] | None, title: str) -> tuple[Any, float]:
    norm = spec.split(":", 1)[0]
    delta = ex.x_adv - ex.x
    scale = float(np.abs(delta).max(initial=0.0)) or 1.0
    k = len(ex)
    width = max(5.5, 1.55 * k + 1.0)
    fig, axes = _figure(3, k, (width, 5.6))
    for j in range(k):
        true, pred = int(ex.labels[j]), int(ex.pred[j])
        _image(axes[0][j], ex.x[j])
        axes[0][j].set_title(f"#{int(ex.indices[j])}\ntrue: {_label(names, true)}", fontsize=8)
        _image(axes[1][j], ex.x_adv[j])
        fooled = pred != true
        axes[1][j].set_title(
            f"pred: {_label(names, pred)}\n{'fooled' if fooled else 'still correct'}",
            fontsize=8,
            color="tab:red" if fooled else "tab:green",
        )
        _image(axes[2][j], delta[j], scale)
        size = _norm(delta[j], norm)
        text = f"{norm} = {size:.3g}" if size > 0 or fooled else "none returned"
        axes[2][j].set_title(text, fontsize=8)
    for row, name in enumerate(_ROWS):
        text = f"{name}\n(±{scale:.3g})" if name == "perturbation" else name
        axes[row][0].set_ylabel(text, fontsize=9)
    fig.suptitle(_wrap(title, int(11 * width)), fontsize=9)
    return fig, scale


def plot_examples(run: RunRecord, rec: EvalRecord, out: Path) -> list[tuple[str, str]]:
    """One figure per threat with stored adversarial examples: ``examples_<stem>_<threat>.png``."""
    s = rec.summary or {}
    npz = rec.path.with_suffix(".npz")
    if not npz.is_file():
        return []
    try:
        examples = load_examples(npz)
    except (OSError, ValueError, KeyError):
        run.problems.append(f"adversarial examples in {npz.name} could not be read.")
        return []
    names = class_names(s.get(S.DATASET))
    labels: Mapping[str, str] = dict(_threats(s))
    suite = str(s.get(S.SUITE) or "?")
    figures = []
    for spec, ex in examples.items():
        if not len(ex):
            continue
        label = labels.get(spec, spec.replace(":", " "))
        norm, _, eps = spec.partition(":")
        fooled = int(ex.fooled.sum())
        title = (
            f"Adversarial examples — {_ckpt_title(run, rec)}\nattack {_suite_attacks(suite)}; "
            f"threat {label} (norm {norm}, eps {eps}); first {len(ex)} attacked points of "
            f"{_which_points(s)}; {fooled} of {len(ex)} fooled"
        )
        fig, scale = _draw(ex, spec, names, title)
        path = out / f"examples_{rec.stem}_{_slug(spec)}.png"
        _save(fig, path)
        indices = ", ".join(str(int(i)) for i in ex.indices)
        shades = "red: brighter, blue: darker" if ex.x.shape[1] == 1 else "grey: unchanged"
        caption = (
            f"Adversarial examples of the `{rec.checkpoint}` checkpoint under {label} (norm "
            f"{norm}, eps {eps}), attack suite `{_suite_attacks(suite)}`, stored by the "
            f"evaluation (not re-attacked): the first {len(ex)} points the suite attacked, i.e. "
            f"the first clean-correct ones among {_which_points(s)} ({s.get(S.SPLIT) or 'test'} "
            f"indices {indices}). Top: clean image and true label; middle: the final adversarial "
            "input and the model's prediction on it (red: fooled, green: still correct); bottom: "
            f"the perturbation (adversarial − clean) on a colour scale of ±{scale:.3g} "
            f"({shades}), with its {norm} norm; for a point the attack failed on, what the suite "
            "returned (AutoAttack returns the clean image, so no perturbation: 'none returned'). "
            f"{fooled} of {len(ex)} fooled."
        )
        figures.append((path.name, caption))
    return figures
