"""Stored evaluation point lists (multinorm.md §8): the ImageNet list and ``eval.points``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_recipe
from typer.testing import CliRunner

from unirobust.cli import app
from unirobust.config import EvalConfig, validate_recipe
from unirobust.engine.checkpoint import import_weights
from unirobust.errors import ConfigError
from unirobust.evaluation import EvalResults
from unirobust.evaluation.points import read_points
from unirobust.models import build_model
from unirobust.pipeline import evaluate_run, train


def test_imagenet_list_is_the_documented_unbiased_draw() -> None:
    points = read_points("imagenet-val-10k")
    assert points.size == 10_000 and np.unique(points).size == 10_000
    assert points.min() >= 0 and points.max() < 50_000
    # how it was drawn (evaluation/points.py); the stored file stays authoritative
    assert np.array_equal(points, np.random.default_rng(0).permutation(50_000)[:10_000])
    # the validation folder is class-sorted (50 images per class): every block of 100 classes
    # holds about a tenth of the list, and so does every block for the list's first 1000
    for prefix, expected, slack in ((points, 1000, 150), (points[:1000], 100, 45)):
        per_block = np.bincount(prefix // 5000, minlength=10)
        assert np.all(np.abs(per_block - expected) <= slack), per_block
    classes = np.unique(points // 50)
    assert classes.size > 990  # nearly every class appears


def test_read_points_keeps_the_list_order_and_takes_the_first_n(tmp_path: Path) -> None:
    listed = tmp_path / "points.txt"
    listed.write_text("9\n0\n5\n3\n")
    assert read_points(str(listed)).tolist() == [9, 0, 5, 3]
    assert read_points(str(listed), 2).tolist() == [9, 0]
    np.save(tmp_path / "points.npy", np.array([4, 1]))
    assert read_points(str(tmp_path / "points.npy")).tolist() == [4, 1]
    assert read_points(str(listed), 1000).tolist() == [9, 0, 5, 3]  # eval.n's default


def test_points_option_is_checked_at_load(tmp_path: Path) -> None:
    assert EvalConfig(points="imagenet-val-10k").points == "imagenet-val-10k"
    with pytest.raises(ConfigError, match="neither a built-in list"):
        validate_recipe(tiny_recipe(eval={"points": "imagenet-val-5k"}))
    bad = tmp_path / "bad.txt"
    for text, message in (("1\n1\n", "repeated"), ("1\nx\n", "not a non-negative"), ("", "empty")):
        bad.write_text(text)
        with pytest.raises(ConfigError, match=message):
            read_points(str(bad))


def test_evaluation_runs_on_the_listed_points(tmp_path: Path) -> None:
    recipe = tiny_recipe()
    recipe["train"]["epochs"] = 1
    run = train(validate_recipe(recipe), out=tmp_path / "run", progress=False)
    listed = [300, 7, 123, 42, 359, 0]  # digits has 360 test images
    path = tmp_path / "points.txt"
    path.write_text("".join(f"{i}\n" for i in listed))
    spec = EvalConfig(points=str(path), n=None, checkpoints=["last"], calibration=False)
    (summary,) = evaluate_run(run, spec)
    assert summary["n_points"] == len(listed) and "selected test points" in summary["points"]
    table = EvalResults.load(run / "eval" / "last-clean.npz")
    assert table.indices.tolist() == listed
    (first4,) = evaluate_run(run, spec.model_copy(update={"n": 4}))
    assert first4["n_points"] == 4
    runner = CliRunner()
    args = ["eval", str(run), "--checkpoint", "last", "--no-calibration", "--n", "3"]
    result = runner.invoke(app, [*args, "--points", str(path)])
    assert result.exit_code == 0, result.output
    assert EvalResults.load(run / "eval" / "last-clean.npz").indices.tolist() == listed[:3]
    result = runner.invoke(app, [*args, "--points", "imagenet-val-1k"])
    assert result.exit_code != 0 and "neither a built-in list" in result.output


def test_evaluation_refuses_a_dataset_of_another_image_size(tmp_path: Path) -> None:
    """A model built for 16x16 inputs is not silently evaluated on 8x8 digits (an image-folder
    dataset read at another ``image_size`` than the weights' would otherwise run)."""
    model = build_model("mlp", num_classes=10, input_shape=(1, 16, 16))
    source = tmp_path / "w.pt"
    torch.save(model.state_dict(), source)
    out = import_weights(
        source,
        tmp_path / "w.safetensors",
        model="mlp",
        num_classes=10,
        input_shape=(1, 16, 16),
        dataset="digits",
    )
    with pytest.raises(ConfigError, match=r"built for \(1, 16, 16\) inputs but dataset 'digits'"):
        evaluate_run(out, EvalConfig(n=10, calibration=False))
