"""Schedules: generalist.md §6 oracle 2, §3.1 time conventions, multinorm.md §6 and §11.11."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from unirobust.errors import ConfigError
from unirobust.experts.expert import Expert
from unirobust.experts.schedules import (
    SCHEDULE_KINDS,
    Schedule,
    as_schedule,
    build_lr_schedule,
    build_schedule,
    generalist_knots,
    piecewise_ft,
    piecewise_linear,
    schedule_time,
    static,
    superconverge,
)
from unirobust.objectives.natural import NaturalObjective

E = 120


def _gen(values: list[float], **extra: object) -> Schedule:
    return build_lr_schedule({"kind": "generalist", "values": values, "epochs": E, **extra})


def test_generalist_knots_floor() -> None:
    assert generalist_knots(120) == [0, 40, 80, 120]
    assert generalist_knots(100) == [0, 33, 66, 100]
    assert generalist_knots(10) == [0, 3, 6, 10]


def test_piecewise_linear_is_np_interp_clamped() -> None:
    f = piecewise_linear([0, 2, 5], [1.0, 3.0, -1.0])
    for t in [-3, 0, 0.5, 2, 3.7, 5, 9]:
        assert f(t) == float(np.interp(t, [0, 2, 5], [1.0, 3.0, -1.0]))
    assert f(-3) == 1.0 and f(9) == -1.0


def test_schedule_time_conventions() -> None:
    assert schedule_time(7, 0, 10, "epoch") == 7.0
    assert schedule_time(7, 9, 10, "epoch") == 7.0
    assert schedule_time(7, 0, 10, "iteration") == pytest.approx(6.1)
    assert schedule_time(7, 9, 10, "iteration") == 7.0
    with pytest.raises(ConfigError):
        schedule_time(1, 0, 1, "batch")


def test_oracle2_resnet18_lr_beta_and_wrn() -> None:
    lr = _gen([0.01, 0.01, 0.001, 0.0001])
    expected = {1: 0.01, 40: 0.01, 60: 0.0055, 80: 0.001, 100: 0.00055, 120: 1e-4}
    for e, v in expected.items():
        assert lr.at(e, 0, 391) == pytest.approx(v, rel=1e-12)
        assert lr.at(e, 390, 391) == lr.at(e, 0, 391)  # constant within the epoch
    wrn = _gen([0.1, 0.1, 0.01, 0.005])
    assert wrn.at(100, 17, 391) == pytest.approx(0.0075, rel=1e-12)
    assert wrn.at(60, 0, 391) == pytest.approx(0.055, rel=1e-12)
    assert wrn.at(120, 0, 391) == pytest.approx(0.005, rel=1e-12)
    beta = build_schedule({"kind": "generalist", "values": [1, 1, 1, 0.4], "epochs": E})
    for e, v in {80: 1.0, 85: 0.925, 90: 0.85, 100: 0.7, 120: 0.4}.items():
        assert beta.at(e, 3, 391) == pytest.approx(v, rel=1e-12)


def test_iteration_granularity_interpolates_within_epoch() -> None:
    lr = _gen([0.01, 0.01, 0.001, 0.0001], granularity="iteration")
    assert lr.at(60, 9, 10) == pytest.approx(0.0055)
    assert lr.at(60, 4, 10) == pytest.approx(float(np.interp(59.5, [40, 80], [0.01, 0.001])))


def _expert(lr_sched: Schedule) -> Expert:
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return Expert("e", model, NaturalObjective(), opt, lr_schedule=lr_sched)


def test_oracle2_param_group_lr_follows_schedule() -> None:
    lr = _gen([0.01, 0.01, 0.001, 0.0001])
    experts = [_expert(lr), _expert(lr)]  # the natural optimizer starts at 0.1; overwritten
    for e, want in ((1, 0.01), (60, 0.0055), (100, 0.00055), (120, 1e-4)):
        for ex in experts:
            assert ex.set_lr(e, 5, 391) == lr.at(e, 5, 391) == pytest.approx(want, rel=1e-12)
            assert all(g["lr"] == lr.at(e, 5, 391) for g in ex.optimizer.param_groups)
    # a plain t -> lr function, adapted with the epoch convention
    ex = _expert(as_schedule(lambda t: lr(t), "epoch"))
    ex.set_lr(100, 0, 391)
    assert ex.optimizer.param_groups[0]["lr"] == pytest.approx(0.00055)


def test_multinorm_static_oracle_11_11() -> None:
    s = build_lr_schedule({"kind": "static", "lr_max": 0.05})
    assert s(70.0) == 0.05
    assert s(70.01) == pytest.approx(0.005)
    assert s.at(70, 99, 100) == 0.05  # t = 69 + 100/100 = 70
    assert s.at(71, 0, 100) == pytest.approx(0.005)  # t = 70.01
    assert static(1.0, drop_at=3)(3.5) == pytest.approx(0.1)


def test_multinorm_piecewise_ft_and_superconverge() -> None:
    ft = piecewise_ft(0.05, 3)
    assert ft.at(1, 0, 10) == 0.05
    assert ft.at(1, 9, 10) == pytest.approx(0.005)  # t = 1 = E/3
    assert ft.at(3, 0, 10) == pytest.approx(0.0005)
    sc = superconverge(0.2, 10)  # peak at 2E//5 = 4
    assert sc(0) == 0.0 and sc(4) == 0.2 and sc(10) == 0.0
    assert sc.at(2, 9, 10) == pytest.approx(0.1)
    assert build_lr_schedule({"kind": "piecewise-ft", "lr_max": 0.05, "epochs": 3}) == ft


def test_multinorm_piecewise_imagenet_thirds_of_each_epoch() -> None:
    s = build_lr_schedule({"kind": "piecewise-imagenet", "lr_max": 0.005})
    lrs = [s.at(1, i, 9) for i in range(9)]  # (i+1)/9: 1/9..2/9 | 3/9..5/9 | 6/9..1
    assert lrs[:2] == [0.005] * 2
    assert lrs[2:5] == pytest.approx([0.0005] * 3)
    assert lrs[5:] == pytest.approx([0.00005] * 4)
    assert s.at(2, 0, 9) == 0.005  # the thirds restart with every epoch
    one_epoch_ft = piecewise_ft(0.005, 1)
    assert [one_epoch_ft.at(1, i, 9) for i in range(9)] == lrs  # = piecewise-ft when E = 1


def test_builder_kinds() -> None:
    assert build_lr_schedule({"kind": "constant", "value": 0.3}).at(9, 0, 1) == 0.3
    f = build_lr_schedule(
        {
            "kind": "piecewise_linear",
            "knot_fractions": [0, 0.5, 1],
            "values": [0, 1, 0],
            "epochs": 8,
        }
    )
    assert f.knots == (0.0, 4.0, 8.0) and f(2) == 0.5
    g = build_lr_schedule({"kind": "piecewise_linear", "knots": [0, 4], "values": [1, 0]})
    assert g(1) == 0.75


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "cosine", "lr_max": 0.1},
        {"lr_max": 0.1},
        {"kind": "static"},
        {"kind": "static", "lr_max": 0.1, "epochs": 3},
        {"kind": "static", "lr_max": -0.1},
        {"kind": "constant", "value": float("nan")},
        {"kind": "generalist", "values": [1, 2, 3], "epochs": 10},
        {"kind": "generalist", "values": [1, 2, 3, 4], "epochs": 0},
        {"kind": "piecewise_linear", "knots": [0, 2, 1], "values": [1, 2, 3]},
        {"kind": "piecewise_linear", "knots": [0, 1], "values": [1]},
        {"kind": "piecewise_linear", "knot_fractions": [0, 1], "values": [1, 0]},
        {"kind": "piecewise_linear", "knots": [0, 1], "values": [1, 0], "granularity": "step"},
    ],
)
def test_bad_specs_raise_one_line_config_error(spec: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as info:
        build_lr_schedule(spec)
    assert "\n" not in str(info.value)
    if spec.get("kind") in (None, "cosine"):
        assert all(k in str(info.value) for k in SCHEDULE_KINDS)


def test_every_built_schedule_is_a_schedule() -> None:
    specs = [
        {"kind": "constant", "value": 1},
        {"kind": "generalist", "values": [1, 1, 1, 0], "epochs": 3},
        {"kind": "static", "lr_max": 1},
        {"kind": "piecewise_ft", "lr_max": 1, "epochs": 3},
        {"kind": "superconverge", "lr_max": 1, "epochs": 3},
    ]
    for spec in specs:
        assert isinstance(build_schedule(spec), Schedule)
