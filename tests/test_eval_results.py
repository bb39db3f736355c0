"""Per-sample evaluation results: union = AND (multinorm.md §11 oracle 10), io, hashing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unirobust.errors import ConfigError
from unirobust.evaluation.results import NOT_ATTACKED, EvalResults, describe_points, model_hash

SUMMARY_KEYS = {
    "suite",
    "model_hash",
    "dataset",
    "split",
    "n_points",
    "points",
    "seed",
    "batch_size",
    "threats",
    "threat_labels",
    "union_only",
    "clean_acc",
    "robust_acc",
    "union_acc",
    "wall_time_s",
}


def _table() -> EvalResults:
    # 6 points; point 5 is clean-wrong.
    clean = np.array([1, 1, 1, 1, 1, 0], dtype=bool)
    return EvalResults(
        indices=np.arange(10, 16),
        labels=np.array([0, 1, 2, 3, 4, 5]),
        clean_correct=clean,
        robust={
            "linf:0.1": np.array([1, 1, 0, 1, 0, 0], dtype=np.int8),
            "l2:0.5": np.array([1, 0, 1, 1, 0, 0], dtype=np.int8),
            "l1:2": np.array([1, 1, 1, 0, 1, 0], dtype=np.int8),
        },
        suite="aa-apgd",
        threat_labels=["linf 0.1", "l2 0.5", "l1 2"],
        model_hash="abc",
        dataset="toy",
        seed=3,
        batch_size=4,
        wall_time_s=1.5,
    )


def test_union_is_per_sample_and():
    res = _table()
    assert res.clean_acc() == pytest.approx(5 / 6)
    assert res.robust_acc("linf:0.1") == pytest.approx(3 / 6)
    assert res.robust_acc("l2:0.5") == pytest.approx(3 / 6)
    assert res.robust_acc("l1:2") == pytest.approx(4 / 6)
    # only point 0 is robust under all three
    assert res.union_acc() == pytest.approx(1 / 6)
    assert res.union_acc(["linf:0.1", "l1:2"]) == pytest.approx(2 / 6)
    np.testing.assert_array_equal(res.union_flags(), [1, 0, 0, 0, 0, 0])
    # averaging per-norm accuracies would be wrong (and larger)
    assert res.union_acc() < np.mean([res.robust_acc(t) for t in res.threats])


def test_union_with_no_threats_is_clean():
    assert _table().union_acc([]) == pytest.approx(5 / 6)


def test_clean_wrong_marked_robust_is_refused():
    with pytest.raises(ValueError, match="clean-misclassified"):
        EvalResults(
            indices=np.arange(2),
            labels=np.zeros(2),
            clean_correct=np.array([True, False]),
            robust={"linf:0.1": np.array([1, 1])},
        )


@settings(max_examples=60, deadline=None, database=None)
@given(
    st.integers(min_value=1, max_value=40).flatmap(
        lambda n: st.tuples(
            st.lists(st.booleans(), min_size=n, max_size=n),
            st.lists(st.lists(st.booleans(), min_size=n, max_size=n), min_size=1, max_size=3),
        )
    )
)
def test_union_properties_random_tables(data):
    clean_list, columns = data
    clean = np.array(clean_list)
    robust = {
        f"linf:{i + 1}": (np.array(col) & clean).astype(np.int8) for i, col in enumerate(columns)
    }
    res = EvalResults(
        indices=np.arange(clean.size),
        labels=np.zeros(clean.size),
        clean_correct=clean,
        robust=robust,
    )
    union = res.union_acc()
    expected = np.logical_and.reduce([clean, *[c == 1 for c in robust.values()]]).mean()
    assert union == pytest.approx(expected)
    assert union <= res.clean_acc() + 1e-12
    for spec in robust:
        assert union <= res.robust_acc(spec) + 1e-12
    assert not (res.union_flags()[~clean] == 1).any()


def test_union_only_columns():
    clean = np.array([1, 1, 1, 0], dtype=bool)
    res = EvalResults(
        indices=np.arange(4),
        labels=np.zeros(4),
        clean_correct=clean,
        robust={
            "linf:0.1": np.array([1, 0, 1, 0]),
            "l1:2": np.array([1, NOT_ATTACKED, 0, 0]),
            "l2:0.5": np.array([1, NOT_ATTACKED, NOT_ATTACKED, 0]),
        },
        union_only=True,
    )
    assert res.robust_acc("linf:0.1") == pytest.approx(0.5)
    assert res.robust_acc("l1:2") is None
    assert res.robust_acc("l2:0.5") is None
    assert res.union_acc() == pytest.approx(0.25)
    assert res.union_acc(["linf:0.1", "l1:2"]) == pytest.approx(0.25)
    # without linf, point 1's l1 status is unknown -> undefined
    assert res.union_acc(["l1:2", "l2:0.5"]) is None
    summary = res.summary()
    assert summary["robust_acc"] == {"linf:0.1": 0.5, "l1:2": None, "l2:0.5": None}
    assert summary["union_acc"] == pytest.approx(0.25)


def test_unknown_threat_lists_available():
    with pytest.raises(ConfigError, match=r"linf:0\.1"):
        _table().robust_acc("l2:9")


def test_subset_recomputes_without_attacking():
    res = _table()
    sub = res.subset(indices=[10, 12, 15])
    np.testing.assert_array_equal(sub.indices, [10, 12, 15])
    assert sub.n_points == 3
    assert sub.union_acc() == pytest.approx(1 / 3)
    assert sub.clean_acc() == pytest.approx(2 / 3)
    masked = res.subset(mask=res.labels < 2, threats=["l2:0.5"])
    assert masked.threats == ["l2:0.5"] and masked.threat_labels == ["l2 0.5"]
    assert masked.robust_acc("l2:0.5") == pytest.approx(0.5)
    with pytest.raises(ConfigError):
        res.subset(indices=[99])


def _logits_for(labels: np.ndarray, correct: np.ndarray, classes: int = 6) -> np.ndarray:
    """Logits whose argmax is the label exactly where ``correct``."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(labels.size, classes)).astype(np.float32)
    target = np.where(correct, labels, (labels + 1) % classes)
    logits[np.arange(labels.size), target] += 10.0
    return logits


def test_save_load_round_trip(tmp_path):
    res = _table()
    res.logits = _logits_for(res.labels, res.clean_correct)
    res.val_logits = _logits_for(np.arange(6), np.array([1, 1, 1, 0, 1, 1], dtype=bool))
    res.val_labels = np.arange(6)
    res.calibration = True
    res.corrupted = {"fog:1": res.clean_correct, "fog:3": np.zeros(6, dtype=bool)}
    npz, js = res.save(tmp_path, stem="ev")
    assert npz.name == "ev.npz" and js.name == "ev.json"
    summary = json.loads(js.read_text())
    assert set(summary) == SUMMARY_KEYS | {"groups", "calibration", "corruptions"}
    assert summary["groups"] == ["clean", "threats", "union", "calibration", "corruptions"]
    assert summary["calibration"]["acc"] == pytest.approx(summary["clean_acc"])
    assert summary["calibration"]["temperature"] > 0
    assert summary["corruptions"]["per_corruption"] == {"fog": {"1": 5 / 6, "3": 0.0}}
    assert summary["points"] == "test points 10..15 (6 points)"
    assert summary["union_acc"] == pytest.approx(1 / 6)
    assert summary["threats"] == ["linf:0.1", "l2:0.5", "l1:2"]
    for path in (npz, js, tmp_path / "ev"):
        back = EvalResults.load(path)
        np.testing.assert_array_equal(back.indices, res.indices)
        np.testing.assert_array_equal(back.labels, res.labels)
        np.testing.assert_array_equal(back.clean_correct, res.clean_correct)
        assert back.threats == res.threats and back.threat_labels == res.threat_labels
        for spec in res.threats:
            np.testing.assert_array_equal(back.robust[spec], res.robust[spec])
        np.testing.assert_array_equal(back.logits, res.logits)
        np.testing.assert_array_equal(back.val_logits, res.val_logits)
        assert back.logits.dtype == np.float32
        assert back.summary() == res.summary()
    with np.load(npz, allow_pickle=False) as arrays:
        assert arrays["robust"].dtype == np.int8


def test_no_threats_table_and_logits_must_agree(tmp_path):
    labels = np.array([0, 1, 2])
    correct = np.array([1, 0, 1], dtype=bool)
    res = EvalResults(indices=np.arange(3), labels=labels, clean_correct=correct, robust={})
    res.logits = _logits_for(labels, correct)
    summary = EvalResults.load(res.save(tmp_path, stem="c")[0]).summary()
    assert summary["groups"] == ["clean"] and summary["robust_acc"] == {}
    assert summary["union_acc"] is None and summary["clean_acc"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="argmax"):
        EvalResults(
            indices=np.arange(3),
            labels=labels,
            clean_correct=~correct,
            robust={},
            logits=_logits_for(labels, correct),
        )


def test_default_stem_and_missing_file(tmp_path):
    res = _table()
    npz, _ = res.save(tmp_path)
    assert npz.name == "eval_aa-apgd_test6.npz"
    with pytest.raises(ConfigError):
        EvalResults.load(tmp_path / "nope.npz")


def test_describe_points():
    assert describe_points(np.arange(1000)) == "first 1000 test points"
    assert "selected" in describe_points(np.array([5, 3, 9]), "val")


def test_model_hash_stable_and_sensitive():
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    b = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    b.load_state_dict(a.state_dict())
    assert model_hash(a) == model_hash(b)
    assert len(model_hash(a)) == 16
    with torch.no_grad():
        b[0].weight[0, 0] += 1e-6
    assert model_hash(a) != model_hash(b)
    b.load_state_dict(a.state_dict())
    b[1].running_mean += 1.0  # buffers count too
    assert model_hash(a) != model_hash(b)
    assert model_hash(a.to(torch.bfloat16)) != model_hash(b)
