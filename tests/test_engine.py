"""The Trainer: exact resume, run directories, selection on validation, NaN guard, switches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import generalist_tiny, tiny_recipe

from unirobust.config import validate_recipe
from unirobust.engine.checkpoint import load_train_state, read_model_file
from unirobust.errors import RunDirError, TrainingDivergedError
from unirobust.experts.expert import Expert
from unirobust.experts.schedules import build_schedule
from unirobust.objectives.base import Objective, scored
from unirobust.pipeline import train


def _weights(run: Path, which: str = "last") -> dict[str, torch.Tensor]:
    return read_model_file(run / "checkpoints" / f"model_{which}.safetensors")[0]


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("make", [tiny_recipe, generalist_tiny], ids=["natural", "generalist"])
def test_resume_is_bitwise_exact(tmp_path: Path, make) -> None:
    config = validate_recipe(make())
    straight = train(config, out=tmp_path / "straight", progress=False)
    killed = train(config, out=tmp_path / "killed", progress=False, stop_after_epoch=1)
    assert load_train_state(killed / "checkpoints" / "train_state.pt")["epoch"] == 1
    resumed = train(config, resume=killed, progress=False)
    _assert_same(_weights(straight), _weights(resumed))
    a = load_train_state(straight / "checkpoints" / "train_state.pt")
    b = load_train_state(resumed / "checkpoints" / "train_state.pt")
    for name in a["experts"]:
        _assert_same(a["experts"][name]["model"], b["experts"][name]["model"])
    _assert_same(
        {k: v for k, v in a["merge"].items() if isinstance(v, torch.Tensor)},
        {k: v for k, v in b["merge"].items() if isinstance(v, torch.Tensor)},
    )
    epochs = [
        r["epoch"]
        for r in map(json.loads, (resumed / "metrics.jsonl").read_text().splitlines())
        if r["event"] == "epoch"
    ]
    assert epochs == [1, 2, 3]


def test_run_directory_is_never_reused(tmp_path: Path) -> None:
    config = validate_recipe(tiny_recipe(train={**tiny_recipe()["train"], "epochs": 1}))
    run = train(config, out=tmp_path / "run", progress=False)
    before = (run / "checkpoints" / "model_last.safetensors").read_bytes()
    with pytest.raises(RunDirError, match="already exists"):
        train(config, out=run, progress=False)
    assert (run / "checkpoints" / "model_last.safetensors").read_bytes() == before
    assert (run / "config.yaml").is_file()


def test_metrics_and_best_selected_on_validation(tmp_path: Path) -> None:
    config = validate_recipe(generalist_tiny())
    run = train(config, out=tmp_path / "g", progress=False)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["event"] == "epoch"]
    assert len(epochs) == 3
    for r in epochs:
        assert set(r["train"]) == {"robust", "natural"}
        assert (
            0 <= r["val"]["clean_acc"] <= 1
            and 0 <= r["val"]["robust_acc"] <= r["val"]["clean_acc"] + 1e-9
        )
        assert r["mix_weights"]["robust"] + r["mix_weights"]["natural"] == pytest.approx(1.0)
    selects = [r["val"]["select"] for r in epochs]
    best = max(range(3), key=lambda i: (selects[i], -i))
    assert [r["is_best"] for r in epochs][best]
    meta = read_model_file(run / "checkpoints" / "model_best.safetensors")[1]
    assert meta["epoch"] == epochs[best]["epoch"]


def test_single_expert_ema_mix_without_sync_keeps_plain_trajectory(tmp_path: Path) -> None:
    """generalist.md oracle 8: N=1, sync off -> θ is bitwise the plain trainer's θ."""
    plain = tiny_recipe()
    mixed = tiny_recipe()
    mixed["train"]["merge"] = {
        "name": "ema_mix",
        "sync_mode": "off",
        "weights": {"natural": {"kind": "constant", "value": 1.0}},
    }
    a = train(validate_recipe(plain), out=tmp_path / "a", progress=False)
    b = train(validate_recipe(mixed), out=tmp_path / "b", progress=False)
    sa = load_train_state(a / "checkpoints" / "train_state.pt")["experts"]["natural"]["model"]
    sb = load_train_state(b / "checkpoints" / "train_state.pt")["experts"]["natural"]["model"]
    _assert_same(sa, sb)
    # the exported global model of the mixed run is the double EMA, not the raw expert
    g = _weights(b)
    assert any(not torch.equal(g[k], sb[k]) for k in sb)


class _NanObjective(Objective):
    name = "nan"

    def __call__(self, model, x, y):
        logits = model(x)
        return scored(logits.sum() * float("nan"), logits, y)


def test_nan_loss_stops_before_the_update() -> None:
    model = torch.nn.Linear(4, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    expert = Expert(
        name="e",
        model=model,
        objective=_NanObjective(),
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        lr_schedule=build_schedule({"kind": "constant", "value": 0.1}),
        check_finite=True,
    )
    with pytest.raises(TrainingDivergedError, match="loss became nan"):
        expert.train_step(torch.rand(2, 4), torch.tensor([0, 1]))
    _assert_same(before, model.state_dict())


@pytest.mark.parametrize(
    "switches",
    [{"channels_last": True}, {"bf16_autocast": True}, {"compile": "eager"}, {"grad_clip": 1.0}],
)
def test_speed_switches_train_on_cpu(tmp_path: Path, switches: dict) -> None:
    data = tiny_recipe(model={"name": "lenet"})
    data["data"] = {"name": "digits", "n_train": 128, "val_size": 50, "batch_size": 64}
    data["train"].update({"epochs": 1, **switches})
    run = train(validate_recipe(data), out=tmp_path / "s", progress=False)
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert record["train"]["natural"]["loss"] > 0
    assert all(torch.isfinite(v).all() for v in _weights(run).values())
