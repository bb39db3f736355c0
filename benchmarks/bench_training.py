"""Training throughput on this machine: images/s per objective and per speed switch.

For the Fashion-MNIST proxy model (lenet, batch 128, 1x28x28) it times ``Expert.train_step`` for
the natural, PGD-10 AT and TRADES objectives, and one natural step with each speed switch
(bf16 autocast, channels_last, torch.compile) that CPU torch allows. Images/s counts training
images (one per sample per step, whatever the attack cost).

Results go to ``benchmarks/results/training.json``; docs/performance.md summarises them.
Run: ``.venv/bin/python benchmarks/bench_training.py [--threads 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from unirobust.experts.expert import Expert
from unirobust.experts.schedules import schedule_for
from unirobust.models import build_model
from unirobust.objectives.base import OBJECTIVES, ObjectiveContext

OUT = Path(__file__).resolve().parent / "results" / "training.json"


def make_expert(
    objective: dict,
    *,
    bf16: bool = False,
    channels_last: bool = False,
    compile_backend: str | None = None,
) -> Expert:
    torch.manual_seed(0)
    model = build_model("lenet", num_classes=10, input_shape=(1, 28, 28))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile_backend:
        model.compile(backend=compile_backend)
    return Expert(
        name="bench",
        model=model,
        objective=OBJECTIVES.build(
            OBJECTIVES.validate(objective), ObjectiveContext(torch.Generator().manual_seed(0))
        ),
        optimizer=torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
        lr_schedule=schedule_for({"kind": "constant", "value": 0.01}, 1, "bench"),
        autocast_bf16=bf16,
    )


def images_per_s(expert: Expert, steps: int, channels_last: bool = False) -> float:
    x = torch.rand(128, 1, 28, 28)
    y = torch.randint(0, 10, (128,))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    for _ in range(2):  # warm-up (and compilation)
        expert.train_step(x, y)
    start = time.perf_counter()
    for _ in range(steps):
        expert.train_step(x, y)
    return round(steps * 128 / (time.perf_counter() - start), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    natural = {"name": "natural"}
    result = {
        "model": "lenet (1x28x28, batch 128)",
        "threads": args.threads,
        "load_average_at_start": os.getloadavg()[0],
        "objectives": {
            "natural": images_per_s(make_expert(natural), args.steps),
            "pgd_at (PGD-10)": images_per_s(
                make_expert({"name": "pgd_at", "threat": "linf:0.1"}),
                max(2, args.steps // 5),
            ),
            "trades (KL PGD-10)": images_per_s(
                make_expert({"name": "trades", "threat": "linf:0.1"}),
                max(2, args.steps // 5),
            ),
        },
        "switches (natural objective)": {
            "bf16_autocast": images_per_s(make_expert(natural, bf16=True), args.steps),
            "channels_last": images_per_s(
                make_expert(natural, channels_last=True), args.steps, channels_last=True
            ),
            "compile (inductor)": images_per_s(
                make_expert(natural, compile_backend="inductor"), args.steps
            ),
        },
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
