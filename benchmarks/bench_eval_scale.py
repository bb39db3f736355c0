"""Evaluation scale-out (issue 11): wall time with 1 and 2 processes, peak memory as N grows.

Data: Fashion-MNIST rewritten in the CIFAR-10 python-pickle layout (each 28x28 grey image padded
by 2 px to 32x32 and repeated over 3 channels; ``data_batch_1..5`` from the first 50,000 training
images, ``test_batch`` from the 10,000 test images, pickled with protocol 4, so the reader takes
the rows in place from the files: what is measured is the streamed path). Model: a fixed lenet
(seed 0) trained for one epoch on ``--n-train`` of those training images.

1. **Wall time, 1 vs 2 processes.** ``unirobust``'s evaluation (``evaluate_run``, the code behind
   ``unirobust eval``) of the first ``--n-wall`` test points, suite ``--suite`` (default
   ``aa-apgd``), threats linf 0.1, l2 1.5, l1 10, full mode, batch ``--batch-size``. Three runs:
   one process with 1 thread, one process with 2 threads, and ``torchrun`` with 2 processes of 1
   thread each (gloo). The 2-process table is checked to equal the 1-process 1-thread table
   (every per-sample array). Wall time is the whole process (start-up, data, model, clean pass,
   attacks, writing), as a user waits for it; also each rank's attack time.
2. **Peak memory vs N.** For N in ``--sizes`` (default 1,000, 5,000, 10,000), one process
   evaluates the first N test points (suite ``fast``: memory depends on the chunk, not on the
   attack strength; same threats, batch 500) with the test split streamed, and again with it
   held in memory (the pre-streaming behaviour), each in a fresh process. Recorded: peak RSS of
   the process (``ru_maxrss``) and its RSS before the data was opened (after imports and model).

Results: ``benchmarks/results/eval_scale.json`` (``--quick``: ``eval_scale-quick.json``, tiny
sizes, only to check that the script works). Print the docs table with
``benchmarks/eval_scale_table.py``. Run (takes tens of minutes on 2 cores; machine otherwise
idle): ``.venv/bin/python benchmarks/bench_eval_scale.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
THREATS = "linf:0.1,l2:1.5,l1:10"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


# ----------------------------------------------------------------------------- data and model


def write_cifar_format(folder: Path) -> Path:
    """Fashion-MNIST as ``cifar-10-batches-py`` under ``folder`` (skipped if already there)."""
    from unirobust.data.idx import FASHION_MNIST_CLASSES, load_fashion_mnist

    out = folder / "cifar-10-batches-py"
    if (out / "test_batch").is_file():
        return folder
    out.mkdir(parents=True, exist_ok=True)
    x_train, y_train, x_test, y_test = load_fashion_mnist(None)

    def rows(images: np.ndarray) -> np.ndarray:
        padded = np.pad(images, ((0, 0), (2, 2), (2, 2)))
        return np.repeat(padded[:, None], 3, axis=1).reshape(len(images), 3072)

    def dump(name: str, images: np.ndarray, labels: np.ndarray) -> None:
        batch = {"batch_label": name, "labels": labels.tolist(), "data": rows(images)}
        with (out / name).open("wb") as fh:
            pickle.dump(batch, fh, protocol=4)

    for i in range(5):
        part = slice(10000 * i, 10000 * (i + 1))
        dump(f"data_batch_{i + 1}", x_train[part], y_train[part])
    dump("test_batch", x_test, y_test)
    with (out / "batches.meta").open("wb") as fh:
        pickle.dump({"label_names": list(FASHION_MNIST_CLASSES)}, fh, protocol=4)
    return folder


def train_model(work: Path, data_dir: Path, n_train: int) -> Path:
    """The fixed lenet (seed 0, one natural epoch), trained once per work directory."""
    from unirobust.config import validate_recipe
    from unirobust.pipeline import train

    run = work / f"lenet-{n_train}"
    if (run / "checkpoints" / "model_last.safetensors").is_file():
        return run
    shutil.rmtree(run, ignore_errors=True)
    recipe = {
        "name": "eval-scale-lenet",
        "seed": 0,
        "data": {
            "name": "cifar10",
            "data_dir": str(data_dir),
            "n_train": n_train,
            "val_size": 0,
            "batch_size": 128,
        },
        "model": {"name": "lenet"},
        "train": {
            "epochs": 1,
            "experts": [
                {
                    "name": "natural",
                    "objective": {"name": "natural"},
                    "optimizer": {"name": "sgd", "momentum": 0.9},
                    "lr_schedule": {"kind": "constant", "value": 0.05},
                }
            ],
        },
        "validation": {"threats": []},
        "eval": {"enabled": False},
    }
    return train(validate_recipe(recipe), out=run, progress=False)


# ----------------------------------------------------------------------------- child processes


def child_wall(args: argparse.Namespace) -> None:
    """One rank of a wall-time run: ``evaluate_run`` on a copy of the run directory."""
    import torch

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    from unirobust.pipeline import evaluate_run

    overrides = {
        "threats": THREATS.split(","),
        "suite": args.suite,
        "n": args.n,
        "batch_size": args.batch_size,
        "checkpoints": ["last"],
        "union_only": False,
        "calibration": False,
    }
    summaries = evaluate_run(args.run, overrides=overrides)
    rank = int(os.environ.get("RANK", "0"))
    record = {
        "rank": rank,
        "wall_s": round(time.perf_counter() - start, 2),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }
    if summaries:
        record["attack_wall_time_s"] = summaries[0]["wall_time_s"]
        record["union_acc"] = summaries[0]["union_acc"]
    Path(args.out).with_suffix(f".rank{rank}.json").write_text(json.dumps(record))


def child_memory(args: argparse.Namespace) -> None:
    """One memory point: evaluate the first N test points, streamed or in memory."""
    import torch

    torch.set_num_threads(args.threads)
    from unirobust.data import load_dataset
    from unirobust.engine.checkpoint import load_model
    from unirobust.evaluation import evaluate

    model, meta = load_model(args.run, "last")
    before = _current_rss_mb()
    start = time.perf_counter()
    bundle = load_dataset(
        "cifar10", data_dir=meta["data_dir"], n_test=args.n, val_size=0, stream=args.stream
    )
    test = bundle.test
    state = Path(args.out).with_suffix(".state")
    table = evaluate(
        model,
        test.x,
        test.y,
        test.indices,
        threats=[] if args.memory_threats == "none" else args.memory_threats.split(","),
        suite="fast",
        batch_size=args.batch_size,
        state_path=state,
        sanity_checks=False,
    )
    state.unlink(missing_ok=True)
    record = {
        "n": args.n,
        "streamed": bool(args.stream),
        "rss_before_data_mb": round(before, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "wall_s": round(time.perf_counter() - start, 2),
        "union_acc": table.union_acc(),
    }
    Path(args.out).write_text(json.dumps(record))


# ----------------------------------------------------------------------------- driver


def _env(threads: int) -> dict[str, str]:
    src = str(ROOT / "src")
    path = os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": path}


def _child(mode: str, extra: list[str], threads: int, nproc: int = 1) -> None:
    me = [str(Path(__file__).resolve()), "--child", mode, "--threads", str(threads), *extra]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd += [f"--nproc-per-node={nproc}", *me]
    else:
        cmd = [sys.executable, *me]
    done = subprocess.run(cmd, env=_env(threads), capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"child failed ({' '.join(cmd)}):\n{done.stderr[-3000:]}")


def measure_wall(work: Path, run: Path, args: argparse.Namespace) -> dict[str, Any]:
    from unirobust.evaluation import EvalResults

    configs = {"1 process, 1 thread": (1, 1), "1 process, 2 threads": (1, 2)}
    configs["2 processes, 1 thread each"] = (2, 1)
    out: dict[str, Any] = {}
    tables = {}
    for label, (nproc, threads) in configs.items():
        copy = work / f"wall-{nproc}x{threads}"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(run, copy)
        stem = work / f"wall-{nproc}x{threads}"
        extra = ["--run-dir", str(copy), "--points", str(args.n_wall), "--suite", args.suite]
        extra += ["--batch-size", str(args.batch_size), "--out", str(stem)]
        print(f"wall time: {label} ...", flush=True)
        start = time.perf_counter()
        _child("wall", extra, threads, nproc)
        total = time.perf_counter() - start
        ranks = [json.loads(stem.with_suffix(f".rank{r}.json").read_text()) for r in range(nproc)]
        out[label] = {"processes": nproc, "threads": threads, "wall_s": round(total, 2)}
        out[label]["ranks"] = ranks
        tables[label] = EvalResults.load(copy / "eval" / f"last-{args.suite}.npz")
    one, two = tables["1 process, 1 thread"], tables["2 processes, 1 thread each"]
    out["tables_equal_1x1_vs_2x1"] = bool(
        np.array_equal(one.logits, two.logits)
        and all(np.array_equal(one.robust[s], two.robust[s]) for s in one.threats)
        and np.array_equal(one.clean_correct, two.clean_correct)
    )
    base = out["1 process, 1 thread"]["wall_s"]
    out["ratio_2x1_over_1x1"] = round(out["2 processes, 1 thread each"]["wall_s"] / base, 3)
    out["ratio_2x1_over_1x2"] = round(
        out["2 processes, 1 thread each"]["wall_s"] / out["1 process, 2 threads"]["wall_s"], 3
    )
    return out


def measure_memory(work: Path, run: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for n in args.sizes:
        for stream in (True, False):
            out = work / f"mem-{n}-{'stream' if stream else 'memory'}.json"
            extra = ["--run-dir", str(run), "--points", str(n), "--batch-size", "500"]
            extra += ["--out", str(out), "--memory-threats", args.memory_threats]
            print(f"memory: N={n} {'streamed' if stream else 'in memory'} ...", flush=True)
            _child("memory", [*extra, *(["--stream"] if stream else [])], threads=1)
            rows.append(json.loads(out.read_text()))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script runs")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "ur-eval-scale")
    parser.add_argument("--n-wall", type=int, default=1000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 10000])
    parser.add_argument("--suite", default="aa-apgd")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--n-train", type=int, default=10000)
    parser.add_argument(
        "--memory-threats",
        default=THREATS,
        help="threats of the memory runs; 'none': the clean pass only (the data path's memory, "
        "in a fraction of the time: the fast suite takes about 3 minutes per 1,000 points here)",
    )
    # child-process options
    parser.add_argument("--child", choices=["wall", "memory"], help=argparse.SUPPRESS)
    # (names that are no prefix of a torchrun option: torchrun parses the child's flags too)
    parser.add_argument("--run-dir", dest="run", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--points", dest="n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--stream", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "wall":
        return child_wall(args)
    if args.child == "memory":
        return child_memory(args)
    if args.quick:
        args.n_wall, args.sizes, args.n_train, args.batch_size = 40, [100, 300], 1000, 10
        args.suite = "fast"
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    work = args.work / ("quick" if args.quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    data_dir = write_cifar_format(args.work)
    run = train_model(work, data_dir, args.n_train)
    result = {
        "what": "evaluation scale-out (issue 11): wall time 1 vs 2 processes; peak RSS vs N",
        "data": "Fashion-MNIST in CIFAR-10 pickle layout (3x32x32, protocol 4: read in place)",
        "model": f"lenet, seed 0, 1 natural epoch on {args.n_train} images",
        "threats": THREATS,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "load_average_at_start": os.getloadavg()[0],
        "quick": bool(args.quick),
        "wall": {"n": args.n_wall, "suite": args.suite, "batch_size": args.batch_size},
        "memory": {
            "suite": "fast",
            "threats": args.memory_threats,
            "batch_size": 500,
            "threads": 1,
        },
    }
    result["wall"].update(measure_wall(work, run, args))
    result["memory"]["points"] = measure_memory(work, run, args)
    result["load_average_at_end"] = os.getloadavg()[0]
    RESULTS.mkdir(parents=True, exist_ok=True)
    target = RESULTS / ("eval_scale-quick.json" if args.quick else "eval_scale.json")
    target.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
