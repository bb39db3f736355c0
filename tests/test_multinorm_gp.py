"""RAMP's gradient projection: the per-tensor formula (oracle §11.8) and the ``gp`` merge rule."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from _multinorm_toys import StandIn, toy_batch, toy_model
from pydantic import ValidationError
from torch import Tensor

from unirobust.errors import CheckpointError, ConfigError
from unirobust.experts.merge import MERGE_RULES, MergeContext, check_expert_count
from unirobust.experts.projection import GradientProjection, project_state, project_tensor

BETA = 0.5


def rand(*shape: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64)


def by_hand(old: Tensor, a: Tensor, n: Tensor, beta: float) -> Tensor:
    g_a, g_n = a - old, n - old
    c = F.cosine_similarity(g_n.flatten(), g_a.flatten(), dim=0)
    return old + (1 - beta) * g_a + (beta * c * g_n if c > 0 else 0)


def test_negative_or_zero_cosine_keeps_only_the_adversarial_part() -> None:
    old, g_a = rand(3, 4, seed=0), rand(3, 4, seed=1)
    a = old + g_a
    ortho = torch.zeros(3, 4, dtype=torch.float64)
    ortho[0, 0] = -g_a[0, 1]
    ortho[0, 1] = g_a[0, 0]  # <ortho, g_a> = 0 exactly
    for g_n in (-2.0 * g_a, ortho, torch.zeros_like(g_a)):
        new = project_tensor(old, a, old + g_n, BETA)
        assert torch.allclose(new, old + (1 - BETA) * g_a, rtol=1e-12, atol=1e-12)


def test_equal_updates_give_the_full_adversarial_step() -> None:
    old, g = rand(5, seed=2), rand(5, seed=3)
    for beta in (0.0, 0.3, 0.5, 1.0):
        assert torch.allclose(project_tensor(old, old + g, old + g, beta), old + g, rtol=1e-12)


def test_zero_adversarial_update_and_positive_cosine() -> None:
    old, g_a, noise = rand(6, seed=4), rand(6, seed=5), rand(6, seed=6)
    assert torch.equal(project_tensor(old, old, old + noise, BETA), old)  # g_a = 0 -> c = 0
    g_n = g_a + 0.3 * noise
    new = project_tensor(old, old + g_a, old + g_n, BETA)
    assert torch.allclose(new, by_hand(old, old + g_a, old + g_n, BETA), rtol=1e-12)
    assert not torch.allclose(new, old + (1 - BETA) * g_a)  # the natural part is really added


def test_state_merge_is_per_tensor_covers_buffers_and_copies_0dim() -> None:
    old = {
        "w": rand(4, 3, seed=10),
        "b": rand(4, seed=11),
        "bn.running_mean": rand(4, seed=12),
        "bn.num_batches_tracked": torch.tensor(7),
        "scale": torch.tensor(1.5, dtype=torch.float64),
    }
    g_a = {k: rand(*v.shape, seed=20 + i) for i, (k, v) in enumerate(old.items())}
    theta_a = {k: old[k] + g_a[k] for k in ("w", "b", "bn.running_mean")}
    theta_a |= {"bn.num_batches_tracked": torch.tensor(19), "scale": torch.tensor(2.5).double()}
    theta_n = {
        "w": old["w"] + 2 * g_a["w"] + 0.1 * rand(4, 3, seed=30),  # c > 0
        "b": old["b"] - g_a["b"] + 0.1 * rand(4, seed=31),  # c < 0
        "bn.running_mean": old["bn.running_mean"] + 0.5 * g_a["bn.running_mean"],  # c = 1
        "bn.num_batches_tracked": torch.tensor(23),
        "scale": torch.tensor(9.0).double(),
    }
    new = project_state(old, theta_a, theta_n, BETA)
    assert set(new) == set(old)
    for key in ("w", "b", "bn.running_mean"):
        assert torch.allclose(new[key], by_hand(old[key], theta_a[key], theta_n[key], BETA))
    assert torch.allclose(new["b"], old["b"] + (1 - BETA) * g_a["b"])
    # a cosine over the whole flattened model would differ from the per-tensor result
    flat = lambda d: torch.cat([d[k].flatten() for k in ("w", "b", "bn.running_mean")])  # noqa: E731
    c_all = F.cosine_similarity(flat(theta_n) - flat(old), flat(theta_a) - flat(old), dim=0)
    g_n_b = theta_n["b"] - old["b"]
    global_b = old["b"] + (1 - BETA) * g_a["b"] + BETA * c_all * g_n_b
    assert c_all > 0 and not torch.allclose(new["b"], global_b)
    assert int(new["bn.num_batches_tracked"]) == 19 and new["bn.num_batches_tracked"].dtype == (
        torch.int64
    )
    assert float(new["scale"]) == 2.5
    with pytest.raises(ValueError):
        project_state(old, theta_a, {"w": old["w"]}, BETA)


def test_float32_tensor_keeps_dtype() -> None:
    old, g = rand(8, seed=40).float(), rand(8, seed=41).float()
    new = project_tensor(old, old + g, old - g, 0.5)
    assert new.dtype == torch.float32
    assert torch.allclose(new, old + 0.5 * g)


def _sgd_epoch(model: torch.nn.Module, x: Tensor, y: Tensor, scale: float) -> None:
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(scale * x), y).backward()
        opt.step()


def test_gp_merge_rule_snapshot_merge_and_load_into_both() -> None:
    spec = MERGE_RULES.validate({"name": "gp"})
    assert spec.beta == 0.5
    with pytest.raises(ValidationError, match="less than or equal to 1"):
        MERGE_RULES.validate({"name": "gp", "beta": 1.5})
    ctx = MergeContext(epochs=2, expert_names=("ramp", "natural"), local_experts=(0, 1))
    rule = MERGE_RULES.build(spec, ctx)
    assert isinstance(rule, GradientProjection)
    assert rule.every_epoch and not rule.every_step
    check_expert_count("gp", type(rule), 2)
    with pytest.raises(ConfigError, match="exactly 2"):
        check_expert_count("gp", type(rule), 3)

    x, y = toy_batch(n=16)
    adv, nat = StandIn(toy_model(seed=0), "ramp"), StandIn(toy_model(seed=1), "natural")
    rule.setup([adv, nat])
    assert rule.global_model() is adv.model
    for epoch in range(2):
        rule.before_epoch([adv, nat], epoch)
        theta_old = copy.deepcopy(adv.model.state_dict())
        for k, v in nat.model.state_dict().items():  # natural model starts from theta_old
            assert torch.equal(v, theta_old[k])
        _sgd_epoch(adv.model, x, y, 0.8)
        _sgd_epoch(nat.model, x, y, 1.0)
        theta_a = copy.deepcopy(adv.model.state_dict())
        theta_n = copy.deepcopy(nat.model.state_dict())
        rule.after_epoch([adv, nat], epoch)
        expected = project_state(theta_old, theta_a, theta_n, 0.5)
        for model in (adv.model, nat.model):
            for k, v in model.state_dict().items():
                assert torch.equal(v, expected[k]), k
        assert not torch.equal(expected["1.running_mean"], theta_a["1.running_mean"])
    assert rule.state_dict() == {}
    with pytest.raises(CheckpointError, match="epoch boundaries"):
        rule.after_epoch([adv, nat], 2)  # no before_epoch: a mid-epoch resume is refused
