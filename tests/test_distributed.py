"""torchrun on CPU (gloo): two processes give the single-process result (float tolerance).

Launched both as one standalone job and as a multi-node-style job that meets at a c10d rendezvous
endpoint (docs/distributed.md), which is how a cluster launch finds its peers.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import torch
import yaml
from _launch import free_port, torchrun
from conftest import generalist_tiny, tiny_recipe

from unirobust.config import validate_recipe
from unirobust.engine.checkpoint import read_model_file
from unirobust.pipeline import train

pytestmark = pytest.mark.distributed
WORKER = Path(__file__).with_name("_dist_worker.py")


def _torchrun(recipe: dict, out: Path, nproc: int = 2, rendezvous: list[str] | None = None) -> None:
    torchrun([str(WORKER), json.dumps(recipe), str(out)], nproc, rendezvous)


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


def test_data_parallel_over_a_c10d_rendezvous_matches_single_process(tmp_path: Path) -> None:
    """The multi-node launch of docs/distributed.md, through the command line: one node's worth
    of ranks meets at a c10d rendezvous at host:port, as every node of a cluster job would; rank
    0 then evaluates the run alone while the others have left."""
    recipe = tiny_recipe()
    recipe["train"]["epochs"] = 2
    single = train(validate_recipe(recipe), out=tmp_path / "single", progress=False)
    recipe["eval"] = {"enabled": True, "n": 50, "checkpoints": ["last"]}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    rendezvous = [
        "--nnodes=1",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=localhost:{free_port()}",
        f"--rdzv-id={uuid.uuid4().hex[:8]}",
    ]
    out = tmp_path / "c10d"
    torchrun(["-m", "unirobust", "train", str(path), "--out", str(out), "--quiet"], 2, rendezvous)
    _close(single, out)
    assert (out / "checkpoints" / "train_state.rank1.pt").is_file()
    summary = json.loads((out / "eval" / "last-clean.json").read_text())
    assert summary["n_points"] == 50 and summary["processes"] == 1
