"""evaluate_run: test-split evaluation of a run's checkpoints, summaries, calibration, logging."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny_recipe

from unirobust.config import EvalConfig, validate_recipe
from unirobust.engine.rundir import RunDir
from unirobust.pipeline import evaluate_run, train


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    recipe = tiny_recipe()
    recipe["train"]["epochs"] = 2
    out = tmp_path_factory.mktemp("pipe") / "run"
    return train(validate_recipe(recipe), out=out, progress=False)


def test_evaluate_run_writes_summaries_and_logs(run: Path) -> None:
    spec = EvalConfig(suite="fast", threats=["linf:0.05", "l2:0.5"], n=60, batch_size=30)
    summaries = evaluate_run(run, spec)
    assert [s["checkpoint"] for s in summaries] == ["best", "last"]
    for summary in summaries:
        assert summary["n_points"] == 60 and summary["points"] == "first 60 test points"
        assert summary["union_acc"] <= min(summary["robust_acc"].values()) <= summary["clean_acc"]
        cal = summary["calibration"]
        assert 0 <= cal["ece"] <= 1 and cal["temperature"] > 0
        on_disk = json.loads((run / "eval" / f"{summary['checkpoint']}-fast.json").read_text())
        assert on_disk["union_acc"] == summary["union_acc"]
    events = [r for r in RunDir(run).records() if r["event"] == "final_eval"]
    assert {e["checkpoint"] for e in events} == {"best", "last"}
    assert not list((run / "eval").glob(".*.state"))  # finished evaluations leave no state


def test_zero_radius_gives_clean_accuracy(run: Path) -> None:
    spec = EvalConfig(suite="fast", threats=["linf:0"], n=60, checkpoints=["last"])
    (summary,) = evaluate_run(run, spec)
    assert summary["robust_acc"]["linf:0"] == summary["clean_acc"] == summary["union_acc"]


def test_model_file_can_be_evaluated_directly(run: Path) -> None:
    path = run / "checkpoints" / "model_last.safetensors"
    spec = EvalConfig(suite="fast", threats=["l1:1"], n=30, calibration=False)
    (summary,) = evaluate_run(path, spec)
    assert summary["checkpoint"] == "file" and summary["dataset"] == "digits"
    assert (run / "checkpoints" / "model_last-eval" / "file-fast.json").is_file()
