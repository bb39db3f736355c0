"""Figures of a run report and of a comparison (matplotlib ``Figure`` + Agg, no pyplot).

Every figure says what it shows: the attack or threat (norm and eps), the suite, how many points
and which ones. The caller's global matplotlib backend and state are never touched.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from unirobust.evaluation.keys import Calibration as Cal
from unirobust.evaluation.keys import Corruptions as Cor
from unirobust.evaluation.keys import Reliability as Rel
from unirobust.evaluation.keys import Summary as S
from unirobust.io import atomic_write
from unirobust.report.fmt import (
    UNION_NOTE,
    _num,
    _pct,
    _pct_or_nan,
    _robust,
    _severities,
    _show_union,
    _threats,
    _which_points,
    _wrap,
)
from unirobust.report.runs import EvalRecord, RunRecord, _val_split_text
from unirobust.report.stages import _expert_labels

_PNG_DPI = 100


def _figure(nrows: int, ncols: int, size: tuple[float, float], **kw: Any) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _save(fig: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=_PNG_DPI, format="png"))


def _integer_x(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _per_key(value: Any) -> dict[str, float | None]:
    if isinstance(value, Mapping):
        return {str(k): _num(v) for k, v in value.items()}
    v = _num(value)
    return {"all": v} if v is not None else {}


def _plot_training(run: RunRecord, out: Path) -> tuple[str, str] | None:
    epochs = run.epochs
    if not epochs:
        return None
    xs = [e["epoch"] for e in epochs]
    names: list[str] = []
    for e in epochs:
        for src in (e.get("train"), e.get("lr")):
            if isinstance(src, Mapping):
                names += [str(k) for k in src if str(k) not in names]
    labels = _expert_labels(run.stages)
    mix_keys: list[str] = []
    for e in epochs:
        mix_keys += [k for k in _per_key(e.get("mix_weights")) if k not in mix_keys]
    panels = ["loss", "acc", "lr"] + (["mix"] if mix_keys else [])
    fig, axes = _figure(1, len(panels), (4.3 * len(panels), 3.9))
    axes = axes[0]

    def train_series(name: str, key: str) -> list[float]:
        vals = []
        for e in epochs:
            t = (e.get("train") or {}).get(name)
            vals.append(_num(t.get(key)) if isinstance(t, Mapping) else None)
        return [math.nan if v is None else v for v in vals]

    for name in names:
        lab = labels.get(name, name)
        axes[0].plot(xs, train_series(name, "loss"), marker="o", label=lab)
        acc = [100 * v for v in train_series(name, "acc")]
        axes[1].plot(xs, acc, marker="o", label=lab)
        lr = [_per_key(e.get("lr")).get(name) for e in epochs]
        axes[2].plot(xs, [math.nan if v is None else v for v in lr], marker="o", label=lab)
    if not names:  # a single global lr logged as a number
        lr = [_per_key(e.get("lr")).get("all") for e in epochs]
        axes[2].plot(xs, [math.nan if v is None else v for v in lr], marker="o", label="lr")
    axes[0].set(title="training loss", xlabel="epoch", ylabel="loss")
    axes[1].set(title="training accuracy", xlabel="epoch", ylabel="accuracy on training inputs (%)")
    axes[2].set(title="learning rate (end of epoch)", xlabel="epoch", ylabel="lr")
    axes[2].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    if mix_keys:
        for k in mix_keys:
            w = [_per_key(e.get("mix_weights")).get(k) for e in epochs]
            axes[3].plot(xs, [math.nan if v is None else v for v in w], marker="o", label=k)
        axes[3].set(title="merge mix weights", xlabel="epoch", ylabel="weight")
    for ax in axes:
        _integer_x(ax)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    data = run.config.get("data") or {}
    fig.suptitle(
        _wrap(
            f"Training curves — {run.name}: per expert, on the training batches each objective "
            f"sees (dataset {data.get('name', '?')}, n_train={data.get('n_train', '?')})"
        ),
        fontsize=10,
    )
    path = out / "training_curves.png"
    _save(fig, path)
    caption = (
        "Training curves by epoch (1-based), one line per expert (legend: expert, objective, "
        "threat): training loss, accuracy on the inputs each objective trains on (adversarial "
        "examples for adversarial objectives, so not comparable to clean accuracy), learning rate"
        + (", and the merge rule's mix weights" if mix_keys else "")
        + f". Training split of {data.get('name', 'the dataset')}"
        + (f" (n_train={data['n_train']})." if data.get("n_train") is not None else ".")
    )
    return path.name, caption


def _val_attack(run: RunRecord) -> str:
    attacks: list[str] = []
    for e in run.val_epochs:
        a = e["val"].get("attack")
        if a and str(a) not in attacks:
            attacks.append(str(a))
    return "; ".join(attacks) if attacks else "attack not recorded"


def _plot_validation(run: RunRecord, out: Path) -> tuple[str, str] | None:
    ve = run.val_epochs
    if not ve:
        return None
    xs = [e["epoch"] for e in ve]
    clean = [_pct_or_nan(e["val"].get("clean_acc")) for e in ve]
    robust = [_pct_or_nan(e["val"].get("robust_acc")) for e in ve]
    has_robust = any(not math.isnan(v) for v in robust)
    attack = _val_attack(run)
    fig, axes = _figure(1, 1, (7.5, 4.6))
    ax = axes[0][0]
    ax.plot(xs, clean, marker="o", label="clean")
    if has_robust:
        ax.plot(xs, robust, marker="s", label=f"robust ({attack})")
    best = run.best_epoch
    best_txt = "no epoch flagged is_best"
    if best is not None and isinstance(best.get("val"), Mapping):
        b = best["epoch"]
        ax.axvline(b, color="black", ls="--", lw=1, label=f"best epoch {b} (is_best)")
        ax.plot([b], [_pct_or_nan(best["val"].get("clean_acc"))], marker="*", ms=14, color="k")
        if has_robust:
            ax.plot([b], [_pct_or_nan(best["val"].get("robust_acc"))], marker="*", ms=14, color="k")
        best_txt = f"best epoch {b} (marked, dashed line)"
    ax.set(xlabel="epoch", ylabel="validation accuracy (%)")
    _integer_x(ax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    split = _val_split_text(run)
    robust_txt = f"robust: {attack}" if has_robust else "robust accuracy not measured"
    ax.set_title(
        _wrap(f"Validation accuracy per epoch — {run.name}\n{split}; {robust_txt}; {best_txt}", 80),
        fontsize=9,
    )
    path = out / "validation.png"
    _save(fig, path)
    caption = (
        f"Clean and robust accuracy on the {split} after each epoch; robust accuracy under "
        f"{attack}. {best_txt.capitalize()}, the epoch the `best` checkpoint comes from. "
        "The test set plays no part in this selection."
        if has_robust
        else f"Clean accuracy on the {split} after each epoch (robust accuracy was not measured "
        f"on validation). {best_txt.capitalize()}."
    )
    return path.name, caption


_DIAGNOSTIC_PANELS = (
    ("head_norm", "weight_norm", "head ||V||_F"),
    ("feature_change", "diff", "Diff(F) = mean ||phi - phi0||"),
    ("feature_cosine", None, "mean pairwise feature cosine"),
    ("calibration", "ece", "validation ECE (unscaled)"),
)


def _plot_diagnostics(run: RunRecord, out: Path) -> tuple[str, str] | None:
    """lpft.md §3 per epoch: head norm, feature change from the stage start, cosine, ECE."""
    epochs = [e for e in run.val_epochs if isinstance(e["val"].get("diagnostics"), Mapping)]
    panels = [
        (name, key, label)
        for name, key, label in _DIAGNOSTIC_PANELS
        if any(name in e["val"]["diagnostics"] for e in epochs)
    ]
    if not panels:
        return None
    fig, axes = _figure(1, len(panels), (3.6 * len(panels), 3.6))
    xs = [e["epoch"] for e in epochs]
    starts = [
        e["epoch"]
        for i, e in enumerate(epochs)
        if i and e.get("stage") != epochs[i - 1].get("stage")
    ]
    for ax, (name, key, label) in zip(axes[0], panels, strict=True):
        values = [e["val"]["diagnostics"].get(name) for e in epochs]
        ys = [_num(v.get(key) if key and isinstance(v, Mapping) else v) for v in values]
        ax.plot(xs, [math.nan if y is None else y for y in ys], marker="o")
        for start in starts:
            ax.axvline(start - 0.5, color="gray", ls=":", lw=1)
        ax.set(xlabel="epoch", title=label)
        ax.ticklabel_format(axis="y", useOffset=False)
        _integer_x(ax)
        ax.grid(alpha=0.3)
    split = _val_split_text(run)
    fig.suptitle(_wrap(f"Fine-tuning diagnostics per epoch — {run.name}; {split}", 100), fontsize=9)
    path = out / "diagnostics.png"
    _save(fig, path)
    caption = (
        f"Per-epoch diagnostics of the global model on the {split} (lpft.md §3): head Frobenius "
        "norm (bias excluded), mean feature change from the model the stage started from, mean "
        "pairwise feature cosine and unscaled ECE, as asked by `validation.diagnostics`. Dotted "
        "lines mark stage boundaries."
    )
    return path.name, caption


def _ckpt_title(run: RunRecord, rec: EvalRecord) -> str:
    return f"{run.name}, {rec.checkpoint} checkpoint ({rec.rel})"


def _plot_eval(run: RunRecord, rec: EvalRecord, out: Path) -> tuple[str, str]:
    s = rec.summary or {}
    threats = _threats(s)
    names = ["clean", *(label for _, label in threats)]
    vals = [_num(s.get(S.CLEAN_ACC)), *(_num(_robust(s, spec)) for spec, _ in threats)]
    colors = ["tab:blue"] + ["tab:orange"] * len(threats)
    if _show_union(s):
        names.append("union\n(all threats)")
        vals.append(_num(s.get(S.UNION_ACC)))
        colors.append("tab:red")
    fig, axes = _figure(1, 1, (max(5.5, 1.3 * len(names) + 2.5), 4.6))
    ax = axes[0][0]
    xs = list(range(len(names)))
    ax.bar(xs, [0 if v is None else 100 * v for v in vals], color=colors, width=0.6)
    for x, v in zip(xs, vals, strict=True):
        ax.text(x, (0 if v is None else 100 * v) + 1.5, _pct(v), ha="center", fontsize=9)
    ax.set_xticks(xs, names)
    ax.set_ylim(0, 108)
    ax.set_ylabel("accuracy (%)")
    ax.grid(axis="y", alpha=0.3)
    split = s.get(S.SPLIT) or "?"
    eps_txt = ", ".join(label for _, label in threats) or "none"
    ax.set_title(
        _wrap(
            f"Final evaluation — {_ckpt_title(run, rec)}\nsuite {s.get(S.SUITE, '?')}; threats "
            f"(norm eps): {eps_txt}; {_which_points(s)} (split {split}, n={s.get(S.N_POINTS)})"
            + ("; union-only suite" if s.get(S.UNION_ONLY) else ""),
            80,
        ),
        fontsize=9,
    )
    path = out / f"eval_{rec.stem}.png"
    _save(fig, path)
    caption = (
        f"Test-time accuracy of the `{rec.checkpoint}` checkpoint, suite `{s.get(S.SUITE, '?')}`, "
        f"on {_which_points(s)} of {s.get(S.DATASET, 'the dataset')} ({split} split): clean, "
        f"under each threat ({eps_txt})"
        + (f", and {UNION_NOTE}" if _show_union(s) else "")
        + "."
        + (" `n/a` bars were not measured by this suite." if None in vals else "")
    )
    return path.name, caption


def _plot_reliability(run: RunRecord, rec: EvalRecord, out: Path) -> tuple[str, str] | None:
    s = rec.summary or {}
    cal = s.get(S.CALIBRATION)
    if not isinstance(cal, Mapping):
        return None
    rel = cal.get(Cal.RELIABILITY) or {}
    acc_bins = list(rel.get(Rel.ACCURACY) or [])
    conf_bins = list(rel.get(Rel.CONFIDENCE) or [])
    counts = list(rel.get(Rel.COUNT) or [])
    nb = len(acc_bins)
    if nb == 0:
        return None
    conf_bins = (conf_bins + [None] * nb)[:nb]
    counts = (counts + [None] * nb)[:nb]
    width = 1.0 / nb
    centers = [(i + 0.5) * width for i in range(nb)]
    keep = [i for i in range(nb) if _num(acc_bins[i]) is not None and (_num(counts[i]) or 0) > 0]
    fig, axes = _figure(2, 1, (6.0, 6.4), sharex=True, height_ratios=[3, 1])
    ax, axc = axes[0][0], axes[1][0]
    ax.plot([0, 1], [0, 1], ls="--", color="gray", label="perfect calibration")
    ax.bar(
        [centers[i] for i in keep],
        [float(acc_bins[i]) for i in keep],
        width=width * 0.95,
        color="tab:blue",
        alpha=0.75,
        label="accuracy in bin",
    )
    cx = [i for i in keep if _num(conf_bins[i]) is not None]
    ax.plot(
        [centers[i] for i in cx],
        [float(conf_bins[i]) for i in cx],
        "o",
        color="tab:red",
        ms=4,
        label="mean confidence in bin",
    )
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    axc.bar(centers, [_num(c) or 0 for c in counts], width=width * 0.95, color="gray")
    axc.set(xlabel="confidence (max softmax probability)", ylabel="points")
    on_clean = _num(cal.get(Cal.ACC)) is not None and _num(s.get(S.CLEAN_ACC)) is not None
    on_clean = on_clean and abs(float(cal[Cal.ACC]) - float(s[S.CLEAN_ACC])) < 1e-6
    inputs = "clean inputs" if on_clean else f"accuracy {_pct(cal.get(Cal.ACC))}%"
    temp = _num(cal.get(Cal.TEMPERATURE))
    extra = f"; temperature {temp:.3f} → ECE {_pct(cal.get(Cal.ECE_SCALED))}%" if temp else ""
    ax.set_title(
        _wrap(
            f"Reliability diagram — {_ckpt_title(run, rec)}\n{inputs}; {_which_points(s)}; "
            f"{nb} equal-width bins; ECE {_pct(cal.get(Cal.ECE))}%, MCE {_pct(cal.get(Cal.MCE))}%"
            + extra,
            80,
        ),
        fontsize=9,
    )
    path = out / f"reliability_{rec.stem}.png"
    _save(fig, path)
    caption = (
        f"Reliability diagram of the `{rec.checkpoint}` checkpoint ({inputs}, {_which_points(s)}):"
        f" accuracy against confidence in {nb} equal-width bins, with the number of points per "
        f"bin below. ECE {_pct(cal.get(Cal.ECE))}%, MCE {_pct(cal.get(Cal.MCE))}% (unscaled)."
    )
    return path.name, caption


def _plot_corruptions(run: RunRecord, rec: EvalRecord, out: Path) -> tuple[str, str] | None:
    s = rec.summary or {}
    cor = s.get(S.CORRUPTIONS)
    per = cor.get(Cor.PER_CORRUPTION) if isinstance(cor, Mapping) else None
    if not isinstance(per, Mapping) or not per:
        return None
    sevs = _severities(per)
    fig, axes = _figure(1, 1, (8.0, 4.8))
    ax = axes[0][0]
    xs = list(range(len(sevs)))
    for name, d in per.items():
        d = d if isinstance(d, Mapping) else {}
        ys = [_pct_or_nan({str(k): v for k, v in d.items()}.get(sv)) for sv in sevs]
        ax.plot(xs, ys, marker=".", lw=1, alpha=0.8, label=str(name))
    means = []
    for sv in sevs:
        vals = [
            _num({str(k): v for k, v in d.items()}.get(sv))
            for d in per.values()
            if isinstance(d, Mapping)
        ]
        vals = [v for v in vals if v is not None]
        means.append(100 * statistics.fmean(vals) if vals else math.nan)
    ax.plot(xs, means, marker="o", lw=2.5, color="black", label="mean over corruptions")
    clean = _num(s.get(S.CLEAN_ACC))
    if clean is not None:
        ax.axhline(100 * clean, ls="--", color="gray", label=f"clean ({_pct(clean)}%)")
    ax.set_xticks(xs, sevs)
    ax.set(xlabel="severity", ylabel="accuracy (%)", ylim=(0, 105))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title(
        _wrap(
            f"Corruption accuracy — {_ckpt_title(run, rec)}\n{len(per)} corruptions; "
            f"{_which_points(s)}; mean accuracy {_pct(cor.get(Cor.MEAN_ACC))}%",
            80,
        ),
        fontsize=9,
    )
    path = out / f"corruptions_{rec.stem}.png"
    _save(fig, path)
    caption = (
        f"Accuracy of the `{rec.checkpoint}` checkpoint on corrupted copies of {_which_points(s)}, "
        f"per corruption and severity, with the mean over {len(per)} corruptions (bold) and clean "
        f"accuracy (dashed). Mean corruption accuracy {_pct(cor.get(Cor.MEAN_ACC))}%."
    )
    return path.name, caption


def _scatter_panel(ax: Any, results: list[dict[str, Any]], spec: str, label: str) -> None:
    """One clean-vs-robust panel: a point per result (mean, error bars ± one sample std).

    ``spec`` is a threat spec of the results, or ``"union"`` for their union accuracy (drawn only
    for results with several threats). Results without the number are left out of the panel.
    """
    colors = [f"C{i % 10}" for i in range(len(results))]
    multi_setup = len({r["method"] for r in results}) < len(results)
    used = []
    for r, color in zip(results, colors, strict=True):
        agg = r["union"] if spec == "union" else r["robust"].get(spec)
        if spec == "union" and len(r["threats"]) < 2:
            agg = None
        c = r["clean"]
        if agg is None or agg["mean"] is None or c["mean"] is None:
            continue
        used.append(r)
        n = r["n_seeds"]
        lab = f"{r['method']} ({n} seed{'s' if n != 1 else ''})"
        if multi_setup:
            lab += f" [{r['suite']}]"
        ax.errorbar(
            100 * c["mean"],
            100 * agg["mean"],
            xerr=100 * (c["std"] or 0.0),
            yerr=100 * (agg["std"] or 0.0),
            fmt="o",
            capsize=4,
            color=color,
            label=lab,
        )
    suites = " / ".join(sorted({str(r["suite"]) for r in used})) or "?"
    npts = " / ".join(sorted({str(r["n_points"]) for r in used})) or "?"
    points = "; ".join(dict.fromkeys(_which_points(r) for r in used))
    ax.set_xlabel(f"clean accuracy (%), n={npts} points")
    ax.set_ylabel(_wrap(f"robust accuracy (%) under {label}\nsuite {suites}, n={npts}", 45))
    ax.set_title(_wrap(f"{label} — {points}", 60), fontsize=9)
    ax.margins(0.15)
    ax.grid(alpha=0.3)
    if used:
        ax.legend(fontsize=7)


def _plot_tradeoff(
    results: list[dict[str, Any]], out_dir: Path, checkpoint: str, title: str
) -> str | None:
    panels: dict[str, str] = {}  # spec (or "union") -> label
    for r in results:
        for spec, label in zip(r["threats"], r["threat_labels"], strict=True):
            panels.setdefault(spec, label)
        if r["union"] is not None and len(r["threats"]) > 1:
            panels.setdefault("union", "union of " + ", ".join(r["threat_labels"]))
    if not results or not panels:
        return None
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = _figure(nrows, ncols, (5.2 * ncols, 4.6 * nrows))
    flat = [ax for row in axes for ax in row]
    for ax, (spec, label) in zip(flat, panels.items(), strict=False):
        _scatter_panel(ax, results, spec, label)
    for ax in flat[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(
        _wrap(
            f"{title or 'Clean vs robust accuracy'} — {checkpoint} checkpoint; "
            "mean ± sample std over seeds",
            55 * ncols,  # about what a 5.2-inch panel holds at this font size
        ),
        fontsize=10,
    )
    _save(fig, out_dir / "tradeoff.png")
    return "tradeoff.png"
