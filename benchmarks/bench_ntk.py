"""NTK decomposition cost (spec lpft.md §4): wall time and peak memory per mode.

Times :func:`unirobust.analysis.ntk.ntk_decomposition` on ``--n`` training samples (default 250,
the spec's cap) for ``lenet`` at the Fashion-MNIST shape (1x28x28, 10 classes, random init, random
inputs: the cost does not depend on the weights), in the ``jacobian`` and the ``vjp_jvp`` mode.
Kernels are NC x NC = 2500 x 2500. No test split, so no kernel accuracies are timed.

Each mode runs in its own subprocess so its peak resident memory (``ru_maxrss``) is its own;
``peak_rss_mb`` is the process high-water mark and ``extra_rss_mb`` its rise over the mark
reached before the decomposition (model, data and imports). torch allocates outside Python's
allocator, so tracemalloc would miss the kernels and Jacobians.

Results go to ``benchmarks/results/ntk.json``.
Run: ``.venv/bin/python benchmarks/bench_ntk.py [--threads 1] [--n 250] [--dtype float32]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

OUT = Path(__file__).resolve().parent / "results" / "ntk.json"
MODES = ("jacobian", "vjp_jvp")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def worker(mode: str, n: int, threads: int, dtype: str) -> dict[str, Any]:
    """One decomposition in this process; returns its timings, memory and kernel summary."""
    from unirobust.analysis.ntk import ntk_decomposition
    from unirobust.models import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model("lenet", num_classes=10, input_shape=(1, 28, 28)).to(getattr(torch, dtype))
    x = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    y = torch.arange(n) % 10
    before = _rss_mb()
    start = time.perf_counter()
    res = ntk_decomposition(model, x, y, mode=mode, n_max=n, seed=0)  # type: ignore[arg-type]
    total = time.perf_counter() - start
    rep = res.report
    return {
        "seconds_total": round(total, 2),
        "seconds": {k: round(v, 2) for k, v in rep["seconds"].items()},
        "peak_rss_mb": round(_rss_mb(), 1),
        "extra_rss_mb": round(_rss_mb() - before, 1),
        "num_params": rep["num_params"],
        "fn_P": rep["P"]["fn"],
        "fn_F": rep["F"]["fn"],
        "rank_P": rep["P"]["rank"],
        "rank_F": rep["F"]["rank"],
        "rank_dtype": rep["F"]["rank_dtype"],
        "rank_bounds": rep["rank_bounds"],
        "ft_ratio": rep["ft_ratio"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n", type=int, default=250)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.n, args.threads, args.dtype)))
        return
    result: dict[str, Any] = {
        "model": "lenet (1x28x28, 10 classes, random init), kernels [N, C, N, C]",
        "n": args.n,
        "threads": args.threads,
        "dtype": args.dtype,
        "torch": torch.__version__,
        "load_average_at_start": os.getloadavg()[0],
        "modes": {},
    }
    for mode in args.modes:
        cmd = [sys.executable, __file__, "--worker", mode, "--n", str(args.n)]
        cmd += ["--threads", str(args.threads), "--dtype", args.dtype]
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        result["modes"][mode] = json.loads(done.stdout.strip().splitlines()[-1])
        print(mode, json.dumps(result["modes"][mode]), flush=True)
    if set(MODES) <= set(result["modes"]):
        fns = [result["modes"][m]["fn_F"] for m in MODES]
        result["fn_F_relative_difference"] = abs(fns[0] - fns[1]) / max(fns)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
