"""Adversarial examples kept by the evaluation, their report figure, and the three-method demo."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from unirobust.cli import DEMO_RECIPES, app
from unirobust.evaluation import EvalResults, evaluate
from unirobust.report import write_report
from unirobust.report.examples import class_names

THREATS = ["linf:0.1", "l2:0.5"]
PNG = b"\x89PNG\r\n\x1a\n"


class _Stop(Exception):
    pass


@pytest.fixture(scope="module")
def linear_digits():
    """A linear digits classifier (full-batch SGD, fixed seed) and 24 held-out points."""
    from sklearn.datasets import load_digits

    features, target = load_digits(return_X_y=True)
    x = torch.tensor(features / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(target, dtype=torch.long)
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(60):
        opt.zero_grad()
        F.cross_entropy(model(x[:1000]), y[:1000]).backward()
        opt.step()
    return model.eval(), x[1000:1024], y[1000:1024]


def _evaluate(linear_digits, **kw) -> EvalResults:
    model, x, y = linear_digits
    idx = np.arange(500, 500 + x.shape[0])
    return evaluate(model, x, y, idx, threats=THREATS, suite="fast", batch_size=6, **kw)


@pytest.fixture(scope="module")
def table(linear_digits) -> EvalResults:
    return _evaluate(linear_digits)


def test_examples_are_the_first_attacked_points_and_survive_resume(linear_digits, table, tmp_path):
    model, x, _ = linear_digits
    first = table.indices[table.clean_correct][:8]  # spans two chunks of 6 points
    assert list(table.examples) == THREATS
    for spec, ex in table.examples.items():
        np.testing.assert_array_equal(ex.indices, first)
        rows = ex.indices - 500
        np.testing.assert_array_equal(ex.labels, table.labels[rows])
        np.testing.assert_array_equal(ex.x, x[rows].numpy())
        with torch.no_grad():
            pred = model(torch.from_numpy(ex.x_adv)).argmax(1).numpy()
        np.testing.assert_array_equal(ex.pred, pred)
        # the stored input is the one that decided the verdict: fooled exactly when not robust
        np.testing.assert_array_equal(ex.fooled, table.robust[spec][rows] == 0)
        delta = (ex.x_adv - ex.x).reshape(len(ex), -1)
        norms = np.abs(delta).max(1) if spec.startswith("linf") else np.sqrt((delta**2).sum(1))
        assert (norms <= float(spec.split(":")[1]) + 1e-5).all()
    assert 0 < table.examples["linf:0.1"].fooled.sum() < 8

    # killed after the first chunk of l2, resumed: the same examples, nothing lost
    state = tmp_path / "state.npz"

    def stop(spec: str, k: int, n_chunks: int) -> None:
        if spec == "l2:0.5" and k == 0:
            raise _Stop

    with pytest.raises(_Stop):
        _evaluate(linear_digits, state_path=state, on_chunk=stop)
    resumed = _evaluate(linear_digits, state_path=state)
    for spec, ex in table.examples.items():
        for key in ("indices", "labels", "pred", "x", "x_adv"):
            np.testing.assert_array_equal(getattr(resumed.examples[spec], key), getattr(ex, key))

    # saved with the table and read back; a subset keeps the examples of its points
    table.save(tmp_path, stem="t")
    loaded = EvalResults.load(tmp_path / "t")
    np.testing.assert_array_equal(loaded.examples["l2:0.5"].x_adv, table.examples["l2:0.5"].x_adv)
    part = loaded.subset(indices=first[:3], threats=["l2:0.5"])
    assert list(part.examples) == ["l2:0.5"]
    np.testing.assert_array_equal(part.examples["l2:0.5"].indices, first[:3])


def _run_with_table(root: Path, table: EvalResults) -> Path:
    (root / "eval").mkdir(parents=True)
    (root / "config.yaml").write_text("name: tiny-examples\nseed: 0\n")
    _, summary = table.save(root / "eval", stem="last-fast")
    data = json.loads(summary.read_text())
    summary.write_text(json.dumps({**data, "checkpoint": "last"}))
    return root


def test_report_shows_one_example_figure_per_threat(table, tmp_path):
    run = _run_with_table(tmp_path / "run", table)
    text = write_report(run).read_text()
    for spec, slug in (("linf:0.1", "linf_0.1"), ("l2:0.5", "l2_0.5")):
        name = f"examples_last-fast_{slug}.png"
        assert (run / "report" / name).read_bytes()[:8] == PNG
        caption = text.split(f"]({name})", 1)[1].split("\n\n", 2)[1]
        norm, eps = spec.split(":")
        assert f"(norm {norm}, eps {eps})" in caption and "`fast: apgd-ce + apgd-t`" in caption
        ex = table.examples[spec]
        assert ", ".join(str(i) for i in ex.indices) in caption
        assert f"{int(ex.fooled.sum())} of 8 fooled" in caption
    html = (run / "report" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(re.findall(r"!\[", text))

    # a table written without examples (older evaluations) gets no such figure
    bare = _run_with_table(tmp_path / "bare", dataclasses.replace(table, examples={}))
    assert "examples_" not in write_report(bare).read_text()
    assert class_names("fashion_mnist")[9] == "Ankle boot" and class_names("digits") is None


def _table_rows(text: str) -> dict[str, list[str]]:
    rows = [line for line in text.splitlines() if line.startswith("| ")][2:]
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    return {c[0]: c for c in cells}


def test_demo_compares_three_methods_on_the_same_points(tmp_path):
    sets = [
        "data.name=digits",
        "data.n_train=200",
        "data.val_size=100",
        "model.name=mlp",
        "train.epochs=3",
        "validation.steps=2",
        "eval.suite=fast",
        "eval.n=20",
    ]
    args = ["demo", "--out", str(tmp_path / "demo"), "--quiet"]
    result = CliRunner().invoke(app, args + [a for s in sets for a in ("--set", s)])
    assert result.exit_code == 0, result.output
    assert "under linf eps 0.1 on the same first 20 test points" in result.output
    comparison = tmp_path / "demo" / "comparison" / "comparison.md"
    assert f"comparison: {comparison.with_suffix('.html')}" in result.output
    assert (comparison.parent / "tradeoff.png").read_bytes()[:8] == PNG
    text = comparison.read_text()
    assert "under linf eps 0.1 on the same first 20 test points" in text.split("|", 1)[0]
    assert "`../fmnist-demo-pgd-at/report/report.html`" in text
    rows = _table_rows(text)
    assert sorted(rows) == sorted(DEMO_RECIPES)
    for name in DEMO_RECIPES:
        run = tmp_path / "demo" / name
        summary = json.loads((run / "eval" / "last-fast.json").read_text())
        assert summary["points"] == "first 20 test points"
        clean, robust = summary["clean_acc"], summary["robust_acc"]["linf:0.1"]
        assert rows[name][2:4] == [f"{100 * clean:.2f}", f"{100 * robust:.2f}"]
        assert (run / "report" / "report.html").is_file()
        assert (run / "report" / "examples_last-fast_linf_0.1.png").is_file()
