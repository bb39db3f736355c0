"""The head at a stage start: logreg linear probe (lpft.md §1.2, oracle 8.1), random init,
rescaling (oracle 8.11), backbone untouched (oracle 8.10), and its place in a staged run."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ADAMW_NO_DECAY, BN_LENET, expert_spec, tiny_recipe
from sklearn.linear_model import LogisticRegressionCV

from unirobust.analysis.features import extract_features
from unirobust.config import validate_recipe
from unirobust.engine.checkpoint import read_model_file
from unirobust.finetune import head as head_module
from unirobust.finetune.head import HeadInit, apply_head_init, fit_logreg
from unirobust.models import build_model
from unirobust.pipeline import train

LEGACY = (
    {"use_legacy_attributes": True, "l1_ratios": (0.0,)}
    if "use_legacy_attributes" in inspect.signature(LogisticRegressionCV).parameters
    else {}
)


def _blobs(classes: int, n: int = 120, d: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.normal(size=(n, d)) + 1.5 * np.eye(classes, d)[y]
    return x, y


@pytest.mark.parametrize("classes", [2, 3])
def test_logreg_head_reproduces_sklearn(classes: int) -> None:
    x, y = _blobs(classes)
    spec = HeadInit(mode="logreg", cs=4, folds=3)
    weight, bias = fit_logreg(x, y, classes, spec, seed=0)
    ref = LogisticRegressionCV(
        Cs=np.logspace(-4, 4, 4), cv=3, scoring="accuracy", max_iter=5000, random_state=0, **LEGACY
    ).fit(x, y)
    logits = x @ weight.T + bias
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    np.testing.assert_allclose(probs, ref.predict_proba(x), rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(logits.argmax(1), ref.predict(x))
    if classes == 2:  # the symmetric split: z1 - z0 is the decision function
        np.testing.assert_allclose(logits[:, 1] - logits[:, 0], ref.decision_function(x), 1e-8)
        np.testing.assert_allclose(weight[0], -weight[1])
    else:
        np.testing.assert_allclose(logits, ref.decision_function(x), rtol=1e-8, atol=1e-10)


def test_paper_binary_convention_halves_a_fit_on_twice_the_grid() -> None:
    x, y = _blobs(2)
    paper = fit_logreg(
        x, y, 2, HeadInit(mode="logreg", cs=4, folds=3, binary_convention="paper"), 0
    )
    ref = LogisticRegressionCV(
        Cs=2 * np.logspace(-4, 4, 4),
        cv=3,
        scoring="accuracy",
        max_iter=5000,
        random_state=0,
        **LEGACY,
    ).fit(x, y)
    np.testing.assert_allclose(paper[0][1], ref.coef_[0] / 4, rtol=1e-8)  # halved, then split
    norm = np.linalg.norm(paper[0])
    assert norm == pytest.approx(np.linalg.norm(ref.coef_[0]) / (2 * np.sqrt(2)), rel=1e-8)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(
        "lenet", num_classes=3, input_shape=(1, 8, 8), channels=[4, 8], hidden=16, batchnorm=True
    )


def test_head_init_leaves_the_backbone_bit_identical_and_scales_the_head() -> None:
    model = _model()
    x, y = torch.rand(60, 1, 8, 8), torch.arange(60) % 3
    before = {k: v.clone() for k, v in model.state_dict().items()}
    apply_head_init(model, HeadInit(mode="logreg", cs=3, folds=3), x, y, seed=0)
    lp = {k: v.clone() for k, v in model.state_dict().items()}
    for name, tensor in lp.items():
        assert torch.equal(tensor, before[name]) != name.startswith("linear."), name
    phi = extract_features(model, x).numpy()
    weight, _ = fit_logreg(phi, y.numpy(), 3, HeadInit(mode="logreg", cs=3, folds=3), 0)
    torch.testing.assert_close(lp["linear.weight"], torch.from_numpy(weight).float())
    logits = model.eval()(x)
    apply_head_init(model, HeadInit(scale=5.0), x, y, seed=0)  # keep, then scale by 5
    assert torch.linalg.norm(model.linear.weight).item() == pytest.approx(
        5 * torch.linalg.norm(lp["linear.weight"]).item(), rel=1e-6
    )
    assert torch.equal(model(x).argmax(1), logits.argmax(1))  # scale_bias keeps the argmax
    apply_head_init(model, HeadInit(mode="random"), x, y, seed=3)
    assert model.linear.weight.std().item() == pytest.approx(0.02, rel=0.5)
    assert torch.count_nonzero(model.linear.bias) == 0


def test_staged_lp_then_ft_fits_the_head_once(tmp_path: Path, monkeypatch) -> None:
    calls = {"n": 0}
    original = head_module.fit_logreg

    def counted(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(head_module, "fit_logreg", counted)
    expert = expert_spec("e", lr=1e-3, optimizer=ADAMW_NO_DECAY)
    data = tiny_recipe(model={"name": "mlp", "options": {"hidden_sizes": [16]}})
    data["train"] = {
        "stages": [
            {
                "name": "lp",
                "epochs": 1,
                "experts": [expert],
                "trainable": "head",
                "head_init": {"mode": "logreg", "cs": 3, "folds": 3},
            },
            {"name": "ft", "epochs": 1, "experts": [expert], "batch_size": 32},
        ]
    }
    config = validate_recipe(data)
    run = train(config, out=tmp_path / "r", progress=False, stop_after_epoch=1)
    train(config, resume=run, progress=False)
    assert calls["n"] == 1  # not refitted when the stage is rebuilt to resume
    straight = train(config, out=tmp_path / "s", progress=False)
    assert calls["n"] == 2
    a = read_model_file(run / "checkpoints" / "model_last.safetensors")[0]
    b = read_model_file(straight / "checkpoints" / "model_last.safetensors")[0]
    assert all(torch.equal(a[k], b[k]) for k in a)
    records = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in records if r["event"] == "epoch"] == ["lp", "ft"]


def test_per_epoch_diagnostics_follow_the_stages_and_survive_resume(tmp_path: Path) -> None:
    """E1/E3 in miniature: LP keeps phi (Diff(F) = 0) and grows the head; FT moves phi."""
    expert = expert_spec("e", lr=1e-2, optimizer=ADAMW_NO_DECAY)
    data = tiny_recipe(model=BN_LENET)
    data["train"] = {
        "stages": [
            {
                "name": "lp",
                "epochs": 1,
                "experts": [expert],
                "trainable": "head",
                "bn_mode": "frozen",
                "head_init": {"mode": "logreg", "cs": 3, "folds": 3},
            },
            {"name": "ft", "epochs": 2, "experts": [expert]},
        ]
    }
    names = ["head_norm", "feature_change", "feature_cosine", "fdr", "calibration"]
    data["validation"] = {"threats": [], "select": "clean", "diagnostics": names}
    config = validate_recipe(data)
    straight = train(config, out=tmp_path / "s", progress=False)
    resumed = train(config, out=tmp_path / "r", progress=False, stop_after_epoch=2)
    train(config, resume=resumed, progress=False)

    def diagnostics(run: Path) -> list[dict]:
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return [r["val"]["diagnostics"] for r in map(json.loads, lines) if r["event"] == "epoch"]

    lp, ft1, ft2 = diagnostics(straight)
    assert set(lp) == set(names)
    assert lp["feature_change"]["diff"] == 0.0  # LP leaves phi bit for bit
    assert ft1["feature_change"]["diff"] > 0.0 and ft2["feature_change"]["diff"] > 0.0
    init_norm = 0.02 * (16 * 10) ** 0.5  # a random N(0, 0.02^2) head, for scale
    assert lp["head_norm"]["weight_norm"] > 5 * init_norm
    assert 0.0 <= lp["calibration"]["ece"] <= 1.0 and lp["fdr"]["n"] == 100
    assert diagnostics(resumed) == [lp, ft1, ft2]  # phi0 of the FT stage came from the state


def test_report_draws_the_diagnostics(tmp_path: Path) -> None:
    from unirobust.report import write_report

    data = tiny_recipe(validation={"threats": [], "diagnostics": ["head_norm", "calibration"]})
    data["train"]["epochs"] = 2
    run = train(validate_recipe(data), out=tmp_path / "r", progress=False)
    report = write_report(run).read_text()
    assert (run / "report" / "diagnostics.png").is_file() and "diagnostics.png" in report
