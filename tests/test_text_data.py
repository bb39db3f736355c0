"""Text datasets (issue 13, text part): CSV, TSV, JSON Lines and save_to_disk files tokenised
with a local tokenizer into packed token batches; labels; one-line errors; recipe checks that
refuse what only images can have (attacks, corruptions, augmentation)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _text_toys import save_tokenizer, sentiment_rows, text_recipe, write_csv, write_jsonl
from conftest import tiny_recipe

from unirobust.config import validate_recipe
from unirobust.data import load_dataset
from unirobust.data.tokens import check_token_shape, pack, unpack
from unirobust.errors import ConfigError, UserError

MAX_LEN = 12


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tokenizer(tmp_path_factory.mktemp("tok"))


def _tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def _load(data_dir: Path, tok_dir: Path, val_size: int = 0, **options):
    options = {"tokenizer": str(tok_dir), "max_length": MAX_LEN, **options}
    return load_dataset("text", data_dir=data_dir, val_size=val_size, **options)


def test_pack_and_unpack_round_trip() -> None:
    ids = torch.tensor([[0, 5, 2, 1], [0, 6, 7, 2]])
    mask = (ids != 1).long()
    x = pack({"input_ids": ids, "attention_mask": mask})
    assert x.dtype == torch.int64 and x.shape == (2, 2, 4)
    back = unpack(x)
    assert torch.equal(back["input_ids"], ids) and torch.equal(back["attention_mask"], mask)
    assert set(unpack(torch.stack([ids, mask, mask], 1))) == {
        "input_ids",
        "attention_mask",
        "token_type_ids",
    }
    with pytest.raises(ValueError, match="packed token batch"):
        unpack(x.float())
    assert check_token_shape((2, 128)) == (2, 128)
    with pytest.raises(ConfigError, match="fields, length"):
        check_token_shape((1, 28, 28))


def test_csv_tsv_and_jsonl_give_the_tokenizer_s_own_encoding(tmp_path: Path, tok_dir: Path) -> None:
    train, test = sentiment_rows(40, 0), sentiment_rows(10, 1)
    texts = [r["sentence"] for r in train]
    expected = _tokenizer(tok_dir)(
        texts, max_length=MAX_LEN, padding="max_length", truncation=True, return_tensors="pt"
    )
    folders = {name: tmp_path / name for name in ("csv", "tsv", "jsonl")}
    for folder in folders.values():
        folder.mkdir()
    write_csv(folders["csv"] / "train.csv", train)
    write_csv(folders["csv"] / "test.csv", test)
    for name, rows in (("train", train), ("test", test)):
        lines = ["sentence\tlabel", *(f"{r['sentence']}\t{r['label']}" for r in rows)]
        (folders["tsv"] / f"{name}.tsv").write_text("\n".join(lines) + "\n")
        write_jsonl(folders["jsonl"] / f"{name}.jsonl", rows)
    bundles = {k: _load(v, tok_dir, text="sentence") for k, v in folders.items()}
    for bundle in bundles.values():
        assert bundle.is_text and bundle.input_shape == (2, MAX_LEN)
        assert bundle.class_names == ["0", "1"] and bundle.num_classes == 2
        assert torch.equal(bundle.train.x[:, 0], expected["input_ids"])
        assert torch.equal(bundle.train.x[:, 1], expected["attention_mask"])
        assert bundle.train.y.tolist() == [r["label"] for r in train]
        assert torch.equal(bundle.test.indices, torch.arange(10))
    # every example is padded to max_length and truncated there
    assert bool((bundles["csv"].train.x[:, 1].sum(1) < MAX_LEN).any())


def test_validation_split_is_stratified_and_keeps_file_positions(
    tmp_path: Path, tok_dir: Path
) -> None:
    rows = sentiment_rows(40, 0)
    write_csv(tmp_path / "train.csv", rows)
    write_csv(tmp_path / "test.csv", sentiment_rows(8, 1))
    bundle = _load(tmp_path, tok_dir, val_size=10, text="sentence")
    assert len(bundle.val) == 10 and len(bundle.train) == 30
    assert torch.bincount(bundle.val.y).tolist() == [5, 5]
    union = torch.cat([bundle.train.indices, bundle.val.indices]).sort().values
    assert torch.equal(union, torch.arange(40))
    full = _load(tmp_path, tok_dir, text="sentence")
    assert torch.equal(bundle.val.x, full.train.x[bundle.val.indices])


def test_sentence_pairs_use_the_pair_template(tmp_path: Path, tok_dir: Path) -> None:
    rows = [
        {"premise": "the movie was good", "hypothesis": "a film", "label": "entailment"},
        {"premise": "a dull plot", "hypothesis": "the movie is great", "label": "contradiction"},
        {"premise": "the film", "hypothesis": "quite bad", "label": "neutral"},
    ]
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "test.jsonl", rows[:2])
    bundle = _load(tmp_path, tok_dir, text="premise", text_pair="hypothesis")
    expected = _tokenizer(tok_dir)(
        [r["premise"] for r in rows],
        [r["hypothesis"] for r in rows],
        max_length=MAX_LEN,
        padding="max_length",
        truncation=True,
        return_tensors="pt",
    )
    assert torch.equal(bundle.train.x[:, 0], expected["input_ids"])
    assert bundle.train.x[0, 0, 5:7].tolist() == [2, 2]  # "<s> A </s></s> B </s>"
    # string labels: sorted names unless label_names fixes the order
    assert bundle.class_names == ["contradiction", "entailment", "neutral"]
    assert bundle.train.y.tolist() == [1, 0, 2]
    names = ["entailment", "neutral", "contradiction"]
    ordered = _load(tmp_path, tok_dir, text="premise", text_pair="hypothesis", label_names=names)
    assert ordered.class_names == names and ordered.train.y.tolist() == [0, 2, 1]


def test_label_rules(tmp_path: Path, tok_dir: Path) -> None:
    def write(train_labels, test_labels) -> None:
        for name, labels in (("train", train_labels), ("test", test_labels)):
            rows = [{"text": "good movie", "label": v} for v in labels]
            write_jsonl(tmp_path / f"{name}.jsonl", rows)

    write([True, False, True], [False])  # BoolQ-style booleans are the names False/True
    bundle = _load(tmp_path, tok_dir)
    assert bundle.class_names == ["False", "True"] and bundle.train.y.tolist() == [1, 0, 1]
    write([0, 2, 1], [2])
    assert _load(tmp_path, tok_dir).num_classes == 3
    assert _load(tmp_path, tok_dir, label_names=["a", "b", "c", "d"]).num_classes == 4
    write([0, 1], [-1])
    with pytest.raises(ConfigError, match=r"label -1 is negative.*unlabeled"):
        _load(tmp_path, tok_dir)
    write(["pos", "neg"], ["meh"])
    with pytest.raises(ConfigError, match="'meh' is not a known class"):
        _load(tmp_path, tok_dir)
    write([0, 3], [1])
    with pytest.raises(ConfigError, match="out of range for 2 label_names"):
        _load(tmp_path, tok_dir, label_names=["a", "b"])


def test_a_dataset_saved_to_disk_keeps_its_class_names(tmp_path: Path, tok_dir: Path) -> None:
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {
            "sentence": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["negative", "positive"]),
        }
    )
    splits = {
        name: datasets.Dataset.from_list(sentiment_rows(n, seed), features=features)
        for name, n, seed in (("train", 20, 0), ("validation", 6, 1))
    }
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "sst"))
    bundle = _load(tmp_path / "sst", tok_dir, text="sentence", test="validation")
    assert bundle.class_names == ["negative", "positive"]
    assert bundle.train.y.tolist() == [r["label"] for r in sentiment_rows(20, 0)]
    csv_dir = tmp_path / "csv"
    csv_dir.mkdir()
    write_csv(csv_dir / "train.csv", sentiment_rows(20, 0))
    write_csv(csv_dir / "test.csv", sentiment_rows(6, 1))
    assert torch.equal(bundle.train.x, _load(csv_dir, tok_dir, text="sentence").train.x)
    with pytest.raises(ConfigError, match=r"is a DatasetDict .*name one split directory"):
        _load(tmp_path, tok_dir, train="sst", text="sentence", test="sst/validation")


def test_bad_text_data_is_a_one_line_error(tmp_path: Path, tok_dir: Path) -> None:
    write_csv(tmp_path / "train.csv", sentiment_rows(6, 0))
    write_csv(tmp_path / "test.csv", sentiment_rows(4, 1))
    cases = [
        ({"tokenizer": str(tmp_path / "nowhere")}, "tokenizer directory .*nowhere' does not exist"),
        ({"tokenizer": str(tmp_path)}, "holds no tokenizer"),
        ({"text": "review"}, r"train.csv has no column 'review'; its columns: sentence, label"),
        ({"text": "sentence", "test": "dev"}, r"no split 'dev' .*tried dev, dev.csv, dev.tsv"),
        ({"text": "sentence", "max_length": 64}, "max_length 64 exceeds the tokenizer's limit"),
    ]
    for options, message in cases:
        options = {"tokenizer": str(tok_dir), **options}
        with pytest.raises(UserError, match=message) as info:
            load_dataset("text", data_dir=tmp_path, val_size=0, **options)
        assert "\n" not in str(info.value)
    write_jsonl(tmp_path / "train.jsonl", sentiment_rows(4, 0))
    with pytest.raises(ConfigError, match=r"split 'train' is ambiguous .*train.csv, train.jsonl"):
        _load(tmp_path, tok_dir, text="sentence")
    (tmp_path / "bad.jsonl").write_text('{"sentence": "good", "label": 1}\n{oops\n')
    with pytest.raises(UserError, match=r"bad.jsonl: line 2 is not JSON"):
        _load(tmp_path, tok_dir, text="sentence", train="bad.jsonl", test="test.csv")
    (tmp_path / "data.parquet").write_bytes(b"PAR1")
    with pytest.raises(ConfigError, match=r"unknown format '.parquet'"):
        _load(tmp_path, tok_dir, text="sentence", train="data.parquet", test="test.csv")
    with pytest.raises(ConfigError, match=r"needs data.data_dir"):
        load_dataset("text", tokenizer=str(tok_dir))
    with pytest.raises(ConfigError, match="missing required key 'tokenizer'"):
        load_dataset("text", data_dir=tmp_path)


def test_text_recipes_refuse_what_only_images_have(tmp_path: Path) -> None:
    base = text_recipe(tmp_path / "model", tmp_path / "data")
    assert validate_recipe(base).data.options["max_length"] == 12  # placeholders need no files

    def refused(message: str, edit) -> None:
        recipe = json.loads(json.dumps(base))
        edit(recipe)
        with pytest.raises(ConfigError, match=message) as info:
            validate_recipe(recipe)
        assert "\n" not in str(info.value)

    def attack(r):
        r["train"]["stages"][1]["experts"][0]["objective"] = {"name": "pgd_at", "threat": "linf:1"}

    refused(r"train.stages.1.experts.0.objective: 'pgd_at' attacks the inputs", attack)
    refused(
        "validation.threats: a text dataset", lambda r: r["validation"].update(threats=["l2:1"])
    )
    refused("eval.threats", lambda r: r["eval"].update(threats=["linf:0.1"]))
    refused("eval.corruptions", lambda r: r["eval"].update(corruptions=["fog"]))
    refused("data.augment", lambda r: r["data"].update(augment={"hflip": True}))
    refused("train.channels_last", lambda r: r["train"].update(channels_last=True))
    refused(
        "model 'lenet' reads images but dataset 'text' gives token ids",
        lambda r: r.update(model={"name": "lenet"}),
    )
    refused(
        "data.options: dataset 'text': unknown key 'column'",
        lambda r: r["data"]["options"].update(column="x"),
    )
    refused(
        "data.options: dataset 'text': missing required key 'tokenizer'",
        lambda r: r["data"]["options"].clear(),
    )
    image = tiny_recipe(model={"name": "hf_sequence_classifier", "options": {"path": "m"}})
    with pytest.raises(ConfigError, match="reads tokens but dataset 'digits' gives images"):
        validate_recipe(image)
