"""evaluate_run: test-split evaluation of a run's checkpoints, summaries, calibration, logging."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import tiny_recipe
from typer.testing import CliRunner

from unirobust.analysis.calibration import calibration_metrics
from unirobust.cli import app
from unirobust.config import EvalConfig, validate_recipe
from unirobust.engine.rundir import RunDir
from unirobust.errors import ConfigError
from unirobust.evaluation import EvalResults
from unirobust.pipeline import eval_spec, evaluate_run, train


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


def test_no_threats_gives_clean_and_calibration_from_the_table(run: Path) -> None:
    (summary,) = evaluate_run(run, EvalConfig(n=40, checkpoints=["last"]))
    assert summary["groups"] == ["clean", "calibration"]
    assert summary["threats"] == [] and summary["robust_acc"] == {}
    assert summary["union_acc"] is None
    table = EvalResults.load(run / "eval" / "last-clean.npz")
    assert table.logits is not None and table.logits.dtype == np.float32
    assert table.logits.shape == (40, 10)
    assert table.val_logits is not None and table.val_logits.shape == (100, 10)
    cal = summary["calibration"]
    assert cal["acc"] == pytest.approx(summary["clean_acc"])
    assert calibration_metrics(table.logits, table.labels)["ece"] == pytest.approx(cal["ece"])
    assert sum(cal["reliability"]["bin_count"]) == 40
    assert table.summary()["calibration"] == cal  # recomputed from the stored table alone


def test_robust_evaluation_asked_without_threats_is_an_error(run: Path) -> None:
    with pytest.raises(ConfigError, match="no threats"):
        evaluate_run(run, overrides={"suite": "fast", "n": 20})
    with pytest.raises(ConfigError, match="union_only"):
        evaluate_run(run, overrides={"union_only": True, "n": 20})
    with pytest.raises(ConfigError, match="'suite'"):
        evaluate_run(run, overrides={"suite": "pgd"})


def test_eval_spec_replaces_only_named_fields() -> None:
    base = EvalConfig(suite="fast", threats=["linf:0.05"], n=30, corruptions=["fog"])
    spec = eval_spec(base, {"n": 20, "corruptions": ["all"]})
    assert (spec.suite, [str(t) for t in spec.threats], spec.n) == ("fast", ["linf:0.05"], 20)
    assert len(spec.corruptions) == 15 and spec.calibration is True
    assert eval_spec(base, None) is base


def test_cli_eval_keeps_the_recipe_settings_it_does_not_name(run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    config = yaml.safe_load((copy / "config.yaml").read_text())
    config["eval"] = {"suite": "fast", "threats": ["linf:0.05"], "n": 50, "calibration": False}
    (copy / "config.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["eval", str(copy), "--n", "20", "--checkpoint", "last"])
    assert result.exit_code == 0, result.output
    summary = json.loads((copy / "eval" / "last-fast.json").read_text())
    assert summary["suite"] == "fast" and summary["threats"] == ["linf:0.05"]
    assert summary["n_points"] == 20 and "calibration" not in summary
    assert "linf 0.05 %" in result.output
