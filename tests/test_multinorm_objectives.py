"""SAT, AVG, MAX, MSD, E-AT and RAMP objectives: the contract (modes, RNG, rows trained on,
correct/count), selection with explicit ties (oracle §11.7), E-AT weights and state (§11.9)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from _multinorm_toys import Recorder, toy_batch, toy_model

from unirobust.attacks.apgd import apgd_train
from unirobust.attacks.msd import msd
from unirobust.errors import CheckpointError, ConfigError
from unirobust.objectives.avg import Avg
from unirobust.objectives.base import OBJECTIVES, Objective, ObjectiveContext
from unirobust.objectives.eat import Eat, eat_weights
from unirobust.objectives.max import Max
from unirobust.objectives.msd import MsdAT
from unirobust.objectives.multinorm import draw_index, resolve_steps, select_max
from unirobust.objectives.ramp import Ramp
from unirobust.objectives.sat import Sat
from unirobust.threats import L1Ball, L2Ball, LinfBall, ThreatModel

THREATS: list[ThreatModel] = [LinfBall(0.1), L2Ball(0.3), L1Ball(1.0)]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


BUILDERS: dict[str, Callable[[], Objective]] = {
    "sat": lambda: Sat(THREATS, 3, generator=gen()),
    "avg": lambda: Avg(THREATS, 3),
    "max": lambda: Max(THREATS, {"linf": 2, "l2": 3, "l1": 4}),
    "msd": lambda: MsdAT(THREATS, steps=3, generator=gen()),
    "eat": lambda: Eat(THREATS, 3, generator=gen()),
    "ramp": lambda: Ramp(THREATS, 3, pair=("linf", "l1"), lam=2.0),
    "ramp_mse": lambda: Ramp(THREATS, 3, pair=("l2", "linf"), pair_loss="mse"),
    "ramp_cosine": lambda: Ramp(THREATS, 3, pair=("l1", "l2"), pair_loss="cosine"),
    "ramp_trades": lambda: Ramp(THREATS, 3, pair=("linf", "l1"), variant="trades"),
    "ramp_trades_official": lambda: Ramp(
        THREATS, 3, pair=("linf", "l1"), variant="trades", compat="official"
    ),
}
# (train-mode forwards, rows per forward whose logits give correct/count as a multiple of B,
#  index of that forward)
FORWARDS = {"avg": (1, 3, 0), "ramp": (3, 1, 2), "ramp_mse": (3, 1, 2), "ramp_cosine": (3, 1, 2)}
FORWARDS |= {"ramp_trades": (4, 1, 2), "ramp_trades_official": (5, 1, 2)}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_contract_modes_rng_grads_and_counts(name: str) -> None:
    x, y = toy_batch()
    rec = Recorder(toy_model())
    rec.train()
    rec.net[1].eval()  # a mixed-mode model: every flag must come back exactly
    params = list(rec.parameters())
    params[0].requires_grad_(False)
    flags = [m.training for m in rec.modules()]
    rng = torch.get_rng_state()

    out = BUILDERS[name]()(rec, x, y)

    assert [m.training for m in rec.modules()] == flags
    assert [p.requires_grad for p in params] == [False] + [True] * (len(params) - 1)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in params)  # attacks never touch parameter .grad
    n_fw, rows, at = FORWARDS.get(name, (1, 1, 0))
    train = rec.train_calls()
    assert len(train) == n_fw
    assert out.count == rows * len(y)
    logits = train[at][1]
    assert logits.shape[0] == out.count
    expected = (logits.argmax(1) == y.repeat(rows)).sum()
    assert out.correct.dim() == 0 and int(out.correct) == int(expected)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    assert params[1].grad is not None and params[1].grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["sat", "avg", "max", "eat", "ramp", "msd"])
def test_registered_and_built_from_spec(name: str) -> None:
    spec = OBJECTIVES.validate(
        {"name": name, "threats": ["linf:8/255", "l2:0.5", "l1:12"], "steps": 2}
    )
    obj = OBJECTIVES.build(spec, ObjectiveContext(gen()))
    assert isinstance(obj, Objective) and obj.name == name


def test_avg_trains_on_the_three_attacks_concatenated() -> None:
    x, y = toy_batch()
    model = toy_model()
    rec = Recorder(copy.deepcopy(model))
    rec.train()
    out = Avg(THREATS, 3)(rec, x, y)
    ((x_train, _),) = rec.train_calls()
    expected = torch.cat([apgd_train(model, x, y, t, 3).x_best for t in THREATS])
    assert out.count == 3 * len(y) and x_train.shape[0] == 3 * len(y)
    assert torch.equal(x_train, expected)


def test_max_takes_the_highest_eval_mode_loss_per_example() -> None:
    x, y = toy_batch(n=48)
    model = toy_model(seed=1)
    rec = Recorder(copy.deepcopy(model))
    rec.train()
    Max(THREATS, 3)(rec, x, y)
    ((x_train, _),) = rec.train_calls()
    res = {t.norm: apgd_train(model, x, y, t, 3) for t in THREATS}
    losses = torch.stack([res[n].loss_best for n in ("linf", "l1", "l2")])
    winner = losses.argmax(0)
    assert (losses.max(0).values > losses.min(0).values).all()  # no ties in this batch
    assert len(set(winner.tolist())) >= 2  # the selection is not trivially one norm
    for i, j in enumerate(winner.tolist()):
        assert torch.equal(x_train[i], res[("linf", "l1", "l2")[j]].x_best[i])


@pytest.mark.parametrize(
    ("given", "winner"),
    [(["l2", "l1", "linf"], "linf"), (["l2", "l1"], "l1"), (["l1", "linf"], "linf")],
)
def test_max_ties_go_to_linf_then_l1_then_l2(given: list[str], winner: str) -> None:
    # radius 0: every attack returns x with the clean loss, so every example is a tie
    cls = {"linf": LinfBall, "l2": L2Ball, "l1": L1Ball}
    x, y = toy_batch()
    model = toy_model()
    model.train()
    out = Max([cls[n](0.0) for n in given], 2)(model, x, y)
    for n in given:
        assert float(out.metrics[f"picked_{n}"].value) == (1.0 if n == winner else 0.0)


def test_select_max_higher_wins_and_ties_go_first() -> None:
    a, b, c = torch.zeros(4, 2), torch.ones(4, 2), 2 * torch.ones(4, 2)
    la = torch.tensor([1.0, 2.0, 3.0, 3.0])
    lb = torch.tensor([2.0, 2.0, 1.0, 3.0])
    lc = torch.tensor([0.0, 2.0, 4.0, 3.0])
    chosen, index = select_max([a, b, c], [la, lb, lc])
    assert index.tolist() == [1, 0, 2, 0]
    assert chosen[:, 0].tolist() == [1.0, 0.0, 2.0, 0.0]


def test_ramp_ties_go_to_r() -> None:
    x, y = toy_batch()
    model = toy_model()
    model.train()
    zero = [LinfBall(0.0), L2Ball(0.0), L1Ball(0.0)]
    out = Ramp(zero, 2, pair=("linf", "l1"))(model, x, y)
    assert float(out.metrics["picked_q"].value) == 0.0
    out = Ramp(THREATS, 3, pair=("linf", "l1"))(model, x, y)
    assert float(out.metrics["picked_q"].value) > 0.0  # q does win where its loss is higher


def test_msd_objective_trains_on_the_msd_point() -> None:
    x, y = toy_batch()
    model = toy_model()
    rec = Recorder(copy.deepcopy(model))
    rec.train()
    MsdAT(THREATS, steps=4, generator=gen(5))(rec, x, y)
    ((x_train, _),) = rec.train_calls()
    assert torch.equal(x_train, msd(model, x, y, THREATS, n_iter=4, generator=gen(5)))
    assert not torch.equal(x_train, x)


def test_sat_draws_uniformly_from_its_generator() -> None:
    x, y = toy_batch(n=6)
    model = toy_model()
    model.train()

    def norms(seed: int) -> list[int]:
        obj = Sat(THREATS, 1, generator=gen(seed))
        return [int(obj(model, x, y).metrics["norm"].value) for _ in range(24)]

    first = norms(1)
    assert first == norms(1)
    assert first != norms(2)
    assert set(first) == {0, 1, 2}


def test_draw_index_follows_the_weights() -> None:
    g = gen(0)
    counts = torch.bincount(torch.tensor([draw_index([1, 1, 2], g) for _ in range(4000)]))
    assert torch.allclose(counts / 4000.0, torch.tensor([0.25, 0.25, 0.5]), atol=0.03)
    assert all(draw_index([0.0, 1.0, 0.0], g) == 1 for _ in range(200))
    with pytest.raises(ValueError):
        draw_index([0.0, 0.0], g)


@pytest.mark.parametrize(
    ("acc", "expected"),
    [
        ([(0, 0), (5, 10)], [0.5, 0.5]),
        ([(30, 100), (60, 100)], [0.7 / 1.1, 0.4 / 1.1]),
        ([(100, 100), (50, 50)], [0.5, 0.5]),
        ([(0, 7), (7, 7)], [1.0, 0.0]),
    ],
)
def test_eat_weights(acc: list[tuple[int, int]], expected: list[float]) -> None:
    robust, seen = zip(*acc, strict=True)
    assert eat_weights(list(robust), list(seen)) == pytest.approx(expected, abs=1e-12)


def test_eat_samples_only_linf_and_l1_and_never_resets() -> None:
    x, y = toy_batch(n=10)
    model = toy_model()
    model.train()
    obj = Eat(THREATS, 2, generator=gen(3))
    drawn = set()
    for _ in range(12):
        drawn.add(int(obj(model, x, y).metrics["norm"].value))
    state = obj.state_dict()
    assert drawn == {0, 1}
    assert int(state["seen"].sum()) == 12 * len(y)  # accumulated over every call
    assert (state["robust"] <= state["seen"]).all()
    obj.load_state_dict({"robust": torch.tensor([100, 0]), "seen": torch.tensor([100, 100])})
    assert all(int(obj(model, x, y).metrics["norm"].value) == 1 for _ in range(8))  # w = [0, 1]
    assert int(obj.state_dict()["seen"][1]) == 100 + 8 * len(y)


def test_eat_state_round_trip_gives_identical_draws() -> None:
    x, y = toy_batch(n=10)
    model = toy_model(seed=1)
    model.train()
    g = gen(11)
    a = Eat(THREATS, 2, generator=g)
    for _ in range(5):
        a(model, x, y)
    saved, g_state, w_saved = copy.deepcopy(a.state_dict()), g.get_state(), a.weights()
    model_b = copy.deepcopy(model)  # train-mode forwards move BN statistics, so copy it too
    seq_a = [int(a(model, x, y).metrics["norm"].value) for _ in range(10)]

    g_b = torch.Generator()
    g_b.set_state(g_state)
    b = Eat(THREATS, 2, generator=g_b)
    b.load_state_dict(saved)
    assert b.weights() == w_saved != [0.5, 0.5]  # non-uniform: a lost state would show
    seq_b = [int(b(model_b, x, y).metrics["norm"].value) for _ in range(10)]
    assert seq_a == seq_b
    for key in ("robust", "seen"):
        assert torch.equal(a.state_dict()[key], b.state_dict()[key])
    with pytest.raises(CheckpointError):
        b.load_state_dict({"robust": torch.tensor([1, 2])})


def test_steps_per_norm_and_spec_errors() -> None:
    assert resolve_steps({"linf": 5, "l1": 15}, ("linf", "l1")) == {"linf": 5, "l1": 15}
    assert resolve_steps(7, ("linf", "l2")) == {"linf": 7, "l2": 7}
    with pytest.raises(ConfigError, match="missing: l1"):
        resolve_steps({"linf": 5}, ("linf", "l1"))
    with pytest.raises(ConfigError, match="not attacked: l2"):
        resolve_steps({"linf": 5, "l1": 3, "l2": 4}, ("linf", "l1"))
    threats = ["linf:8/255", "l2:0.5", "l1:12"]
    with pytest.raises(ConfigError, match="two linf threats"):
        OBJECTIVES.validate({"name": "max", "threats": [*threats, "linf:4/255"]})
    with pytest.raises(ConfigError, match="eat attacks l1"):
        OBJECTIVES.validate({"name": "eat", "threats": threats[:2]})
    spec = OBJECTIVES.validate({"name": "eat", "threats": threats, "steps": {"linf": 2, "l1": 3}})
    assert spec.steps == {"linf": 2, "l1": 3}
    with pytest.raises(ConfigError, match="msd needs"):
        OBJECTIVES.validate({"name": "msd", "threats": ["linf:0.1", "l2:0.5"]})


def test_max_recorded_loss_is_the_train_mode_ce() -> None:
    x, y = toy_batch()
    rec = Recorder(toy_model())
    rec.train()
    out = Max(THREATS, 2)(rec, x, y)
    ((_, logits),) = rec.train_calls()
    assert torch.allclose(out.loss.detach(), F.cross_entropy(logits, y))
