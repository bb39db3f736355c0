"""Markdown reports and matplotlib figures for run directories.

Everything here reads back what other modules wrote into a run directory (``config.yaml``,
``metrics.jsonl``, ``eval/*.json``); nothing trains or attacks. Following DESIGN.md, every figure
and table says what it shows: the attack or threat (norm and eps), the evaluation suite, how many
points and which ones. Accuracies are stored as fractions in [0, 1] and shown as percentages
with two decimals.

Public API:

- :func:`write_report` -- ``RUN/report/report.md`` plus PNG figures for one run.
- :func:`compare_runs` -- mean ± std over seeds per recipe, ``comparison.md``/``.json`` and a
  clean-vs-robust trade-off plot.
- :func:`format_results_table` -- a plain markdown table of evaluation summaries (for the CLI).
- :func:`load_run` -- the parsed contents of a run directory (:class:`RunRecord`).

Figures are drawn on :class:`matplotlib.figure.Figure` objects directly (Agg canvas, no pyplot), so
the caller's global matplotlib backend and state are never touched.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from unirobust.errors import RunDirError, UserError

__all__ = [
    "EvalRecord",
    "RunRecord",
    "compare_runs",
    "format_results_table",
    "load_run",
    "write_report",
]

NA = "n/a"  # evaluated, but no number (e.g. per-threat accuracy in a union-only suite)
ABSENT = "—"  # not part of this evaluation
UNION_NOTE = (
    "union = fraction of points that resist every listed threat at once "
    "(per-sample worst case, not an average over threats)"
)
_PNG_DPI = 100


# --------------------------------------------------------------------------------------------------
# Reading a run directory
# --------------------------------------------------------------------------------------------------


@dataclass
class EvalRecord:
    """One evaluation summary of a run (``eval/*.json``) and the checkpoint it belongs to."""

    checkpoint: str
    path: Path
    rel: str
    summary: dict[str, Any] | None = None
    error: str | None = None

    @property
    def stem(self) -> str:
        return _slug(self.path.stem)


@dataclass
class RunRecord:
    """The parsed contents of a run directory; missing pieces are empty, problems are listed."""

    run_dir: Path
    config: dict[str, Any] = field(default_factory=dict)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    evals: list[EvalRecord] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.config.get("name") or self.run_dir.name)

    @property
    def val_epochs(self) -> list[dict[str, Any]]:
        return [e for e in self.epochs if isinstance(e.get("val"), Mapping)]

    @property
    def best_epoch(self) -> dict[str, Any] | None:
        """The last epoch flagged ``is_best`` (the flag marks a new best when it is logged)."""
        best = [e for e in self.epochs if e.get("is_best") is True]
        return best[-1] if best else None

    def summaries(self, checkpoint: str | None = None) -> list[EvalRecord]:
        return [
            r
            for r in self.evals
            if r.summary is not None and (checkpoint is None or r.checkpoint == checkpoint)
        ]


def load_run(run_dir: Path | str) -> RunRecord:
    """Parse ``config.yaml``, ``metrics.jsonl`` and the evaluation summaries of a run.

    Epoch events logged twice (e.g. an epoch redone after a resume) keep their last occurrence.
    Unknown events are ignored; unreadable lines and files are recorded in ``problems``.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} does not exist")
    markers = ("config.yaml", "metrics.jsonl", "eval")
    if not any((run_dir / m).exists() for m in markers):
        raise RunDirError(
            f"{run_dir} is not a run directory (none of config.yaml, metrics.jsonl, eval/ found)"
        )
    run = RunRecord(run_dir=run_dir)
    run.config = _read_config(run_dir / "config.yaml", run.problems)
    events = _read_events(run_dir / "metrics.jsonl", run.problems)
    by_epoch: dict[int, dict[str, Any]] = {}
    for ev in events:
        if ev.get("event") == "epoch" and isinstance(ev.get("epoch"), int):
            by_epoch[ev["epoch"]] = ev
    run.epochs = [by_epoch[k] for k in sorted(by_epoch)]
    run.evals = _collect_evals(run_dir, events, run.problems)
    return run


def _read_config(path: Path, problems: list[str]) -> dict[str, Any]:
    if not path.is_file():
        problems.append("config.yaml is missing; configuration is unknown.")
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        problems.append(f"config.yaml could not be parsed ({type(exc).__name__}).")
        return {}
    if not isinstance(data, dict):
        problems.append("config.yaml does not hold a mapping; configuration is unknown.")
        return {}
    return data


def _read_events(path: Path, problems: list[str]) -> list[dict[str, Any]]:
    if not path.is_file():
        problems.append("metrics.jsonl is missing; no training curves.")
        return []
    events: list[dict[str, Any]] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            problems.append(f"metrics.jsonl line {lineno} is not valid JSON and was skipped.")
            continue
        if isinstance(obj, dict):
            events.append(obj)
    return events


def _looks_like_summary(obj: Any) -> bool:
    return isinstance(obj, dict) and "clean_acc" in obj and ("threats" in obj or "suite" in obj)


def _collect_evals(
    run_dir: Path, events: list[dict[str, Any]], problems: list[str]
) -> list[EvalRecord]:
    # path -> checkpoint named by the (last) final_eval event that references it, in event order
    referenced: dict[Path, str] = {}
    for ev in events:
        if ev.get("event") != "final_eval" or not ev.get("summary_path"):
            continue
        p = Path(str(ev["summary_path"]))
        p = p if p.is_absolute() else run_dir / p
        referenced[p] = str(ev.get("checkpoint") or "unknown")
    found: list[tuple[Path, str | None]] = list(referenced.items())
    eval_dir = run_dir / "eval"
    if eval_dir.is_dir():
        known = {p.resolve() for p in referenced}
        found += [(p, None) for p in sorted(eval_dir.glob("*.json")) if p.resolve() not in known]

    records: list[EvalRecord] = []
    for path, event_ckpt in found:
        try:
            rel = path.relative_to(run_dir).as_posix()
        except ValueError:
            rel = str(path)
        rec = EvalRecord(checkpoint=event_ckpt or "unknown", path=path, rel=rel)
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            rec.error = f"summary {rel} (named by a final_eval event) is missing"
        except (OSError, json.JSONDecodeError) as exc:
            rec.error = f"summary {rel} could not be read ({type(exc).__name__})"
        else:
            if not _looks_like_summary(obj):
                if event_ckpt is None:
                    continue  # some other JSON file in eval/ (e.g. evaluation state): not ours
                rec.error = f"{rel} is not an evaluation summary (no clean_acc/threats keys)"
            else:
                rec.summary = obj
                rec.checkpoint = str(obj.get("checkpoint") or event_ckpt or "unknown")
        if rec.error:
            problems.append(rec.error + ".")
        records.append(rec)
    return records


# --------------------------------------------------------------------------------------------------
# Small formatting helpers
# --------------------------------------------------------------------------------------------------


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def _pct(x: Any) -> str:
    v = _num(x)
    return NA if v is None else f"{100.0 * v:.2f}"


def _pct_or_nan(x: Any) -> float:
    v = _num(x)
    return math.nan if v is None else 100.0 * v


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def _cell(x: Any) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[Any], rows: Sequence[Sequence[Any]], align: str = "") -> str:
    """A pipe table padded to column width, readable both rendered and as plain text.

    ``align`` holds one letter per column: ``l`` (default) or ``r``.
    """
    cells = [[_cell(c) for c in header]] + [[_cell(c) for c in r] for r in rows]
    ncol = len(header)
    align = (align or "").ljust(ncol, "l")
    widths = [max(3, *(len(r[i]) for r in cells)) for i in range(ncol)]

    def line(r: list[str]) -> str:
        parts = [
            c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(r, widths, align, strict=True)
        ]
        return "| " + " | ".join(parts) + " |"

    sep = [
        ("-" * (w - 1) + ":") if a == "r" else "-" * w for w, a in zip(widths, align, strict=True)
    ]
    return "\n".join([line(cells[0]), "| " + " | ".join(sep) + " |", *map(line, cells[1:])])


def _compact(value: Any, nested: bool = False) -> str:
    if isinstance(value, Mapping):
        text = ", ".join(f"{k}={_compact(v, True)}" for k, v in value.items())
        return "{" + text + "}" if nested else text
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_compact(v, True) for v in value) + "]"
    return str(value)


def _threat_text(t: Any) -> str:
    """'linf:0.1' / {'norm': 'linf', 'eps': 0.1} / lists of those -> 'linf 0.1'."""
    if t is None:
        return ABSENT
    if isinstance(t, str):
        return t.replace(":", " ")
    if isinstance(t, Mapping):
        norm = t.get("norm", t.get("name"))
        eps = t.get("eps")
        if norm is not None and eps is not None:
            rest = {k: v for k, v in t.items() if k not in ("norm", "name", "eps")}
            return f"{norm} {eps}" + (f" ({_compact(rest)})" if rest else "")
        return _compact(t)
    if isinstance(t, (list, tuple)):
        return " + ".join(_threat_text(x) for x in t)
    return str(t)


def _threats(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(spec, human label) pairs of a summary, labels falling back to the spec."""
    specs = [str(s) for s in summary.get("threats") or []]
    labels = summary.get("threat_labels") or []
    if len(labels) != len(specs):
        labels = [s.replace(":", " ") for s in specs]
    return list(zip(specs, (str(x) for x in labels), strict=True))


def _which_points(summary: Mapping[str, Any]) -> str:
    """Which points, always with their number: 'first 1000 test points', 'all test points, n=…'."""
    n = summary.get("n_points")
    text = str(summary.get("points") or "").strip()
    if not text:
        return f"{n} points" if n is not None else "unknown points"
    if n is None or str(n) in text:
        return text
    return f"{text}, n={n}"


def _robust(summary: Mapping[str, Any], spec: str) -> Any:
    robust = summary.get("robust_acc")
    return robust.get(spec) if isinstance(robust, Mapping) else None


def _show_union(summary: Mapping[str, Any]) -> bool:
    return len(_threats(summary)) > 1 or _num(summary.get("union_acc")) is not None


def _wrap(text: str, width: int = 95) -> str:
    return "\n".join(textwrap.fill(part, width) for part in text.split("\n"))


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _seconds(x: Any) -> str:
    v = _num(x)
    if v is None:
        return NA
    if v < 120:
        return f"{v:.1f} s"
    return f"{v:.0f} s ({v / 60:.1f} min)"


# --------------------------------------------------------------------------------------------------
# Results table (shared with the CLI)
# --------------------------------------------------------------------------------------------------


def format_results_table(summary_dicts: Iterable[Mapping[str, Any]]) -> str:
    """Markdown/plain-text table of evaluation summaries, one row per summary.

    Columns: checkpoint, suite, N, which points, clean, one column per threat label (eps included),
    union. Accuracies are percentages with two decimals. ``n/a`` marks a number the evaluation did
    not produce (e.g. per-threat accuracy of a union-only suite); ``—`` marks a threat that was not
    part of that summary's suite.
    """
    summaries = list(summary_dicts)
    if not summaries:
        return "(no evaluation summaries)"
    columns: dict[str, str] = {}
    for s in summaries:
        for spec, label in _threats(s):
            columns.setdefault(spec, label)
    any_union = any(_show_union(s) for s in summaries)
    header = ["checkpoint", "suite", "N", "points", "clean %"]
    header += [f"{label} %" for label in columns.values()]
    header += ["union %"] if any_union else []
    rows = []
    for s in summaries:
        own = {spec for spec, _ in _threats(s)}
        row = [
            s.get("checkpoint") or ABSENT,
            s.get("suite") or ABSENT,
            s.get("n_points") if s.get("n_points") is not None else ABSENT,
            _which_points(s),
            _pct(s.get("clean_acc")),
        ]
        row += [_pct(_robust(s, spec)) if spec in own else ABSENT for spec in columns]
        if any_union:
            row.append(_pct(s.get("union_acc")) if _show_union(s) else ABSENT)
        rows.append(row)
    return _md_table(header, rows, align="llrlr" + "r" * (len(header) - 5))


# --------------------------------------------------------------------------------------------------
# Figures (matplotlib Figure + Agg, no pyplot)
# --------------------------------------------------------------------------------------------------


def _figure(nrows: int, ncols: int, size: tuple[float, float], **kw: Any) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _save(fig: Any, path: Path) -> None:
    fig.savefig(path, dpi=_PNG_DPI, format="png")


def _integer_x(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _expert_labels(config: Mapping[str, Any]) -> dict[str, str]:
    """expert name -> 'name (objective threat)' for legends."""
    out: dict[str, str] = {}
    train = config.get("train") or {}
    for ex in train.get("experts") or []:
        if not isinstance(ex, Mapping) or "name" not in ex:
            continue
        obj = ex.get("objective") or {}
        obj_name = obj.get("name") if isinstance(obj, Mapping) else obj
        threat = obj.get("threat", obj.get("threats")) if isinstance(obj, Mapping) else None
        extra = " ".join(str(x) for x in (obj_name, _threat_text(threat) if threat else None) if x)
        out[str(ex["name"])] = f"{ex['name']} ({extra})" if extra else str(ex["name"])
    return out


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
    labels = _expert_labels(run.config)
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


def _val_split_text(run: RunRecord) -> str:
    vs = (run.config.get("data") or {}).get("val_size")
    return f"validation split (data.val_size={vs})" if vs is not None else "validation split"


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


def _ckpt_title(run: RunRecord, rec: EvalRecord) -> str:
    return f"{run.name}, {rec.checkpoint} checkpoint ({rec.rel})"


def _plot_eval(run: RunRecord, rec: EvalRecord, out: Path) -> tuple[str, str]:
    s = rec.summary or {}
    threats = _threats(s)
    names = ["clean", *(label for _, label in threats)]
    vals = [_num(s.get("clean_acc")), *(_num(_robust(s, spec)) for spec, _ in threats)]
    colors = ["tab:blue"] + ["tab:orange"] * len(threats)
    if _show_union(s):
        names.append("union\n(all threats)")
        vals.append(_num(s.get("union_acc")))
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
    split = s.get("split") or "?"
    eps_txt = ", ".join(label for _, label in threats) or "none"
    ax.set_title(
        _wrap(
            f"Final evaluation — {_ckpt_title(run, rec)}\nsuite {s.get('suite', '?')}; threats "
            f"(norm eps): {eps_txt}; {_which_points(s)} (split {split}, n={s.get('n_points')})"
            + ("; union-only suite" if s.get("union_only") else ""),
            80,
        ),
        fontsize=9,
    )
    path = out / f"eval_{rec.stem}.png"
    _save(fig, path)
    caption = (
        f"Test-time accuracy of the `{rec.checkpoint}` checkpoint, suite `{s.get('suite', '?')}`, "
        f"on {_which_points(s)} of {s.get('dataset', 'the dataset')} ({split} split): clean, "
        f"under each threat ({eps_txt})"
        + (f", and {UNION_NOTE}" if _show_union(s) else "")
        + "."
        + (" `n/a` bars were not measured by this suite." if None in vals else "")
    )
    return path.name, caption


def _plot_reliability(run: RunRecord, rec: EvalRecord, out: Path) -> tuple[str, str] | None:
    s = rec.summary or {}
    cal = s.get("calibration")
    if not isinstance(cal, Mapping):
        return None
    rel = cal.get("reliability") or {}
    acc_bins = list(rel.get("bin_accuracy") or [])
    conf_bins = list(rel.get("bin_confidence") or [])
    counts = list(rel.get("bin_count") or [])
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
    on_clean = _num(cal.get("acc")) is not None and _num(s.get("clean_acc")) is not None
    on_clean = on_clean and abs(float(cal["acc"]) - float(s["clean_acc"])) < 1e-6
    inputs = "clean inputs" if on_clean else f"accuracy {_pct(cal.get('acc'))}%"
    temp = _num(cal.get("temperature"))
    extra = f"; temperature {temp:.3f} → ECE {_pct(cal.get('ece_scaled'))}%" if temp else ""
    ax.set_title(
        _wrap(
            f"Reliability diagram — {_ckpt_title(run, rec)}\n{inputs}; {_which_points(s)}; "
            f"{nb} equal-width bins; ECE {_pct(cal.get('ece'))}%, MCE {_pct(cal.get('mce'))}%"
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
        f"bin below. ECE {_pct(cal.get('ece'))}%, MCE {_pct(cal.get('mce'))}% (unscaled)."
    )
    return path.name, caption


def _severities(per: Mapping[str, Any]) -> list[str]:
    sev: set[str] = set()
    for d in per.values():
        if isinstance(d, Mapping):
            sev.update(str(k) for k in d)

    def key(x: str) -> tuple[int, float | str]:
        try:
            return (0, float(x))
        except ValueError:
            return (1, x)

    return sorted(sev, key=key)


def _plot_corruptions(run: RunRecord, rec: EvalRecord, out: Path) -> tuple[str, str] | None:
    s = rec.summary or {}
    cor = s.get("corruptions")
    per = cor.get("per_corruption") if isinstance(cor, Mapping) else None
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
    clean = _num(s.get("clean_acc"))
    if clean is not None:
        ax.axhline(100 * clean, ls="--", color="gray", label=f"clean ({_pct(clean)}%)")
    ax.set_xticks(xs, sevs)
    ax.set(xlabel="severity", ylabel="accuracy (%)", ylim=(0, 105))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title(
        _wrap(
            f"Corruption accuracy — {_ckpt_title(run, rec)}\n{len(per)} corruptions; "
            f"{_which_points(s)}; mean accuracy {_pct(cor.get('mean_acc'))}%",
            80,
        ),
        fontsize=9,
    )
    path = out / f"corruptions_{rec.stem}.png"
    _save(fig, path)
    caption = (
        f"Accuracy of the `{rec.checkpoint}` checkpoint on corrupted copies of {_which_points(s)}, "
        f"per corruption and severity, with the mean over {len(per)} corruptions (bold) and clean "
        f"accuracy (dashed). Mean corruption accuracy {_pct(cor.get('mean_acc'))}%."
    )
    return path.name, caption


# --------------------------------------------------------------------------------------------------
# Report markdown
# --------------------------------------------------------------------------------------------------


_OBJECTIVE_KEYS: dict[str, set[str]] = {
    "natural": set(),
    "pgd_at": {"attack", "steps", "step_size", "random_start"},
    "trades": {"beta", "steps", "step_size"},
}
"""Objective settings worth showing (others are defaults that objective ignores)."""


def _method_text(train: Mapping[str, Any]) -> str:
    """``generalist (nat_linf)`` for preset runs, else the objectives and the merge rule."""
    if train.get("method"):
        return str(train["method"])
    preset = train.get("generalist")
    if isinstance(preset, Mapping):
        return f"generalist ({preset.get('preset', '?')})"
    names = [
        str((e.get("objective") or {}).get("name", "?"))
        for e in train.get("experts") or []
        if isinstance(e, Mapping)
    ]
    merge = (
        (train.get("merge") or {}).get("name", "none")
        if isinstance(train.get("merge"), Mapping)
        else "none"
    )
    return " + ".join(names) + ("" if merge == "none" else f" merged by {merge}") if names else "?"


def _experts_of(cfg: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The experts as trained: a ``train.generalist`` preset is expanded through the config."""
    train = cfg.get("train") or {}
    experts = [e for e in train.get("experts") or [] if isinstance(e, Mapping)]
    if experts or not isinstance(train.get("generalist"), Mapping):
        return experts
    try:
        from unirobust.build import expand_experts
        from unirobust.config import RunConfig

        config = RunConfig.model_validate(cfg)
    except Exception:  # a report of an older or hand-edited config still renders
        return []
    return [e.model_dump(mode="json") for e in expand_experts(config)]


def _config_section(run: RunRecord) -> list[str]:
    cfg = run.config
    if not cfg:
        return ["## Configuration", "", "Configuration unknown (no readable config.yaml).", ""]
    data = cfg.get("data") or {}
    model = cfg.get("model") or {}
    train = cfg.get("train") or {}
    data_txt = f"`{data.get('name', '?')}`"
    extras = [
        f"{k} {data[k]}" for k in ("n_train", "n_test", "val_size", "batch_size") if k in data
    ]
    if extras:
        data_txt += " — " + ", ".join(extras)
    if isinstance(model, Mapping):
        rest = {k: v for k, v in model.items() if k != "name"}
        model_txt = f"`{model.get('name', '?')}`" + (f" ({_compact(rest)})" if rest else "")
    else:
        model_txt = f"`{model}`"
    rows: list[list[Any]] = [
        ["Dataset", data_txt],
        ["Model", model_txt],
        ["Training method", f"`{_method_text(train)}`"],
        ["Epochs", f"{train.get('epochs', '?')} configured, {len(run.epochs)} logged"],
        ["Seed", cfg.get("seed", "?")],
    ]
    merge = train.get("merge")
    if isinstance(merge, Mapping) and "name" in merge:
        rest = {k: v for k, v in merge.items() if k != "name"}
        rows.append(["Merge rule", f"`{merge['name']}`" + (f" ({_compact(rest)})" if rest else "")])
    elif merge:
        rows.append(["Merge rule", _compact(merge)])
    times = [_num(e.get("time_s")) for e in run.epochs]
    times = [t for t in times if t is not None]
    ips = [_num(e.get("images_per_s")) for e in run.epochs]
    ips = [v for v in ips if v is not None]
    if times:
        speed = f", mean {statistics.fmean(ips):.0f} images/s" if ips else ""
        rows.append(["Training time", f"{_seconds(sum(times))} over {len(times)} epochs{speed}"])
    lines = ["## Configuration", "", _md_table(["Setting", "Value"], rows), ""]
    experts = _experts_of(cfg)
    if experts:
        erows = []
        for ex in experts:
            obj = ex.get("objective") or {}
            if not isinstance(obj, Mapping):
                obj = {"name": obj}
            threat = obj.get("threat", obj.get("threats"))
            relevant = _OBJECTIVE_KEYS.get(str(obj.get("name")))
            obj_rest = {
                k: v
                for k, v in obj.items()
                if k not in ("name", "threat", "threats") and (relevant is None or k in relevant)
            }
            ex_rest = {k: v for k, v in ex.items() if k not in ("name", "objective")}
            erows.append(
                [
                    ex.get("name", "?"),
                    obj.get("name", "?"),
                    _threat_text(threat),
                    _compact(obj_rest) or ABSENT,
                    _compact(ex_rest) or ABSENT,
                ]
            )
        header = ["Expert", "Objective", "Threat", "Objective settings", "Other settings"]
        lines += ["### Experts", "", _md_table(header, erows), ""]
    return lines


def _selection_section(run: RunRecord) -> list[str]:
    lines = ["## Model selection", ""]
    has_best_eval = bool(run.summaries("best"))
    ve = run.val_epochs
    best = run.best_epoch
    if ve and best is not None and isinstance(best.get("val"), Mapping):
        v = best["val"]
        sel = _num(v.get("select"))
        sel_txt = f"selection score {sel:.4f}; " if sel is not None else ""
        robust = _num(v.get("robust_acc"))
        robust_txt = (
            f", robust {_pct(robust)}% under {v.get('attack', 'an unrecorded attack')}"
            if robust is not None
            else ""
        )
        lines.append(
            f"The best epoch is **epoch {best['epoch']}** of {len(run.epochs)} (the last epoch "
            f"flagged `is_best`; {sel_txt}clean {_pct(v.get('clean_acc'))}%{robust_txt}). It was "
            f"chosen on the {_val_split_text(run)}, held out from the training data; the `best` "
            "checkpoint holds this epoch. The test set was not used for selection: it is used "
            "only for the final evaluation below."
        )
    elif ve:
        lines.append(
            "Validation metrics were logged, but no epoch was flagged `is_best`; there is no "
            "validation-selected epoch. The test set is used only for the final evaluation below."
        )
    else:
        lines.append(
            "No validation metrics were logged, so no epoch was selected on a validation split; "
            "report the `last` checkpoint. The test set is used only for the final evaluation."
        )
        if has_best_eval:
            lines.append(
                "\n**Warning:** a `best` checkpoint was evaluated, but these logs record no "
                "validation selection for it; check how it was chosen."
            )
    return [*lines, ""]


def _summary_section(rec: EvalRecord) -> list[str]:
    s = rec.summary or {}
    lines = [f"### Checkpoint `{rec.checkpoint}` (`{rec.rel}`)", ""]
    rows: list[list[Any]] = [["clean", ABSENT, _pct(s.get("clean_acc"))]]
    for spec, label in _threats(s):
        rows.append([label, f"`{spec}`", _pct(_robust(s, spec))])
    if _show_union(s):
        rows.append(["union (all threats, per sample)", ABSENT, _pct(s.get("union_acc"))])
    lines += [_md_table(["Metric", "Threat spec", "Accuracy (%)"], rows, align="llr"), ""]
    facts = [
        f"- Suite: `{s.get('suite', '?')}`" + (" (union only)" if s.get("union_only") else ""),
        f"- Points: {s.get('n_points', '?')} — {_which_points(s)} "
        f"(dataset `{s.get('dataset', '?')}`, split `{s.get('split', '?')}`, "
        f"seed {s.get('seed', '?')}, batch size {s.get('batch_size', '?')})",
        f"- Wall time: {_seconds(s.get('wall_time_s'))}",
        f"- Model hash: `{s.get('model_hash', '?')}`",
    ]
    lines += [*facts, ""]
    cal = s.get("calibration")
    if isinstance(cal, Mapping):
        crow = [
            ["ECE (%)", _pct(cal.get("ece"))],
            ["MCE (%)", _pct(cal.get("mce"))],
            ["NLL", f"{cal['nll']:.4f}" if _num(cal.get("nll")) is not None else NA],
            ["Brier", f"{cal['brier']:.4f}" if _num(cal.get("brier")) is not None else NA],
            ["Accuracy (%)", _pct(cal.get("acc"))],
        ]
        if _num(cal.get("temperature")) is not None:
            crow.append(["Temperature (fitted)", f"{cal['temperature']:.4f}"])
        if "ece_scaled" in cal:
            crow.append(["ECE after temperature scaling (%)", _pct(cal.get("ece_scaled"))])
        lines += [
            f"Calibration on {_which_points(s)}:",
            "",
            _md_table(["Calibration", "Value"], crow, align="lr"),
            "",
        ]
    cor = s.get("corruptions")
    per = cor.get("per_corruption") if isinstance(cor, Mapping) else None
    if isinstance(per, Mapping) and per:
        sevs = _severities(per)
        crows = []
        for name, d in per.items():
            d = {str(k): v for k, v in d.items()} if isinstance(d, Mapping) else {}
            crows.append([name, *(_pct(d.get(sv)) for sv in sevs)])
        lines += [
            f"Corruption accuracy (%) on {_which_points(s)}; mean over corruptions and severities "
            f"{_pct(cor.get('mean_acc'))}%:",
            "",
            _md_table(["Corruption", *(f"sev {sv}" for sv in sevs)], crows, "l" + "r" * len(sevs)),
            "",
        ]
    return lines


def _render_report(run: RunRecord, figures: list[tuple[str, str]]) -> str:
    cfg = run.config
    lines = [f"# Run report: {run.name}", ""]
    if cfg.get("description"):
        lines += [str(cfg["description"]).strip(), ""]
    lines += [f"Run directory: `{run.run_dir}`", ""]
    lines += _config_section(run)
    lines += _selection_section(run)
    lines += ["## Final evaluation", ""]
    recs = run.summaries()
    if not recs:
        lines += [
            "**Not evaluated yet:** no evaluation summary was found in `eval/` or named by a "
            "`final_eval` event. Run `unirobust eval` on this run, then regenerate the report.",
            "",
        ]
    else:
        table = format_results_table(
            {**(r.summary or {}), "checkpoint": r.checkpoint} for r in recs
        )
        lines += [
            "Accuracies in %. " + UNION_NOTE + ". `n/a`: not measured by the suite; `—`: not part "
            "of that suite.",
            "",
            table,
            "",
        ]
        for rec in recs:
            lines += _summary_section(rec)
    lines += ["## Figures", ""]
    if figures:
        for i, (fname, caption) in enumerate(figures, start=1):
            lines += [f"![Figure {i}]({fname})", "", f"*Figure {i}. {caption}*", ""]
    else:
        lines += ["No figures (nothing logged or evaluated yet).", ""]
    if run.problems:
        lines += ["## Notes", "", *(f"- {p}" for p in run.problems), ""]
    return "\n".join(lines).rstrip() + "\n"


def write_report(run_dir: Path) -> Path:
    """Write ``RUN/report/report.md`` and its PNG figures; return the markdown path.

    Figures: ``training_curves.png``, ``validation.png`` (if validation was logged), and per
    evaluation summary ``eval_<name>.png``, ``reliability_<name>.png`` (if calibration is present)
    and ``corruptions_<name>.png`` (if corruptions are present). Missing pieces are skipped and
    said so in the markdown.
    """
    run = load_run(run_dir)
    out = run.run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    figures: list[tuple[str, str] | None] = [_plot_training(run, out), _plot_validation(run, out)]
    for rec in run.summaries():
        figures.append(_plot_eval(run, rec, out))
        figures.append(_plot_reliability(run, rec, out))
        figures.append(_plot_corruptions(run, rec, out))
    path = out / "report.md"
    _write_text(path, _render_report(run, [f for f in figures if f is not None]))
    return path


# --------------------------------------------------------------------------------------------------
# Comparing runs (seeds of the same recipe aggregated)
# --------------------------------------------------------------------------------------------------


def _aggregate(values: Sequence[Any]) -> dict[str, Any]:
    """Mean and sample standard deviation (ddof=1) of the non-missing values."""
    raw = [_num(v) for v in values]
    vals = [v for v in raw if v is not None]
    return {
        "mean": statistics.fmean(vals) if vals else None,
        "std": statistics.stdev(vals) if len(vals) > 1 else None,
        "n": len(vals),
        "values": raw,
    }


def _fmt_agg(agg: Mapping[str, Any] | None, n_runs: int) -> str:
    if agg is None:
        return ABSENT
    if agg["mean"] is None:
        return NA
    text = _pct(agg["mean"])
    if agg["std"] is not None:
        text += f" ± {100 * agg['std']:.2f}"
    if agg["n"] < n_runs:
        text += f" (n={agg['n']})"
    return text


def compare_runs(
    run_dirs: Sequence[Path],
    out_dir: Path,
    *,
    checkpoint: str = "last",
    title: str = "",
) -> Path:
    """Aggregate runs over seeds and write ``comparison.md``, ``comparison.json``, ``tradeoff.png``.

    Runs are grouped by recipe ``name`` (and, so that unlike numbers are never averaged, by suite,
    threats, dataset, split and points). Each group shows mean ± sample std (ddof=1) over its seeds
    of clean, per-threat and union accuracy for ``checkpoint``. Runs without a summary for that
    checkpoint are listed as skipped. Returns the path of ``comparison.md``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    skipped: list[dict[str, str]] = []
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    for d in run_dirs:
        d = Path(d)
        try:
            run = load_run(d)
        except UserError as exc:
            skipped.append({"run": str(d), "reason": str(exc)})
            continue
        recs = run.summaries(checkpoint)
        if not recs:
            others = sorted({r.checkpoint for r in run.summaries()})
            reason = f"no evaluation summary for checkpoint `{checkpoint}`"
            if others:
                reason += f" (found: {', '.join(others)})"
            skipped.append({"run": str(d), "reason": reason})
            continue
        rec = recs[-1]
        s = rec.summary or {}
        specs = tuple(spec for spec, _ in _threats(s))
        key = (
            run.name,
            s.get("suite"),
            specs,
            s.get("dataset"),
            s.get("split"),
            s.get("n_points"),
            s.get("points"),
        )
        g = groups.setdefault(key, {"method": run.name, "summary": s, "runs": []})
        g["runs"].append(
            {"run": str(d), "seed": run.config.get("seed"), "summary_path": rec.rel, "s": s}
        )

    results = []
    for g in groups.values():
        s0 = g["summary"]
        runs = g["runs"]
        threats = _threats(s0)
        seeds = [r["seed"] for r in runs]
        results.append(
            {
                "method": g["method"],
                "n_seeds": len(runs),
                "seeds": seeds,
                "suite": s0.get("suite"),
                "dataset": s0.get("dataset"),
                "split": s0.get("split"),
                "n_points": s0.get("n_points"),
                "points": s0.get("points"),
                "threats": [spec for spec, _ in threats],
                "threat_labels": [label for _, label in threats],
                "clean": _aggregate([r["s"].get("clean_acc") for r in runs]),
                "robust": {
                    spec: _aggregate([_robust(r["s"], spec) for r in runs]) for spec, _ in threats
                },
                "union": _aggregate([r["s"].get("union_acc") for r in runs])
                if _show_union(s0)
                else None,
                "runs": [{k: v for k, v in r.items() if k != "s"} for r in runs],
            }
        )

    payload = {
        "title": title,
        "checkpoint": checkpoint,
        "std": "sample standard deviation over seeds (ddof=1); null with one seed",
        "groups": results,
        "skipped": skipped,
    }
    _write_text(out_dir / "comparison.json", json.dumps(payload, indent=2) + "\n")
    fig_name = _plot_tradeoff(results, out_dir, checkpoint, title)
    path = out_dir / "comparison.md"
    _write_text(path, _render_comparison(results, skipped, checkpoint, title, fig_name))
    return path


def _render_comparison(
    results: list[dict[str, Any]],
    skipped: list[dict[str, str]],
    checkpoint: str,
    title: str,
    fig_name: str | None,
) -> str:
    lines = [f"# {title or 'Comparison of runs'}", ""]
    lines += [
        f"Checkpoint `{checkpoint}`. Accuracies in %, mean ± sample standard deviation (ddof=1) "
        f"over seeds; `(n=k)` when only k seeds have the number. {UNION_NOTE}.",
        "",
    ]
    if results:
        columns: dict[str, str] = {}
        for r in results:
            for spec, label in zip(r["threats"], r["threat_labels"], strict=True):
                columns.setdefault(spec, label)
        any_union = any(r["union"] is not None for r in results)
        header = ["method", "seeds", "clean %", *(f"{lab} %" for lab in columns.values())]
        header += ["union %"] if any_union else []
        header += ["points", "suite"]
        rows = []
        for r in results:
            n = r["n_seeds"]
            seeds = ", ".join("?" if x is None else str(x) for x in r["seeds"])
            row = [r["method"], f"{n} ({seeds})", _fmt_agg(r["clean"], n)]
            row += [_fmt_agg(r["robust"].get(spec), n) for spec in columns]
            if any_union:
                row.append(_fmt_agg(r["union"], n))
            row += [_which_points(r), r["suite"] or "?"]
            rows.append(row)
        align = "lr" + "r" * (len(header) - 4) + "ll"
        lines += [_md_table(header, rows, align), ""]
        names = [r["method"] for r in results]
        if len(set(names)) < len(names):
            lines += [
                "**Warning:** some recipes appear on several rows because their seeds were "
                "evaluated differently (suite, threats or points); those rows are not averaged.",
                "",
            ]
        setups = {(r["suite"], r["n_points"], r["points"], r["split"]) for r in results}
        if len(setups) > 1:
            lines += [
                "**Warning:** rows were evaluated with different suites or points; compare them "
                "with care.",
                "",
            ]
        seen: dict[str, list[Any]] = {}
        for r in results:
            for seed in r["seeds"]:
                seen.setdefault(r["method"], []).append(seed)
        dup = [m for m, ss in seen.items() if len(ss) != len(set(ss))]
        if dup:
            lines += [f"**Warning:** repeated seeds within: {', '.join(dup)}.", ""]
    else:
        lines += ["No run has an evaluation summary for this checkpoint.", ""]
    if fig_name:
        caption = (
            f"Clean against robust accuracy per method (mean over seeds, error bars ± one sample "
            f"std), `{checkpoint}` checkpoint; one panel per threat, plus the union when a suite "
            "has several threats. Axis labels name the threat, suite and number of points."
        )
        lines += [f"![Trade-off]({fig_name})", "", f"*{caption}*", ""]
    if skipped:
        lines += ["## Skipped runs", ""]
        lines += [f"- `{s['run']}`: {s['reason']}" for s in skipped]
        lines += [""]
    if results:
        lines += ["## Runs included", ""]
        for r in results:
            for run in r["runs"]:
                lines.append(
                    f"- {r['method']}, seed {run['seed']}: `{run['run']}` ({run['summary_path']})"
                )
        lines += [""]
    return "\n".join(lines).rstrip() + "\n"


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
    colors = [f"C{i % 10}" for i in range(len(results))]
    multi_setup = len({r["method"] for r in results}) < len(results)
    for ax, (spec, label) in zip(flat, panels.items(), strict=False):
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
    for ax in flat[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(
        _wrap(
            f"{title or 'Clean vs robust accuracy'} — {checkpoint} checkpoint; "
            "mean ± sample std over seeds",
            100,
        ),
        fontsize=10,
    )
    _save(fig, out_dir / "tradeoff.png")
    return "tradeoff.png"
