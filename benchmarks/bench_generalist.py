"""Generalist costs: EMA-mix overhead per epoch, and 2-process experts vs one process.

Measures, on the Fashion-MNIST proxy settings (lenet, batch 128, PGD-10 robust expert):

* the time spent in ``EmaMix.after_step`` (EMA of each expert, mix, global EMA, sync) as a
  fraction of the epoch time (goal <= 3%, issue 4);
* the wall time of one epoch with the two experts in one process vs one process per expert
  under torchrun (``train.distributed.mode: experts``), and their ratio.

Results go to ``benchmarks/results/generalist.json``; docs/performance.md summarises them.
Run: ``.venv/bin/python benchmarks/bench_generalist.py [--n-train 4000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from unirobust.config import load_recipe
from unirobust.engine.rundir import RunDir
from unirobust.pipeline import train

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "proxy" / "fmnist-generalist.yaml"
OUT = ROOT / "benchmarks" / "results" / "generalist.json"


def merge_overhead(n_train: int) -> dict[str, float]:
    """Wrap EmaMix.after_step with a timer during a one-epoch run in a sync epoch."""
    from unirobust.experts import ema_mix

    spent = {"merge_s": 0.0, "calls": 0}
    original = ema_mix.EmaMix.after_step

    def timed(self, *args, **kwargs):
        start = time.perf_counter()
        original(self, *args, **kwargs)
        spent["merge_s"] += time.perf_counter() - start
        spent["calls"] += 1

    ema_mix.EmaMix.after_step = timed
    try:
        overrides = [
            f"data.n_train={n_train}",
            "train.epochs=1",
            "train.merge.sync_start=1",
            "validation.threats=[]",
            "eval.enabled=false",
        ]
        config = load_recipe(RECIPE, overrides)
        with tempfile.TemporaryDirectory() as tmp:
            run = train(config, out=Path(tmp) / "run", progress=False)
            epoch = next(r for r in RunDir(run).records() if r["event"] == "epoch")
    finally:
        ema_mix.EmaMix.after_step = original
    return {
        "epoch_s": epoch["time_s"],
        "merge_s": round(spent["merge_s"], 4),
        "merge_calls": spent["calls"],
        "merge_fraction": round(spent["merge_s"] / epoch["time_s"], 5),
        "threads": torch.get_num_threads(),
    }


def wall_time(n_train: int, processes: int, preset: str) -> dict[str, float]:
    """A one-epoch Generalist run, sequential (1) or expert-parallel (2): wall and epoch seconds."""
    overrides = [
        f"data.n_train={n_train}",
        "train.epochs=1",
        "validation.threats=[]",
        "eval.enabled=false",
        "train.distributed.mode=experts",
        f"train.generalist.preset={preset}",
        "train.generalist.lr_values=[0.05,0.05,0.05,0.05]",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        code = (
            "import sys; from unirobust.config import load_recipe; from unirobust.pipeline import "
            f"train; train(load_recipe({str(RECIPE)!r}, {overrides!r}), out=sys.argv[1], "
            "progress=False)"
        )
        script = Path(tmp) / "job.py"
        script.write_text(code)
        if processes == 1:
            cmd = [sys.executable, str(script), f"{tmp}/run"]
        else:
            cmd = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc_per_node={processes}",
                str(script),
                f"{tmp}/run",
            ]
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, 2 // processes))}
        start = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, capture_output=True)
        wall = time.perf_counter() - start
        epoch = next(r for r in RunDir(Path(tmp) / "run").records() if r["event"] == "epoch")
    return {"wall_s": round(wall, 2), "epoch_s": epoch["time_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=4000)
    args = parser.parse_args()
    result = {"n_train": args.n_train, "recipe": str(RECIPE.relative_to(ROOT))}
    result["merge_overhead"] = merge_overhead(args.n_train)
    result["wall_time"] = {}
    for preset in ("nat_linf", "linf_l2"):
        one = wall_time(args.n_train, 1, preset)
        two = wall_time(args.n_train, 2, preset)
        result["wall_time"][preset] = {
            "one_process": one,
            "two_processes": two,
            "epoch_ratio_two_over_one": round(two["epoch_s"] / one["epoch_s"], 3),
            "wall_ratio_two_over_one": round(two["wall_s"] / one["wall_s"], 3),
        }
    result["wall_time"]["note"] = (
        "2 CPU cores: one process uses 2 threads, two processes 1 thread each; wall includes "
        "process start-up and data loading, epoch_s is the training epoch alone"
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
