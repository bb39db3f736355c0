"""Worker for the sharded-evaluation torchrun tests: evaluate one model file per rank.

``python _eval_worker.py MODEL OUT SPEC_JSON``; SPEC holds ``threats``, ``suite``, ``n``,
``batch_size``, ``union_only`` and ``kill_after`` (rank 1 dies, like ``kill -9``, after finishing
that many chunks; 0: never). Every finished chunk is appended to ``OUT/finished.rank<R>.log`` (so
a test can see that nothing finished is attacked twice); rank 0 saves the merged table.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from unirobust.data import load_dataset
from unirobust.engine.checkpoint import load_model
from unirobust.evaluation import evaluate
from unirobust.evaluation.sharding import current_shard


def main(model_path: str, out: str, spec: dict) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    shard = current_shard()
    out_dir = Path(out)
    log = out_dir / f"finished.rank{shard.rank}.log"
    done = []

    def on_chunk(threat: str, k: int, n_chunks: int) -> None:
        with log.open("a") as fh:
            fh.write(f"{threat} {k}\n")
        done.append(k)
        if shard.rank == 1 and spec["kill_after"] and len(done) >= spec["kill_after"]:
            os._exit(9)

    model, meta = load_model(model_path)
    bundle = load_dataset(meta["dataset"], n_test=spec["n"], val_size=0, stream=True)
    test = bundle.test
    table = evaluate(
        model,
        test.x,
        test.y,
        test.indices,
        threats=spec["threats"],
        suite=spec["suite"],
        batch_size=spec["batch_size"],
        union_only=spec["union_only"],
        state_path=out_dir / "eval.state",
        on_chunk=on_chunk,
        sanity_checks=False,
        shard=shard,
    )
    if shard.rank == 0:
        table.save(out_dir, stem="table")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]))
