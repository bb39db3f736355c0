"""Train -> evaluate (clean, threats, union, calibration, corruptions) -> report, end to end.

The report must read exactly what the pipeline writes: every figure it promises exists, and the
numbers in its tables are the numbers of the evaluation summaries.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import tiny_recipe

from unirobust.config import EvalConfig, validate_recipe
from unirobust.pipeline import evaluate_run, train
from unirobust.report import write_report

pytest.importorskip("imagecorruptions")


def _pct(value: float) -> str:
    return f"{100.0 * value:.2f}"


def _table_rows(text: str, first_header: str) -> list[list[str]]:
    """Rows (cells stripped) of the markdown table whose header starts with ``first_header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header}"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def test_train_evaluate_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNIROBUST_CACHE", str(tmp_path / "cache"))
    recipe = tiny_recipe()
    recipe["train"]["epochs"] = 2
    run = train(validate_recipe(recipe), out=tmp_path / "run", progress=False)
    spec = EvalConfig(
        suite="fast",
        threats=["linf:0.05", "l2:0.5"],
        n=40,
        batch_size=40,
        corruptions=["gaussian_noise", "brightness"],
        corruption_severities=[1],
    )
    summaries = evaluate_run(run, spec)
    assert [s["checkpoint"] for s in summaries] == ["best", "last"]
    for s in summaries:
        assert s["groups"] == ["clean", "threats", "union", "calibration", "corruptions"]

    report = write_report(run)
    text = report.read_text()

    # every promised figure exists, and each evaluation has its three figures
    promised = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    for name in promised:
        assert (report.parent / name).is_file(), name
    expected = {"training_curves.png"}
    for s in summaries:
        stem = f"{s['checkpoint']}-fast"
        expected |= {f"eval_{stem}.png", f"reliability_{stem}.png", f"corruptions_{stem}.png"}
    assert expected <= set(promised)

    # the results table shows the summaries' numbers
    rows = {row[0]: row for row in _table_rows(text, "checkpoint")}
    for s in summaries:
        row = rows[s["checkpoint"]]
        assert row[1] == "fast" and row[2] == "40"
        numbers = [s["clean_acc"], s["robust_acc"]["linf:0.05"], s["robust_acc"]["l2:0.5"]]
        assert row[4:] == [_pct(v) for v in [*numbers, s["union_acc"]]]

    # per-checkpoint sections: calibration and corruption tables, from the same summaries
    sections = text.split("### Checkpoint ")[1:]
    assert len(sections) == len(summaries)
    for section, s in zip(sections, summaries, strict=True):
        assert section.startswith(f"`{s['checkpoint']}`")
        cal = dict(row[:2] for row in _table_rows(section, "Calibration"))
        c = s["calibration"]
        assert cal["ECE (%)"] == _pct(c["ece"]) and cal["MCE (%)"] == _pct(c["mce"])
        assert cal["NLL"] == f"{c['nll']:.4f}" and cal["Accuracy (%)"] == _pct(s["clean_acc"])
        assert cal["Temperature (fitted)"] == f"{c['temperature']:.4f}"
        cor = {row[0]: row[1] for row in _table_rows(section, "Corruption")}
        per = s["corruptions"]["per_corruption"]
        assert cor == {name: _pct(per[name]["1"]) for name in ("gaussian_noise", "brightness")}
