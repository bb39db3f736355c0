"""The pyautoattack adapter: API pin, protocol settings, RNG/mode hygiene, ε = 0, feasibility."""

from __future__ import annotations

import inspect
import random
import warnings

import numpy as np
import pyautoattack
import pytest
import torch
from pyautoattack import AutoAttack

from unirobust.errors import ConfigError
from unirobust.evaluation.autoattack import (
    configure_autoattack,
    run_autoattack,
    run_autoattack_detailed,
)
from unirobust.evaluation.checks import EvaluationWarning
from unirobust.evaluation.suites import SUITES
from unirobust.threats import parse_threat


def _model(bn: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = [torch.nn.Flatten(), torch.nn.Linear(64, 16)]
    if bn:
        layers.append(torch.nn.BatchNorm1d(16))
    layers += [torch.nn.ReLU(), torch.nn.Linear(16, 10)]
    return torch.nn.Sequential(*layers)


def _data(model: torch.nn.Module, n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, 8, 8, generator=g)
    with torch.no_grad():
        was = model.training
        model.eval()
        y = model(x).argmax(1)
        model.train(was)
    y[:4] = (y[:4] + 1) % 10  # four clean-wrong points
    return x, y


# --------------------------------------------------------------------------- API pin
def test_pyautoattack_api_is_the_pinned_one():
    """Fails loudly if pyautoattack changes the API the adapter relies on."""
    assert pyautoattack.__version__ == "0.2.0"
    params = inspect.signature(AutoAttack.__init__).parameters
    for name in ("attacks", "device", "eps", "norm", "seed", "version"):
        assert name in params, f"AutoAttack() lost the {name!r} keyword"
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
    run = inspect.signature(AutoAttack.run_standard_evaluation).parameters
    assert list(run)[:3] == ["self", "x_orig", "y_orig"]
    assert "batch_size" in run and "state_path" in run
    aa = AutoAttack(_model(), attacks=["apgd-ce"], version="custom", eps=0.1, norm="L1", seed=0)
    assert aa.attacks_to_run == ["apgd-ce"]
    for obj, attrs in (
        (aa.apgd, ("n_restarts", "use_largereps", "n_iter", "eps_orig", "seed")),
        (aa.apgd_targeted, ("n_target_classes", "n_restarts", "use_largereps", "n_iter")),
        (aa.fab, ("n_restarts", "n_target_classes")),
        (aa.square, ("n_queries", "n_restarts", "p_init")),
    ):
        for attr in attrs:
            assert hasattr(obj, attr), f"{type(obj).__name__} lost attribute {attr!r}"
    with pytest.raises(ValueError):
        AutoAttack(_model(), attacks=["apgd-ce"], version="standard")


@pytest.mark.parametrize("norm,spec", [("Linf", "linf:0.03"), ("L2", "l2:0.5"), ("L1", "l1:5")])
def test_configuration_matches_pyautoattack_standard(norm, spec):
    """Our version='custom' set-up reproduces what pyautoattack's 'standard' version sets."""
    model = _model()
    standard = AutoAttack(model, version="standard", eps=0.1, norm=norm, seed=0)
    ours = configure_autoattack(
        model,
        parse_threat(spec),
        list(SUITES["aa-standard"].attacks),
        seed=0,
        device="cpu",
        n_classes=10,
    )
    assert list(SUITES["aa-standard"].attacks) == standard.attacks_to_run
    assert set(SUITES["aa-apgd"].attacks) <= set(standard.attacks_to_run)
    for part, attrs in (
        ("apgd", ("n_restarts", "use_largereps", "n_iter", "eot_iter", "thr_decr")),
        ("apgd_targeted", ("n_restarts", "n_target_classes", "use_largereps", "n_iter")),
        ("fab", ("n_restarts", "n_target_classes", "n_iter")),
        ("square", ("n_queries", "n_restarts", "p_init")),
    ):
        for attr in attrs:
            assert getattr(getattr(ours, part), attr) == getattr(getattr(standard, part), attr), (
                part,
                attr,
            )
    assert ours.version == "custom" and ours.seed == 0
    expected_targets = 5 if norm == "L1" else 9
    assert ours.apgd_targeted.n_target_classes == expected_targets


def test_target_classes_clamped_to_classes():
    with pytest.warns(EvaluationWarning, match="fewer targets than the protocol"):
        aa = configure_autoattack(
            _model(), parse_threat("linf:0.1"), ["apgd-t"], seed=0, device="cpu", n_classes=5
        )
    assert aa.apgd_targeted.n_target_classes == 4 and aa.fab.n_target_classes == 4


# --------------------------------------------------------------------------- hygiene
def test_rng_and_model_state_preserved():
    model = _model(bn=True)
    model.train()
    model[1].weight.requires_grad_(False)  # a frozen layer must stay frozen, others trainable
    x, y = _data(model, n=12)
    bn_mean = model[2].running_mean.clone()
    torch.manual_seed(123)
    np.random.seed(7)
    random.seed(9)
    torch_state = torch.get_rng_state()
    np_state = np.random.get_state()
    py_state = random.getstate()
    robust = run_autoattack(model, x, y, "linf:0.05", attacks=["apgd-ce"], seed=0, batch_size=12)
    assert torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1])
    assert after[2:] == np_state[2:]
    assert random.getstate() == py_state
    assert model.training and all(m.training for m in model.modules())
    assert not model[1].weight.requires_grad and model[4].weight.requires_grad
    assert torch.equal(model[2].running_mean, bn_mean)  # attacked in eval mode
    assert robust.dtype == torch.bool and robust.shape == (12,)
    assert all(p.grad is None for p in model.parameters())


def test_eps_zero_is_clean_accuracy_without_calling_pyautoattack(monkeypatch):
    model = _model()
    x, y = _data(model)

    def boom(*args, **kwargs):
        raise AssertionError("pyautoattack must not run at eps=0")

    monkeypatch.setattr(AutoAttack, "__init__", boom)
    for spec in ("linf:0", "l2:0", "l1:0"):
        for suite in ("aa-apgd", "aa-standard"):
            out = run_autoattack_detailed(model, x, y, spec, attacks=SUITES[suite].attacks)
            assert torch.equal(out.robust, out.clean_correct)
            assert int(out.robust.sum()) == 20


def test_real_run_small():
    model = _model()
    x, y = _data(model)
    kw = dict(attacks=["apgd-ce", "apgd-t"], seed=0, batch_size=32, n_target_classes=2)
    out = run_autoattack_detailed(model, x, y, "linf:0.05", **kw)
    assert not out.robust[:4].any()  # clean-wrong never robust
    assert not (out.robust & ~out.clean_correct).any()
    again = run_autoattack(model, x, y, "linf:0.05", **kw)
    assert torch.equal(out.robust, again)  # seeded -> reproducible
    # each broken point is attributed to exactly one attack of the cascade
    broken = out.clean_correct & ~out.robust
    total = sum(v.long() for v in out.fooled_by.values())
    assert torch.equal(total.bool(), broken) and int(total.max()) <= 1
    # a huge linf ball reaches any image: nothing survives
    big = run_autoattack(model, x, y, "linf:1", **kw)
    assert not big.any()


def test_infeasible_returns_are_projected_and_rechecked(monkeypatch):
    model = _model()
    x, y = _data(model, n=8)
    threat = parse_threat("l1:0.5")

    def fake_run(self, x_orig, y_orig, /, *, batch_size=250, state_path=None):
        # an infeasible "adversarial" point: far outside the l1 ball, but inside the box
        return torch.ones_like(x_orig), y_orig

    monkeypatch.setattr(AutoAttack, "run_standard_evaluation", fake_run)
    with pytest.warns(EvaluationWarning, match="projected"):
        out = run_autoattack_detailed(model, x, y, threat, attacks=["apgd-ce"])
    assert out.n_projected == int(out.clean_correct.sum())
    # expected: prediction at the exact projection of the returned point
    correct = out.clean_correct
    x_proj = threat.project(x[correct], torch.ones_like(x[correct]))
    with torch.no_grad():
        still_right = model(x_proj).argmax(1) == y[correct]
    assert torch.equal(out.robust[correct], still_right)


def test_unknown_attack_and_bad_batch():
    model = _model()
    x, y = _data(model, n=4)
    with pytest.raises(ConfigError, match="apgd-ce"):
        run_autoattack(model, x, y, "linf:0.1", attacks=["pgd"])
    with pytest.raises(ConfigError):
        run_autoattack(model, x, y, "linf:0.1", attacks=["apgd-ce"], batch_size=0)


def test_few_classes_skip_targeted_with_warning():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    x = torch.rand(6, 1, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        robust = run_autoattack(
            model, x, y, "linf:0.01", attacks=["apgd-ce", "apgd-t"], batch_size=8
        )
    assert any(issubclass(w.category, EvaluationWarning) for w in caught)
    assert robust.shape == (6,)
