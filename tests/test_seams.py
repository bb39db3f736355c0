"""Engine seams (issue 7): plug-ins through the registries alone, objective state, stages,
frozen BatchNorm, init_from, pluggable selection and the on-device non-finite guard."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Literal

import pytest
import torch
import torch.nn.functional as F
from conftest import BN_LENET, expert_spec, tiny_recipe
from pydantic import Field

from unirobust.config import validate_recipe
from unirobust.engine.checkpoint import load_train_state, read_model_file
from unirobust.errors import CheckpointError, ConfigError, TrainingDivergedError
from unirobust.experts.merge import MERGE_RULES, MergeRule
from unirobust.experts.tensors import StateTensors, copy_list
from unirobust.objectives.base import OBJECTIVES, Metric, Objective, scored
from unirobust.pipeline import train
from unirobust.schema import Spec

# ------------------------------------------------------------------ a toy objective (< 40 lines)


class ScaledSpec(Spec):
    name: Literal["toy_scaled"] = "toy_scaled"
    scale: float = Field(1.0, gt=0)


class Scaled(Objective):
    """scale * CE; logs the rows it saw (a ``sum`` metric)."""

    name = "toy_scaled"

    def __init__(self, scale: float) -> None:
        self.scale = scale

    def __call__(self, model, x, y):
        logits = model(x)
        seen = Metric(torch.tensor(float(len(y))), "sum")
        return scored(self.scale * F.cross_entropy(logits, y), logits, y, seen=seen)


def build_scaled(spec: ScaledSpec, ctx) -> Scaled:
    return Scaled(spec.scale)


# ------------------------------------------------------------------ a toy merge rule (< 40 lines)


class AverageSpec(Spec):
    name: Literal["toy_average"] = "toy_average"


class Average(MergeRule):
    """After each epoch every expert takes the plain average of all experts' tensors."""

    every_epoch = True
    n_experts = (2, None)

    def after_epoch(self, experts, epoch: int) -> None:
        states = [StateTensors(e.model) for e in experts]
        with torch.no_grad():
            mean = [torch.stack(ts).mean(0) for ts in zip(*(s.floats for s in states), strict=True)]
            for state in states:
                copy_list(state.floats, mean)


def build_average(spec: AverageSpec, ctx) -> Average:
    return Average()


# ------------------------------------------------------------------ a stateful objective


class CountingSpec(Spec):
    name: Literal["toy_counting"] = "toy_counting"


class Counting(Objective):
    """CE scaled by a factor that depends on how many batches it has seen (state that matters)."""

    name = "toy_counting"

    def __init__(self) -> None:
        self.calls = torch.zeros((), dtype=torch.int64)

    def __call__(self, model, x, y):
        self.calls += 1
        logits = model(x)
        factor = 1.0 + 0.1 * (self.calls % 3).float()
        return scored(factor * F.cross_entropy(logits, y), logits, y)

    def state_dict(self):
        return {"calls": self.calls.clone()}

    def load_state_dict(self, state) -> None:
        self.calls = state["calls"].clone()


class NanAfter(Objective):
    """CE that turns NaN from the 6th call on (step 5), to test the guard."""

    name = "toy_nan_after"

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, model, x, y):
        self.calls += 1
        logits = model(x)
        loss = F.cross_entropy(logits, y) * (float("nan") if self.calls > 5 else 1.0)
        return scored(loss, logits, y)


class NanSpec(Spec):
    name: Literal["toy_nan_after"] = "toy_nan_after"


@pytest.fixture(autouse=True)
def toys():
    OBJECTIVES.register("toy_scaled", ScaledSpec)(build_scaled)
    OBJECTIVES.register("toy_counting", CountingSpec)(lambda spec, ctx: Counting())
    OBJECTIVES.register("toy_nan_after", NanSpec)(lambda spec, ctx: NanAfter())
    MERGE_RULES.register("toy_average", AverageSpec)(build_average)
    yield
    for name in ("toy_scaled", "toy_counting", "toy_nan_after"):
        OBJECTIVES.unregister(name)
    MERGE_RULES.unregister("toy_average")


def _records(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == "epoch"]


def _weights(run: Path, which: str = "last") -> dict[str, torch.Tensor]:
    return read_model_file(run / "checkpoints" / f"model_{which}.safetensors")[0]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


_expert = expert_spec
BN_MODEL = BN_LENET


# ------------------------------------------------------------------ registries


def test_toy_objective_through_the_registry(tmp_path: Path) -> None:
    data = tiny_recipe()
    data["train"]["experts"][0]["objective"] = {"name": "toy_scaled", "scale": 2.0}
    run = train(validate_recipe(data), out=tmp_path / "r", progress=False)
    records = _records(run)
    assert [r["train"]["natural"]["seen"] for r in records] == [256.0] * 3  # a "sum" metric
    stages = json.loads((run / "stages.json").read_text())["stages"]
    assert stages[0]["experts"][0]["objective"] == {"name": "toy_scaled", "scale": 2.0}
    data["train"]["experts"][0]["objective"] = {"name": "toy_scaled", "scal": 2.0}
    with pytest.raises(ConfigError, match="unknown key 'scal'; did you mean 'scale'"):
        validate_recipe(data)
    data["train"]["experts"][0]["objective"] = {"name": "toy_scaledd"}
    with pytest.raises(ConfigError, match=r"unknown objective 'toy_scaledd'.*toy_scaled"):
        validate_recipe(data)


def test_toy_merge_rule_through_the_registry(tmp_path: Path) -> None:
    data = tiny_recipe()
    data["train"]["experts"] = [
        _expert("a", {"name": "natural"}, 0.05),
        _expert("b", {"name": "natural"}, 0.01),
    ]
    data["train"]["merge"] = {"name": "toy_average"}
    run = train(validate_recipe(data), out=tmp_path / "r", progress=False)
    state = load_train_state(run / "checkpoints" / "train_state.pt")["experts"]
    assert _same(state["a"]["model"], state["b"]["model"])  # averaged after the last epoch
    assert _same(_weights(run), state["a"]["model"])
    data["train"]["experts"] = data["train"]["experts"][:1]
    with pytest.raises(ConfigError, match="'toy_average' takes 2 or more expert"):
        validate_recipe(data)


def test_cli_lists_registered_plugins(capsys: pytest.CaptureFixture[str]) -> None:
    from unirobust.cli import app

    with pytest.raises(SystemExit) as stop:
        app(["recipes", "--registered"])
    assert stop.value.code in (0, None)
    text = capsys.readouterr().out
    for name in ("pgd_at", "trades", "natural", "ema_mix", "none", "toy_scaled", "lenet"):
        assert name in text


# ------------------------------------------------------------------ objective state and resume


def test_objective_state_is_checkpointed_and_resume_is_bit_exact(tmp_path: Path) -> None:
    data = tiny_recipe()
    data["train"]["experts"][0]["objective"] = {"name": "toy_counting"}
    config = validate_recipe(data)
    full = train(config, out=tmp_path / "full", progress=False)
    part = train(config, out=tmp_path / "part", progress=False, stop_after_epoch=1)
    train(config, resume=part, progress=False)
    assert _same(_weights(full), _weights(part))
    state = load_train_state(part / "checkpoints" / "train_state.pt")
    assert int(state["experts"]["natural"]["objective"]["calls"]) == 3 * 4  # 4 batches/epoch


# ------------------------------------------------------------------ stages, frozen BN, init_from


def _two_stage(tmp_path: Path, init: Path | None = None) -> dict:
    data = tiny_recipe(model=BN_MODEL)
    del data["train"]["epochs"]
    expert = _expert("e", {"name": "natural"})
    data["train"] = {
        "stages": [
            {
                "name": "lp",
                "epochs": 1,
                "experts": [expert],
                "trainable": "head",
                "bn_mode": "frozen",
            },
            {"name": "ft", "epochs": 2, "experts": [expert]},
        ]
    }
    if init is not None:
        data["init_from"] = str(init)
    return data


def test_head_stage_with_frozen_bn_changes_only_the_head(tmp_path: Path) -> None:
    source = train(
        validate_recipe(tiny_recipe(model=BN_MODEL)), out=tmp_path / "src", progress=False
    )
    start = _weights(source, "best")
    config = validate_recipe(_two_stage(tmp_path, init=source))
    run = train(config, out=tmp_path / "r", progress=False, stop_after_epoch=1)
    after_lp = _weights(run)
    for name, tensor in after_lp.items():
        changed = not torch.equal(tensor, start[name])
        # the head trains; every backbone weight, BN affine and BN running statistic is untouched
        assert changed == name.startswith("linear."), name
    train(config, resume=run, progress=False)  # stage 2 starts from the resumed boundary
    after_ft = _weights(run)
    assert not torch.equal(after_ft["bn1.running_mean"], start["bn1.running_mean"])
    straight = train(config, out=tmp_path / "straight", progress=False)
    assert _same(after_ft, _weights(straight))
    records = _records(straight)
    assert [r["stage"] for r in records] == ["lp", "ft", "ft"]


def test_init_from_checks_every_tensor(tmp_path: Path) -> None:
    source = train(validate_recipe(tiny_recipe()), out=tmp_path / "src", progress=False)
    zero_lr = tiny_recipe()
    zero_lr["train"]["epochs"] = 1
    zero_lr["train"]["experts"][0]["lr_schedule"] = {"kind": "constant", "value": 0.0}
    zero_lr["train"]["experts"][0]["optimizer"] = {"name": "sgd", "weight_decay": 0.0}
    for init in (str(source), str(source / "checkpoints" / "model_last.safetensors")):
        zero_lr["init_from"] = {"path": init, "checkpoint": "last"}
        run = train(validate_recipe(zero_lr), out=tmp_path / f"z{len(init)}", progress=False)
        assert _same(_weights(run), _weights(source))
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in _weights(source).items()}}, foreign)
    zero_lr["init_from"] = str(foreign)
    run = train(validate_recipe(zero_lr), out=tmp_path / "foreign", progress=False)
    assert _same(_weights(run), _weights(source, "best"))
    bad = _weights(source)
    bad["linear.weight"] = torch.zeros(3, 3)
    torch.save(bad, tmp_path / "bad.pt")
    zero_lr["init_from"] = str(tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"tensor 'linear.weight' has shape"):
        train(validate_recipe(zero_lr), out=tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists()  # refused before a run directory was made
    payload = tmp_path / "evil.pt"
    payload.write_bytes(pickle.dumps(_Evil()))
    zero_lr["init_from"] = str(payload)
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        train(validate_recipe(zero_lr), out=tmp_path / "evil", progress=False)
    assert not (tmp_path / "pwned").exists()


class _Evil:
    def __reduce__(self):
        import os

        return (os.mkdir, ("pwned",))


# ------------------------------------------------------------------ selection and the guard


@pytest.mark.parametrize("select", ["clean", "union", "robust", "clean_plus_robust"])
def test_selection_scores(tmp_path: Path, select: str) -> None:
    data = tiny_recipe(validation={"threats": ["linf:0.1", "l2:0.5"], "steps": 2, "select": select})
    run = train(validate_recipe(data), out=tmp_path / "r", progress=False)
    for record in _records(run):
        val = record["val"]
        accs = list(val["per_threat"].values())
        expected = {
            "clean": val["clean_acc"],
            "union": val["union_acc"],
            "robust": sum(accs) / 2,
            "clean_plus_robust": val["clean_acc"] + sum(accs) / 2,
        }[select]
        assert val["select"] == pytest.approx(expected)
        assert val["union_acc"] <= min([*accs, val["clean_acc"]]) + 1e-12


@pytest.mark.parametrize("check", ["log_interval", "every_step"])
def test_non_finite_loss_names_step_and_keeps_last_checkpoint(tmp_path: Path, check: str) -> None:
    data = tiny_recipe()  # 4 batches an epoch: the loss turns NaN at step 5, in epoch 2
    data["train"]["experts"][0]["objective"] = {"name": "toy_nan_after"}
    data["train"].update(check_finite=check, log_every=3)
    with pytest.raises(TrainingDivergedError, match=r"at step 5 .objective toy_nan_after"):
        train(validate_recipe(data), out=tmp_path / "r", progress=False)
    state = load_train_state(tmp_path / "r" / "checkpoints" / "train_state.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["experts"]["natural"]["model"].values())


# ------------------------------------------------------------------ host syncs, E-AT, compat


def _count_host_reads(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    calls = {"n": 0}
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            calls["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return calls


def test_training_reads_the_device_once_per_log_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Host reads per epoch do not grow with the number of batches (issue 7 point 11)."""
    reads = {}
    for n_train in (256, 512):  # 4 or 8 batches of 64
        data = tiny_recipe(validation={"threats": []})
        data["data"]["n_train"] = n_train
        data["train"].update(epochs=1, log_every=1000)
        config = validate_recipe(data)
        with monkeypatch.context() as patch:
            calls = _count_host_reads(patch)
            train(config, out=tmp_path / str(n_train), progress=False)
        reads[n_train] = calls["n"]
    assert reads[256] == reads[512]


DIGIT_THREATS = ["linf:0.1", "l2:1.0", "l1:4"]


def test_eat_run_interrupted_mid_epoch_resumes_bit_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from unirobust.objectives.eat import Eat

    data = tiny_recipe()
    data["train"]["epochs"] = 2
    data["train"]["experts"][0]["objective"] = {"name": "eat", "threats": DIGIT_THREATS, "steps": 2}
    config = validate_recipe(data)
    full = train(config, out=tmp_path / "full", progress=False)
    original = Eat.__call__
    calls = {"n": 0}

    def dies_in_epoch_two(self, model, x, y):
        calls["n"] += 1
        if calls["n"] == 6:  # batch 2 of epoch 2 (4 batches an epoch)
            raise KeyboardInterrupt
        return original(self, model, x, y)

    monkeypatch.setattr(Eat, "__call__", dies_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train(config, out=tmp_path / "killed", progress=False)
    monkeypatch.setattr(Eat, "__call__", original)
    train(config, resume=tmp_path / "killed", progress=False)
    assert _same(_weights(full), _weights(tmp_path / "killed"))
    a = load_train_state(full / "checkpoints" / "train_state.pt")["experts"]["natural"]
    b = load_train_state(tmp_path / "killed" / "checkpoints" / "train_state.pt")["experts"]
    assert torch.equal(a["objective"]["seen"], b["natural"]["objective"]["seen"])
    assert int(a["objective"]["seen"].sum()) == 2 * 256  # accumulators never reset


@pytest.mark.parametrize("compat", ["default", "official"])
def test_compat_official_keeps_the_no_decay_group_at_lr_one(tmp_path: Path, compat: str) -> None:
    """multinorm.md §7 and oracle 11.11: every group's lr is logged."""
    data = tiny_recipe()
    data["train"]["compat"] = compat
    data["train"]["experts"][0]["optimizer"]["no_decay"] = ["bias"]
    run = train(validate_recipe(data), out=tmp_path / "r", progress=False)
    for record in _records(run):
        groups = record["group_lrs"]["natural"]
        assert groups == ([0.05, 1.0] if compat == "official" else [0.05, 0.05])


def test_a_class_subset_run_is_evaluated_on_the_same_classes(tmp_path: Path) -> None:
    from unirobust.engine.checkpoint import load_model
    from unirobust.pipeline import evaluate_run

    data = tiny_recipe()
    data["data"]["classes"] = [5, 6, 7, 8, 9]
    data["train"]["epochs"] = 1
    run = train(validate_recipe(data), out=tmp_path / "r", progress=False)
    model, meta = load_model(run, "last")
    assert model.linear.out_features == 5 and meta["classes"] == [5, 6, 7, 8, 9]
    (summary,) = evaluate_run(run, overrides={"n": 40, "checkpoints": ["last"]})
    assert summary["n_points"] == 40
