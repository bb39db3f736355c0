"""Generalist long-proxy study (issue 12): tabulate and plot the runs of the recipe family.

The runs themselves come from ``proxy_comparison.py`` (seed-major, two jobs)::

    .venv/bin/python benchmarks/proxy_comparison.py --seeds 0 1 2 --jobs 2 \\
        --recipes fmnist-long-generalist fmnist-long-pgd-at fmnist-long-trades \\
        fmnist-long-generalist-beta1 fmnist-long-generalist-nosync \\
        fmnist-long-generalist-sync-epoch fmnist-long-generalist-paper-wd \\
        fmnist-long-generalist-task-lr --out runs/generalist-long --checkpoints best last
    .venv/bin/python benchmarks/generalist_long_study.py

This script reads every finished run (``<recipe>-s<seed>`` with both evaluation summaries) and
writes ``benchmarks/results/generalist_long.json``, a markdown table (mean ± std over the seeds
that finished, and every seed), the clean-vs-AutoAttack trade-off plot of every configuration
(best and last checkpoints) and the per-member validation curves of each Generalist variant
(mean over seeds) into ``docs/figures/``. Unfinished runs are listed, never extrapolated.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _summary(run: Path, checkpoint: str) -> dict[str, Any] | None:
    files = sorted((run / "eval").glob(f"{checkpoint}-*.json")) if (run / "eval").is_dir() else []
    return json.loads(files[0].read_text()) if files else None


def _epochs(run: Path) -> list[dict[str, Any]]:
    events = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]
    by_epoch = {e["epoch"]: e for e in events if e.get("event") == "epoch"}
    return [by_epoch[k] for k in sorted(by_epoch)]


def collect(out: Path) -> tuple[dict[str, dict[int, dict[str, Any]]], list[str]]:
    """``{recipe: {seed: numbers}}`` of finished runs, and the names of unfinished ones."""
    results: dict[str, dict[int, dict[str, Any]]] = {}
    unfinished = []
    for run in sorted(p for p in out.iterdir() if p.is_dir() and "-s" in p.name):
        recipe, _, seed = run.name.rpartition("-s")
        best, last = _summary(run, "best"), _summary(run, "last")
        if best is None or last is None:
            unfinished.append(run.name)
            continue
        epochs = _epochs(run)
        best_epoch = max((e["epoch"] for e in epochs if e.get("is_best")), default=None)
        results.setdefault(recipe, {})[int(seed)] = {
            "best_clean": best["clean_acc"],
            "best_aa": best["union_acc"],
            "last_clean": last["clean_acc"],
            "last_aa": last["union_acc"],
            "best_epoch": best_epoch,
            "n_points": best["n_points"],
            "suite": best["suite"],
            "members": {e["epoch"]: e["val"]["members"] for e in epochs if e["val"].get("members")},
            "global": {
                e["epoch"]: {"clean": e["val"]["clean_acc"], "robust": e["val"]["robust_acc"]}
                for e in epochs
            },
        }
    return results, unfinished


KEYS = (
    ("best_clean", "best clean"),
    ("best_aa", "best AA"),
    ("last_clean", "last clean"),
    ("last_aa", "last AA"),
)


def _cell(values: list[float]) -> str:
    xs = [100 * v for v in values]
    if len(xs) == 1:
        return f"{xs[0]:.1f}"
    return f"{statistics.mean(xs):.1f} ± {statistics.stdev(xs):.1f}"


def table(results: dict[str, dict[int, dict[str, Any]]]) -> str:
    lines = [
        "| configuration | seeds | "
        + " | ".join(label + " %" for _, label in KEYS)
        + " | per seed (best clean/AA; last clean/AA) |",
        "|---|---|" + "---|" * (len(KEYS) + 1),
    ]
    for recipe, seeds in results.items():
        runs = [seeds[s] for s in sorted(seeds)]
        cells = [_cell([r[k] for r in runs]) for k, _ in KEYS]
        per_seed = "; ".join(
            f"s{s}: {100 * r['best_clean']:.1f}/{100 * r['best_aa']:.1f}, "
            f"{100 * r['last_clean']:.1f}/{100 * r['last_aa']:.1f}"
            for s, r in sorted(seeds.items())
        )
        name = recipe.removeprefix("fmnist-long-")
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + f" | {per_seed} |")
    return "\n".join(lines)


def plot_tradeoff(results: dict[str, dict[int, dict[str, Any]]], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 5.2), layout="constrained")
    ax = fig.subplots()
    for i, (recipe, seeds) in enumerate(results.items()):
        color = f"C{i % 10}"
        name = recipe.removeprefix("fmnist-long-")
        for which, marker in (("best", "o"), ("last", "s")):
            xs = [100 * r[f"{which}_aa"] for r in seeds.values()]
            ys = [100 * r[f"{which}_clean"] for r in seeds.values()]
            ax.scatter(xs, ys, color=color, marker=marker, alpha=0.35, s=18)
            ax.errorbar(
                statistics.mean(xs),
                statistics.mean(ys),
                xerr=statistics.stdev(xs) if len(xs) > 1 else None,
                yerr=statistics.stdev(ys) if len(ys) > 1 else None,
                color=color,
                marker=marker,
                ms=8,
                capsize=3,
                label=f"{name} ({which}, {len(xs)} seeds)",
            )
    ax.set(xlabel="AutoAttack accuracy, linf 0.1 (%)", ylabel="clean accuracy (%)")
    ax.set_title(
        "Generalist long proxy: clean vs robust (mean ± std over seeds; faint: seeds)", fontsize=9
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    fig.savefig(path, dpi=110)


def plot_members(results: dict[str, dict[int, dict[str, Any]]], path: Path) -> None:
    """Per-member validation clean/robust accuracy per epoch, mean over seeds, each variant."""
    from matplotlib.figure import Figure

    variants = [r for r, s in results.items() if any(x["members"] for x in s.values())]
    if not variants:
        return
    fig = Figure(figsize=(9, 2.6 * len(variants)), layout="constrained")
    axes = fig.subplots(len(variants), 2, squeeze=False)
    for row, recipe in zip(axes, variants, strict=True):
        seeds = list(results[recipe].values())
        labels = list(next(iter(seeds[0]["members"].values())))
        for ax, key in zip(row, ("clean", "robust"), strict=True):
            epochs = sorted(seeds[0]["global"])
            glob = [statistics.mean(s["global"][e][key] for s in seeds) * 100 for e in epochs]
            ax.plot(epochs, glob, color="black", lw=2, label="global (500 val)")
            bases = list(dict.fromkeys(lab.removeprefix("ema_") for lab in labels))
            for lab in labels:
                ep = sorted(seeds[0]["members"])
                ys = [
                    statistics.mean(s["members"][e][lab][f"{key}_acc"] for s in seeds) * 100
                    for e in ep
                ]
                color = f"C{bases.index(lab.removeprefix('ema_'))}"
                ax.plot(
                    ep,
                    ys,
                    ls="--" if lab.startswith("ema_") else "-",
                    marker=".",
                    color=color,
                    label=lab,
                )
            ax.set_title(
                f"{recipe.removeprefix('fmnist-long-')}: {key} ({len(seeds)} seeds)", fontsize=8
            )
            ax.grid(alpha=0.3)
            ax.set_xlabel("epoch", fontsize=7)
        row[0].legend(fontsize=6)
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "generalist-long")
    args = parser.parse_args()
    results, unfinished = collect(args.out)
    order = [
        "fmnist-long-generalist",
        "fmnist-long-pgd-at",
        "fmnist-long-trades",
        "fmnist-long-generalist-beta1",
        "fmnist-long-generalist-nosync",
        "fmnist-long-generalist-sync-epoch",
        "fmnist-long-generalist-paper-wd",
        "fmnist-long-generalist-task-lr",
    ]
    results = {r: results[r] for r in order if r in results} | {
        r: v for r, v in results.items() if r not in order
    }
    figures = ROOT / "docs" / "figures"
    plot_tradeoff(results, figures / "generalist-long-tradeoff.png")
    plot_members(results, figures / "generalist-long-members.png")
    dump = {"runs": results, "unfinished": unfinished}
    (ROOT / "benchmarks" / "results" / "generalist_long.json").write_text(
        json.dumps(dump, indent=1)
    )
    print(table(results))
    if unfinished:
        print("unfinished:", ", ".join(unfinished))


if __name__ == "__main__":
    main()
