"""Comparing runs: seeds of the same recipe pooled into mean ± sample std, trade-off plot."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unirobust.errors import RunDirError
from unirobust.evaluation.keys import Summary as S
from unirobust.io import atomic_write_text, check_writable_dir
from unirobust.report.figures import _plot_tradeoff
from unirobust.report.fmt import (
    UNION_NOTE,
    _fmt_agg,
    _md_table,
    _num,
    _robust,
    _show_union,
    _threats,
    _which_points,
)
from unirobust.report.html import write_html
from unirobust.report.multinorm import multinorm_section, seeds_text
from unirobust.report.runs import load_run


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


def _load_runs(run_dirs: Sequence[Path], out_dir: Path) -> list[tuple[Path, Any]]:
    """Every directory must be a run with an evaluation, and ``out_dir`` writable: otherwise a
    one-line :class:`UserError` before anything is written."""
    if not run_dirs:
        raise RunDirError("give at least one run directory to compare")
    runs = []
    for d in map(Path, run_dirs):
        if d.exists() and not d.is_dir():
            raise RunDirError(f"'{d}' is a file, not a run directory")
        if d.resolve() == out_dir.resolve():
            raise RunDirError(f"'{d}' is the comparison's --out directory, not a run")
        runs.append((d, load_run(d)))  # a path that is not a run is refused, not skipped
    if not any(run.summaries() for _, run in runs):
        raise RunDirError(
            "none of the runs has an evaluation summary to compare; run 'unirobust eval RUN' first"
        )
    check_writable_dir(out_dir)
    return runs


def compare_runs(
    run_dirs: Sequence[Path],
    out_dir: Path,
    *,
    checkpoint: str = "last",
    title: str = "",
    intro: str = "",
) -> Path:
    """Aggregate runs over seeds; write ``comparison.md``/``.html``/``.json`` and the figures.

    Runs are grouped by recipe ``name`` (and, so that unlike numbers are never averaged, by suite,
    threats, dataset, split and points). Each group shows mean ± sample std (ddof=1) over its seeds
    of clean, per-threat and union accuracy for ``checkpoint``. Runs without a summary for that
    checkpoint are listed as skipped; a path that is not a run, or runs none of which has been
    evaluated, are a :class:`RunDirError` and nothing is written. Figures: ``tradeoff.png`` (clean
    vs each threat); for groups evaluated under several threats also a "Multi-norm robustness"
    section with a table, ``multinorm_bars.png`` (clean / per-norm / union bars per method) and
    ``clean_vs_union.png``. ``comparison.html`` holds the same content with the figures embedded
    (opens offline). ``intro`` (markdown) is shown under the title, e.g. what the runs share.
    Returns the path of ``comparison.md``.
    """
    out_dir = Path(out_dir)
    runs = _load_runs(run_dirs, out_dir)
    skipped: list[dict[str, str]] = []
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    for d, run in runs:
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
            s.get(S.SUITE),
            specs,
            s.get(S.DATASET),
            s.get(S.SPLIT),
            s.get(S.N_POINTS),
            s.get(S.POINTS),
        )
        g = groups.setdefault(key, {"method": run.name, "summary": s, "runs": []})
        g["runs"].append(
            {
                "run": str(d),
                "seed": run.config.get("seed"),
                "summary_path": rec.rel,
                "union_only": bool(s.get(S.UNION_ONLY)),
                "s": s,
            }
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
                "suite": s0.get(S.SUITE),
                "dataset": s0.get(S.DATASET),
                "split": s0.get(S.SPLIT),
                "n_points": s0.get(S.N_POINTS),
                "points": s0.get(S.POINTS),
                "threats": [spec for spec, _ in threats],
                "threat_labels": [label for _, label in threats],
                "clean": _aggregate([r["s"].get(S.CLEAN_ACC) for r in runs]),
                "robust": {
                    spec: _aggregate([_robust(r["s"], spec) for r in runs]) for spec, _ in threats
                },
                "union": _aggregate([r["s"].get(S.UNION_ACC) for r in runs])
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
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "comparison.json", json.dumps(payload, indent=2) + "\n")
    fig_name = _plot_tradeoff(results, out_dir, checkpoint, title)
    extra = multinorm_section(results, out_dir, checkpoint, title)
    path = out_dir / "comparison.md"
    text = _render_comparison(results, skipped, checkpoint, title, fig_name, extra, intro)
    atomic_write_text(path, text)
    write_html(path)
    return path


def _render_comparison(
    results: list[dict[str, Any]],
    skipped: list[dict[str, str]],
    checkpoint: str,
    title: str,
    fig_name: str | None,
    extra: list[str],
    intro: str = "",
) -> str:
    lines = [f"# {title or 'Comparison of runs'}", ""]
    lines += [intro.strip(), ""] if intro.strip() else []
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
            row = [r["method"], seeds_text(r), _fmt_agg(r["clean"], n)]
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
    lines += extra
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
