"""The NTK of the model a stage starts from (lpft.md §4 inside a run; finetune.ntk_stage)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import ADAMW_NO_DECAY, BN_LENET, expert_spec, tiny_recipe

from unirobust.analysis.ntk import ntk_decomposition
from unirobust.config import validate_recipe
from unirobust.errors import ConfigError
from unirobust.finetune.head import head_of
from unirobust.finetune.ntk_stage import NtkSpec, stage_ntk
from unirobust.models import build_model
from unirobust.pipeline import train

EXPERT = expert_spec("e", lr=1e-2, optimizer=ADAMW_NO_DECAY)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("lenet", num_classes=3, input_shape=(1, 8, 8), channels=[2, 3], hidden=6)


def _data(n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 8, 8, generator=gen), torch.randint(0, 3, (n,), generator=gen)


def test_theta_phi_is_the_trainable_backbone_and_matches_the_direct_decomposition() -> None:
    model = _model()
    for name, p in model.named_parameters():  # a stage training fc only (a regex stage)
        p.requires_grad_(name.startswith("fc."))
    x, y = _data()
    spec = NtkSpec(n_max=8, mode="jacobian", seed=3)
    report = stage_ntk(model, spec, (x, y), None, "ft")
    fc = model.fc.weight.numel() + model.fc.bias.numel()
    assert report["num_params"] == fc
    direct = ntk_decomposition(
        model,
        x,
        y,
        head=model.linear,
        mode="jacobian",
        n_max=8,
        seed=3,
        param_filter=r"^fc\.",
    ).report
    assert report["F"]["fn"] == pytest.approx(direct["F"]["fn"], rel=1e-6)
    assert report["ft_ratio"] == pytest.approx(direct["ft_ratio"], rel=1e-6)
    assert len(report["train_idx"]) == 8 and report["n_train"] == 8


def test_a_head_only_stage_is_refused() -> None:
    model = _model()
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("linear."))
    with pytest.raises(ConfigError, match="stage 'lp': ntk needs a stage that trains backbone"):
        stage_ntk(model, NtkSpec(n_max=4), _data(), None, "lp")


def test_lora_stage_takes_only_the_adapters() -> None:
    pytest.importorskip("peft")
    from unirobust.finetune.lora import LoraSpec, wrap_lora

    wrapped = wrap_lora(_model(), LoraSpec(r=2, target_modules=["fc"]))
    lora = sum(p.numel() for n, p in wrapped.named_parameters() if "lora_" in n)
    report = stage_ntk(wrapped, NtkSpec(n_max=6, mode="vjp_jvp"), _data(), None, "lora")
    assert report["num_params"] == lora
    assert head_of(wrapped).weight.shape == (3, 6)
    # B = 0 at init: every LoRA tangent of V0 phi is zero except through B, so F is tiny next to P
    assert report["ft_ratio"] < 0.5


def test_run_writes_the_start_of_ft_ntk_once_and_the_report_draws_it(tmp_path: Path) -> None:
    from unirobust.report import write_report

    data = tiny_recipe(model=BN_LENET)
    data["train"] = {
        "stages": [
            {
                "name": "ft",
                "epochs": 2,
                "experts": [EXPERT],
                "head_init": {"mode": "logreg", "cs": 3, "folds": 3},
                "ntk": {"n_max": 10, "mode": "jacobian"},
            }
        ]
    }
    config = validate_recipe(data)
    run = train(config, out=tmp_path / "r", progress=False, stop_after_epoch=1)
    path = run / "ntk" / "ft.json"
    first = json.loads(path.read_text())
    assert first["n_train"] == 10 and first["n_test"] == 10
    assert first["held_out_split"] == "validation"
    assert set(first["multiclass_acc"]) == {"P", "F", "NTK"} and "entry_acc" not in first
    assert 0.9 < first["ft_ratio"] <= 1.5  # an LP head: the backbone term dominates (E6)
    mtime = path.stat().st_mtime_ns
    train(config, resume=run, progress=False)
    assert path.stat().st_mtime_ns == mtime  # the resumed run did not recompute it
    report = write_report(run).read_text()
    assert (run / "report" / "ntk.png").is_file() and "FT ratio" in report
