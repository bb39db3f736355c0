"""LoRA stages through peft (lpft.md §1.5, oracle 8.10): base weights bit for bit, adapters and the
head train, LP-LoRA starts peft's head copy from the LP head, exports are plain merged models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import ADAMW_NO_DECAY, BN_LENET, expert_spec, tiny_recipe

from unirobust.config import validate_recipe
from unirobust.engine.checkpoint import load_model, load_train_state, read_model_file
from unirobust.errors import ConfigError
from unirobust.finetune.head import head_of
from unirobust.finetune.lora import LoraSpec, wrap_lora
from unirobust.models import build_model
from unirobust.pipeline import train

pytest.importorskip("peft")

MODEL = BN_LENET
EXPERT = expert_spec("e", lr=1e-2, optimizer=ADAMW_NO_DECAY)


def _recipe(head_init: str = "keep", epochs: int = 2) -> dict:
    data = tiny_recipe(model=MODEL)
    data["train"] = {
        "stages": [
            {
                "name": "lora",
                "epochs": epochs,
                "experts": [EXPERT],
                "trainable": "lora",
                "lora": {"r": 2, "alpha": 4, "target_modules": ["fc", "conv2"]},
                "head_init": {"mode": head_init, "cs": 3, "folds": 3},
            },
        ]
    }
    return data


def test_wrap_counts_adapters_and_head_and_refuses_unknown_targets() -> None:
    model = build_model("lenet", num_classes=3, input_shape=(1, 8, 8), channels=[4, 8], hidden=16)
    wrapped = wrap_lora(model, LoraSpec(r=2, target_modules=["fc"]))
    trainable = {n for n, p in wrapped.named_parameters() if p.requires_grad}
    assert all("lora_" in n or "modules_to_save" in n for n in trainable)
    assert head_of(wrapped) is wrapped.get_base_model().linear.modules_to_save["default"]
    with pytest.raises(ConfigError, match=r"do not fit MLP .*its modules: .*linear"):
        wrap_lora(build_model("mlp", num_classes=3, input_shape=(1, 8, 8)), LoraSpec())


def test_lora_stage_keeps_base_weights_and_exports_a_plain_model(tmp_path: Path) -> None:
    source = train(validate_recipe(tiny_recipe(model=MODEL)), out=tmp_path / "src", progress=False)
    start = read_model_file(source / "checkpoints" / "model_last.safetensors")[0]
    data = _recipe()
    data["init_from"] = {"path": str(source), "checkpoint": "last"}
    run = train(validate_recipe(data), out=tmp_path / "r", progress=False)
    state = load_train_state(run / "checkpoints" / "train_state.pt")["experts"]["e"]["model"]
    frozen = [
        n
        for n in start
        if n.startswith(("conv1.", "bn1.", "bn2.")) and n.endswith(("weight", "bias"))
    ]
    assert len(frozen) >= 5
    for name in frozen:  # every base weight of the wrapped model (BN statistics do move)
        assert torch.equal(state[f"base_model.model.{name}"], start[name]), name
    for name in ("fc.weight", "conv2.weight"):
        base = name.replace(".weight", ".base_layer.weight")
        assert torch.equal(state[f"base_model.model.{base}"], start[name])
    exported, _ = load_model(run, "last")  # a plain lenet: LoRA merged in
    assert not torch.equal(exported.fc.weight, start["fc.weight"])  # B moved away from 0
    assert torch.equal(exported.conv1.weight, start["conv1.weight"])


def test_lp_lora_head_copy_starts_from_the_lp_head() -> None:
    from unirobust.finetune.head import HeadInit, apply_head_init

    model = build_model("lenet", num_classes=3, input_shape=(1, 8, 8), channels=[4, 8], hidden=16)
    x, y = torch.rand(60, 1, 8, 8), torch.arange(60) % 3
    apply_head_init(model, HeadInit(mode="logreg", cs=3, folds=3), x, y, seed=0)
    lp_head = model.linear.weight.detach().clone()
    wrapped = wrap_lora(model, LoraSpec(r=2, target_modules=["fc"]))
    assert torch.equal(head_of(wrapped).weight, lp_head)


def test_lp_lora_stage_resumes_bit_exactly(tmp_path: Path) -> None:
    config = validate_recipe(_recipe(head_init="logreg", epochs=2))
    straight = train(config, out=tmp_path / "s", progress=False, stop_after_epoch=1)
    train(config, resume=straight, progress=False)
    again = train(config, out=tmp_path / "a", progress=False)
    a = read_model_file(straight / "checkpoints" / "model_last.safetensors")[0]
    b = read_model_file(again / "checkpoints" / "model_last.safetensors")[0]
    assert all(torch.equal(a[k], b[k]) for k in a)
