"""torchrun on CPU (gloo): two processes give the single-process result (float tolerance)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import generalist_tiny, tiny_recipe

from unirobust.config import validate_recipe
from unirobust.engine.checkpoint import read_model_file
from unirobust.pipeline import train

pytestmark = pytest.mark.distributed
WORKER = Path(__file__).with_name("_dist_worker.py")


def _torchrun(recipe: dict, out: Path, nproc: int = 2) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(WORKER.parent)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        str(WORKER),
        json.dumps(recipe),
        str(out),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def _close(a: Path, b: Path, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    wa = read_model_file(a / "checkpoints" / "model_last.safetensors")[0]
    wb = read_model_file(b / "checkpoints" / "model_last.safetensors")[0]
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=rtol, atol=atol, msg=key)


def test_data_parallel_matches_single_process(tmp_path: Path) -> None:
    recipe = tiny_recipe()
    recipe["train"]["epochs"] = 2
    single = train(validate_recipe(recipe), out=tmp_path / "single", progress=False)
    _torchrun(recipe, tmp_path / "ddp")
    _close(single, tmp_path / "ddp")
    assert (tmp_path / "ddp" / "checkpoints" / "train_state.rank1.pt").is_file()


def test_expert_parallel_generalist_matches_sequential(tmp_path: Path) -> None:
    """generalist.md oracle 9: two experts on two gloo processes, syncing every iteration."""
    recipe = generalist_tiny(epochs=2)
    recipe["train"]["merge"] = {"name": "ema_mix", "sync_start": 1, "sync_interval": 1}
    recipe["train"]["distributed"] = {"mode": "experts"}
    single = train(validate_recipe(recipe), out=tmp_path / "seq", progress=False)
    _torchrun(recipe, tmp_path / "par")
    _close(single, tmp_path / "par")
