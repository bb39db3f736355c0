"""NTK decomposition cost (spec lpft.md §4): wall time and peak memory per model and mode.

Times :func:`unirobust.analysis.ntk.ntk_decomposition` on ``--n`` training samples (default 250,
the spec's cap), in the ``jacobian`` and the ``vjp_jvp`` mode, for

* ``lenet`` at the Fashion-MNIST shape (1x28x28, 10 classes, random inputs);
* ``tiny_text``: ``hf_sequence_classifier`` on a tiny RoBERTa (hidden 16, 2 layers, 2 heads,
  vocabulary 100, written to a temporary directory and loaded like a real checkpoint) with 2
  classes and 128-token inputs (lpft.md §1.1) of random ids and random lengths (needs the
  ``text`` extra).

Weights are random: the cost does not depend on them. No test split, so no kernel accuracies are
timed. ``--quick`` (20 samples, results in ``ntk-quick.json``) only checks that everything runs.

Each (model, mode) runs in its own subprocess so its peak resident memory (``ru_maxrss``) is its
own; ``peak_rss_mb`` is the process high-water mark and ``extra_rss_mb`` its rise over the mark
reached before the decomposition (model, data and imports). torch allocates outside Python's
allocator, so tracemalloc would miss the kernels and Jacobians.

Results go to ``benchmarks/results/ntk.json``.
Run: ``.venv/bin/python benchmarks/bench_ntk.py [--threads 1] [--n 250] [--dtype float32]
[--models lenet tiny_text] [--quick]``.
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

RESULTS = Path(__file__).resolve().parent / "results"
MODES = ("jacobian", "vjp_jvp")
TEXT_LENGTH = 128
MODELS = {
    "lenet": "lenet (1x28x28, 10 classes, random init), kernels [N, C, N, C]",
    "tiny_text": (
        "hf_sequence_classifier on a tiny RoBERTa (hidden 16, 2 layers, 2 heads, vocabulary 100, "
        f"random init), 2 classes, {TEXT_LENGTH}-token inputs, kernels [N, C, N, C]"
    ),
}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _lenet(n: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    from unirobust.models import build_model

    model = build_model("lenet", num_classes=10, input_shape=(1, 28, 28))
    x = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    return model, x, torch.arange(n) % 10


def _tiny_text(n: int, folder: Path) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The tiny RoBERTa saved to ``folder`` and loaded through the registry; packed random
    token ids (``<s>`` first, ``</s>`` last, padding after a random length)."""
    import transformers

    from unirobust.models import build_model

    config = transformers.RobertaConfig(
        vocab_size=100,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=TEXT_LENGTH + 2,
        pad_token_id=1,
    )
    transformers.utils.logging.disable_progress_bar()
    transformers.RobertaModel(config).save_pretrained(folder)
    model = build_model(
        "hf_sequence_classifier", num_classes=2, input_shape=(2, TEXT_LENGTH), path=str(folder)
    )
    gen = torch.Generator().manual_seed(1)
    lengths = torch.randint(8, TEXT_LENGTH + 1, (n,), generator=gen)
    ids = torch.randint(5, 100, (n, TEXT_LENGTH), generator=gen)
    mask = (torch.arange(TEXT_LENGTH) < lengths[:, None]).long()
    ids[:, 0] = 0
    ids[torch.arange(n), lengths - 1] = 2
    ids = torch.where(mask.bool(), ids, torch.ones_like(ids))
    return model, torch.stack([ids, mask], 1), torch.arange(n) % 2


def worker(model_name: str, mode: str, n: int, threads: int, dtype: str) -> dict[str, Any]:
    """One decomposition in this process; returns its timings, memory and kernel summary."""
    import tempfile

    from unirobust.analysis.ntk import ntk_decomposition

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model, x, y = _lenet(n) if model_name == "lenet" else _tiny_text(n, Path(tmp))
    model = model.to(getattr(torch, dtype))
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
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--quick", action="store_true", help="20 samples, into ntk-quick.json")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    n = 20 if args.quick else args.n
    if args.worker:
        print(json.dumps(worker(*args.worker, n, args.threads, args.dtype)))
        return
    result: dict[str, Any] = {
        "n": n,
        "threads": args.threads,
        "dtype": args.dtype,
        "torch": torch.__version__,
        "load_average_at_start": os.getloadavg()[0],
        "models": {},
    }
    for name in args.models:
        entry: dict[str, Any] = {"model": MODELS[name], "modes": {}}
        result["models"][name] = entry
        for mode in args.modes:
            cmd = [sys.executable, __file__, "--worker", name, mode, "--n", str(args.n)]
            cmd += ["--threads", str(args.threads), "--dtype", args.dtype]
            cmd += ["--quick"] if args.quick else []
            done = subprocess.run(cmd, check=True, capture_output=True, text=True)
            entry["modes"][mode] = json.loads(done.stdout.strip().splitlines()[-1])
            print(name, mode, json.dumps(entry["modes"][mode]), flush=True)
        if set(MODES) <= set(entry["modes"]):
            fns = [entry["modes"][m]["fn_F"] for m in MODES]
            entry["fn_F_relative_difference"] = abs(fns[0] - fns[1]) / max(fns)
    out = RESULTS / ("ntk-quick.json" if args.quick else "ntk.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
