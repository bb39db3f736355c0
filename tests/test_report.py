"""Reports and comparisons built from synthetic run directories (no training involved)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from unirobust.errors import RunDirError
from unirobust.evaluation.keys import Calibration, Reliability
from unirobust.report import compare_runs, format_results_table, load_run, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _config(name: str = "generalist-fmnist", seed: int = 0) -> dict[str, Any]:
    return {
        "name": name,
        "description": "Generalist on Fashion-MNIST (proxy).",
        "seed": seed,
        "data": {"name": "fashion-mnist", "n_train": 2000, "n_test": 1000, "val_size": 500},
        "model": {"name": "lenet"},
        "train": {
            "epochs": 3,
            "method": "generalist",
            "experts": [
                {"name": "natural", "objective": {"name": "natural"}},
                {
                    "name": "robust",
                    "objective": {"name": "pgd_at", "threat": {"norm": "linf", "eps": 0.1}},
                },
            ],
            "merge": {"name": "ema_mix", "beta": 0.99},
        },
        "eval": {"suite": "pgd-quick"},
    }


VAL_ATTACK = "PGD-20 linf 0.1, 500 val points"

STAGES = {
    "stages": [
        {
            "name": "main",
            "epochs": 3,
            "experts": [
                {
                    "name": "natural",
                    "objective": {"name": "natural"},
                    "optimizer": {"name": "sgd", "momentum": 0.9},
                    "lr_schedule": {"kind": "constant", "value": 0.1},
                },
                {
                    "name": "robust",
                    "objective": {"name": "pgd_at", "threat": "linf:0.1", "steps": 10},
                    "optimizer": {"name": "sgd", "momentum": 0.9},
                    "lr_schedule": {"kind": "constant", "value": 0.05},
                },
            ],
            "merge": {"name": "ema_mix", "beta": 0.99},
            "trainable": "all",
            "bn_mode": "train",
        }
    ]
}


def _epochs(is_best: tuple[bool, ...] = (True, True, False), with_val: bool = True) -> list[dict]:
    events = []
    for i, best in enumerate(is_best, start=1):
        ev: dict[str, Any] = {
            "event": "epoch",
            "epoch": i,
            "time_s": 10.0 + i,
            "images_per_s": 900.0,
            "lr": {"natural": 0.1 / i, "robust": 0.05 / i},
            "mix_weights": {"natural": 0.5, "robust": 0.5},
            "train": {
                "natural": {"loss": 1.0 / i, "acc": 0.6 + 0.1 * i},
                "robust": {"loss": 2.0 / i, "acc": 0.3 + 0.1 * i},
            },
            "is_best": best,
        }
        if with_val:
            ev["val"] = {
                "clean_acc": 0.7 + 0.05 * i,
                "robust_acc": 0.3 + 0.05 * i if i != 3 else 0.32,
                "select": 0.5 + 0.01 * i,
                "attack": VAL_ATTACK,
            }
        events.append(ev)
    return events


def _summary(
    ckpt: str | None, clean: float, linf: float, l2: float, union: float, calib: bool = True
) -> dict[str, Any]:
    s: dict[str, Any] = {
        "suite": "pgd-quick",
        "model_hash": "abc123",
        "dataset": "fashion-mnist",
        "split": "test",
        "n_points": 1000,
        "points": "first 1000 test points",
        "seed": 0,
        "batch_size": 250,
        "threats": ["linf:0.1", "l2:1.5"],
        "threat_labels": ["linf 0.1", "l2 1.5"],
        "union_only": False,
        "clean_acc": clean,
        "robust_acc": {"linf:0.1": linf, "l2:1.5": l2},
        "union_acc": union,
        "wall_time_s": 42.5,
    }
    if ckpt is not None:
        s["checkpoint"] = ckpt
    if calib:
        s["calibration"] = {
            "ece": 0.0412,
            "mce": 0.12,
            "nll": 0.51,
            "brier": 0.25,
            "acc": clean,
            Calibration.RELIABILITY: {  # the keys the evaluation writes (evaluation/keys.py)
                Reliability.CONFIDENCE: [0.15, 0.45, 0.75, 0.95],
                Reliability.ACCURACY: [0.1, 0.4, 0.7, 0.9],
                Reliability.COUNT: [0, 100, 300, 600],
            },
        }
    return s


def make_run(
    root: Path,
    dirname: str = "run",
    *,
    name: str = "generalist-fmnist",
    seed: int = 0,
    evals: dict[str, dict[str, Any]] | None = None,
    epochs: list[dict] | None = None,
    stages: dict[str, Any] | None = STAGES,
) -> Path:
    run = root / dirname
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(_config(name, seed)))
    if stages is not None:
        (run / "stages.json").write_text(json.dumps(stages))
    events = list(_epochs() if epochs is None else epochs)
    events.insert(1, {"event": "resume", "from_epoch": 1})  # unknown events are ignored
    if evals:
        (run / "eval").mkdir()
        for ckpt, summary in evals.items():
            (run / "eval" / f"{ckpt}.json").write_text(json.dumps(summary))
            events.append(
                {"event": "final_eval", "checkpoint": ckpt, "summary_path": f"eval/{ckpt}.json"}
            )
    (run / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return run


def _assert_png(path: Path) -> None:
    assert path.is_file(), path
    data = path.read_bytes()
    assert len(data) > 100
    assert data[:8] == PNG_SIGNATURE


def test_report_full_run(tmp_path: Path) -> None:
    best = _summary(None, 0.8325, 0.4110, 0.5050, 0.3875)  # checkpoint taken from the event
    last = _summary("last", 0.8400, 0.4000, 0.4950, 0.3700, calib=False)
    best["corruptions"] = {
        "mean_acc": 0.6125,
        "per_corruption": {
            "gaussian_noise": {"1": 0.75, "2": 0.6, "3": 0.5},
            "fog": {"1": 0.7, "2": 0.62, "3": 0.505},
        },
    }
    run = make_run(tmp_path, evals={"best": best, "last": last})
    path = write_report(run)

    assert path == run / "report" / "report.md"
    text = path.read_text()
    figures = ("training_curves", "validation", "eval_best", "eval_last", "reliability_best")
    for fig in (*figures, "corruptions_best"):
        _assert_png(run / "report" / f"{fig}.png")
        assert f"]({fig}.png)" in text
    assert not (run / "report" / "reliability_last.png").exists()
    # numbers, shown as percentages with two decimals
    for number in ("83.25", "41.10", "50.50", "38.75", "84.00", "37.00", "4.12", "61.25", "50.50"):
        assert number in text
    assert "first 1000 test points" in text
    assert "pgd-quick" in text
    assert "linf 0.1" in text and "l2 1.5" in text
    assert "abc123" in text
    assert "42.5 s" in text
    # configuration
    assert "Generalist on Fashion-MNIST (proxy)." in text
    assert "fashion-mnist" in text and "lenet" in text and "generalist" in text
    assert "pgd_at" in text and "natural" in text
    assert "natural + pgd_at merged by ema_mix" in text and "ema_mix (beta=0.99)" in text
    assert "sgd (momentum=0.9)" in text and "linf 0.1" in text
    # selection note: epoch 2 was the last flagged is_best
    assert "**epoch 2**" in text
    assert "validation split" in text
    assert "used only for the final evaluation" in text
    assert VAL_ATTACK in text
    assert "not evaluated yet" not in text.lower()


def test_experts_only_from_stages_json(tmp_path: Path) -> None:
    run = make_run(tmp_path, stages=None)  # config.yaml still lists experts: they are not shown
    text = write_report(run).read_text()
    assert "Stages" not in text and "pgd_at" not in text and "ema_mix" not in text
    assert "`generalist`" in text  # the recipe's own method name is still shown
    _assert_png(run / "report" / "training_curves.png")


def test_checkpoint_resolved_from_event_and_best_epoch(tmp_path: Path) -> None:
    epochs = _epochs(is_best=(True, False, True))
    run = make_run(tmp_path, evals={"best": _summary(None, 0.8, 0.4, 0.5, 0.3)}, epochs=epochs)
    rec = load_run(run)
    assert [r.checkpoint for r in rec.summaries()] == ["best"]
    assert rec.best_epoch is not None and rec.best_epoch["epoch"] == 3
    assert "**epoch 3**" in write_report(run).read_text()


def test_report_without_eval_or_val(tmp_path: Path) -> None:
    run = make_run(tmp_path, epochs=_epochs(with_val=False))
    text = write_report(run).read_text()
    assert "not evaluated yet" in text.lower()
    assert "No validation metrics were logged" in text
    _assert_png(run / "report" / "training_curves.png")
    assert not (run / "report" / "validation.png").exists()
    assert "validation.png" not in text


def test_report_skips_bad_lines_and_missing_summary(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    with (run / "metrics.jsonl").open("a") as fh:
        fh.write('{"event": "epoch", "epo\n')  # truncated last line
        fh.write(
            json.dumps({"event": "final_eval", "checkpoint": "last", "summary_path": "x.json"})
        )
    text = write_report(run).read_text()
    assert "not evaluated yet" in text.lower()
    assert "not valid JSON" in text
    assert "x.json" in text and "missing" in text


def test_missing_run_dir_raises_user_error(tmp_path: Path) -> None:
    with pytest.raises(RunDirError):
        write_report(tmp_path / "nope")


def test_format_results_table() -> None:
    a = {**_summary("best", 0.8325, 0.411, 0.505, 0.3875), "union_only": True}
    a["robust_acc"] = {"linf:0.1": None, "l2:1.5": None}
    b = _summary("last", 0.84, 0.4, 0.495, 0.37)
    b["threats"], b["threat_labels"] = ["linf:0.1"], ["linf 0.1"]
    b["robust_acc"], b["union_acc"] = {"linf:0.1": 0.4}, None
    lines = format_results_table([a, b]).splitlines()
    assert len(lines) == 4
    assert "linf 0.1 %" in lines[0] and "l2 1.5 %" in lines[0] and "union %" in lines[0]
    cells_a = [c.strip() for c in lines[2].strip("|").split("|")]
    cells_b = [c.strip() for c in lines[3].strip("|").split("|")]
    expected_a = ["best", "pgd-quick", "1000", "first 1000 test points"]
    assert cells_a == [*expected_a, "83.25", "n/a", "n/a", "38.75"]
    assert cells_b[4:] == ["84.00", "40.00", "—", "—"]
    assert format_results_table([]) == "(no evaluation summaries)"


def test_compare_runs_mean_std_and_skipped(tmp_path: Path) -> None:
    runs = []
    cleans, linfs, unions = [0.80, 0.82, 0.84], [0.40, 0.43, 0.46], [0.30, 0.31, 0.35]
    for seed, (c, r, u) in enumerate(zip(cleans, linfs, unions, strict=True)):
        s = _summary("last", c, r, 0.5, u, calib=False)
        runs.append(make_run(tmp_path, f"gen{seed}", seed=seed, evals={"last": s}))
    s_at = _summary("last", 0.75, 0.45, 0.40, 0.35, calib=False)
    runs.append(make_run(tmp_path, "at0", name="pgd-at", seed=0, evals={"last": s_at}))
    only_best = {"best": _summary("best", 0.7, 0.4, 0.4, 0.3, calib=False)}
    runs.append(make_run(tmp_path, "gen-noeval", seed=3, evals=only_best))

    out = tmp_path / "cmp"
    md_path = compare_runs(runs, out, checkpoint="last", title="Proxy comparison")
    assert md_path == out / "comparison.md"
    _assert_png(out / "tradeoff.png")
    md = md_path.read_text()
    data = json.loads((out / "comparison.json").read_text())

    groups = {g["method"]: g for g in data["groups"]}
    gen = groups["generalist-fmnist"]
    assert gen["n_seeds"] == 3 and gen["seeds"] == [0, 1, 2]
    # hand-computed: means 0.82, 0.43, 0.32; sample stds 0.02, 0.03, sqrt(0.0007)
    assert gen["clean"]["mean"] == pytest.approx(0.82)
    assert gen["clean"]["std"] == pytest.approx(0.02)
    assert gen["robust"]["linf:0.1"]["mean"] == pytest.approx(0.43)
    assert gen["robust"]["linf:0.1"]["std"] == pytest.approx(0.03)
    assert gen["robust"]["l2:1.5"]["std"] == pytest.approx(0.0)
    assert gen["union"]["mean"] == pytest.approx(0.32)
    assert gen["union"]["std"] == pytest.approx(0.0007**0.5)
    assert groups["pgd-at"]["n_seeds"] == 1 and groups["pgd-at"]["clean"]["std"] is None

    assert "82.00 ± 2.00" in md and "43.00 ± 3.00" in md and "32.00 ± 2.65" in md
    assert "3 (0, 1, 2)" in md
    assert "first 1000 test points" in md and "pgd-quick" in md
    assert "Proxy comparison" in md
    assert "## Skipped runs" in md and "gen-noeval" in md
    assert "no evaluation summary for checkpoint `last` (found: best)" in md
    assert [s["run"] for s in data["skipped"]] == [str(runs[-1])]
