"""The command line: one-line errors with exit code 2 and no traceback; listing; a tiny train."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_recipe
from typer.testing import CliRunner

from unirobust.cli import app
from unirobust.errors import ConfigError

runner = CliRunner()


def _invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def _write(tmp_path: Path, recipe: dict) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert text.startswith("error:"), text
    for needle in needles:
        assert needle in text, (needle, text)


def test_help_lists_every_command() -> None:
    result = _invoke("--help")
    assert result.exit_code == 0
    for command in ("train", "eval", "report", "compare", "recipes", "demo"):
        assert command in result.output


def test_recipes_lists_descriptions() -> None:
    result = _invoke("recipes")
    assert result.exit_code == 0
    assert "fmnist-generalist" in result.output and "Generalist" in result.output


def test_unknown_key_exits_2(tmp_path: Path) -> None:
    recipe = tiny_recipe()
    recipe["data"]["batchsize"] = 3
    _one_line_error(_invoke("train", str(_write(tmp_path, recipe))), "data.batchsize", "batch_size")


def test_unknown_recipe_and_bad_override(tmp_path: Path) -> None:
    _one_line_error(_invoke("train", "no-such-recipe"), "no-such-recipe", "fmnist-generalist")
    path = _write(tmp_path, tiny_recipe())
    _one_line_error(_invoke("train", str(path), "--set", "train.epochs=-1"), "train.epochs")


def test_missing_dataset_path_exits_2(tmp_path: Path) -> None:
    recipe = tiny_recipe(data={"name": "fashion_mnist", "data_dir": str(tmp_path / "nowhere")})
    result = _invoke("train", str(_write(tmp_path, recipe)), "--out", str(tmp_path / "run"))
    _one_line_error(result, "nowhere", "dataset-fashion-mnist")


def test_eval_rejects_bad_threat_and_foreign_checkpoint(tmp_path: Path) -> None:
    bogus = tmp_path / "model.safetensors"
    bogus.write_bytes(b"\x00" * 64)
    _one_line_error(_invoke("eval", str(bogus), "--threats", "linf:-0.1"), "linf:-0.1")
    _one_line_error(_invoke("eval", str(bogus), "--threats", "linf:0.1"), str(bogus))
    _one_line_error(_invoke("eval", str(tmp_path / "none"), "--threats", "l3:1"), "l3")


@pytest.mark.slow
def test_train_then_refuse_then_report(tmp_path: Path) -> None:
    recipe = tiny_recipe()
    recipe["train"]["epochs"] = 1
    path = _write(tmp_path, recipe)
    run = tmp_path / "run"
    result = _invoke("train", str(path), "--out", str(run), "--quiet")
    assert result.exit_code == 0, result.output
    assert "report:" in result.output and (run / "report" / "report.md").is_file()
    _one_line_error(_invoke("train", str(path), "--out", str(run)), "already exists", "--resume")
    _one_line_error(_invoke("train", str(path), "--resume", str(run)), "--resume")
    assert _invoke("report", str(run)).exit_code == 0


def test_import_weights_command(tmp_path: Path) -> None:
    import torch

    from unirobust.models import build_model

    model = build_model("mlp", num_classes=10, input_shape=(1, 8, 8))
    source = tmp_path / "w.pt"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, source)
    out = tmp_path / "w.safetensors"
    args = ["import-weights", str(source), "--model", "mlp", "--dataset", "digits", "--out"]
    result = _invoke(*args, str(out))
    assert result.exit_code == 0, result.output
    assert out.is_file() and "unirobust eval" in result.output
    _one_line_error(_invoke(*args, str(out)), "exists already")
    _one_line_error(
        _invoke(
            "import-weights",
            str(source),
            "--model",
            "mlp",
            "--dataset",
            "mnist-x",
            "--out",
            str(tmp_path / "y.safetensors"),
        ),
        "mnist-x",
    )


def test_missing_dataset_leaves_no_run_directory(tmp_path: Path) -> None:
    recipe = tiny_recipe(data={"name": "fashion_mnist", "data_dir": str(tmp_path / "nowhere")})
    _invoke("train", str(_write(tmp_path, recipe)), "--out", str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_linf_radius_above_one_is_rejected(tmp_path: Path) -> None:
    _one_line_error(_invoke("eval", str(tmp_path), "--threats", "linf:2"), "linf:2", "[0, 1]")


def test_train_with_a_clean_only_eval_block_evaluates_clean_and_calibration(tmp_path: Path) -> None:
    """A recipe whose eval has no threats (a fine-tuning recipe) ends with a clean evaluation; the
    suite recorded in config.yaml is not a request for robust evaluation."""
    data = tiny_recipe(eval={"threats": [], "n": 50, "checkpoints": ["last"]})
    data["train"]["epochs"] = 1
    result = _invoke("train", str(_write(tmp_path, data)), "--out", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    summary = yaml.safe_load((tmp_path / "r" / "eval" / "last-clean.json").read_text())
    assert summary["n_points"] == 50 and summary["threats"] == []
    assert "ece_scaled" in summary["calibration"]


def test_a_recipe_is_found_by_the_path_recipes_lists() -> None:
    from unirobust.cli import resolve_recipe

    by_stem = resolve_recipe("fmnist-lpft")
    assert resolve_recipe("proxy/lpft/fmnist-lpft") == by_stem
    assert resolve_recipe("proxy/lpft/fmnist-lpft.yaml") == by_stem
    with pytest.raises(ConfigError, match="'proxy/fmnist-lpft' is neither a file nor a known"):
        resolve_recipe("proxy/fmnist-lpft")


def test_eval_index_list_device_and_nproc_options(tmp_path: Path) -> None:
    from unirobust.cli import _flags

    bogus = tmp_path / "model.safetensors"
    bogus.write_bytes(b"\x00" * 64)
    missing = tmp_path / "points.txt"
    _one_line_error(
        _invoke("eval", str(bogus), "--points", str(missing)), "points.txt", "neither a built-in"
    )
    if not torch.cuda.is_available():
        _one_line_error(_invoke("eval", str(bogus), "--device", "cuda"), "CUDA is not available")
    result = _invoke("eval", str(bogus), "--nproc", "0")
    assert result.exit_code == 2 and "nproc" in result.output
    # what --nproc K passes on to every rank: the options given, --n as --n-points (torchrun
    # would read --n as an abbreviation of its own options)
    given = {"threats": "linf:0.1", "n-points": 5, "union-only": False, "suite": None}
    assert _flags(given) == ["--threats", "linf:0.1", "--n-points", "5", "--no-union-only"]
