"""Multi-norm training costs on the Fashion-MNIST proxy (issue 8 benchmarks).

* **Epoch time of E-AT, RAMP and MAX** (the proxy recipes ``fmnist-{eat,ramp,max}``, one epoch on
  ``--n-train`` images, validation off), as ratios to E-AT, next to the paper's A100 ratios
  (multinorm.md §6, RAMP paper Table 7: RAMP 157/78 = 2.0x, MAX 219/78 = 2.8x of E-AT). RAMP's
  epoch includes its gradient-projection natural epoch, as in the recipe.
* **RAMP's per-batch step against its compute limit**: the limit is what the method cannot avoid,
  the two APGD-train attacks on the key pair plus three train-mode forwards and one backward
  (§4.2), timed piece by piece on the same batch; the step is ``Expert.train_step`` with the RAMP
  objective (attacks, selection, forwards, pairing loss, backward, optimizer step). Both are timed
  on the same batches, interleaved, in one process, and the medians are compared (goal <= 1.10x).

Results go to ``benchmarks/results/multinorm.json``; docs/performance.md summarises them.
Run: ``.venv/bin/python benchmarks/bench_multinorm.py [--n-train 4000] [--batches 12]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from unirobust.attacks.apgd import apgd_train
from unirobust.config import load_recipe
from unirobust.experts.expert import Expert
from unirobust.experts.schedules import schedule_for
from unirobust.models import build_model
from unirobust.objectives.base import OBJECTIVES, ObjectiveContext
from unirobust.objectives.multinorm import select_max
from unirobust.objectives.ramp import PAIR_LOSSES
from unirobust.pipeline import train

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "multinorm.json"
PAPER_A100 = {"eat": 78.0, "ramp": 157.0, "max": 219.0}  # seconds per epoch, RN-18 (Table 7)


def epoch_seconds(method: str, n_train: int) -> float:
    overrides = [
        f"data.n_train={n_train}",
        "train.epochs=1",
        "validation.threats=[]",
        "eval.enabled=false",
    ]
    config = load_recipe(ROOT / "recipes" / "proxy" / f"fmnist-{method}.yaml", overrides)
    with tempfile.TemporaryDirectory() as tmp:
        run = train(config, out=Path(tmp) / "run", progress=False)
        record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    return float(record["time_s"])


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def ramp_step_vs_limit(batches: int) -> dict[str, float]:
    config = load_recipe(ROOT / "recipes" / "proxy" / "fmnist-ramp.yaml")
    spec = config.train.resolved_stages()[0].experts[0]
    torch.manual_seed(0)
    model = build_model("lenet", num_classes=10, input_shape=(1, 28, 28))
    objective = OBJECTIVES.build(spec.objective, ObjectiveContext(torch.Generator()))
    expert = Expert(
        name="ramp",
        model=model,
        objective=objective,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
        lr_schedule=schedule_for({"kind": "constant", "value": 0.01}, 1, "bench"),
    )
    pair = PAIR_LOSSES[objective.pair_loss]
    q, r = objective.threats[objective.q], objective.threats[objective.r]
    steps_q, steps_r = objective.steps[objective.q], objective.steps[objective.r]
    g = torch.Generator().manual_seed(0)
    steps, limits = [], []
    for i in range(batches + 2):
        x = torch.rand(128, 1, 28, 28, generator=g)
        y = torch.randint(0, 10, (128,), generator=g)
        t_step, _ = _timed(lambda x=x, y=y: expert.train_step(x, y))
        model.train()
        t_q, res_q = _timed(lambda x=x, y=y: apgd_train(model, x, y, q, n_iter=steps_q))
        t_r, res_r = _timed(lambda x=x, y=y: apgd_train(model, x, y, r, n_iter=steps_r))
        x_max, _ = select_max([res_r.x_best, res_q.x_best], [res_r.loss_best, res_q.loss_best])

        def forwards_and_backward(y=y, res_q=res_q, res_r=res_r, x_max=x_max) -> None:
            zr, zq, zmax = model(res_r.x_best), model(res_q.x_best), model(x_max)
            loss = F.cross_entropy(zmax, y) + pair(zq, zr, (zq.argmax(1) == y).detach())
            loss.backward()

        t_fb, _ = _timed(forwards_and_backward)
        model.zero_grad(set_to_none=True)
        if i >= 2:  # warm-up
            steps.append(t_step)
            limits.append(t_q + t_r + t_fb)
    step, limit = statistics.median(steps), statistics.median(limits)
    return {
        "batches": batches,
        "step_median_s": round(step, 5),
        "limit_median_s": round(limit, 5),
        "ratio": round(step / limit, 3),
        "pair": f"{objective.q}, {objective.r}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seconds = {m: epoch_seconds(m, args.n_train) for m in ("eat", "ramp", "max")}
    result = {
        "model": "lenet (1x28x28, batch 128), Fashion-MNIST proxy recipes",
        "threads": args.threads,
        "load_average_at_start": os.getloadavg()[0],
        "n_train": args.n_train,
        "epoch_seconds": seconds,
        "ratio_to_eat": {m: round(s / seconds["eat"], 2) for m, s in seconds.items()},
        "paper_a100_ratio_to_eat": {
            m: round(s / PAPER_A100["eat"], 2) for m, s in PAPER_A100.items()
        },
        "ramp_step_vs_compute_limit": ramp_step_vs_limit(args.batches),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
