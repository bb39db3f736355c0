"""RAMP: pairing losses (oracle §11.6), the per-batch loss against a hand computation (§4.2), the
TRADES variant (§4.4, §7) and the key-pair table (§4.1)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from _multinorm_toys import Recorder, toy_batch, toy_model
from torch import Tensor, nn

from unirobust.attacks.apgd import apgd_train
from unirobust.errors import ConfigError
from unirobust.objectives.base import OBJECTIVES
from unirobust.objectives.key_pairs import KEY_PAIRS, find_key_pair, key_pair
from unirobust.objectives.ramp import (
    Ramp,
    RampSpec,
    pair_loss_cosine,
    pair_loss_kl,
    pair_loss_mse,
)
from unirobust.threats import L1Ball, L2Ball, LinfBall

CIFAR = ["linf:8/255", "l2:0.5", "l1:12"]


def logits_pair(seed: int = 0, n: int = 5, k: int = 4) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    zq = torch.randn(n, k, generator=g, dtype=torch.float64).requires_grad_(True)
    zr = torch.randn(n, k, generator=g, dtype=torch.float64).requires_grad_(True)
    return zq, zr


MASK = torch.tensor([True, False, True, False, False])  # nc = 2 of B = 5


def test_kl_pair_loss_formula_divisor_and_gradients() -> None:
    zq, zr = logits_pair()
    loss = pair_loss_kl(zq, zr, MASK)
    log_pq, log_pr = F.log_softmax(zq[MASK], 1), F.log_softmax(zr[MASK], 1)
    expected = (log_pq.exp() * (log_pq - log_pr)).sum() / 2  # divisor nc = 2, not B = 5
    assert loss.dim() == 0
    assert torch.allclose(loss, expected, rtol=1e-12)
    loss.backward()
    for z in (zq, zr):  # gradients reach both branches, only on masked rows
        assert z.grad is not None and z.grad[MASK].abs().sum() > 0
        assert z.grad[~MASK].abs().sum() == 0


def test_kl_pair_loss_zero_for_equal_logits_and_empty_mask() -> None:
    zq, zr = logits_pair()
    assert float(pair_loss_kl(zq, zq.detach().clone(), MASK).detach()) == pytest.approx(
        0.0, abs=1e-14
    )
    empty = torch.zeros(5, dtype=torch.bool)
    for fn in (pair_loss_kl, pair_loss_mse, pair_loss_cosine):
        loss = fn(zq, zr, empty)
        assert float(loss.detach()) == 0.0
        loss.backward()
        assert torch.isfinite(zq.grad).all() and torch.isfinite(zr.grad).all()


def test_mse_and_cosine_pair_losses() -> None:
    zq, zr = logits_pair(seed=1)
    diff = zq[MASK] - zr[MASK]
    assert torch.allclose(pair_loss_mse(zq, zr, MASK), (diff**2).mean() / 2, rtol=1e-12)
    cos = (zq[MASK] * zr[MASK]).sum(1) / (zq[MASK].norm(dim=1) * zr[MASK].norm(dim=1))
    loss = pair_loss_cosine(zq, zr, MASK)
    assert loss.dim() == 0  # reduced to a scalar (§9: the reference's was not)
    assert torch.allclose(loss, (1 - cos).sum() / 2, rtol=1e-10)
    loss.backward()
    assert zq.grad.abs().sum() > 0 and zr.grad.abs().sum() > 0


def _bn_state(model: nn.Module) -> list[Tensor]:
    return [b.clone() for b in model.buffers()]


def _hand_ramp(
    model: nn.Module, x: Tensor, y: Tensor, lam: float, trades: bool = False
) -> tuple[Tensor, Tensor]:
    """§4.2 / §4.4 written out: returns (loss, mask) and leaves BN stats as the reference does."""
    res_q = apgd_train(model, x, y, LinfBall(8 / 255), 10)
    res_r = apgd_train(model, x, y, L1Ball(12.0), 10)
    take_q = (res_q.loss_best > res_r.loss_best).view(-1, 1)
    x_max = torch.where(take_q, res_q.x_best, res_r.x_best)
    model.train()
    zr = model(res_r.x_best)
    zq = model(res_q.x_best)
    mask = zq.argmax(1) == y
    kl = F.kl_div(F.log_softmax(zr[mask], 1), F.softmax(zq[mask], 1), reduction="sum")
    pair = kl / mask.sum()
    if not trades:
        return F.cross_entropy(model(x_max), y) + lam * pair, mask
    natural = F.cross_entropy(model(x), y)
    z_max = model(x_max)
    p_clean = F.softmax(model(x), 1)  # the reference's second clean forward
    robust = F.kl_div(F.log_softmax(z_max, 1), p_clean, reduction="sum") / len(y)
    return natural + 6.0 * robust + lam * pair, mask


@pytest.mark.parametrize("variant", ["ce", "trades"])
def test_ramp_loss_equals_hand_computation(variant: str) -> None:
    x, y = toy_batch(n=32)
    x = (x - 0.2).clamp(0, 1)  # some pixels at 0: the l1 box matters
    base = toy_model(seed=4)
    mine, ref = copy.deepcopy(base), copy.deepcopy(base)
    mine.train()
    compat = "official" if variant == "trades" else "default"
    obj = Ramp(
        [LinfBall(8 / 255), L2Ball(0.5), L1Ball(12.0)], lam=1.7, variant=variant, compat=compat
    )
    assert (obj.q, obj.r) == ("linf", "l1")
    out = obj(mine, x, y)
    expected, mask = _hand_ramp(ref, x, y, 1.7, trades=variant == "trades")
    assert 0 < int(mask.sum()) < len(y)  # the mask really selects (nc != B, nc != 0)
    assert 0.0 < float(out.metrics["picked_q"].value) < 1.0  # both attacks win somewhere
    assert torch.allclose(out.loss, expected, rtol=1e-5, atol=1e-6)
    # same forwards in the same order: BN running statistics agree exactly
    for a, b in zip(_bn_state(mine), _bn_state(ref), strict=True):
        assert torch.allclose(a.float(), b.float(), rtol=1e-6, atol=1e-7)
    grads = torch.autograd.grad(out.loss, list(mine.parameters()))
    ref_grads = torch.autograd.grad(expected, list(ref.parameters()))
    for g, h in zip(grads, ref_grads, strict=True):
        assert torch.allclose(g, h, rtol=1e-4, atol=1e-6)


def test_ramp_pair_term_scales_with_lam_and_uses_zq_mask() -> None:
    x, y = toy_batch(n=32)
    model = toy_model(seed=4)
    model.train()
    threats = [LinfBall(8 / 255), L2Ball(0.5), L1Ball(12.0)]
    out0 = Ramp(threats, lam=0.0)(copy.deepcopy(model), x, y)
    out2 = Ramp(threats, lam=2.0)(copy.deepcopy(model), x, y)
    pair = out2.metrics["loss_pair"].value
    assert float(pair) > 0
    assert torch.allclose(out2.loss - out0.loss, 2.0 * pair, rtol=1e-5)
    rec = Recorder(copy.deepcopy(model))
    rec.train()
    out = Ramp(threats, lam=2.0)(rec, x, y)
    _, zq = rec.train_calls()[1]  # the second train-mode forward is the source q
    assert float(out.metrics["source_correct"].value) == pytest.approx(
        float((zq.argmax(1) == y).float().mean())
    )


def test_trades_variant_official_runs_the_clean_forward_twice() -> None:
    x, y = toy_batch(n=16)
    model = toy_model(seed=3)
    model.train()
    kw = {"lam": 0.5, "variant": "trades"}
    threats = [LinfBall(8 / 255), L2Ball(0.5), L1Ball(12.0)]
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    out_a = Ramp(threats, **kw)(a, x, y)
    out_b = Ramp(threats, compat="official", **kw)(b, x, y)
    assert torch.allclose(out_a.loss, out_b.loss, rtol=1e-6)  # same value ...
    steps_a, steps_b = int(a[1].num_batches_tracked), int(b[1].num_batches_tracked)
    assert (steps_a, steps_b) == (4, 5)  # ... but BN saw the clean batch once more
    assert not torch.allclose(a[1].running_mean, b[1].running_mean)


@pytest.mark.parametrize(
    ("radii", "pair"),
    [
        ({"linf": 8 / 255, "l2": 0.5, "l1": 12.0}, ("linf", "l1")),
        ({"linf": 4 / 255, "l2": 2.0, "l1": 255.0}, ("linf", "l1")),
        ({"linf": 2 / 255, "l2": 0.5, "l1": 12.0}, ("l1", "l2")),
        ({"linf": 4 / 255, "l2": 0.5, "l1": 12.0}, ("l1", "linf")),
        ({"linf": 16 / 255, "l2": 0.5, "l1": 12.0}, ("linf", "l1")),
        ({"linf": 8 / 255, "l2": 0.5, "l1": 9.0}, ("linf", "l1")),
        ({"linf": 8 / 255, "l2": 0.75, "l1": 12.0}, ("linf", "l1")),
        ({"linf": 8 / 255, "l2": 0.5, "l1": 18.0}, ("l1", "linf")),
        ({"linf": 8 / 255, "l2": 1.5, "l1": 12.0}, ("l2", "linf")),
        ({"linf": 0.15, "l2": 2.0, "l1": 15.0}, ("linf", "l1")),  # the Fashion-MNIST proxy
        ({"linf": 0.031, "l2": 0.5, "l1": 12.0}, None),  # 0.031 is not 8/255
        ({"linf": 8 / 255, "l2": 0.5}, None),  # a configuration is all three radii
    ],
)
def test_key_pair_table(radii: dict[str, float], pair: tuple[str, str] | None) -> None:
    assert find_key_pair(radii) == pair


def test_key_pair_table_has_no_duplicate_configurations() -> None:
    configs = [(r.linf, r.l2, r.l1) for r in KEY_PAIRS]
    assert len(configs) == len(set(configs)) == 15  # §4.1's 14 rows + the Fashion-MNIST proxy


def test_key_pair_override_and_errors() -> None:
    odd = {"linf": 0.1, "l2": 0.5, "l1": 3.0}
    with pytest.raises(ConfigError, match="no key-pair table entry") as err:
        key_pair(odd)
    assert "\n" not in str(err.value) and "pair" in str(err.value)
    assert key_pair(odd, ("l1", "linf")) == ("l1", "linf")
    with pytest.raises(ConfigError, match="two different norms"):
        key_pair(odd, ("l1", "l1"))
    with pytest.raises(ConfigError, match="not in threats"):
        key_pair({"linf": 0.1, "l1": 3.0}, ("l2", "linf"))


def test_ramp_spec_resolves_the_pair_at_load() -> None:
    spec = OBJECTIVES.validate(
        {
            "name": "ramp",
            "threats": ["linf:4/255", "l2:2", "l1:255"],
            "steps": {"linf": 5, "l1": 15},
        }
    )
    assert isinstance(spec, RampSpec) and spec.attacked_norms() == ("linf", "l1")
    with pytest.raises(ConfigError, match="no key-pair table entry"):
        OBJECTIVES.validate({"name": "ramp", "threats": ["linf:0.1", "l2:1", "l1:5"]})
    with pytest.raises(ConfigError, match="no key-pair table entry"):
        OBJECTIVES.validate({"name": "ramp", "threats": ["linf:8/255", "l1:12"]})
    spec = OBJECTIVES.validate(
        {"name": "ramp", "threats": ["linf:0.1", "l2:1", "l1:5"], "pair": ["l2", "l1"]}
    )
    assert spec.attacked_norms() == ("l2", "l1")
    with pytest.raises(ConfigError, match="not attacked: l2"):  # l2 is not in the pair
        OBJECTIVES.validate(
            {"name": "ramp", "threats": CIFAR, "steps": {"linf": 5, "l1": 5, "l2": 5}}
        )
    with pytest.raises(ConfigError, match="no key-pair table entry"):
        Ramp([LinfBall(0.1), L2Ball(1.0), L1Ball(5.0)])
