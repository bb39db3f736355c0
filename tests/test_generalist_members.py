"""Issue 12's Generalist diagnostics and ablation options: per-member validation (each expert and
each expert's EMA, logged, never selecting, never moving training) and the natural expert's own
lr schedule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import generalist_tiny

from unirobust.config import validate_recipe
from unirobust.engine.checkpoint import read_model_file
from unirobust.pipeline import train


def _epochs(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == "epoch"]


def test_members_are_logged_and_leave_training_bit_identical(tmp_path: Path) -> None:
    plain = generalist_tiny()
    with_members = generalist_tiny()
    with_members["validation"]["members"] = {"every": 2, "n": 40}
    a = train(validate_recipe(plain), out=tmp_path / "a", progress=False)
    b = train(validate_recipe(with_members), out=tmp_path / "b", progress=False)
    for which in ("last", "best"):
        wa = read_model_file(a / "checkpoints" / f"model_{which}.safetensors")[0]
        wb = read_model_file(b / "checkpoints" / f"model_{which}.safetensors")[0]
        assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)
    epochs_a, epochs_b = _epochs(a), _epochs(b)
    assert [e["val"]["clean_acc"] for e in epochs_a] == [e["val"]["clean_acc"] for e in epochs_b]
    logged = [e["val"].get("members") for e in epochs_b]
    assert logged[0] is None and logged[2] is None  # every 2 epochs: epoch 2 only (of 3)
    members = logged[1]
    assert set(members) == {"robust", "natural", "ema_robust", "ema_natural"}
    for value in members.values():
        assert "40 validation points" in value["attack"]
        assert 0.0 <= value["robust_acc"] <= value["clean_acc"] + 1e-9 <= 1.0 + 1e-9
    # epoch 2 is a sync epoch (sync every iteration): after it both experts equal G
    assert members["robust"]["clean_acc"] == members["natural"]["clean_acc"]


def test_report_draws_the_member_curves(tmp_path: Path) -> None:
    from unirobust.report import write_report

    data = generalist_tiny()
    data["validation"]["members"] = {"n": 30}
    run = train(validate_recipe(data), out=tmp_path / "r", progress=False)
    report = write_report(run).read_text()
    assert (run / "report" / "members.png").is_file() and "each member" in report


@pytest.mark.parametrize("own", [None, [0.2, 0.2, 0.1, 0.0]])
def test_natural_lr_values_give_the_natural_expert_its_own_schedule(own) -> None:
    data = generalist_tiny()
    data["train"]["generalist"]["natural_lr_values"] = own
    stage = validate_recipe(data).train.resolved_stages()[0]
    robust, natural = stage.experts
    assert robust.lr_schedule["values"] == [0.05, 0.05, 0.01, 0.001]
    assert natural.lr_schedule["values"] == (own or robust.lr_schedule["values"])
