"""Foreign weight layouts (multinorm.md §6 fine-tuning starts): robustness lib, RobustBench, timm.

Fake checkpoints are generated with the real layouts: the robustness library's
``{"model": {"module.model.*", "module.attacker.model.*", "module.normalizer.new_mean", ...},
"optimizer": ..., "epoch": ...}`` (RobustBench ``Engstrom2019Robustness``), RobustBench's
``normalize_model`` (``normalize.mean``/``std`` beside ``model.*``) and timm's plain names.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_recipe
from safetensors.torch import load_file
from torch import nn
from typer.testing import CliRunner

from unirobust.cli import app
from unirobust.config import validate_recipe
from unirobust.engine.checkpoint import (
    import_weights,
    initial_weights,
    load_model,
    load_weights_into,
)
from unirobust.engine.foreign import fit_foreign_state, normaliser_stats
from unirobust.errors import CheckpointError
from unirobust.models import IMAGENET_MEAN, IMAGENET_STD, XCiT, build_model
from unirobust.pipeline import train

SHAPE = (3, 16, 16)
BN_LENET = {"batchnorm": True}
MEAN3 = torch.tensor(IMAGENET_MEAN)
STD3 = torch.tensor(IMAGENET_STD)


def _normed_lenet() -> nn.Module:
    return build_model(
        "lenet",
        num_classes=10,
        input_shape=SHAPE,
        normalize=True,
        mean=list(IMAGENET_MEAN),
        std=list(IMAGENET_STD),
        **BN_LENET,
    )


def _body(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.startswith("normalize.")}


def robustness_checkpoint(
    body: dict[str, torch.Tensor], mean: torch.Tensor = MEAN3, std: torch.Tensor = STD3
) -> dict:
    """The robustness library's saved AttackerModel (DataParallel), as RobustBench ships it:
    the attacker holds the same network (shared tensors), both wrappers a normaliser."""
    state = {}
    for key, tensor in body.items():
        state[f"module.model.{key}"] = tensor
        state[f"module.attacker.model.{key}"] = tensor
    for owner in ("module.normalizer", "module.attacker.normalize"):
        state[f"{owner}.new_mean"] = mean.view(-1, 1, 1).clone()
        state[f"{owner}.new_std"] = std.view(-1, 1, 1).clone()
    optimizer = {"state": {}, "param_groups": [{"lr": 0.1, "momentum": 0.9, "params": [0, 1]}]}
    return {"model": state, "optimizer": optimizer, "schedule": None, "epoch": 90}


def _equal_body(model: nn.Module, body: dict[str, torch.Tensor]) -> bool:
    own = model.state_dict()
    return all(torch.equal(own[k], v) for k, v in body.items())


def test_robustness_library_layout_imports_and_evaluates_identically(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source_model = _normed_lenet().eval()
    path = tmp_path / "imagenet_linf_4.pt"
    torch.save(robustness_checkpoint(_body(source_model)), path)
    out = import_weights(
        path,
        tmp_path / "engstrom.safetensors",
        model="lenet",
        num_classes=10,
        input_shape=SHAPE,
        dataset="imagefolder",
        options={
            "normalize": True,
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            **BN_LENET,
        },
    )
    loaded, meta = load_model(out)
    x = torch.rand(4, *SHAPE)
    with torch.no_grad():
        assert torch.equal(loaded(x), source_model(x))
    assert meta["imported_from"] == str(path)
    stored = load_file(out)
    assert not any(k.startswith(("model.", "attacker.", "normalizer.")) for k in stored)


def test_resnet50_loads_the_engstrom_layout(tmp_path: Path) -> None:
    """The real architecture and names, without writing 100 MB: every tensor of the fake file is
    a distinct constant stored as a one-element expanded view."""
    model = build_model("resnet50", num_classes=1000, input_shape=(3, 32, 32))
    body = {
        k: torch.tensor(float(i), dtype=v.dtype).expand(v.shape)
        for i, (k, v) in enumerate(_body(model).items())
    }
    path = tmp_path / "Engstrom2019Robustness.pt"
    torch.save(robustness_checkpoint(body), path)
    assert path.stat().st_size < 2_000_000
    tensors, source = initial_weights(str(path), model=model)
    load_weights_into(model, tensors, source)  # strict: every tensor of the model is set
    assert _equal_body(model, body)
    assert torch.allclose(model.normalize.mean.flatten(), MEAN3)


def test_robustbench_normalize_model_layout_and_timm_plain_layout(tmp_path: Path) -> None:
    torch.manual_seed(0)
    xcit = XCiT(num_classes=5, input_shape=(3, 32, 32), embed_dim=16, depth=1, num_heads=2)
    body = _body(xcit)
    wrapped = {f"model.{k}": v for k, v in body.items()}
    wrapped.update(
        {"normalize.mean": MEAN3.view(1, 3, 1, 1), "normalize.std": STD3.view(1, 3, 1, 1)}
    )
    target = XCiT(
        num_classes=5,
        input_shape=(3, 32, 32),
        embed_dim=16,
        depth=1,
        num_heads=2,
        normalize=build_model("resnet50", num_classes=2, input_shape=(3, 32, 32)).normalize,
    )
    for layout, state in (("robustbench", wrapped), ("timm", dict(body))):
        fitted = fit_foreign_state(target, state, layout)
        load_weights_into(target, fitted, layout)
        assert _equal_body(target, body), layout
        assert torch.allclose(target.normalize.mean.flatten(), MEAN3), layout


def test_normalisation_mismatch_is_refused() -> None:
    model = _normed_lenet()
    other_mean = torch.tensor([0.5, 0.5, 0.5])
    state = robustness_checkpoint(_body(model), mean=other_mean)["model"]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    with pytest.raises(CheckpointError, match=r"normalises its inputs with mean \[0.5, 0.5, 0.5\]"):
        fit_foreign_state(model, state, "x.pt")
    plain = build_model("lenet", num_classes=10, input_shape=SHAPE, **BN_LENET)
    with pytest.raises(CheckpointError, match="no Normalize layer"):
        fit_foreign_state(plain, state, "x.pt")
    identity = robustness_checkpoint(_body(plain), torch.zeros(3), torch.ones(3))["model"]
    identity = {k.removeprefix("module."): v for k, v in identity.items()}
    assert set(fit_foreign_state(plain, identity, "x.pt")) == set(plain.state_dict())
    assert set(normaliser_stats(identity)) == {"normalizer", "attacker.normalize"}
    # BatchNorm statistics are not normalisers
    assert (
        normaliser_stats({"bn1.running_mean": torch.zeros(3), "bn1.running_var": torch.ones(3)})
        == {}
    )


def test_prefix_choice_ambiguity_and_errors() -> None:
    torch.manual_seed(0)
    model = build_model("lenet", num_classes=10, input_shape=SHAPE, **BN_LENET)
    body = _body(model)
    other = {k: v + 1 if v.is_floating_point() else v for k, v in body.items()}
    two = {f"model.{k}": v for k, v in body.items()} | {f"ema.{k}": v for k, v in other.items()}
    with pytest.raises(CheckpointError, match=r"several models that fit \(ema\., model\.\)"):
        fit_foreign_state(model, two, "two.pt")
    picked = fit_foreign_state(model, two, "two.pt", prefix="ema.")
    assert all(torch.equal(picked[k], other[k]) for k in body)
    with pytest.raises(CheckpointError, match=r"no tensor under the prefix 'net\.'"):
        fit_foreign_state(model, two, "two.pt", prefix="net.")
    same = {f"a.{k}": v for k, v in body.items()} | {f"b.{k}": v for k, v in body.items()}
    assert set(fit_foreign_state(model, same, "same.pt")) == set(body)  # identical copies: fine
    # nothing fits: returned unchanged, so the loader names the first misfit
    wrong = {"model.conv9.weight": torch.zeros(1)}
    assert fit_foreign_state(model, wrong, "w.pt") == wrong
    with pytest.raises(CheckpointError, match="conv9"):
        load_weights_into(model, wrong, "w.pt")


def test_cli_import_for_a_dataset_without_fixed_shape(tmp_path: Path) -> None:
    model = build_model("lenet", num_classes=3, input_shape=(3, 32, 32))
    body = {k: torch.tensor(1.0, dtype=v.dtype).expand(v.shape) for k, v in _body(model).items()}
    source = tmp_path / "robust.pt"
    torch.save(robustness_checkpoint(body, torch.zeros(3), torch.ones(3)), source)
    runner = CliRunner()
    base = ["import-weights", str(source), "--model", "lenet", "--dataset", "imagefolder"]
    out = tmp_path / "lenet.safetensors"
    result = runner.invoke(app, [*base, "--out", str(out)])
    assert result.exit_code != 0 and "no fixed shape" in result.output and not out.exists()
    result = runner.invoke(app, [*base, "--num-classes", "3", "--out", str(out)])
    assert result.exit_code != 0 and "--image-size" in result.output and not out.exists()
    shape = ["--num-classes", "3", "--image-size", "32"]
    result = runner.invoke(app, [*base, *shape, "--prefix", "model.", "--out", str(out)])
    assert result.exit_code == 0, result.output
    loaded, meta = load_model(out)
    assert meta["input_shape"] == [3, 32, 32] and meta["dataset"] == "imagefolder"
    assert meta["data_options"] == {"image_size": 32}  # eval preprocesses at the same size
    assert _equal_body(loaded, body)
    digits = ["import-weights", str(source), "--model", "mlp", "--dataset", "digits"]
    result = runner.invoke(app, [*digits, "--image-size", "8", "--out", str(tmp_path / "d.st")])
    assert result.exit_code != 0 and "fixed shape" in result.output


def test_training_starts_from_a_wrapped_foreign_file(tmp_path: Path) -> None:
    """init_from with the robustness layout (identity normaliser: the mlp has no Normalize),
    at lr 0: the run's weights are the file's."""
    recipe = tiny_recipe()
    recipe["train"]["epochs"] = 1
    recipe["train"]["experts"][0]["lr_schedule"] = {"kind": "constant", "value": 0.0}
    recipe["train"]["experts"][0]["optimizer"] = {"name": "sgd", "weight_decay": 0.0}
    torch.manual_seed(5)
    source = build_model("mlp", num_classes=10, input_shape=(1, 8, 8), hidden_sizes=[32])
    ckpt = robustness_checkpoint(_body(source), torch.zeros(1), torch.ones(1))  # grey channel
    path = tmp_path / "robust.pt"
    torch.save(ckpt, path)
    recipe["init_from"] = {"path": str(path), "prefix": "model."}
    run = train(validate_recipe(recipe), out=tmp_path / "run", progress=False)
    final = load_file(run / "checkpoints" / "model_last.safetensors")
    assert all(torch.equal(final[k], v) for k, v in _body(source).items())
