"""Threat models: projections (multinorm.md §11 oracles 1-2), random starts, steps, parsing."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

from unirobust.errors import ConfigError
from unirobust.threats import (
    L1Ball,
    L2Ball,
    LinfBall,
    ThreatModel,
    parse_threat,
    parse_threats,
    project_l1_box,
    to_pyautoattack_norm,
)

HYP = settings(
    max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


# ---------------------------------------------------------------- references (float64)
def phi(a: np.ndarray, cap: np.ndarray, tau: float) -> float:
    return float(np.minimum(np.maximum(a - tau, 0.0), cap).sum())


def l1_box_bisection(x: np.ndarray, y: np.ndarray, eps: float) -> np.ndarray:
    """Float64 bisection on tau of the 'Mind the box' KKT form (independent of the sort)."""
    a, s = np.abs(y), np.sign(y)
    cap = np.where(y > 0, 1.0 - x, x)
    if phi(a, cap, 0.0) <= eps:
        tau = 0.0
    else:
        lo, hi = 0.0, float(a.max())
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if phi(a, cap, mid) > eps:
                lo = mid
            else:
                hi = mid
        tau = hi
    return s * np.minimum(np.maximum(a - tau, 0.0), cap)


def l1_box_slsqp(x: np.ndarray, y: np.ndarray, eps: float) -> np.ndarray:
    """min ||p - n - y||^2 s.t. sum(p + n) <= eps, 0 <= p <= 1-x, 0 <= n <= x."""
    d = x.size

    def f(z: np.ndarray) -> float:
        r = z[:d] - z[d:] - y
        return float(r @ r)

    def grad(z: np.ndarray) -> np.ndarray:
        r = 2 * (z[:d] - z[d:] - y)
        return np.concatenate([r, -r])

    bounds = [(0.0, 1.0 - xi) for xi in x] + [(0.0, xi) for xi in x]
    z0 = np.zeros(2 * d)
    cons = [{"type": "ineq", "fun": lambda z: eps - z.sum(), "jac": lambda z: -np.ones(2 * d)}]
    res = minimize(
        f, z0, jac=grad, bounds=bounds, constraints=cons, method="SLSQP",
        options={"ftol": 1e-15, "maxiter": 1000},
    )  # fmt: skip
    return res.x[:d] - res.x[d:]


def feasible_l1(x: torch.Tensor, delta: torch.Tensor, eps) -> None:
    norm1 = delta.flatten(1).abs().sum(1)
    eps_t = torch.as_tensor(eps, dtype=norm1.dtype)
    assert torch.all(norm1 <= eps_t * (1 + 1e-5) + 1e-6), (norm1, eps)
    xa = x + delta
    assert torch.all(xa >= -1e-7) and torch.all(xa <= 1 + 1e-7)


# ---------------------------------------------------------------- oracle 1
def test_first_segment_example_is_exact_and_reference_port_is_not() -> None:
    x = torch.tensor([[0.762, 0.695, 0.088, 0.286]])
    y = torch.tensor([[0.182, -0.908, 1.121, -0.806]])
    delta = project_l1_box(x, y, 1.981)
    expected = torch.tensor([[0.088, -0.695, 0.912, -0.286]])
    torch.testing.assert_close(delta, expected, atol=1e-5, rtol=0)
    feasible_l1(x, delta, 1.981)
    # The faithful port of the reference L1_projection gets this case wrong (infeasible point).
    from pyautoattack.autopgd_base import L1_projection

    ref = y + L1_projection(x, y, 1.981)
    assert abs(float(ref[0, 0]) - 0.182) < 1e-3
    assert float(ref.abs().sum()) > 1.981 + 1e-3 or float((x + ref).max()) > 1 + 1e-6


def _draw_case(rng: np.random.Generator, d: int) -> tuple[np.ndarray, np.ndarray, float]:
    x = rng.random(d)
    special = rng.random(d)
    x[special < 0.15] = 0.0
    x[special > 0.85] = 1.0
    scale = float(rng.choice([1e-3, 0.1, 1.0, 5.0]))
    y = rng.normal(size=d) * scale
    y[rng.random(d) < 0.2] = 0.0
    eps = float(rng.uniform(0.0, 3.0))
    return x, y, eps


def test_l1_box_matches_float64_bisection_and_slsqp() -> None:
    rng = np.random.default_rng(0)
    for case in range(120):
        d = int(rng.integers(1, 9))
        x, y, eps = _draw_case(rng, d)
        got = project_l1_box(
            torch.tensor(x, dtype=torch.float32)[None], torch.tensor(y, dtype=torch.float32)[None],
            eps,
        )[0].double().numpy()  # fmt: skip
        ref = l1_box_bisection(x.astype(np.float32).astype(np.float64),
                               y.astype(np.float32).astype(np.float64), eps)  # fmt: skip
        np.testing.assert_allclose(got, ref, atol=1e-5, err_msg=f"case {case}")
        if case % 3 == 0:
            qp = l1_box_slsqp(x, y, eps)
            np.testing.assert_allclose(got, qp, atol=1e-5, err_msg=f"slsqp case {case}")


@HYP
@given(
    x=st.lists(st.sampled_from([0.0, 1.0, 0.3, 0.5]) | st.floats(0, 1), min_size=1, max_size=8),
    data=st.data(),
    eps=st.floats(0.0, 3.0),
)
def test_l1_box_bisection_property(x: list[float], data: st.DataObject, eps: float) -> None:
    y = data.draw(st.lists(st.floats(-4, 4), min_size=len(x), max_size=len(x)))
    xt = torch.tensor([x], dtype=torch.float64)
    yt = torch.tensor([y], dtype=torch.float64)
    got = project_l1_box(xt, yt, eps)[0].numpy()
    np.testing.assert_allclose(got, l1_box_bisection(np.array(x), np.array(y), eps), atol=1e-7)
    feasible_l1(xt, torch.tensor(got)[None], eps)


# ---------------------------------------------------------------- oracle 2
@pytest.mark.parametrize(
    "kind", ["dense", "sparse", "huge", "zero", "tied", "eps0", "d3072", "batched_eps"]
)
def test_l1_box_never_infeasible(kind: str) -> None:
    g = torch.Generator().manual_seed(1)
    b, d = 16, 64
    x = torch.rand(b, d, generator=g)
    x[:, :5] = 0.0
    x[:, 5:10] = 1.0
    y = torch.randn(b, d, generator=g)
    eps: float | torch.Tensor = 2.5
    if kind == "sparse":
        y = y * (torch.rand(b, d, generator=g) < 0.05)
    elif kind == "huge":
        y = y * 1e4
    elif kind == "zero":
        y = torch.zeros(b, d)
    elif kind == "tied":
        y = torch.full((b, d), 0.37) * torch.sign(torch.randn(b, d, generator=g))
    elif kind == "eps0":
        eps = 0.0
    elif kind == "d3072":
        b, d = 8, 3072
        x = torch.rand(b, d, generator=g)
        y = torch.randn(b, d, generator=g)
        eps = 12.0
    elif kind == "batched_eps":
        eps = torch.linspace(0.0, 6.0, b)
    delta = project_l1_box(x, y, eps)
    feasible_l1(x, delta, eps)
    if kind in ("zero", "eps0"):
        assert torch.equal(delta, torch.zeros_like(delta))
    if kind == "d3072":  # the ball is active: the projection lands on its boundary
        torch.testing.assert_close(delta.abs().sum(1), torch.full((b,), 12.0), rtol=1e-5, atol=0)


def test_l1_box_idempotent_fixed_points_and_variational_inequality() -> None:
    g = torch.Generator().manual_seed(2)
    b, d, eps = 32, 20, 1.5
    x = torch.rand(b, d, generator=g, dtype=torch.float64)
    y = torch.randn(b, d, generator=g, dtype=torch.float64) * 0.8
    p = project_l1_box(x, y, eps)
    torch.testing.assert_close(project_l1_box(x, p, eps), p, atol=1e-6, rtol=0)
    # feasible inputs are left unchanged
    z_dir = torch.rand(b, d, generator=g, dtype=torch.float64) * (1 - x) - torch.rand(
        b, d, generator=g, dtype=torch.float64
    ) * x  # fmt: skip
    shrink = (eps / z_dir.abs().sum(1, keepdim=True)).clamp(max=1.0) * torch.rand(
        b, 1, generator=g, dtype=torch.float64
    )  # fmt: skip
    feasible = z_dir * shrink
    torch.testing.assert_close(project_l1_box(x, feasible, eps), feasible, atol=1e-9, rtol=0)
    # <y - P(y), z - P(y)> <= 0 for random feasible z
    for _ in range(20):
        zd = torch.rand(b, d, generator=g, dtype=torch.float64) * (1 - x) - torch.rand(
            b, d, generator=g, dtype=torch.float64
        ) * x  # fmt: skip
        s = (eps / zd.abs().sum(1, keepdim=True)).clamp(max=1.0) * torch.rand(
            b, 1, generator=g, dtype=torch.float64
        )  # fmt: skip
        z = zd * s
        inner = ((y - p) * (z - p)).sum(1)
        assert torch.all(inner <= 1e-6), inner.max()


def test_l1_box_float32_4d_and_dtype_preserved() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.rand(4, 3, 8, 8, generator=g)
    y = torch.randn(4, 3, 8, 8, generator=g)
    delta = project_l1_box(x, y, 3.0)
    assert delta.shape == y.shape and delta.dtype == torch.float32
    feasible_l1(x, delta, 3.0)


# ---------------------------------------------------------------- every threat's projection
THREAT_FACTORIES = [
    lambda e: LinfBall(e),
    lambda e: L2Ball(e),
    lambda e: L2Ball(e, exact_projection=True),
    lambda e: L1Ball(e),
]


@HYP
@given(
    which=st.integers(0, 3),
    eps=st.floats(0.0, 4.0),
    scale=st.sampled_from([1e-3, 0.1, 1.0, 10.0]),
    seed=st.integers(0, 2**16),
    d=st.integers(1, 12),
)
def test_projection_in_ball_and_box_and_idempotent(
    which: int, eps: float, scale: float, seed: int, d: int
) -> None:
    threat = THREAT_FACTORIES[which](eps)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(5, 1, d, generator=g)
    x[0] = 0.0
    x[1] = 1.0
    cand = x + scale * torch.randn(5, 1, d, generator=g)
    p = threat.project(x, cand)
    assert bool(threat.is_feasible(x, p).all())
    assert torch.all(p >= 0) and torch.all(p <= 1)
    torch.testing.assert_close(threat.project(x, p), p, atol=2e-6, rtol=0)


def test_exact_l2_projection_is_the_closest_feasible_point() -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.rand(64, 6, generator=g, dtype=torch.float64)
    cand = x + torch.randn(64, 6, generator=g, dtype=torch.float64)
    exact = L2Ball(0.4, exact_projection=True).project(x, cand)
    fast = L2Ball(0.4).project(x, cand)
    assert bool(L2Ball(0.4).is_feasible(x, exact).all())
    assert torch.all((exact - cand).norm(dim=1) <= (fast - cand).norm(dim=1) + 1e-9)
    # variational inequality against random feasible points
    for _ in range(10):
        z = L2Ball(0.4).project(x, x + 0.3 * torch.randn(64, 6, generator=g, dtype=torch.float64))
        assert torch.all(((cand - exact) * (z - exact)).sum(1) <= 1e-7)


def test_linf_projection_matches_clip_definition() -> None:
    x = torch.tensor([[0.0, 0.5, 1.0, 0.98]])
    cand = torch.tensor([[-0.2, 0.7, 1.3, 0.9]])
    out = LinfBall(0.1).project(x, cand)
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.6, 1.0, 0.9]]))


# ---------------------------------------------------------------- random starts
@pytest.mark.parametrize("threat", [LinfBall(8 / 255), L2Ball(0.5), L1Ball(12.0)], ids=str)
def test_random_start_feasible_deterministic_and_global_rng_untouched(threat) -> None:
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    state = torch.get_rng_state()
    a = threat.random_start(x, torch.Generator().manual_seed(7))
    b = threat.random_start(x, torch.Generator().manual_seed(7))
    c = threat.random_start(x, torch.Generator().manual_seed(8))
    d = threat.random_start(x, None)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c)
    for point in (a, c, d):
        assert bool(threat.is_feasible(x, point).all())
        assert not torch.equal(point, x)


def test_linf_random_start_styles() -> None:
    x = torch.full((4, 100), 0.5)
    aa = LinfBall(0.1).random_start(x, torch.Generator().manual_seed(0))
    uni = LinfBall(0.1).random_start(x, torch.Generator().manual_seed(0), uniform=True)
    # AutoAttack style: every row touches the sphere; classic: U[-eps, eps] (same draw, eps*t).
    torch.testing.assert_close((aa - x).abs().amax(1), torch.full((4,), 0.1))
    assert torch.all((uni - x).abs() <= 0.1 + 1e-7)
    assert torch.all((uni - x).abs().amax(1) < 0.1)


def test_l2_random_start_on_sphere_away_from_box() -> None:
    x = torch.full((3, 50), 0.5)
    start = L2Ball(0.3).random_start(x, torch.Generator().manual_seed(1))
    torch.testing.assert_close((start - x).norm(dim=1), torch.full((3,), 0.3))


# ---------------------------------------------------------------- ascent steps
def test_linf_and_l2_steps() -> None:
    g = torch.randn(3, 2, 5, generator=torch.Generator().manual_seed(0))
    step = LinfBall(0.1).ascent_step(g, 0.02)
    torch.testing.assert_close(step, 0.02 * g.sign())
    step2 = L2Ball(1.0).ascent_step(g, torch.tensor([0.1, 0.2, 0.3]))
    torch.testing.assert_close(step2.flatten(1).norm(dim=1), torch.tensor([0.1, 0.2, 0.3]))
    assert torch.all((step2 * g).flatten(1).sum(1) > 0)


@pytest.mark.parametrize("rho", [0.05, 0.2])
@pytest.mark.parametrize("d", [20, 192, 3072])
def test_l1_step_mass_and_nonzero_count(rho: float, d: int) -> None:
    g = torch.randn(5, d, generator=torch.Generator().manual_seed(d))
    step = L1Ball(12.0).ascent_step(g, 1.5, sparsity=rho)
    torch.testing.assert_close(step.abs().sum(1), torch.full((5,), 1.5))
    nnz = (step != 0).sum(1)
    assert torch.all(nnz == math.ceil(rho * d - 1e-9)), (nnz, rho * d)
    kept = step != 0
    # kept coordinates carry the largest |g| and the sign of g
    assert torch.all(g.abs()[kept].min() >= 0)
    for row in range(5):
        assert g[row].abs()[kept[row]].min() >= g[row].abs()[~kept[row]].max()
    assert torch.all(torch.sign(step[kept]) == torch.sign(g[kept]))


def test_l1_step_per_sample_sparsity_and_zero_gradient() -> None:
    g = torch.randn(2, 100, generator=torch.Generator().manual_seed(0))
    g[1] = 0.0
    step = L1Ball(1.0).ascent_step(g, torch.tensor([2.0, 2.0]), sparsity=torch.tensor([0.1, 0.5]))
    assert int((step[0] != 0).sum()) == 10
    assert torch.equal(step[1], torch.zeros(100))


def test_distances() -> None:
    x = torch.zeros(1, 4)
    xa = torch.tensor([[0.1, -0.2, 0.0, 0.3]])
    assert float(LinfBall(1).distance(x, xa)) == pytest.approx(0.3)
    assert float(L2Ball(1).distance(x, xa)) == pytest.approx(math.sqrt(0.14))
    assert float(L1Ball(1).distance(x, xa)) == pytest.approx(0.6)


# ---------------------------------------------------------------- parsing and naming
@pytest.mark.parametrize(
    ("text", "cls", "eps"),
    [
        ("linf:8/255", LinfBall, 8 / 255),
        ("Linf:8/255", LinfBall, 8 / 255),
        ("LINF: 0.1", LinfBall, 0.1),
        ("l2:0.5", L2Ball, 0.5),
        ("L2:1.5", L2Ball, 1.5),
        ("l1:12", L1Ball, 12.0),
        ("L1:1e1", L1Ball, 10.0),
        (" l1 : 0 ", L1Ball, 0.0),
    ],
)
def test_parse_threat(text: str, cls: type, eps: float) -> None:
    threat = parse_threat(text)
    assert type(threat) is cls and threat.eps == eps


@HYP
@given(
    norm=st.sampled_from(["linf", "l2", "l1"]),
    eps=st.floats(0.0, 300.0) | st.integers(0, 255).map(lambda k: k / 255),
)
def test_str_round_trips_exactly(norm: str, eps: float) -> None:
    if norm == "linf":
        eps = min(eps, 1.0)  # larger linf radii are rejected (inputs live in [0, 1])
    threat = parse_threat(f"{norm}:{eps!r}")
    assert parse_threat(str(threat)) == threat
    assert str(threat).startswith(norm + ":")


def test_canonical_strings_and_labels() -> None:
    assert str(LinfBall(8 / 255)) == "linf:8/255"
    assert str(L2Ball(0.5)) == "l2:0.5"
    assert str(L1Ball(12)) == "l1:12"
    assert LinfBall(8 / 255).label == "linf 8/255"
    assert LinfBall(4 / 255 + 1e-9).label == "linf 4/255"
    assert LinfBall(0.1).label == "linf 0.1"
    assert LinfBall(0.031).label == "linf 0.031"
    assert L2Ball(0.5).label == "l2 0.5"
    assert L1Ball(12).label == "l1 12"
    assert [to_pyautoattack_norm(t) for t in (LinfBall(1), L2Ball(1), L1Ball(1))] == [
        "Linf",
        "L2",
        "L1",
    ]
    assert LinfBall(0.1).with_eps(0.2) == LinfBall(0.2)
    assert L2Ball(0.1, exact_projection=True).with_eps(0.3).exact_projection


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("l3:1", ["'l3'", "linf, l2, l1"]),
        ("linf", ["'linf'", "NORM:RADIUS"]),
        ("linf:0.1:2", ["NORM:RADIUS"]),
        ("linf:", ["missing radius"]),
        ("linf:-1", ["'-1'", ">= 0"]),
        ("l2:nan", ["'nan'", "finite"]),
        ("l2:inf", ["'inf'", "finite"]),
        ("l1:abc", ["'abc'", "8/255"]),
        ("l1:8/0", ["'8/0'"]),
        ("l1:1/2/3", ["'1/2/3'"]),
    ],
)
def test_parse_errors_are_one_line_config_errors(text: str, fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_threat(text)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_parse_threats_list_and_duplicates() -> None:
    threats = parse_threats("linf:0.1, l2:1.5,l1:10")
    assert threats == [LinfBall(0.1), L2Ball(1.5), L1Ball(10.0)]
    with pytest.raises(ConfigError, match="duplicate"):
        parse_threats("linf:8/255,l2:0.5,Linf:8/255")
    with pytest.raises(ConfigError, match="comma-separated"):
        parse_threats("linf:0.1,,l2:1")
    with pytest.raises(ConfigError):
        parse_threat(3)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), "0.1", True])
def test_threat_constructor_rejects_bad_radius(bad) -> None:
    with pytest.raises(ConfigError, match="eps"):
        LinfBall(bad)


def test_threats_are_frozen_hashable_values() -> None:
    t = L1Ball(12)
    assert isinstance(t, ThreatModel) and t.norm == "l1" and t.eps == 12.0
    assert hash(t) == hash(L1Ball(12.0)) and t != L2Ball(12.0)
    with pytest.raises(AttributeError):
        t.eps = 3.0  # type: ignore[misc]
    with pytest.raises(ConfigError):
        L2Ball(0.5, exact_projection="yes")  # type: ignore[arg-type]


def test_assert_feasible_raises_on_violation() -> None:
    x = torch.full((2, 3), 0.5)
    with pytest.raises(AssertionError, match="infeasible"):
        LinfBall(0.1).assert_feasible(x, x + 0.2)
    with pytest.raises(AssertionError):
        L2Ball(10.0).assert_feasible(x, x + 0.6)  # outside the box
    LinfBall(0.1).assert_feasible(x, x + 0.1)


def test_python_and_numpy_rng_untouched_by_projection_and_start() -> None:
    py, npy = random.getstate(), np.random.get_state()
    x = torch.rand(2, 10, generator=torch.Generator().manual_seed(0))
    L1Ball(1.0).random_start(x, None)
    L1Ball(1.0).project(x, x + 1)
    assert random.getstate() == py
    assert np.array_equal(np.random.get_state()[1], npy[1])
