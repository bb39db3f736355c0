"""evaluate(): suites, union-only mode, resumable state, sanity checks."""

from __future__ import annotations

import random
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unirobust.attacks import pgd
from unirobust.errors import ConfigError
from unirobust.evaluation.checks import (
    EvaluationWarning,
    check_black_box,
    run_sanity_checks,
)
from unirobust.evaluation.results import NOT_ATTACKED, EvalResults
from unirobust.evaluation.runner import evaluate, order_threats
from unirobust.evaluation.suites import SUITES, Suite, SuiteOutput, get_suite
from unirobust.threats import parse_threats

THREATS = "linf:0.1,l2:0.6,l1:2"


@pytest.fixture(scope="module")
def digits():
    """A digits MLP trained for a fraction of a second (fixed seed) and 1400/397 split."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(data.target, dtype=torch.long)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        perm = torch.randperm(1400, generator=g)
        for i in range(0, 1400, 100):
            b = perm[i : i + 100]
            loss = F.cross_entropy(model(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return model, x[1400:], y[1400:]


def _pgd_suite(calls: list[int] | None = None) -> Suite:
    """A per-point deterministic suite: PGD without random start, best iterate."""

    def fn(model, x, y, threat, *, seed, batch_size):
        if calls is not None:
            calls.append(int(x.shape[0]))
        x_adv = pgd(model, x, y, threat, steps=10, random_start=False, return_best=True)
        with torch.no_grad():
            robust = model(x_adv).argmax(1) == y
        return SuiteOutput(robust=robust, fooled_by={"pgd": ~robust})

    return Suite(name="pgd-det", description="test PGD", attacks=("pgd",), fn=fn)


# --------------------------------------------------------------------------- basics
def test_unknown_suite_lists_names():
    with pytest.raises(ConfigError) as err:
        get_suite("aa-plus")
    for name in ("aa-standard", "aa-apgd", "fast"):
        assert name in str(err.value)
    assert set(SUITES) == {"aa-standard", "aa-apgd", "fast"}


def test_union_order():
    threats = parse_threats("l2:0.5,linf:0.1,l1:3")
    assert [t.norm for t in order_threats(threats, True)] == ["linf", "l1", "l2"]
    assert [t.norm for t in order_threats(threats, False)] == ["l2", "linf", "l1"]


@pytest.mark.parametrize("suite", ["aa-standard", "aa-apgd", "fast"])
def test_eps_zero_robust_equals_clean(digits, suite):
    model, x, y = digits
    res = evaluate(
        model,
        x[:60],
        y[:60],
        np.arange(60),
        threats="linf:0,l2:0,l1:0",
        suite=suite,
        batch_size=32,
    )
    assert res.clean_acc() > 0.8
    for spec in res.threats:
        np.testing.assert_array_equal(res.robust[spec], res.clean_correct.astype(np.int8))
        assert res.robust_acc(spec) == res.clean_acc()
    assert res.union_acc() == res.clean_acc()


def test_fast_suite_eps_zero_returns_clean_flags(digits):
    model, x, y = digits
    out = SUITES["fast"].run(model, x[:20], y[:20], "l2:0", seed=0)
    with torch.no_grad():
        assert torch.equal(out.robust, model(x[:20]).argmax(1) == y[:20])


def test_evaluate_keeps_rng_and_mode(digits):
    model, x, y = digits
    model.train()
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    states = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    res = evaluate(model, x[:40], y[:40], None, threats="linf:0.05", suite="fast", batch_size=40)
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1])
    assert random.getstate() == states[2]
    assert model.training
    model.eval()
    assert res.suite == "fast" and res.n_points == 40 and res.points == "first 40 test points"
    assert res.threat_labels == ["linf 0.05"]


def test_aa_apgd_end_to_end_small(digits):
    """The paper protocol through evaluate(): real pyautoattack run on a few points."""
    model, x, y = digits
    res = evaluate(
        model, x[:10], y[:10], np.arange(10), threats="linf:0.1", suite="aa-apgd", batch_size=10
    )
    column = res.robust["linf:0.1"]
    assert set(np.unique(column)) <= {0, 1}
    assert not (column[~res.clean_correct] == 1).any()
    assert res.robust_acc("linf:0.1") < res.clean_acc()
    assert res.summary()["suite"] == "aa-apgd" and res.wall_time_s > 0


# --------------------------------------------------------------------------- union-only
def test_union_only_matches_full_with_deterministic_suite(digits):
    model, x, y = digits
    calls_full: list[int] = []
    calls_union: list[int] = []
    kw = dict(threats=THREATS, batch_size=16, seed=0)
    full = evaluate(model, x[:120], y[:120], np.arange(120), suite=_pgd_suite(calls_full), **kw)
    union = evaluate(
        model,
        x[:120],
        y[:120],
        np.arange(120),
        suite=_pgd_suite(calls_union),
        union_only=True,
        **kw,
    )
    assert union.threats == ["linf:0.1", "l1:2", "l2:0.6"]
    assert union.union_acc() == full.union_acc()
    np.testing.assert_array_equal(union.union_flags(), full.union_flags())
    assert 0 < full.union_acc() < full.clean_acc()
    assert sum(calls_union) < sum(calls_full)  # later norms attack fewer points
    assert union.robust_acc("linf:0.1") == full.robust_acc("linf:0.1")  # first norm: complete
    assert union.robust_acc("l1:2") is None and union.robust_acc("l2:0.6") is None
    assert (union.robust["l2:0.6"] == NOT_ATTACKED).any()
    summary = union.summary()
    assert summary["union_only"] is True and summary["robust_acc"]["l2:0.6"] is None


def test_union_only_matches_full_fast_suite_per_point(digits):
    """The real fast suite (random starts) is per-point deterministic at batch_size=1."""
    model, x, y = digits
    kw = dict(threats="linf:0.1,l1:2", suite="fast", batch_size=1, seed=0)
    full = evaluate(model, x[:8], y[:8], np.arange(8), **kw)
    union = evaluate(model, x[:8], y[:8], np.arange(8), union_only=True, **kw)
    assert union.union_acc() == full.union_acc() < full.clean_acc()
    np.testing.assert_array_equal(union.union_flags(), full.union_flags())
    assert (union.robust["l1:2"] == NOT_ATTACKED).any()  # union-only really skipped points


# --------------------------------------------------------------------------- resume
class _Killed(RuntimeError):
    pass


def test_resume_after_kill_equals_uninterrupted(digits, tmp_path):
    model, x, y = digits
    n = 100
    kw = dict(threats=THREATS, batch_size=16, seed=0, union_only=True)
    ref_calls: list[int] = []
    ref = evaluate(model, x[:n], y[:n], np.arange(n), suite=_pgd_suite(ref_calls), **kw)

    state = tmp_path / "state.npz"
    seen: list[tuple[str, int]] = []

    def kill_in_second_threat(spec, k, n_chunks):
        seen.append((spec, k))
        if spec == "l1:2" and k == 1:
            raise _Killed

    first_calls: list[int] = []
    with pytest.raises(_Killed):
        evaluate(
            model,
            x[:n],
            y[:n],
            np.arange(n),
            suite=_pgd_suite(first_calls),
            state_path=state,
            on_chunk=kill_in_second_threat,
            **kw,
        )
    assert state.exists()
    resumed_calls: list[int] = []
    resumed = evaluate(
        model,
        x[:n],
        y[:n],
        np.arange(n),
        suite=_pgd_suite(resumed_calls),
        state_path=state,
        **kw,
    )
    # nothing re-attacked: the two sessions together made exactly the uninterrupted calls
    assert first_calls + resumed_calls == ref_calls
    assert len(first_calls) == len(seen)
    for spec in ref.threats:
        np.testing.assert_array_equal(resumed.robust[spec], ref.robust[spec])
    assert resumed.union_acc() == ref.union_acc()
    assert resumed.wall_time_s > 0

    # a finished state returns the results without attacking
    again_calls: list[int] = []
    again = evaluate(
        model, x[:n], y[:n], np.arange(n), suite=_pgd_suite(again_calls), state_path=state, **kw
    )
    assert again_calls == []
    assert again.union_acc() == ref.union_acc()


def test_state_of_other_evaluation_is_refused(digits, tmp_path):
    model, x, y = digits
    state = tmp_path / "s.npz"
    kw = dict(threats="linf:0.05", batch_size=32, state_path=state, suite=_pgd_suite())
    evaluate(model, x[:40], y[:40], None, seed=0, **kw)
    with pytest.raises(ConfigError, match="seed"):
        evaluate(model, x[:40], y[:40], None, seed=1, **kw)
    with pytest.raises(ConfigError, match="data_hash"):
        evaluate(model, x[1:41], y[1:41], None, seed=0, **kw)
    with np.load(state, allow_pickle=False) as arrays:  # no pickled objects in the state
        assert set(arrays.files) >= {"meta", "robust", "chunks_done", "clean_correct"}


def test_results_round_trip_from_evaluate(digits, tmp_path):
    model, x, y = digits
    res = evaluate(
        model,
        x[:30],
        y[:30],
        np.arange(500, 530),
        threats="linf:0.05,l2:0.3",
        suite=_pgd_suite(),
        batch_size=30,
        dataset="digits",
        split="test",
    )
    _, js = res.save(tmp_path)
    back = EvalResults.load(js)
    assert back.summary() == res.summary()
    assert back.summary()["points"] == "test points 500..529 (30 points)"
    assert back.dataset == "digits" and back.model_hash == res.model_hash


# --------------------------------------------------------------------------- checks
class _Softmax(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return torch.softmax(self.inner(x), dim=1)


class _EvalDropout(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(F.dropout(x, p=0.5, training=True))  # stochastic even in eval mode


class _Quantised(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(torch.round(x * 4) / 4)  # zero input gradient everywhere


def _messages(model, x, y):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        msgs = run_sanity_checks(model, x, y)
    assert [str(w.message) for w in caught if w.category is EvaluationWarning] == msgs
    return msgs


def test_checks_clean_model_is_quiet(digits):
    model, x, y = digits
    assert _messages(model, x[:50], y[:50]) == []


def test_checks_fire_on_softmax_model(digits):
    model, x, y = digits
    msgs = _messages(_Softmax(model), x[:50], y[:50])
    assert any("probabilities" in m for m in msgs)


def test_checks_fire_on_stochastic_model(digits):
    model, x, y = digits
    torch.manual_seed(3)
    before = torch.get_rng_state()
    msgs = _messages(_EvalDropout(model), x[:50], y[:50])
    assert any("stochastic" in m for m in msgs)
    assert torch.equal(torch.get_rng_state(), before)


def test_checks_fire_on_zero_gradients(digits):
    model, x, y = digits
    msgs = _messages(_Quantised(model), x[:20], y[:20])
    assert any("zero input gradient" in m for m in msgs)


def test_evaluate_warns_on_softmax_model(digits):
    model, x, y = digits
    with pytest.warns(EvaluationWarning, match="probabilities"):
        evaluate(_Softmax(model), x[:20], y[:20], None, threats="linf:0", suite="aa-apgd")


def test_black_box_check():
    assert check_black_box({"apgd-ce": 30, "apgd-t": 5, "square": 0}, 1000) is None
    assert check_black_box({"apgd-ce": 30, "apgd-t": 5, "square": 2}, 1000) is None  # 0.2 %
    msg = check_black_box({"apgd-ce": 30, "square": np.array([True] * 5 + [False] * 995)}, 1000)
    assert msg is not None and "square" in msg
    assert check_black_box({"square": 50}, 1000) is None  # nothing to compare with
