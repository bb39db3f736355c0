"""Attacks: state hygiene, budgets, eps = 0, APGD-train semantics (multinorm.md §11 oracles 3-4,
generalist.md §6 oracle 10)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unirobust.attacks import (
    apgd,
    apgd_checkpoints,
    apgd_train,
    attack_mode,
    margin_loss,
    msd,
    pgd,
    preserve_rng,
)
from unirobust.errors import ConfigError
from unirobust.threats import L1Ball, L2Ball, LinfBall

THREATS = [LinfBall(8 / 255), L2Ball(0.5), L1Ball(3.0)]
ZERO = [LinfBall(0.0), L2Ball(0.0), L1Ball(0.0)]


class Counting(nn.Module):
    """Wraps a model and counts forward calls."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(x)


def make_model(seed: int = 0, classes: int = 10) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(48, 32),
        nn.BatchNorm1d(32),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.Linear(32, classes),
    )


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    x = torch.rand(24, 3, 4, 4, generator=g)
    x[0] = 0.0
    x[1] = 1.0
    y = torch.randint(0, 10, (24,), generator=g)
    return x, y


def snapshot(model: nn.Module) -> dict:
    return {
        "modes": [m.training for m in model.modules()],
        "req": [p.requires_grad for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "torch_rng": torch.get_rng_state(),
        "np_rng": np.random.get_state()[1].copy(),
        "py_rng": random.getstate(),
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["modes"] == before["modes"]
    assert after["req"] == before["req"]
    for a, b in zip(after["grads"], before["grads"], strict=True):
        assert (a is None and b is None) or torch.equal(a, b)
    for k, v in before["state"].items():  # BN running stats untouched: attacks run in eval mode
        assert torch.equal(after["state"][k], v), k
    assert torch.equal(after["torch_rng"], before["torch_rng"])
    assert np.array_equal(after["np_rng"], before["np_rng"])
    assert after["py_rng"] == before["py_rng"]


def ce(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with attack_mode(model), torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="none")


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with attack_mode(model), torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


ATTACKS = {
    "pgd": lambda m, x, y, t: pgd(m, x, y, t, steps=3, generator=torch.Generator().manual_seed(1)),
    "pgd_best_restarts": lambda m, x, y, t: pgd(
        m, x, y, t, steps=2, restarts=2, return_best=True, loss="margin"
    ),
    "apgd_train": lambda m, x, y, t: apgd_train(m, x, y, t, n_iter=5).x_best,
    "apgd_ce": lambda m, x, y, t: apgd(m, x, y, t, n_iter=6),
    "apgd_dlr": lambda m, x, y, t: apgd(m, x, y, t, n_iter=6, loss="dlr", restarts=2),
    "apgd_t": lambda m, x, y, t: apgd(m, x, y, t, n_iter=6, targeted=True, n_target_classes=3),
}


# ---------------------------------------------------------------- context managers
def test_attack_mode_restores_mixed_flags_even_on_exception() -> None:
    model = make_model()
    model.train()
    model[2].eval()  # a BN layer deliberately left in eval mode
    model[1].weight.requires_grad_(False)
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"), attack_mode(model):
        assert not any(m.training for m in model.modules())
        assert not any(p.requires_grad for p in model.parameters())
        raise RuntimeError("boom")
    assert_unchanged(model, before)


def test_preserve_rng_restores_all_global_states() -> None:
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    with preserve_rng():
        torch.manual_seed(0)
        np.random.seed(0)
        random.seed(0)
        torch.rand(10)
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0])
    assert np.array_equal(expected[1], got[1]) and expected[2] == got[2]


# ---------------------------------------------------------------- hygiene of every attack
@pytest.mark.parametrize("name", list(ATTACKS))
@pytest.mark.parametrize("threat", THREATS, ids=str)
def test_attack_hygiene_and_feasibility(name, threat, batch) -> None:
    x, y = batch
    model = make_model()
    model.train()
    model[-1].weight.requires_grad_(False)  # mixed requires_grad must survive
    np.random.seed(1)
    random.seed(1)
    before = snapshot(model)
    x_adv = ATTACKS[name](model, x, y, threat)
    assert_unchanged(model, before)
    assert not x_adv.requires_grad and x_adv.grad_fn is None
    assert x_adv.shape == x.shape
    assert bool(threat.is_feasible(x, x_adv).all())
    assert torch.all(x_adv >= 0) and torch.all(x_adv <= 1)


def test_msd_hygiene_feasibility_and_determinism(batch) -> None:
    x, y = batch
    model = make_model()
    model.train()
    before = snapshot(model)
    a = msd(model, x, y, THREATS, n_iter=8, generator=torch.Generator().manual_seed(3))
    assert_unchanged(model, before)
    b = msd(model, x, y, THREATS, n_iter=8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    inside = [t.is_feasible(x, a) for t in THREATS]
    assert bool((inside[0] | inside[1] | inside[2]).all())
    assert torch.all(ce(model, a, y) >= ce(model, x, y))
    assert torch.mean(ce(model, a, y)) > torch.mean(ce(model, x, y)) + 1e-3


def test_msd_validates_threats(batch) -> None:
    x, y = batch
    model = make_model()
    with pytest.raises(ConfigError, match="missing l1"):
        msd(model, x, y, [LinfBall(0.1), L2Ball(0.5)])
    with pytest.raises(ConfigError, match="two linf"):
        msd(model, x, y, [LinfBall(0.1), LinfBall(0.2), L2Ball(0.5), L1Ball(1)])
    with pytest.raises(ConfigError, match="step_sizes"):
        msd(model, x, y, THREATS, step_sizes={"l0": 1.0})


# ---------------------------------------------------------------- oracle 3: eps = 0
@pytest.mark.parametrize("name", list(ATTACKS))
@pytest.mark.parametrize("threat", ZERO, ids=lambda t: t.norm)
def test_eps_zero_returns_x(name, threat, batch) -> None:
    x, y = batch
    model = make_model()
    x_adv = ATTACKS[name](model, x, y, threat)
    assert torch.equal(x_adv, x)
    assert accuracy(model, x_adv, y) == accuracy(model, x, y)


def test_eps_zero_msd_and_apgd_train_robust_equals_clean(batch) -> None:
    x, y = batch
    model = make_model()
    assert torch.equal(msd(model, x, y, ZERO, n_iter=3), x)
    for threat in ZERO:
        res = apgd_train(model, x, y, threat, n_iter=4)
        assert torch.equal(res.x_best, x) and torch.equal(res.x_last_adv, x)
        with torch.no_grad(), attack_mode(model):
            clean_ok = model(x).argmax(1) == y
        assert torch.equal(res.robust, clean_ok)


# ---------------------------------------------------------------- PGD (generalist oracle 10)
@pytest.mark.parametrize("k", [1, 5, 10])
def test_pgd_does_exactly_k_gradient_steps(k: int, batch) -> None:
    x, y = batch
    model = Counting(make_model())
    x_adv = pgd(model, x, y, LinfBall(8 / 255), steps=k, generator=torch.Generator().manual_seed(0))
    assert model.calls == k
    assert float((x_adv - x).abs().max()) <= 8 / 255 + 1e-7
    assert torch.all(x_adv >= 0) and torch.all(x_adv <= 1)
    model.calls = 0
    pgd(model, x, y, LinfBall(8 / 255), steps=k, return_best=True)
    assert model.calls == k + 1  # one extra evaluation of the last iterate


def test_pgd_defaults_and_generalist_training_attack(batch) -> None:
    x, y = batch
    model = make_model()
    eps = 8 / 255
    # classic uniform random start: one step of 2.5*eps/1 from U[-eps, eps] saturates the ball
    x1 = pgd(model, x, y, LinfBall(eps), steps=1, generator=torch.Generator().manual_seed(0))
    inner = (x > eps) & (x < 1 - eps)
    assert torch.allclose((x1 - x).abs()[inner], torch.full_like(x[inner], eps), atol=1e-6)
    # deterministic given the generator, varies with the seed
    a = pgd(model, x, y, LinfBall(eps), generator=torch.Generator().manual_seed(4))
    b = pgd(model, x, y, LinfBall(eps), generator=torch.Generator().manual_seed(4))
    c = pgd(model, x, y, LinfBall(eps), generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # l1: no random start by default, so the run is deterministic without a generator
    d1 = pgd(model, x, y, L1Ball(2.0), generator=torch.Generator().manual_seed(1))
    d2 = pgd(model, x, y, L1Ball(2.0), generator=torch.Generator().manual_seed(2))
    assert torch.equal(d1, d2)


@pytest.mark.parametrize("threat", THREATS, ids=str)
def test_pgd_increases_the_loss(threat, batch) -> None:
    x, y = batch
    model = make_model()
    clean = ce(model, x, y)
    x_adv = pgd(model, x, y, threat, steps=10, random_start=False)
    assert (ce(model, x_adv, y) > clean).float().mean() >= 0.9
    assert ce(model, x_adv, y).mean() > clean.mean() + 0.01
    best = pgd(model, x, y, threat, steps=10, restarts=2, return_best=True)
    assert torch.all(ce(model, best, y) > clean)


def test_pgd_margin_and_callable_loss_and_start(batch) -> None:
    x, y = batch
    model = make_model()
    x_adv = pgd(model, x, y, LinfBall(0.1), steps=10, loss="margin")
    with torch.no_grad(), attack_mode(model):
        assert margin_loss(model(x_adv), y).mean() > margin_loss(model(x), y).mean()
    seen = []

    def neg_ce(logits, yy):
        seen.append(logits.shape)
        return -F.cross_entropy(logits, yy, reduction="none")

    x_min = pgd(model, x, y, LinfBall(0.1), steps=4, loss=neg_ce, random_start=False)
    assert len(seen) == 4
    assert ce(model, x_min, y).mean() < ce(model, x, y).mean()
    # an explicit start outside the ball is projected; with zero steps it is returned as is
    start = x + 0.5
    out = pgd(model, x, y, LinfBall(0.1), steps=0, start=start)
    torch.testing.assert_close(out, LinfBall(0.1).project(x, start))


def test_pgd_config_errors(batch) -> None:
    x, y = batch
    model = make_model()
    with pytest.raises(ConfigError, match="steps"):
        pgd(model, x, y, LinfBall(0.1), steps=-1)
    with pytest.raises(ConfigError, match="restarts"):
        pgd(model, x, y, LinfBall(0.1), restarts=0)
    with pytest.raises(ConfigError, match="'hinge'"):
        pgd(model, x, y, LinfBall(0.1), loss="hinge")
    with pytest.raises(ConfigError, match="step_size"):
        pgd(model, x, y, LinfBall(0.1), step_size=float("nan"))
    with pytest.raises(ConfigError, match="ThreatModel"):
        pgd(model, x, y, "linf:0.1")  # type: ignore[arg-type]


# ---------------------------------------------------------------- APGD-train (oracle 4)
def test_apgd_checkpoint_iterations() -> None:
    assert apgd_checkpoints(10) == list(range(1, 10))
    assert apgd_checkpoints(100) == [21, 40, 56, 69, 79, 86, 92, 98]
    assert apgd_checkpoints(1) == [0]


@pytest.mark.parametrize("threat", THREATS, ids=str)
@pytest.mark.parametrize("is_train", [True, False])
def test_apgd_train_best_loss_is_recomputed_ce(threat, is_train, batch) -> None:
    x, y = batch
    model = make_model()
    model.train()
    res = apgd_train(model, x, y, threat, n_iter=10, is_train=is_train)
    assert model.training
    torch.testing.assert_close(res.loss_best, ce(model, res.x_best, y), rtol=1e-5, atol=1e-6)
    assert torch.all(res.loss_best >= ce(model, x, y) - 1e-7)
    assert (res.loss_best > ce(model, x, y)).float().mean() >= 0.9
    with torch.no_grad(), attack_mode(model):
        wrong_last = model(res.x_last_adv).argmax(1) != y
        clean_ok = model(x).argmax(1) == y
    # robust => never misclassified => x_last_adv stays x; not robust => x_last_adv fools
    assert torch.equal(res.x_last_adv[res.robust], x[res.robust])
    assert torch.all(wrong_last[~res.robust])
    assert torch.all(~res.robust | clean_ok)


def test_apgd_train_exactly_n_forwards(batch) -> None:
    x, y = batch
    model = Counting(make_model())
    apgd_train(model, x, y, LinfBall(8 / 255), n_iter=7)
    assert model.calls == 8  # clean point + one per iteration


@pytest.mark.parametrize("threat", [LinfBall(8 / 255), L2Ball(0.5)], ids=str)
def test_apgd_train_matches_autoattack_single_run_without_random_start(threat, batch) -> None:
    """AutoAttack's APGD run from x_init = x follows the same iteration as E-AT's apgd_train for
    linf/l2 (momentum, checkpoints incl. the unfilled-slot parity detail)."""
    from pyautoattack.autopgd_base import APGDAttack

    from unirobust.threats import to_pyautoattack_norm

    x, y = batch
    model = make_model().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    n_iter = 20
    ref = APGDAttack(
        model, n_iter=n_iter, norm=to_pyautoattack_norm(threat), eps=threat.eps, loss="ce",
        device="cpu",
    )  # fmt: skip
    ref.init_hyperparam(x)
    with preserve_rng():
        ref_best, ref_acc, ref_loss, ref_adv = ref.attack_single_run(x, y, x_init=x.clone())
    res = apgd_train(model, x, y, threat, n_iter=n_iter)
    torch.testing.assert_close(res.x_best, ref_best, atol=1e-5, rtol=0)
    torch.testing.assert_close(res.loss_best, ref_loss, atol=1e-5, rtol=1e-5)
    assert torch.equal(res.robust, ref_acc)
    torch.testing.assert_close(res.x_last_adv, ref_adv, atol=1e-5, rtol=0)


def test_apgd_train_l1_sparsity_differs_between_train_and_eval(batch) -> None:
    x, y = batch
    model = make_model()
    train = apgd_train(model, x, y, L1Ball(3.0), n_iter=1, is_train=True)
    evals = apgd_train(model, x, y, L1Ball(3.0), n_iter=1, is_train=False)
    d = x[0].numel()
    nnz_train = (train.x_best != x).flatten(1).sum(1)
    nnz_eval = (evals.x_best != x).flatten(1).sum(1)
    moved = (train.x_best != x).flatten(1).any(1) & (evals.x_best != x).flatten(1).any(1)
    assert moved.any()
    # one step from x keeps ceil(rho d) coordinates (fewer where the box blocks the move)
    assert torch.all(nnz_train[moved] <= -(-5 * d // 100))
    assert torch.all(nnz_eval[moved] <= -(-20 * d // 100))
    assert nnz_eval[moved].float().mean() > nnz_train[moved].float().mean()
    step_mass = (evals.x_best - x).flatten(1).abs().sum(1)
    assert torch.all(step_mass <= 3.0 + 1e-5)


# ---------------------------------------------------------------- evaluation APGD
def test_apgd_eval_is_at_least_as_strong_as_clean_and_keeps_wrong_points(batch) -> None:
    x, y = batch
    model = make_model()
    with torch.no_grad(), attack_mode(model):
        clean_ok = model(x).argmax(1) == y
    for threat in THREATS:
        for kwargs in ({}, {"loss": "dlr"}, {"targeted": True, "n_target_classes": 3}):
            x_adv = apgd(model, x, y, threat, n_iter=10, **kwargs)
            with torch.no_grad(), attack_mode(model):
                adv_ok = model(x_adv).argmax(1) == y
            assert torch.all(~adv_ok | clean_ok)  # never "repairs" a point
            assert adv_ok.sum() <= clean_ok.sum()
            assert torch.equal(x_adv[~clean_ok], x[~clean_ok])  # clean-wrong points untouched


def test_apgd_eval_close_to_pyautoattack_on_linear_model() -> None:
    from pyautoattack.autopgd_base import APGDAttack

    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(20, 5)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(5, 20, generator=g))
    x = torch.rand(200, 20, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    for threat in (LinfBall(0.05), L2Ball(0.25)):
        ours = apgd(model, x, y, threat, n_iter=20)
        with preserve_rng():
            ref = APGDAttack(
                model, n_iter=20, norm="Linf" if threat.norm == "linf" else "L2", eps=threat.eps,
                seed=0, device="cpu",
            ).perturb(x, y)  # fmt: skip
        acc_ours, acc_ref = accuracy(model, ours, y), accuracy(model, ref, y)
        assert 0.05 < acc_ref < 0.95
        assert abs(acc_ours - acc_ref) <= 0.02, (threat, acc_ours, acc_ref)


def test_apgd_eval_config_errors(batch) -> None:
    x, y = batch
    model = make_model()
    with pytest.raises(ConfigError, match="'mse'"):
        apgd(model, x, y, LinfBall(0.1), loss="mse")
    with pytest.raises(ConfigError, match="use_largereps"):
        apgd(model, x, y, LinfBall(0.1), use_largereps=True)
    with pytest.raises(ConfigError, match="n_target_classes=12"):
        apgd(model, x, y, LinfBall(0.1), targeted=True, n_target_classes=12)
    small = make_model(classes=3)
    with pytest.raises(ConfigError, match="at least 4 classes"):
        apgd(small, x, y % 3, LinfBall(0.1), targeted=True, n_target_classes=2)
    with pytest.raises(ConfigError, match="n_iter"):
        apgd_train(model, x, y, LinfBall(0.1), n_iter=0)


def test_apgd_eval_l1_largereps_runs_all_iterations(batch) -> None:
    x, y = batch
    model = Counting(make_model())
    with torch.no_grad(), attack_mode(model):
        ok = int((model(x).argmax(1) == y).sum())
    model.calls = 0
    x_adv = apgd(model, x, y, L1Ball(1.0), n_iter=10)
    # 1 clean forward, then 3 stages (3/3/4 iterations) each with one forward at its start
    assert ok == 0 or model.calls == 1 + 3 + 10
    assert bool(L1Ball(1.0).is_feasible(x, x_adv).all())
