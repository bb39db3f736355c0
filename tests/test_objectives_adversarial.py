"""PGD-AT and TRADES objectives: modes, gradient flow, loss formulas, learning on a toy problem."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unirobust.attacks import attack_mode, pgd
from unirobust.errors import ConfigError
from unirobust.objectives.base import Objective
from unirobust.objectives.pgd_at import PgdAT
from unirobust.objectives.trades import Trades
from unirobust.threats import L1Ball, L2Ball, LinfBall


def make_model(seed: int = 0, d: int = 12, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, classes))


def toy_data(n: int = 96, d: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three well separated classes in [0,1]^d (class c brightens block c)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = 0.15 + 0.1 * torch.rand(n, d, generator=g)
    block = d // 3
    for c in range(3):
        x[y == c, c * block : (c + 1) * block] += 0.6
    return x.clamp(0, 1), y


def bn_steps(model: nn.Module) -> int:
    return int(model[1].num_batches_tracked)


OBJECTIVES = {
    "pgd_at_linf": lambda: PgdAT(
        LinfBall(0.1), steps=3, generator=torch.Generator().manual_seed(0)
    ),
    "pgd_at_l2": lambda: PgdAT(L2Ball(0.3), steps=3, generator=torch.Generator().manual_seed(0)),
    "pgd_at_apgd_l1": lambda: PgdAT(L1Ball(1.0), attack="apgd", steps=4),
    "trades_linf": lambda: Trades(
        LinfBall(0.1), steps=3, generator=torch.Generator().manual_seed(0)
    ),
    "trades_l1": lambda: Trades(L1Ball(1.0), steps=3, generator=torch.Generator().manual_seed(0)),
}
TRAIN_FORWARDS = {"pgd_at": 1, "trades": 2}


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_objective_contract_modes_bn_and_gradients(name: str) -> None:
    x, y = toy_data()
    model = make_model()
    model.train()
    obj = OBJECTIVES[name]()
    assert isinstance(obj, Objective)
    state = torch.get_rng_state()
    py, npy = random.getstate(), np.random.get_state()[1].copy()
    out = obj(model, x, y)
    assert torch.equal(torch.get_rng_state(), state)  # randomness only from the generator
    assert random.getstate() == py and np.array_equal(np.random.get_state()[1], npy)
    assert model.training and all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())  # the objective never calls backward
    # attacks ran in eval mode: only the update's train-mode forwards touched BN statistics
    assert bn_steps(model) == TRAIN_FORWARDS[obj.name]
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert out.count == x.shape[0] and 0 <= int(out.correct) <= out.count
    assert all(m.reduction == "mean" and not m.value.requires_grad for m in out.metrics.values())
    out.loss.backward()
    for p in model.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_pgd_at_loss_is_train_mode_ce_on_the_attack_points() -> None:
    x, y = toy_data()
    model = make_model()
    model.train()
    threat = LinfBall(0.1)
    # the attack comes first: the objective's train-mode forward moves the BN running stats
    x_adv = pgd(model, x, y, threat, steps=3, generator=torch.Generator().manual_seed(5))
    out = PgdAT(threat, steps=3, generator=torch.Generator().manual_seed(5))(model, x, y)
    logits = model(x_adv)
    assert int(out.correct) == int((logits.argmax(1) == y).sum())
    torch.testing.assert_close(out.loss, F.cross_entropy(logits, y))


def test_pgd_at_apgd_logs_attack_accuracy() -> None:
    x, y = toy_data()
    model = make_model()
    model.train()
    out = PgdAT(LinfBall(0.05), attack="apgd", steps=5)(model, x, y)
    assert 0.0 <= float(out.metrics["adv_acc"].value) <= 1.0


def test_trades_formula_beta_zero_and_eps_zero() -> None:
    x, y = toy_data()
    model = make_model()
    model.train()
    out = Trades(LinfBall(0.1), beta=0.0, generator=torch.Generator().manual_seed(1))(model, x, y)
    clean = model(x)
    assert int(out.correct) == int((clean.argmax(1) == y).sum())  # scored on clean logits
    torch.testing.assert_close(out.loss, F.cross_entropy(clean, y))
    assert float(out.metrics["loss_robust"].value) >= 0.0
    # eps = 0: x' = x, so the KL term vanishes and the loss is the clean CE
    out0 = Trades(LinfBall(0.0), generator=torch.Generator().manual_seed(1))(model, x, y)
    assert float(out0.metrics["loss_robust"].value) == pytest.approx(0.0, abs=1e-7)
    torch.testing.assert_close(out0.loss, F.cross_entropy(model(x), y))


def test_trades_kl_term_matches_definition_and_is_deterministic() -> None:
    x, y = toy_data()
    model = make_model()
    model.train()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    a = Trades(L2Ball(0.5), beta=6.0, generator=torch.Generator().manual_seed(3))(model, x, y)
    model.load_state_dict(initial)  # the first call moved the BN running stats
    b = Trades(L2Ball(0.5), beta=6.0, generator=torch.Generator().manual_seed(3))(model, x, y)
    torch.testing.assert_close(a.loss, b.loss)
    expected = float(a.metrics["loss_natural"].value) + 6.0 * float(a.metrics["loss_robust"].value)
    assert float(a.loss.detach()) == pytest.approx(expected, rel=1e-5)
    assert float(a.metrics["loss_robust"].value) > 0.0


def test_trades_attack_increases_kl_over_the_noise_start() -> None:
    x, y = toy_data()
    model = make_model()
    with attack_mode(model), torch.no_grad():
        log_p = F.log_softmax(model(x), 1)

    def kl(z: torch.Tensor, _y: torch.Tensor) -> torch.Tensor:
        return (log_p.exp() * (log_p - F.log_softmax(z, 1))).sum(1)

    threat = LinfBall(0.1)
    x_adv = pgd(model, x, y, threat, steps=5, step_size=0.025, random_start=False, loss=kl,
                start=x + 0.001)  # fmt: skip
    with attack_mode(model), torch.no_grad():
        assert kl(model(x_adv), y).mean() > kl(model(x + 0.001), y).mean()


def test_default_step_sizes() -> None:
    assert Trades(LinfBall(8 / 255)).step_size == pytest.approx(2 / 255)
    assert Trades(L2Ball(0.5)).step_size == pytest.approx(0.125)
    assert Trades(LinfBall(8 / 255), step_size=0.01).step_size == 0.01


@pytest.mark.parametrize(
    "factory",
    [
        lambda: PgdAT(LinfBall(0.1), steps=3, generator=torch.Generator().manual_seed(0)),
        lambda: PgdAT(LinfBall(0.1), attack="apgd", steps=3),
        lambda: Trades(LinfBall(0.1), steps=3, generator=torch.Generator().manual_seed(0)),
    ],
    ids=["pgd_at", "pgd_at_apgd", "trades"],
)
def test_training_reduces_the_adversarial_loss(factory) -> None:
    x, y = toy_data(n=96)
    model = make_model(seed=1)
    threat = LinfBall(0.1)

    def adversarial_loss() -> float:
        x_adv = pgd(model, x, y, threat, steps=5, generator=torch.Generator().manual_seed(9))
        with attack_mode(model), torch.no_grad():
            return float(F.cross_entropy(model(x_adv), y))

    before = adversarial_loss()
    obj = factory()
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    model.train()
    for _ in range(15):
        out = obj(model, x, y)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert model.training
    after = adversarial_loss()
    assert after < 0.5 * before, (before, after)


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: PgdAT(LinfBall(0.1), attack="fgsm"), "'fgsm'"),
        (lambda: PgdAT(LinfBall(0.1), steps=0), "steps=0"),
        (lambda: PgdAT(LinfBall(0.1), step_size=-1.0), "step_size=-1.0"),
        (lambda: PgdAT(LinfBall(0.1), attack="apgd", step_size=0.01), "step_size"),
        (lambda: PgdAT(LinfBall(0.1), attack="apgd", random_start=True), "random_start"),
        (lambda: PgdAT("linf:0.1"), "ThreatModel"),
        (lambda: Trades(LinfBall(0.1), beta=-1.0), "beta=-1.0"),
        (lambda: Trades(LinfBall(0.1), steps=1.5), "steps=1.5"),
    ],
)
def test_config_errors(factory, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        factory()
