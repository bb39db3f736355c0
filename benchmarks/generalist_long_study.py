"""Generalist long-proxy study (issue 12): tabulate and plot the runs of the recipe family.

The runs themselves come from ``proxy_comparison.py`` (seed-major, two jobs)::

    .venv/bin/python benchmarks/proxy_comparison.py --seeds 0 1 2 --jobs 2 \\
        --recipes fmnist-long-generalist fmnist-long-pgd-at fmnist-long-trades \\
        fmnist-long-generalist-beta1 fmnist-long-generalist-nosync \\
        fmnist-long-generalist-sync-epoch fmnist-long-generalist-paper-wd \\
        fmnist-long-generalist-task-lr fmnist-long-generalist-sync-wide \\
        --out runs/generalist-long
    .venv/bin/python benchmarks/generalist_long_study.py

This script reads every finished run (``<recipe>-s<seed>`` with both evaluation summaries) and
writes ``benchmarks/results/generalist_long.json``, a markdown table (mean ± std over the seeds
that finished, and every seed), the clean-vs-AutoAttack trade-off plot of every configuration
(best and last checkpoints) and the per-member validation curves of each Generalist variant
(mean over the seeds that logged each epoch; sync epochs shaded, the natural mix weight 1 - beta
dotted) into ``docs/figures/``. It also prints each configuration's per-seed differences to
PGD-AT on the same seed (same training subset and initialisation: a paired comparison, so the
seed-to-seed spread of the data subset cancels), and with ``--rerun-of DIR`` checks that the runs
in ``DIR`` (an earlier run of the same recipes and seeds) gave identical evaluations and
validation curves. Unfinished runs are listed, never extrapolated.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import yaml

from unirobust.experts.ema_mix import sync_epochs

ROOT = Path(__file__).resolve().parents[1]


def _summary(run: Path, checkpoint: str) -> dict[str, Any] | None:
    files = sorted((run / "eval").glob(f"{checkpoint}-*.json")) if (run / "eval").is_dir() else []
    return json.loads(files[0].read_text()) if files else None


def _epochs(run: Path) -> list[dict[str, Any]]:
    events = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]
    by_epoch = {e["epoch"]: e for e in events if e.get("event") == "epoch"}
    return [by_epoch[k] for k in sorted(by_epoch)]


def _sync_epochs(config: dict[str, Any]) -> list[int]:
    """The epochs in which the run synced its experts (none without an ``ema_mix`` merge)."""
    merge = (config.get("train") or {}).get("merge") or {}
    if merge.get("name") != "ema_mix":
        return []
    return sync_epochs(
        config["train"]["epochs"],
        merge.get("sync_start"),
        merge.get("sync_interval"),
        merge.get("sync_mode", "every_iteration"),
    )


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
        config = yaml.safe_load((run / "config.yaml").read_text())
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
            "natural_weight": {
                e["epoch"]: e["mix_weights"]["natural"]
                for e in epochs
                if "natural" in e.get("mix_weights", {})
            },
            "sync_epochs": _sync_epochs(config),
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


def _seed_mean(per_seed: list[dict[int, float]]) -> tuple[list[int], list[float]]:
    """Epochs logged by any seed and the mean (in %) over the seeds that logged each (some early
    runs logged members every 3 epochs, before the recipe moved to every epoch)."""
    epochs = sorted({e for series in per_seed for e in series})
    means = [100 * statistics.mean(x[e] for x in per_seed if e in x) for e in epochs]
    return epochs, means


def plot_members(results: dict[str, dict[int, dict[str, Any]]], path: Path) -> None:
    """Per-member validation clean/robust accuracy per epoch (mean over seeds) of each variant,
    sync epochs shaded, the natural expert's mix weight (1 - beta) dotted on the right axis."""
    from matplotlib.figure import Figure

    variants = [r for r, s in results.items() if any(x["members"] for x in s.values())]
    if not variants:
        return
    fig = Figure(figsize=(9, 2.5 * len(variants)), layout="constrained")
    axes = fig.subplots(len(variants), 2, squeeze=False, sharex=True)
    for row, recipe in zip(axes, variants, strict=True):
        seeds = list(results[recipe].values())
        labels = list(dict.fromkeys(lab for s in seeds for m in s["members"].values() for lab in m))
        bases = list(dict.fromkeys(lab.removeprefix("ema_") for lab in labels))
        for ax, key in zip(row, ("clean", "robust"), strict=True):
            for e in seeds[0]["sync_epochs"]:
                ax.axvspan(e - 1, e, color="0.85", lw=0)
            ep, ys = _seed_mean([{e: v[key] for e, v in s["global"].items()} for s in seeds])
            ax.plot(ep, ys, color="black", lw=2, label="global (500 val)")
            for lab in labels:
                ep, ys = _seed_mean(
                    [
                        {e: m[lab][f"{key}_acc"] for e, m in s["members"].items() if lab in m}
                        for s in seeds
                    ]
                )
                ax.plot(
                    ep,
                    ys,
                    ls="--" if lab.startswith("ema_") else "-",
                    color=f"C{bases.index(lab.removeprefix('ema_'))}",
                    label=lab,
                )
            ep, ws = _seed_mean([s["natural_weight"] for s in seeds])
            weight_ax = ax.twinx()
            weight_ax.plot(ep, [w / 100 for w in ws], color="0.4", ls=":")
            weight_ax.set_ylim(0, 1)
            weight_ax.tick_params(labelsize=6)
            weight_ax.set_ylabel("natural mix weight 1 − β (dotted)", fontsize=6)
            ax.set_title(
                f"{recipe.removeprefix('fmnist-long-')}: validation {key} % "
                f"({len(seeds)} seeds; shaded: sync epochs)",
                fontsize=8,
            )
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=6, loc="lower left")
    for ax in axes[-1]:
        ax.set_xlabel("epoch", fontsize=7)
    fig.savefig(path, dpi=100)


def paired_deltas(results: dict[str, dict[int, dict[str, Any]]], reference: str) -> str:
    """Each configuration minus ``reference`` on the same seed (points, mean ± std over seeds)."""
    ref = results.get(reference, {})
    lines = [
        f"| configuration − {reference.removeprefix('fmnist-long-')} | seeds | "
        + " | ".join(f"Δ {label}" for _, label in KEYS)
        + " |",
        "|---|---|" + "---|" * len(KEYS),
    ]
    for recipe, seeds in results.items():
        common = sorted(set(seeds) & set(ref))
        if recipe == reference or not common:
            continue
        cells = []
        for key, _ in KEYS:
            diffs = [100 * (seeds[s][key] - ref[s][key]) for s in common]
            spread = f" ± {statistics.stdev(diffs):.1f}" if len(diffs) > 1 else ""
            cells.append(f"{statistics.mean(diffs):+.1f}{spread}")
        name = recipe.removeprefix("fmnist-long-")
        lines.append(f"| {name} | {len(common)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rerun_check(results: dict[str, dict[int, dict[str, Any]]], earlier: Path) -> list[str]:
    """For each run also present (finished) in ``earlier``: are the evaluations and the global
    validation curve identical? Seeded CPU runs should be; member validation must not matter."""
    before, _ = collect(earlier)
    lines = []
    for recipe, seeds in before.items():
        for seed, old in seeds.items():
            new = results.get(recipe, {}).get(seed)
            if new is None:
                continue
            same = all(old[k] == new[k] for k, _ in KEYS) and old["global"] == new["global"]
            lines.append(f"{recipe}-s{seed}: {'identical' if same else 'DIFFERENT'}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "generalist-long")
    parser.add_argument("--rerun-of", type=Path, default=None)
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
        "fmnist-long-generalist-sync-wide",
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
    print()
    print(paired_deltas(results, "fmnist-long-pgd-at"))
    if args.rerun_of is not None:
        print()
        print("\n".join(rerun_check(results, args.rerun_of)))
    if unfinished:
        print("unfinished:", ", ".join(unfinished))


if __name__ == "__main__":
    main()
