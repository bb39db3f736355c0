"""Reproduction benchmark: proxy recipes x seeds through the real CLI, pooled by ``compare``.

Runs each proxy recipe with several seeds (train, then the recipe's own final AutoAttack
evaluation), ``--jobs`` at a time with one thread each, and pools the seeds with
``unirobust compare`` for each ``--checkpoints`` entry. Run directories are
``<out>/<recipe>-s<seed>``; a finished run (it has an evaluation summary) is skipped, a killed one
is resumed.

Generalist vs PGD-AT vs TRADES (issue 4):
``.venv/bin/python benchmarks/proxy_comparison.py --seeds 0 1 2 --jobs 2``.
Multi-norm methods (issue 8):
``.venv/bin/python benchmarks/proxy_comparison.py --recipes fmnist-sat fmnist-avg fmnist-max
fmnist-msd fmnist-eat fmnist-ramp --checkpoints last --out runs/proxy-multinorm``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "unirobust.cli"]
RECIPES = ("fmnist-generalist", "fmnist-pgd-at", "fmnist-trades")


def run_one(recipe: str, seed: int, out_root: Path, extra: list[str]) -> tuple[str, float, int]:
    run_dir = out_root / f"{recipe}-s{seed}"
    if any((run_dir / "eval").glob("*.json")):
        return str(run_dir), 0.0, 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "1"}
    if (run_dir / "checkpoints" / "train_state.pt").is_file():
        cmd = [*CLI, "train", "--resume", str(run_dir)]
    else:
        sets = [a for s in [f"seed={seed}", *extra] for a in ("--set", s)]
        cmd = [*CLI, "train", recipe, *sets, "--out", str(run_dir)]
    start = time.perf_counter()
    log = out_root / f"{recipe}-s{seed}.log"
    with open(log, "w") as handle:
        code = subprocess.run(
            cmd, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT
        ).returncode
    return str(run_dir), time.perf_counter() - start, code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES))
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "proxy")
    parser.add_argument("--set", dest="extra", action="append", default=[])
    parser.add_argument("--checkpoints", nargs="+", default=["best", "last"])
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [(r, s) for s in args.seeds for r in args.recipes]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_one, r, s, args.out, args.extra) for r, s in jobs]
        for future in futures:
            run_dir, seconds, code = future.result()
            print(f"{run_dir}: exit {code}, {seconds:.0f} s", flush=True)
    runs = [str(args.out / f"{r}-s{s}") for r, s in jobs]
    for checkpoint in args.checkpoints:
        subprocess.run(
            [
                *CLI,
                "compare",
                *runs,
                "--out",
                str(args.out / f"comparison-{checkpoint}"),
                "--checkpoint",
                checkpoint,
                "--title",
                f"Fashion-MNIST proxy ({checkpoint} checkpoint)",
            ],
            cwd=ROOT,
            check=False,
        )


if __name__ == "__main__":
    main()
