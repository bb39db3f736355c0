"""Choosing the Fashion-MNIST multi-norm radii: is the l_inf / l_2 / l_1 trade-off real?

For one radius triple (eps_inf, eps_2, eps_1) it trains four lenet models on Fashion-MNIST with
the same budget -- natural training, and PGD-AT with 10-step APGD-train (multinorm.md §2, §5) for
each of l_inf, l_2 and l_1 -- then evaluates each model's ``last`` checkpoint with the ``aa-apgd``
protocol (multinorm.md §8: APGD-CE + APGD-T per norm) on the first N test points under all three
norms, and reports clean, per-norm and union accuracy.

The radii are a good choice for the multi-norm proxy when

* the natural model is near 0% under every norm (the attacks are strong enough to matter), and
* every single-norm model is much weaker against at least one *other* norm q than the model
  trained for q (so a union-robust method has something to trade off).

Both checks are computed and stored (thresholds ``--natural-max`` and ``--min-gap``, in %).

Runs go to ``runs/radii/<triple>/<model>`` (a finished training or evaluation is reused, a killed
training is resumed). Each triple's result is merged into
``benchmarks/results/multinorm_radii.json`` (an earlier entry for the same triple and budget is
replaced; other keys are kept). Uses ONE CPU thread.

Run: ``PYTHONPATH=src .venv/bin/python benchmarks/multinorm_radii.py --linf 0.1 --l2 1.0 --l1 8``.
"""

from __future__ import annotations

import torch

torch.set_num_threads(1)  # another heavy job shares the machine: one core only

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from unirobust.config import EvalConfig, RunConfig, validate_recipe  # noqa: E402
from unirobust.pipeline import evaluate_run  # noqa: E402
from unirobust.pipeline import train as run_train  # noqa: E402
from unirobust.threats import parse_threat  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "multinorm_radii.json"
NORMS = ("linf", "l2", "l1")
MODELS = ("natural", "linf", "l2", "l1")
SUITE = "aa-apgd"


def threat_texts(radii: dict[str, float]) -> dict[str, str]:
    """``{'linf': 'linf:0.1', ...}`` in the library's canonical spelling."""
    return {norm: str(parse_threat(f"{norm}:{radii[norm]!r}")) for norm in NORMS}


def triple_name(radii: dict[str, float]) -> str:
    return "_".join(f"{norm}{radii[norm]:g}" for norm in NORMS)


def recipe(model: str, threats: dict[str, str], args: argparse.Namespace) -> RunConfig:
    """One run: lenet, SGD momentum 0.9, the fmnist-pgd-at lr schedule, only the loss differs."""
    if model == "natural":
        objective: dict[str, Any] = {"name": "natural"}
        val_threats: list[str] = []
    else:
        objective = {"name": "pgd_at", "threat": threats[model], "attack": "apgd", "steps": 10}
        val_threats = [threats[model]]
    data = {
        "name": f"fmnist-radii-{model}",
        "description": f"multi-norm radii check: {model} training, threats {threats}",
        "seed": args.seed,
        "device": "cpu",
        "data": {
            "name": "fashion_mnist",
            "n_train": args.n_train,
            "val_size": args.val_size,
            "batch_size": args.batch_size,
        },
        "model": {"name": "lenet"},
        "train": {
            "epochs": args.epochs,
            "experts": [
                {
                    "name": model,
                    "objective": objective,
                    "optimizer": {"name": "sgd", "momentum": 0.9, "weight_decay": 5.0e-4},
                    "lr_schedule": {"kind": "generalist", "values": list(args.lr_values)},
                }
            ],
        },
        "validation": {"threats": val_threats, "steps": 20},
        "eval": {"enabled": False},
    }
    return validate_recipe(data, f"<multinorm_radii {model}>")


def epochs_done(run_dir: Path) -> int:
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        return 0
    done = 0
    for line in metrics.read_text().splitlines():
        record = json.loads(line)
        if record.get("event") == "epoch":
            done = max(done, int(record["epoch"]))
    return done


def train_one(run_dir: Path, config: RunConfig) -> dict[str, Any]:
    """Train (or resume) one model; return the wall time spent here and the epoch records."""
    start = time.perf_counter()
    done = epochs_done(run_dir)
    if done < config.train.epochs:
        if (run_dir / "checkpoints" / "train_state.pt").is_file():
            run_train(config, resume=run_dir, progress=False)
        else:
            run_train(config, out=run_dir, progress=False)
    records = [
        json.loads(line)
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        if json.loads(line).get("event") == "epoch"
    ]
    return {
        "wall_s": round(time.perf_counter() - start, 1),
        "epoch_time_s": [r.get("time_s") for r in records],
        "epochs_total_s": round(sum(r.get("time_s") or 0.0 for r in records), 1),
        "images_per_s": [r.get("images_per_s") for r in records],
        "train_acc": [r["train"][next(iter(r["train"]))].get("acc") for r in records],
        "val": [r.get("val") for r in records],
        "reused": done >= config.train.epochs,
    }


def eval_one(run_dir: Path, threats: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    """aa-apgd on the last checkpoint, first ``n_eval`` test points, all three norms."""
    summary_path = run_dir / "eval" / f"last-{SUITE}.json"
    wanted = [threats[n] for n in NORMS]
    start = time.perf_counter()
    summary = None
    if summary_path.is_file():
        old = json.loads(summary_path.read_text())
        if old.get("threats") == wanted and old.get("n_points") == args.n_eval:
            summary = old
    reused = summary is not None
    if summary is None:
        spec = EvalConfig(
            suite=SUITE,
            threats=wanted,
            n=args.n_eval,
            batch_size=args.eval_batch_size,
            checkpoints=["last"],
            calibration=False,
        )
        (summary,) = evaluate_run(run_dir, spec, progress=False, seed=args.eval_seed)
    by_norm = {parse_threat(k).norm: v for k, v in summary["robust_acc"].items()}
    return {
        "clean": 100 * summary["clean_acc"],
        **{norm: 100 * by_norm[norm] for norm in NORMS},
        "union": 100 * summary["union_acc"],
        "eval_wall_s": round(time.perf_counter() - start, 1),
        "attack_wall_s": summary.get("wall_time_s"),
        "n_points": summary["n_points"],
        "points": summary.get("points"),
        "eval_seed": summary.get("seed"),
        "eval_batch_size": summary.get("batch_size"),
        "model_hash": summary.get("model_hash"),
        "eval_reused": reused,
    }


def criteria(models: dict[str, dict[str, Any]], natural_max: float, min_gap: float):
    """The two checks of the module docstring, with every number they rest on."""
    out: dict[str, Any] = {"natural_max": natural_max, "min_gap": min_gap}
    if "natural" in models:
        nat = models["natural"]
        worst = max(nat[n] for n in NORMS)
        out["natural"] = {"max_robust_acc": worst, "ok": worst <= natural_max}
    for p in NORMS:
        if p not in models:
            continue
        gaps = {q: round(models[q][q] - models[p][q], 1) for q in NORMS if q != p and q in models}
        if not gaps:
            continue
        q_best = max(gaps, key=lambda q: gaps[q])
        out[p] = {"gap_to_specialist": gaps, "largest": q_best, "ok": gaps[q_best] >= min_gap}
    checks = [v["ok"] for k, v in out.items() if isinstance(v, dict)]
    out["all_ok"] = bool(checks) and all(checks) and len(checks) == len(MODELS)
    return out


def table(radii: dict[str, float], models: dict[str, dict[str, Any]], n: int) -> str:
    head = (
        f"radii linf {radii['linf']:g}, l2 {radii['l2']:g}, l1 {radii['l1']:g} "
        f"({SUITE}, last checkpoint, first {n} test points)"
    )
    lines = [head, f"{'model':10s} {'clean':>6s} {'linf':>6s} {'l2':>6s} {'l1':>6s} {'union':>6s}"]
    for name, m in models.items():
        cells = " ".join(f"{m[k]:6.1f}" for k in ("clean", *NORMS, "union"))
        lines.append(f"{name:10s} {cells}")
    return "\n".join(lines)


def merge_result(entry: dict[str, Any], path: Path) -> None:
    """Keep one entry per (radii, budget): replace an older one, append a new one."""
    data: dict[str, Any] = {"benchmark": "multinorm_radii", "triples": []}
    if path.is_file():
        data = json.loads(path.read_text())
    key = (entry["radii"], entry["budget"])
    data["triples"] = [t for t in data["triples"] if (t["radii"], t["budget"]) != key] + [entry]
    data["description"] = __doc__.splitlines()[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--linf", type=float, default=0.1)
    parser.add_argument("--l2", type=float, default=1.0)
    parser.add_argument("--l1", type=float, default=8.0)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--n-train", type=int, default=20000)
    parser.add_argument("--val-size", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr-values", type=float, nargs=4, default=[0.05, 0.05, 0.005, 0.0005])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-eval", type=int, default=500)
    parser.add_argument("--eval-batch-size", type=int, default=500)
    parser.add_argument("--eval-seed", type=int, default=0)
    parser.add_argument("--natural-max", type=float, default=5.0, help="in %%")
    parser.add_argument("--min-gap", type=float, default=15.0, help="in %% points")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "radii")
    parser.add_argument("--output", type=Path, default=OUT)
    args = parser.parse_args()

    radii = {"linf": args.linf, "l2": args.l2, "l1": args.l1}
    threats = threat_texts(radii)
    budget = {
        "n_train": args.n_train,
        "val_size": args.val_size,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "optimizer": "sgd momentum 0.9, weight decay 5e-4",
        "lr_schedule": {"kind": "generalist", "values": list(args.lr_values)},
        "seed": args.seed,
        "training_attack": "apgd_train, 10 steps (natural model: none)",
    }
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    total_start = time.perf_counter()
    models: dict[str, dict[str, Any]] = {}
    for model in args.models:
        run_dir = args.runs / triple_name(radii) / model
        config = recipe(model, threats, args)
        print(f"[{time.strftime('%H:%M:%S')}] train {model} -> {run_dir}", flush=True)
        trained = train_one(run_dir, config)
        print(f"[{time.strftime('%H:%M:%S')}] eval {model} ({SUITE})", flush=True)
        scores = eval_one(run_dir, threats, args)
        models[model] = {
            **{k: round(scores[k], 1) for k in ("clean", *NORMS, "union")},
            "train": trained,
            "eval": {k: v for k, v in scores.items() if k not in ("clean", *NORMS, "union")},
            "run_dir": str(run_dir.relative_to(ROOT) if run_dir.is_relative_to(ROOT) else run_dir),
        }
        m = models[model]
        print(
            f"[{time.strftime('%H:%M:%S')}] {model}: clean {m['clean']:.1f} linf {m['linf']:.1f} "
            f"l2 {m['l2']:.1f} l1 {m['l1']:.1f} union {m['union']:.1f} "
            f"(train {trained['wall_s']:.0f} s, eval {scores['eval_wall_s']:.0f} s)",
            flush=True,
        )
    entry = {
        "radii": threats["linf"] + "," + threats["l2"] + "," + threats["l1"],
        "radii_values": radii,
        "budget": json.dumps(budget, sort_keys=True),
        "budget_details": budget,
        "protocol": {
            "suite": SUITE,
            "checkpoint": "last",
            "n_points": args.n_eval,
            "points": f"first {args.n_eval} Fashion-MNIST test images",
            "eval_seed": args.eval_seed,
            "eval_batch_size": args.eval_batch_size,
        },
        "models": models,
        "criteria": criteria(models, args.natural_max, args.min_gap),
        "started": started,
        "total_wall_s": round(time.perf_counter() - total_start, 1),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_at_end": os.getloadavg()[0],
        "command": "PYTHONPATH=src python "
        + shlex.join([str(Path(sys.argv[0]).resolve().relative_to(ROOT)), *sys.argv[1:]]),
    }
    merge_result(entry, args.output)
    print(table(radii, models, args.n_eval), flush=True)
    print(json.dumps(entry["criteria"], indent=2), flush=True)
    print(f"total {entry['total_wall_s']:.0f} s; wrote {args.output}", flush=True)


if __name__ == "__main__":
    main()
