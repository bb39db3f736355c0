"""LP-FT proxy study (issue 13): pretrain once, fine-tune with every method and seed, tabulate.

Pretrains the two lenet backbones on Fashion-MNIST classes 0-4 (natural and PGD-AT; seed 0, once,
as the paper fine-tunes one pretrained model with several seeds), then runs each transfer
recipe on classes 5-9 with each seed through the real CLI (train + the recipe's own final
evaluation), and writes ``benchmarks/results/lpft_study.json`` and a markdown table.

Per run it reads: ID accuracy (clean, test points), OOD accuracy (mean over the recipe's
Fashion-MNIST corruptions), AutoAttack accuracy (adversarial variants), ECE before and after
temperature scaling (fitted on validation), the head norm ||V||_F at the first and last epoch,
Diff(F) and the feature cosine at the last epoch (validation split, change from the stage start),
and the start-of-stage NTK FT ratio. All from files the run wrote.

``.venv/bin/python benchmarks/lpft_study.py --seeds 0 1 2``
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proxy_comparison import CLI, ROOT, run_one

PRETRAIN = ("fmnist-pretrain-natural", "fmnist-pretrain-pgd-at")
TRANSFER = (
    "fmnist-lp",
    "fmnist-lp-sgd",
    "fmnist-ft",
    "fmnist-lpft",
    "fmnist-lora",
    "fmnist-lp-lora",
    "fmnist-adv-ft",
    "fmnist-adv-lpft",
)


def _pretrain(out: Path) -> None:
    """The transfer recipes read ``runs/<pretrain recipe>``; train it there once if missing."""
    for recipe in PRETRAIN:
        target = ROOT / "runs" / recipe
        if (target / "checkpoints" / "model_best.safetensors").is_file():
            continue
        log = out / f"{recipe}.log"
        with open(log, "w") as handle:
            subprocess.run(
                [*CLI, "train", recipe, "--out", str(target)],
                cwd=ROOT,
                stdout=handle,
                stderr=subprocess.STDOUT,
                check=True,
            )


def _epochs(run: Path) -> list[dict[str, Any]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines if line.strip()]
    by_epoch = {e["epoch"]: e for e in events if e.get("event") == "epoch"}
    return [by_epoch[k] for k in sorted(by_epoch)]


def _diag(epoch: Mapping[str, Any], name: str, key: str) -> float | None:
    value = epoch.get("val", {}).get("diagnostics", {}).get(name)
    return value.get(key) if isinstance(value, Mapping) else value


def measure(run: Path, checkpoint: str) -> dict[str, Any]:
    """The study's numbers of one run (see the module docstring)."""
    summaries = sorted((run / "eval").glob(f"{checkpoint}-*.json"))
    summary = json.loads(summaries[0].read_text())
    epochs = _epochs(run)
    calib = summary.get("calibration") or {}
    out: dict[str, Any] = {
        "id_acc": summary["clean_acc"],
        "ood_acc": (summary.get("corruptions") or {}).get("mean_acc"),
        "robust_acc": summary.get("union_acc"),
        "ece": calib.get("ece"),
        "ece_ts": calib.get("ece_scaled"),
        "temperature": calib.get("temperature"),
        "head_norm_first": _diag(epochs[0], "head_norm", "weight_norm"),
        "head_norm_last": _diag(epochs[-1], "head_norm", "weight_norm"),
        "head_norm_per_epoch": [_diag(e, "head_norm", "weight_norm") for e in epochs],
        "diff_f_last": _diag(epochs[-1], "feature_change", "diff"),
        "cosine_last": _diag(epochs[-1], "feature_cosine", "mean"),
        "n_points": summary["n_points"],
    }
    ntk = sorted((run / "ntk").glob("*.json")) if (run / "ntk").is_dir() else []
    if ntk:
        out["ft_ratio"] = json.loads(ntk[-1].read_text())["ft_ratio"]
    return out


def _fmt(values: list[float | None], scale: float, digits: int) -> str:
    xs = [v * scale for v in values if isinstance(v, (int, float))]
    if not xs:
        return "—"
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f}"
    return f"{statistics.mean(xs):.{digits}f} ± {statistics.stdev(xs):.{digits}f}"


COLUMNS = (
    ("ID acc %", "id_acc", 100, 1),
    ("OOD acc %", "ood_acc", 100, 1),
    ("AA acc %", "robust_acc", 100, 1),
    ("ECE %", "ece", 100, 1),
    ("ECE TS %", "ece_ts", 100, 1),
    ("||V|| first", "head_norm_first", 1, 2),
    ("||V|| last", "head_norm_last", 1, 2),
    ("Diff(F) last", "diff_f_last", 1, 3),
    ("CS last", "cosine_last", 1, 4),
    ("FT ratio", "ft_ratio", 1, 4),
)


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    head = "| recipe | seeds | " + " | ".join(c[0] for c in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for recipe, runs in results.items():
        cells = [_fmt([r.get(key) for r in runs], s, d) for _, key, s, d in COLUMNS]
        lines.append(f"| {recipe} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--recipes", nargs="+", default=list(TRANSFER))
    parser.add_argument("--checkpoint", default="best", choices=["best", "last"])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "lpft-study")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    _pretrain(args.out)
    from concurrent.futures import ThreadPoolExecutor

    jobs = [(r, s) for s in args.seeds for r in args.recipes]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_one, r, s, args.out, []) for r, s in jobs]
        for future in futures:
            run_dir, seconds, code = future.result()
            print(f"{run_dir}: exit {code}, {seconds:.0f} s", flush=True)
    results: dict[str, list[dict[str, Any]]] = {}
    for recipe, seed in jobs:
        run = args.out / f"{recipe}-s{seed}"
        if any((run / "eval").glob(f"{args.checkpoint}-*.json")):
            results.setdefault(recipe, []).append({"seed": seed, **measure(run, args.checkpoint)})
    path = ROOT / "benchmarks" / "results" / "lpft_study.json"
    path.write_text(json.dumps({"checkpoint": args.checkpoint, "runs": results}, indent=1))
    print(table(results))


if __name__ == "__main__":
    main()
