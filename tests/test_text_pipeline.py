"""Text fine-tuning end to end (issue 13, text part): LP-FT through the CLI on CSV files, LP-LoRA
on JSON Lines sentence pairs through the API with a bit-exact resume, a stage NTK on token inputs,
clean + calibration evaluation, and a one-line refusal of attacks on a text run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from _text_toys import save_model_and_tokenizer, sentiment_rows, text_recipe, write_csv, write_jsonl
from safetensors.torch import load_file
from typer.testing import CliRunner

from unirobust.cli import app
from unirobust.config import validate_recipe
from unirobust.engine.checkpoint import load_model, read_model_file
from unirobust.pipeline import train

pytest.importorskip("peft")
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model_and_tokenizer(tmp_path_factory.mktemp("tiny-roberta"))


def _records(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("event") == "epoch"]


def test_lp_ft_through_the_cli_on_csv_files(model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    write_csv(data / "train.csv", sentiment_rows(80, 0))
    write_csv(data / "test.csv", sentiment_rows(24, 1))
    recipe = text_recipe(model_dir, data)
    lp, ft = recipe["train"]["stages"]
    lp["experts"][0]["lr_schedule"] = {"kind": "constant", "value": 0.05}  # the head moves
    ft["epochs"] = 6
    ft["experts"][0]["lr_schedule"]["values"] = [1e-2, 0.0]
    ft["ntk"] = {"n_max": 8, "mode": "jacobian"}
    path = tmp_path / "lpft.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", str(path), "--out", str(run)])
    assert result.exit_code == 0, result.output

    records = _records(run)
    assert [r["stage"] for r in records] == ["lp"] + ["ft"] * 6
    lp_diag = records[0]["val"]["diagnostics"]
    assert lp_diag["feature_change"]["diff"] == 0.0  # LP never changes the backbone
    assert lp_diag["head_norm"]["weight_norm"] > 0
    ft_diag = records[-1]["val"]["diagnostics"]
    assert ft_diag["feature_change"]["diff"] > 0 and ft_diag["calibration"]["nll"] > 0
    ntk = json.loads((run / "ntk" / "ft.json").read_text())
    assert ntk["n_train"] == 8 and ntk["F"]["rank"] >= 1 and len(ntk["train_idx"]) == 8
    summary = json.loads((run / "eval" / "best-clean.json").read_text())
    assert summary["groups"] == ["clean", "calibration"] and summary["n_points"] == 24
    assert summary["clean_acc"] >= 0.9  # the polarity word decides the label: FT learns it
    assert summary["calibration"]["temperature"] > 0  # fitted on the validation split
    assert (run / "report" / "report.md").is_file()

    refused = CliRunner().invoke(app, ["eval", str(run), "--threats", "linf:0.1"])
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    assert "text dataset (token ids)" in " ".join(refused.output.split())


def test_lp_lora_on_sentence_pairs_resumes_bit_exactly(model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "pairs"
    data.mkdir()
    for name, n, seed in (("train", 48, 0), ("test", 12, 1)):
        rows = sentiment_rows(n, seed)
        pairs = [{"a": r["sentence"], "b": "the film", "label": r["label"]} for r in rows]
        write_jsonl(data / f"{name}.jsonl", pairs)
    recipe = text_recipe(model_dir, data, eval={"enabled": False})
    recipe["data"]["options"].update(text="a", text_pair="b")
    lp, ft = recipe["train"]["stages"]
    lora = {**ft, "name": "lp_lora", "trainable": "lora", "head_init": lp["head_init"]}
    lora["experts"][0]["lr_schedule"]["values"] = [1e-2, 0.0]
    recipe["train"]["stages"] = [lora]
    config = validate_recipe(recipe)
    resumed = train(config, out=tmp_path / "resumed", progress=False, stop_after_epoch=1)
    train(config, resume=resumed, progress=False)
    straight = train(config, out=tmp_path / "straight", progress=False)
    a = read_model_file(resumed / "checkpoints" / "model_last.safetensors")[0]
    b = read_model_file(straight / "checkpoints" / "model_last.safetensors")[0]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    model, meta = load_model(straight, "last")  # a plain model: LoRA merged, no peft needed
    assert meta["data_options"]["text_pair"] == "b"
    assert type(model).__name__ == "TextClassifier" and "lora" not in " ".join(a)
    pretrained = load_file(str(model_dir / "model.safetensors"))
    for name in ("embeddings.word_embeddings.weight", "encoder.layer.0.attention.self.key.weight"):
        assert torch.equal(a[f"backbone.{name}"], pretrained[f"roberta.{name}"])  # not targeted
    query = "encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(a[f"backbone.{query}"], pretrained[f"roberta.{query}"])  # B·A merged


def test_the_paper_rte_recipe_runs_on_local_files(model_dir: Path, tmp_path: Path) -> None:
    # recipes/paper/lpft/roberta-rte-lp-lora.yaml with its paths pointed at the tiny model and a
    # GLUE-style RTE folder (TSV, sentence pairs, label names), one short epoch on the CPU
    data = tmp_path / "RTE"
    data.mkdir()
    names = {1: "entailment", 0: "not_entailment"}
    for name, n, seed in (("train", 40, 0), ("dev", 8, 1)):
        lines = ["index\tsentence1\tsentence2\tlabel"]
        for i, r in enumerate(sentiment_rows(n, seed)):
            lines.append(f"{i}\t{r['sentence']}\tthe film\t{names[r['label']]}")
        (data / f"{name}.tsv").write_text("\n".join(lines) + "\n")
    overrides = {
        "device": "cpu",
        "model.options.path": model_dir,
        "data.options.tokenizer": model_dir,
        "data.data_dir": data,
        "data.options.max_length": 16,
        "data.val_size": 8,
        "train.stages.0.epochs": 1,
    }
    args = ["train", "roberta-rte-lp-lora", "--out", str(tmp_path / "run")]
    for key, value in overrides.items():
        args += ["--set", f"{key}={value}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "run" / "eval" / "best-clean.json").read_text())
    assert summary["n_points"] == 8 and "calibration" in summary["groups"]
    _, meta = load_model(tmp_path / "run", "best")
    assert meta["data_options"]["label_names"] == ["entailment", "not_entailment"]
