"""Sharded evaluation under torchrun (issue 11): 2 CPU processes give the single-process table.

A point's result must not depend on which rank attacks it, so the merged per-sample table is
compared with the single-process one for exact equality (every array of the .npz), for a 3-norm
union evaluation of a tiny model, in union-only and full mode; and a run whose rank 1 dies
mid-evaluation resumes every rank from its own state without re-attacking a finished chunk.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from _launch import TESTS, child_env, torchrun
from conftest import tiny_recipe

from unirobust.config import validate_recipe
from unirobust.data import load_dataset
from unirobust.engine.checkpoint import load_model
from unirobust.evaluation import evaluate
from unirobust.pipeline import evaluate_run, train

pytestmark = pytest.mark.distributed

THREATS = "linf:0.03,l2:0.3,l1:1.5"
WORKER = TESTS / "_eval_worker.py"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A digits MLP trained well enough (about 90 % clean) that attacks break some points and
    miss others, so every threat has several chunks with both outcomes."""
    recipe = tiny_recipe()
    recipe["train"]["epochs"] = 12
    root = tmp_path_factory.mktemp("dist-eval")
    return train(validate_recipe(recipe), out=root / "run", progress=False)


def _copy(run: Path, where: Path) -> Path:
    return Path(shutil.copytree(run, where))


def _assert_same_table(a: Path, b: Path) -> None:
    with np.load(a, allow_pickle=False) as left, np.load(b, allow_pickle=False) as right:
        assert sorted(left.files) == sorted(right.files)
        for key in left.files:
            assert np.array_equal(left[key], right[key]), key


def _eval_args(run: Path, suite: str, union_only: bool) -> list[str]:
    mode = "--union-only" if union_only else "--no-union-only"
    options = {"--threats": THREATS, "--suite": suite, "--n-points": "24", "--batch-size": "6"}
    return [str(run), *(v for pair in options.items() for v in pair), "--checkpoint", "last", mode]


def _single(run: Path, suite: str, union_only: bool) -> Path:
    overrides = {
        "threats": THREATS.split(","),
        "suite": suite,
        "n": 24,
        "batch_size": 6,
        "checkpoints": ["last"],
        "union_only": union_only,
    }
    summary = evaluate_run(run, overrides=overrides)[0]
    assert summary["processes"] == 1
    return run / "eval" / f"last-{suite}{'-union_only' if union_only else ''}.npz"


def test_nproc_2_union_only_aa_apgd_equals_single_process(run_dir: Path, tmp_path: Path) -> None:
    """``unirobust eval --nproc 2`` (which calls torchrun) on the paper protocol suite."""
    single = _single(_copy(run_dir, tmp_path / "one"), "aa-apgd", union_only=True)
    two = _copy(run_dir, tmp_path / "two")
    cmd = [sys.executable, "-m", "unirobust", "eval", *_eval_args(two, "aa-apgd", True)]
    done = subprocess.run(
        [*cmd, "--nproc", "2"], env=child_env(), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "rank 1/2" in done.stderr  # both ranks attacked
    merged = two / "eval" / "last-aa-apgd-union_only.npz"
    _assert_same_table(single, merged)
    summary = json.loads(merged.with_suffix(".json").read_text())
    assert summary["processes"] == 2 and summary["n_points"] == 24
    assert not list((two / "eval").glob(".*state*"))  # every rank dropped its state


def test_torchrun_module_full_mode_equals_single_process(run_dir: Path, tmp_path: Path) -> None:
    """``torchrun --nproc-per-node 2 -m unirobust eval RUN ...`` in full mode."""
    single = _single(_copy(run_dir, tmp_path / "one"), "fast", union_only=False)
    two = _copy(run_dir, tmp_path / "two")
    torchrun(["-m", "unirobust", "eval", *_eval_args(two, "fast", False)])
    _assert_same_table(single, two / "eval" / "last-fast.npz")


def _worker(model: Path, out: Path, kill_after: int) -> subprocess.CompletedProcess[str]:
    spec = {
        "threats": THREATS,
        "suite": "fast",
        "n": 30,
        "batch_size": 5,
        "union_only": True,
        "kill_after": kill_after,
    }
    return torchrun([str(WORKER), str(model), str(out), json.dumps(spec)], check=kill_after == 0)


def test_killed_rank_resumes_every_shard_without_redoing_chunks(
    run_dir: Path, tmp_path: Path
) -> None:
    model_file = run_dir / "checkpoints" / "model_last.safetensors"
    first = _worker(model_file, tmp_path, kill_after=2)
    assert first.returncode != 0  # rank 1 died, torchrun stopped rank 0
    states = sorted(p.name for p in tmp_path.glob("eval.rank*-of-2.state"))
    assert states == ["eval.rank0-of-2.state", "eval.rank1-of-2.state"]
    assert not (tmp_path / "table.npz").exists()
    before = {r: (tmp_path / f"finished.rank{r}.log").read_text().splitlines() for r in (0, 1)}
    assert len(before[1]) == 2

    _worker(model_file, tmp_path, kill_after=0)  # the same command again
    for rank in (0, 1):
        lines = (tmp_path / f"finished.rank{rank}.log").read_text().splitlines()
        assert lines[: len(before[rank])] == before[rank]
        repeated = [c for c, k in Counter(lines).items() if k > 1]
        assert not repeated, f"rank {rank} attacked finished chunks again: {repeated}"

    model, meta = load_model(model_file)
    test = load_dataset(meta["dataset"], n_test=30, val_size=0).test
    reference = evaluate(
        model,
        test.x,
        test.y,
        test.indices,
        threats=THREATS,
        suite="fast",
        batch_size=5,
        union_only=True,
        sanity_checks=False,
    )
    reference.save(tmp_path / "ref", stem="table")
    _assert_same_table(tmp_path / "ref" / "table.npz", tmp_path / "table.npz")
    # every chunk of every threat was finished by exactly one rank
    chunks = Counter(
        line
        for r in (0, 1)
        for line in (tmp_path / f"finished.rank{r}.log").read_text().split("\n")
    )
    chunks.pop("", None)
    assert all(count == 1 for count in chunks.values())
    assert {line.split()[0] for line in chunks} == set(reference.threats)
