"""Calibration metrics and temperature scaling on hand-computed toy tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unirobust.analysis.calibration import (
    apply_temperature,
    calibration_metrics,
    fit_temperature,
    reliability_bins,
    temperature_scaling,
)


def _logits_for(probs: list[list[float]]) -> torch.Tensor:
    return torch.log(torch.tensor(probs, dtype=torch.float64))


def test_perfectly_calibrated_ece_zero():
    # confidence 0.75 in every row, 3 of 4 correct -> acc == conf in the only bin
    logits = _logits_for([[0.75, 0.25]] * 4)
    y = torch.tensor([0, 0, 0, 1])
    m = calibration_metrics(logits, y, n_bins=10)
    assert m["ece"] == pytest.approx(0.0, abs=1e-12)
    assert m["mce"] == pytest.approx(0.0, abs=1e-12)
    assert m["acc"] == pytest.approx(0.75)
    assert m["nll"] == pytest.approx(-(3 * math.log(0.75) + math.log(0.25)) / 4)
    # Brier: correct rows (0.25^2 * 2), wrong row (0.75^2 + 0.75^2)
    assert m["brier"] == pytest.approx((3 * 2 * 0.25**2 + 2 * 0.75**2) / 4)


def test_two_bin_example():
    # bins of width 0.5: conf 0.9 (2 points, 1 correct) and conf 0.6 -> bin (0.5, 1], all in
    # the upper bin with n_bins=2; use n_bins=5 -> bins (0.4,0.6] and (0.8,1.0]
    logits = _logits_for([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    y = torch.tensor([0, 1, 0, 0])
    m = calibration_metrics(logits, y, n_bins=5)
    # bin 0.9: acc 0.5, conf 0.9 -> gap 0.4; bin 0.6: acc 1.0, conf 0.6 -> gap 0.4
    assert m["ece"] == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    assert m["mce"] == pytest.approx(0.4)
    bins = reliability_bins(logits, y, n_bins=5)
    np.testing.assert_array_equal(bins["count"], [0, 0, 2, 0, 2])
    assert bins["accuracy"][2] == pytest.approx(1.0)
    assert bins["confidence"][4] == pytest.approx(0.9)
    assert np.isnan(bins["accuracy"][0])
    np.testing.assert_allclose(bins["lower"], [0, 0.2, 0.4, 0.6, 0.8])
    # unequal gaps weighted by bin mass
    m2 = calibration_metrics(logits[:3], y[:3], n_bins=5)
    assert m2["ece"] == pytest.approx(2 / 3 * 0.4 + 1 / 3 * 0.4)


def test_bin_edges_are_right_closed():
    # confidence exactly 0.6 falls in (0.4, 0.6] with 5 bins, not (0.6, 0.8]
    logits = _logits_for([[0.6, 0.4]])
    bins = reliability_bins(logits, torch.tensor([0]), n_bins=5)
    assert bins["count"][2] == 1


def _overconfident(n: int = 2000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 5, (n,), generator=g)
    base = torch.randn(n, 5, generator=g, dtype=torch.float64)
    base[torch.arange(n), y] += 1.0  # informative but noisy
    return base * 6.0, y  # scaled up: over-confident


def test_temperature_lowers_nll_and_keeps_argmax():
    logits, y = _overconfident()
    before = calibration_metrics(logits, y)
    t = fit_temperature(logits, y)
    assert t > 1.5  # over-confident -> soften
    scaled = apply_temperature(logits, t)
    after = calibration_metrics(scaled, y)
    assert torch.equal(scaled.argmax(1), logits.argmax(1))
    assert after["acc"] == before["acc"]
    assert after["nll"] < before["nll"]
    assert after["ece"] < before["ece"]
    # optimality: nearby temperatures are not better
    for factor in (0.9, 1.1):
        assert (
            calibration_metrics(apply_temperature(logits, t * factor), y)["nll"]
            >= after["nll"] - 1e-9
        )


def test_temperature_about_one_on_calibrated_data():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(20000, 4, generator=g, dtype=torch.float64) * 2.0
    y = torch.multinomial(torch.softmax(logits, 1), 1, generator=g).reshape(-1)
    t = fit_temperature(logits, y)
    assert t == pytest.approx(1.0, abs=0.05)


def test_input_validation():
    with pytest.raises(ValueError):
        calibration_metrics(torch.zeros(3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError):
        calibration_metrics(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError):
        apply_temperature(torch.zeros(2, 2), 0.0)


def _calibrated_predictor(n: int, c: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """conf ~ U(1/C, 1) on a random predicted class, correct with probability conf (§8.7)."""
    g = torch.Generator().manual_seed(seed)
    conf = 1 / c + (1 - 1 / c) * torch.rand(n, generator=g, dtype=torch.float64)
    pred = torch.randint(0, c, (n,), generator=g)
    probs = ((1 - conf) / (c - 1)).unsqueeze(1).repeat(1, c)
    probs[torch.arange(n), pred] = conf
    correct = torch.rand(n, generator=g, dtype=torch.float64) < conf
    other = (pred + torch.randint(1, c, (n,), generator=g)) % c
    return probs.log(), torch.where(correct, pred, other)


def test_ece_near_zero_for_a_calibrated_predictor():
    logits, y = _calibrated_predictor(200_000, 4, seed=0)
    m = calibration_metrics(logits, y, n_bins=15)
    assert m["ece"] < 0.01
    # the same predictor made over-confident is not calibrated
    assert calibration_metrics(logits * 3, y)["ece"] > 0.05


def test_constant_full_confidence_at_seventy_percent():
    logits = torch.zeros(10, 3, dtype=torch.float64)
    logits[:, 0] = 100.0  # softmax max == 1.0 in float64
    y = torch.tensor([0] * 7 + [1, 2, 1])
    m = calibration_metrics(logits, y, extended=True)
    assert m["ece"] == pytest.approx(0.30, abs=1e-12)
    assert m["mce"] == pytest.approx(0.30, abs=1e-12)
    assert m["mean_confidence"] == 1.0


def test_extended_metrics_by_hand():
    logits = torch.tensor([[2.0, -1.0, 0.0], [0.0, 0.0, 3.0]], dtype=torch.float64)
    y = torch.tensor([0, 1])
    m = calibration_metrics(logits, y, extended=True)
    assert m["brier"] == pytest.approx(3 * m["brier_repo"], rel=1e-12)  # Brier = C·brier_repo
    assert m["logit_l1"] == pytest.approx((3.0 + 3.0) / 2)
    assert m["logit_l2"] == pytest.approx((math.sqrt(5.0) + 3.0) / 2)
    probs = torch.softmax(logits, 1)
    assert m["mean_confidence"] == pytest.approx(float(probs.max(1).values.mean()))
    assert set(calibration_metrics(logits, y)) == {"ece", "mce", "nll", "brier", "acc"}


def _scaled_calibrated(beta: float, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 4, generator=g, dtype=torch.float64) * 2.0
    y = torch.multinomial(torch.softmax(logits, 1), 1, generator=g).reshape(-1)
    return logits * beta, y


@pytest.mark.parametrize(
    ("method", "beta", "n"),
    # Adam at lr 1e-3 moves T by about 1e-3 a step: a scale near 1 keeps the test short
    [("lbfgs", 2.5, 20_000), ("golden", 2.5, 20_000), ("adam", 1.25, 3_000)],
)
def test_temperature_recovers_the_logit_scale(method: str, beta: float, n: int):
    logits, y = _scaled_calibrated(beta, n, seed=2)
    t = fit_temperature(logits, y, method=method)
    assert t == pytest.approx(beta, rel=0.05)
    assert torch.equal(apply_temperature(logits, t).argmax(1), logits.argmax(1))
    nll_1 = calibration_metrics(logits, y)["nll"]
    assert calibration_metrics(logits / t, y)["nll"] <= nll_1


def test_lbfgs_and_golden_agree():
    logits, y = _overconfident(seed=3)
    t_lbfgs = fit_temperature(logits, y)  # default: lbfgs on log T
    t_golden = fit_temperature(logits, y, method="golden")
    assert t_lbfgs == pytest.approx(t_golden, rel=1e-5)
    with pytest.raises(ValueError, match="unknown temperature method"):
        fit_temperature(logits, y, method="newton")  # type: ignore[arg-type]


def test_temperature_scaling_reports_before_and_after():
    val, y_val = _overconfident(seed=4)
    test, y_test = _overconfident(seed=5)
    out = temperature_scaling(val, y_val, test, y_test, method="lbfgs")
    assert out["temperature"] == pytest.approx(fit_temperature(val, y_val))
    assert out["method"] == "lbfgs"
    assert out["before"] == calibration_metrics(test, y_test, extended=True)
    assert out["after"]["acc"] == out["before"]["acc"]
    assert out["after"]["nll"] < out["before"]["nll"]
    assert out["after"]["mean_confidence"] < out["before"]["mean_confidence"]
    with pytest.raises(ValueError, match="both"):
        temperature_scaling(val, y_val, test)
