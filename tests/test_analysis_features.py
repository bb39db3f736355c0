"""Feature diagnostics (spec lpft.md §3; oracles §8.8-9): Diff(F), CS, FDR, head norms."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from unirobust.analysis.features import (
    cosine_similarity_mean,
    extract_features,
    feature_change,
    fisher_discriminant_ratio,
    head_norms,
)
from unirobust.models import build_model


def _bn_lenet() -> nn.Module:
    torch.manual_seed(0)
    model = build_model(
        "lenet", num_classes=3, input_shape=(1, 8, 8), channels=[2, 3], hidden=6, batchnorm=True
    )
    with torch.no_grad():
        model.bn1.running_mean.fill_(0.3)
        model.bn1.running_var.fill_(2.0)
    return model


def _labelled(n: int = 60, h: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    centres = torch.randn(3, h, generator=gen, dtype=torch.float64) * 2
    return centres[y] + torch.randn(n, h, generator=gen, dtype=torch.float64), y


def test_extract_features_uses_eval_mode_and_restores_it() -> None:
    model = _bn_lenet()
    model.train()
    x = torch.rand(7, 1, 8, 8)
    phi = extract_features(model, x, batch_size=3)
    assert model.training
    assert phi.dtype == torch.float64 and phi.shape == (7, 6)
    model.eval()
    with torch.no_grad():
        expected = model.features(x).double()
        in_train_mode = model.train().features(x).double()
    torch.testing.assert_close(phi, expected)
    assert not torch.allclose(phi, in_train_mode)  # batch statistics would have moved φ


def test_feature_change_is_zero_for_identical_models() -> None:
    model = _bn_lenet()
    twin = copy.deepcopy(model)
    x = torch.rand(9, 1, 8, 8)
    out = feature_change(extract_features(model, x), extract_features(twin, x))
    assert out == {"diff": 0.0, "norm_diff": 0.0, "n": 9}
    with torch.no_grad():
        twin.fc.bias.add_(0.5)
    assert feature_change(extract_features(model, x), extract_features(twin, x))["diff"] > 0


def test_feature_change_by_hand() -> None:
    phi0 = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    phi = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    out = feature_change(phi, phi0)
    assert out["diff"] == pytest.approx((5.0 + 1.0) / 2)
    assert out["norm_diff"] == pytest.approx((5.0 + (math.sqrt(2) - 1)) / 2)
    with pytest.raises(ValueError, match="differ in shape"):
        feature_change(phi, phi0[:1])


def test_cosine_closed_form_equals_brute_force() -> None:
    phi, _ = _labelled(25, 6)
    phi[3] = 0.0  # a zero row: cosine 0 with every other row on both sides
    cos = torch.nn.functional.cosine_similarity(phi[:, None, :], phi[None, :, :], dim=2)
    off_diagonal = ~torch.eye(25, dtype=torch.bool)
    brute = float(cos[off_diagonal].mean())
    assert cosine_similarity_mean(phi) == pytest.approx(brute, abs=1e-12)


def test_cosine_extremes() -> None:
    row = torch.tensor([[0.3, -1.2, 2.0]])
    assert cosine_similarity_mean(row.repeat(5, 1) * torch.arange(1, 6)[:, None]) == (
        pytest.approx(1.0)
    )
    assert cosine_similarity_mean(torch.eye(4)) == pytest.approx(0.0, abs=1e-15)
    assert cosine_similarity_mean(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(-1.0)


@pytest.mark.parametrize("kind", ["fisher", "trace_ratio"])
def test_fdr_is_invariant_to_scaling_shift_and_rotation(kind: str) -> None:
    phi, y = _labelled()
    base = fisher_discriminant_ratio(phi, y, kind)
    gen = torch.Generator().manual_seed(1)
    rotation, _ = torch.linalg.qr(torch.randn(4, 4, generator=gen, dtype=torch.float64))
    for moved in (7.5 * phi - 3.0, phi @ rotation.T, 0.01 * phi @ rotation + 100.0):
        assert fisher_discriminant_ratio(moved, y, kind)["fdr"] == pytest.approx(
            base["fdr"], rel=1e-9
        )
    assert base["n"] == 60 and base["h"] == 4 and base["kind"] == kind and base["classes"] == 3
    # more separated classes -> larger FDR
    far = phi + 5.0 * torch.nn.functional.one_hot(y, 4).double()
    assert fisher_discriminant_ratio(far, y, kind)["fdr"] > base["fdr"]


def test_fdr_by_hand() -> None:
    # 1-d: classes {0, 2} and {4, 6}: μ = 3, S_W = 1, S_B = 4 -> both kinds give 4
    phi = torch.tensor([[0.0], [2.0], [4.0], [6.0]])
    y = torch.tensor([0, 0, 1, 1])
    assert fisher_discriminant_ratio(phi, y, "fisher")["fdr"] == pytest.approx(4.0)
    assert fisher_discriminant_ratio(phi, y, "trace_ratio")["fdr"] == pytest.approx(4.0)
    # an extra constant feature has S_W eigenvalue 0: cut off by the pinv, not infinite
    padded = torch.cat([phi, torch.ones(4, 1)], dim=1)
    assert fisher_discriminant_ratio(padded, y)["fdr"] == pytest.approx(4.0)
    with pytest.raises(ValueError, match="unknown FDR kind"):
        fisher_discriminant_ratio(phi, y, "lda")  # type: ignore[arg-type]


def test_head_norms_exclude_the_bias() -> None:
    head = nn.Linear(2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 2.0], [2.0, 4.0]]))
        head.bias.copy_(torch.tensor([3.0, 4.0]))
    assert head_norms(head) == {"weight_norm": pytest.approx(5.0), "bias_norm": 5.0}
    assert head_norms(nn.Linear(2, 2, bias=False))["bias_norm"] == 0.0
