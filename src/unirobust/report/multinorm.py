"""Multi-norm part of a comparison: clean, per-norm and union accuracy per method (multinorm.md §8).

Works on the pooled groups that :func:`unirobust.report.compare_runs` builds (mean ± sample std
over seeds). Only groups evaluated under several threats take part. Union-only evaluations have no
per-norm numbers; they show as ``n/a`` in the table and as missing bars marked ``n/a``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from unirobust.evaluation.suites import SUITES
from unirobust.report.figures import _figure, _save, _scatter_panel
from unirobust.report.fmt import ABSENT, NA, UNION_NOTE, _fmt_agg, _md_table, _which_points, _wrap

NORM_ORDER = ("linf", "l2", "l1")
BARS_FIG = "multinorm_bars.png"
UNION_FIG = "clean_vs_union.png"
_THREAT_COLORS = ("tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive")


def _norm_rank(spec: str) -> int:
    norm = spec.split(":", 1)[0].strip().lower()
    return NORM_ORDER.index(norm) if norm in NORM_ORDER else len(NORM_ORDER)


def _columns(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Threat spec -> label over all rows, linf first, then l2, then l1 (then anything else)."""
    seen: dict[str, str] = {}
    for r in rows:
        for spec, label in zip(r["threats"], r["threat_labels"], strict=True):
            seen.setdefault(spec, label)
    order = sorted(enumerate(seen), key=lambda item: (_norm_rank(item[1]), item[0]))
    return {spec: seen[spec] for _, spec in order}


def _agg(row: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    """The aggregate of a bar: ``clean``, ``union`` or a threat spec (``None``: not evaluated)."""
    if key in ("clean", "union"):
        return row[key]
    return row["robust"].get(key) if key in row["threats"] else None


def seeds_text(row: Mapping[str, Any]) -> str:
    """``3 (0, 1, 2)``: the number of seeds pooled and the seeds."""
    seeds = ", ".join("?" if x is None else str(x) for x in row["seeds"])
    return f"{row['n_seeds']} ({seeds})"


def _mode(row: Mapping[str, Any]) -> str:
    modes = {bool(run.get("union_only")) for run in row["runs"]}
    if modes == {True}:
        return "union-only"
    return "per-norm + union" if modes == {False} else "mixed (some seeds union-only)"


def _setup(rows: list[dict[str, Any]], columns: Mapping[str, str]) -> dict[str, str]:
    """What was measured, in words: suite(s) and their attacks, threats with eps, which points."""
    suites = list(dict.fromkeys(str(r["suite"]) for r in rows))
    datasets = " / ".join(dict.fromkeys(str(r["dataset"] or "?") for r in rows))
    return {
        "suites": " / ".join(suites),
        "protocol": "; ".join(
            f"`{s}`: {SUITES[s].description}" if s in SUITES else f"`{s}`" for s in suites
        ),
        "attacks": "; ".join(
            f"{s} ({' + '.join(a.upper() for a in SUITES[s].attacks)})" if s in SUITES else s
            for s in suites
        ),
        "threats": ", ".join(columns.values()),
        "points": "; ".join(dict.fromkeys(_which_points(r) for r in rows)) + f" of {datasets}",
    }


def _heading(title: str, checkpoint: str, setup: Mapping[str, str], last: str) -> str:
    """A figure title on deliberate lines: what, attack and threats, points, what is drawn."""
    return "\n".join(
        [
            f"{title} — {checkpoint} checkpoint",
            f"attack: suite {setup['attacks']}; threats (norm eps): {setup['threats']}",
            f"{setup['points']}; {last}",
        ]
    )


def _method_label(row: Mapping[str, Any], rows: list[dict[str, Any]]) -> str:
    n = row["n_seeds"]
    label = f"{row['method']}\n({n} seed{'s' if n != 1 else ''})"
    if sum(r["method"] == row["method"] for r in rows) > 1:
        label += f"\n[{row['suite']}, n={row['n_points']}]"
    if _mode(row) != "per-norm + union":
        label += f"\n{_mode(row).split(' (')[0]} evaluation"
    return label


def _plot_bars(
    rows: list[dict[str, Any]], columns: Mapping[str, str], out_dir: Path, heading: str
) -> str:
    bars = [("clean", "clean", "tab:blue")]
    bars += [
        (spec, label, _THREAT_COLORS[i % len(_THREAT_COLORS)])
        for i, (spec, label) in enumerate(columns.items())
    ]
    bars.append(("union", "union (all threats, per sample)", "tab:red"))
    nb = len(bars)
    width = 0.84 / nb
    fig, axes = _figure(1, 1, (max(7.5, 1.5 + len(rows) * (0.5 * nb + 0.7)), 5.6))
    ax = axes[0][0]
    for j, (key, label, color) in enumerate(bars):
        xs, ys, errs = [], [], []
        for i, row in enumerate(rows):
            x = i + (j - (nb - 1) / 2) * width
            agg = _agg(row, key)
            if agg is None or agg["mean"] is None:
                mark = ABSENT if agg is None else NA
                ax.text(x, 1, mark, ha="center", va="bottom", fontsize=8, color="0.25")
                continue
            mean, std = 100 * agg["mean"], 100 * (agg["std"] or 0.0)
            xs.append(x)
            ys.append(mean)
            errs.append(std)
            ax.text(x, mean + std + 1, f"{mean:.1f}", ha="center", va="bottom", fontsize=7)
        ax.bar(xs, ys, width * 0.92, yerr=errs, capsize=2, color=color, label=label)
    ax.set_xticks(range(len(rows)), [_method_label(r, rows) for r in rows], fontsize=8)
    ax.set_ylim(0, 118)
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("accuracy (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncols=nb, loc="upper center", frameon=False)
    fig.suptitle(_wrap(heading, 120), fontsize=9)
    _save(fig, out_dir / BARS_FIG)
    return BARS_FIG


def _plot_union(
    rows: list[dict[str, Any]], columns: Mapping[str, str], out_dir: Path, heading: str
) -> str | None:
    if not any(r["union"] is not None and r["union"]["mean"] is not None for r in rows):
        return None
    fig, axes = _figure(1, 1, (8.0, 5.6))
    ax = axes[0][0]
    threats = ", ".join(columns.values())
    _scatter_panel(ax, rows, "union", "union of " + threats)
    ax.set_ylabel(f"union accuracy (%): robust under\n{threats} at once")
    ax.set_title("")
    for r in rows:
        u, c = r["union"], r["clean"]
        if u is not None and u["mean"] is not None and c["mean"] is not None:
            xy = (100 * c["mean"], 100 * u["mean"])
            ax.annotate(r["method"], xy, xytext=(6, 5), textcoords="offset points", fontsize=8)
    fig.suptitle(_wrap(heading, 95), fontsize=9)
    _save(fig, out_dir / UNION_FIG)
    return UNION_FIG


def multinorm_section(
    results: list[dict[str, Any]], out_dir: Path, checkpoint: str, title: str
) -> list[str]:
    """Markdown lines of the multi-norm section, after writing its two figures into ``out_dir``.

    Empty when no group was evaluated under several threats.
    """
    rows = [r for r in results if len(r["threats"]) > 1]
    if not rows:
        return []
    columns = _columns(rows)
    setup = _setup(rows, columns)
    any_union_only = any(_mode(r) != "per-norm + union" for r in rows)
    marks = any(_fmt_agg(_agg(r, k), 1) in (NA, ABSENT) for r in rows for k in columns)
    header = ["method", "seeds", "clean %", *(f"{lab} %" for lab in columns.values()), "union %"]
    header.append("evaluation")
    table = []
    for r in rows:
        n = r["n_seeds"]
        cells = [_fmt_agg(_agg(r, key), n) for key in ("clean", *columns, "union")]
        table.append([r["method"], seeds_text(r), *cells, _mode(r)])
    lines = [
        "## Multi-norm robustness",
        "",
        f"Checkpoint `{checkpoint}`. Attack protocol: {setup['protocol']}. Threats (norm, eps): "
        f"{setup['threats']}. Points: {setup['points']}. Accuracies in %, mean ± sample standard "
        f"deviation (ddof=1) over the seeds listed; {UNION_NOTE}.",
        "",
        _md_table(header, table, "ll" + "r" * (len(header) - 3) + "l"),
        "",
    ]
    if any_union_only:
        lines += [
            "Union-only evaluations attack each norm only on the points still robust under every "
            "earlier norm, so they report no per-norm accuracy (`n/a`); their union accuracy is "
            "the same quantity as in a full evaluation. `—`: threat not evaluated for that row.",
            "",
        ]
    bars = _plot_bars(
        rows,
        columns,
        out_dir,
        _heading(
            title or "Multi-norm robustness",
            checkpoint,
            setup,
            "mean over seeds, error bars ± one sample std"
            + ("\nn/a: not reported by a union-only evaluation; —: not evaluated" if marks else ""),
        ),
    )
    lines += [
        f"![Clean, per-norm and union accuracy per method]({bars})",
        "",
        f"*Clean, per-norm ({setup['threats']}) and union accuracy of each method, `{checkpoint}`"
        f" checkpoint, suite {setup['suites']}, on {setup['points']}. Bars are means over seeds, "
        "error bars one sample standard deviation (none with one seed).*",
        "",
    ]
    union = _plot_union(
        rows,
        columns,
        out_dir,
        _heading(
            title or "Clean vs union accuracy", checkpoint, setup, "mean ± sample std over seeds"
        ),
    )
    if union:
        lines += [
            f"![Clean against union accuracy]({union})",
            "",
            f"*Clean against union accuracy (robust under {setup['threats']} at once), one point "
            f"per method, mean ± one sample standard deviation over seeds; `{checkpoint}` "
            f"checkpoint, suite {setup['suites']}, {setup['points']}.*",
            "",
        ]
    return lines
