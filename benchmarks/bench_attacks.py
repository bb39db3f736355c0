"""Our APGD vs pyautoattack's APGD, and union-only vs per-norm evaluation (issue 3 proof).

On a trained Fashion-MNIST model and the first ``--n`` test points:

1. **Agreement and speed.** For l_inf, l_2 and l_1, APGD-CE (100 iterations, 1 restart, l_1 with
   the large-eps schedule) from ``unirobust.attacks.apgd`` and from pyautoattack's
   ``APGDAttack``: robust accuracy of each (goal: within 1 point) and images/s (goal: ours not
   slower). Each is timed on the same points with the same number of threads.
2. **Union-only.** ``evaluate(..., suite, union_only=True)`` vs the full per-norm evaluation: wall
   time ratio (goal <= 0.6x) and the union accuracy of both (must be equal for a suite whose
   per-point result does not depend on batch-mates; see evaluation/runner.py).

Results go to ``benchmarks/results/attacks.json``; docs/performance.md summarises them.
Run: ``.venv/bin/python benchmarks/bench_attacks.py --model runs/proxy/fmnist-pgd-at-s0``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from unirobust.attacks import apgd
from unirobust.attacks.context import preserve_rng
from unirobust.data import load_dataset
from unirobust.engine.checkpoint import load_model
from unirobust.evaluation import evaluate
from unirobust.threats import parse_threats, to_pyautoattack_norm

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "attacks.json"


@torch.no_grad()
def _correct(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(1) == y


def ours(model, x, y, threat, batch: int) -> tuple[float, float]:
    start = time.perf_counter()
    flags = []
    for i in range(0, len(x), batch):
        xb, yb = x[i : i + batch], y[i : i + batch]
        x_adv = apgd(model, xb, yb, threat, n_iter=100, loss="ce", restarts=1)
        flags.append(_correct(model, x_adv, yb) & _correct(model, xb, yb))
    seconds = time.perf_counter() - start
    return torch.cat(flags).float().mean().item(), seconds


def theirs(model, x, y, threat, batch: int) -> tuple[float, float]:
    from pyautoattack.autopgd_base import APGDAttack

    attack = APGDAttack(
        model,
        n_iter=100,
        norm=to_pyautoattack_norm(threat),
        n_restarts=1,
        eps=threat.eps,
        seed=0,
        loss="ce",
        device="cpu",
        use_largereps=threat.norm == "l1",
    )
    start = time.perf_counter()
    flags = []
    with preserve_rng():
        for i in range(0, len(x), batch):
            xb, yb = x[i : i + batch], y[i : i + batch]
            x_adv = attack.perturb(xb, yb)
            flags.append(_correct(model, x_adv, yb) & _correct(model, xb, yb))
    seconds = time.perf_counter() - start
    return torch.cat(flags).float().mean().item(), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "runs/proxy/fmnist-pgd-at-s0")
    parser.add_argument("--checkpoint", default="last")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--threats", default="linf:0.1,l2:1.5,l1:10")
    parser.add_argument("--union-suite", default="aa-apgd")
    parser.add_argument("--skip-union", action="store_true")
    args = parser.parse_args()

    model, meta = load_model(args.model, args.checkpoint)
    data = load_dataset("fashion_mnist", n_test=args.n, val_size=0)
    x, y = data.test.x, data.test.y
    threats = parse_threats(args.threats)
    result: dict = {
        "model": meta["path"],
        "points": f"first {args.n} test points",
        "threads": torch.get_num_threads(),
        "clean_acc": _correct(model, x, y).float().mean().item(),
        "apgd_ce": {},
    }
    for threat in threats:
        acc_ours, t_ours = ours(model, x, y, threat, args.batch)
        acc_theirs, t_theirs = theirs(model, x, y, threat, args.batch)
        result["apgd_ce"][str(threat)] = {
            "ours_robust_acc": acc_ours,
            "pyautoattack_robust_acc": acc_theirs,
            "difference_pp": round(100 * (acc_ours - acc_theirs), 2),
            "ours_images_per_s": round(args.n / t_ours, 1),
            "pyautoattack_images_per_s": round(args.n / t_theirs, 1),
            "speed_ratio_ours_over_theirs": round(t_theirs / t_ours, 3),
        }
        print(json.dumps({str(threat): result["apgd_ce"][str(threat)]}), flush=True)

    if not args.skip_union:
        timings = {}
        unions = {}
        for union_only in (False, True):
            start = time.perf_counter()
            res = evaluate(
                model,
                x,
                y,
                data.test.indices,
                threats=threats,
                suite=args.union_suite,
                batch_size=args.batch,
                union_only=union_only,
                seed=0,
            )
            timings[union_only] = time.perf_counter() - start
            unions[union_only] = res.union_acc()
        result["union_only"] = {
            "suite": args.union_suite,
            "full_s": round(timings[False], 1),
            "union_only_s": round(timings[True], 1),
            "ratio": round(timings[True] / timings[False], 3),
            "union_acc_full": unions[False],
            "union_acc_union_only": unions[True],
        }
        print(json.dumps(result["union_only"]), flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
