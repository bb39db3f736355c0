"""Models and datasets as registries (issue 7 point 3): a name maps to a builder and its own
pydantic spec; recipes are checked against that spec at load time; a toy model and a toy
dataset, registered here in a few lines, train end to end through the pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest
import torch
from conftest import tiny_recipe
from pydantic import Field
from torch import Tensor, nn

from unirobust.config import validate_recipe
from unirobust.data import dataset_shape, list_datasets, load_dataset, normalization_stats
from unirobust.data.registry import DATASETS, DatasetSpec, RawData
from unirobust.engine.checkpoint import load_model
from unirobust.errors import ConfigError
from unirobust.models import ImageClassifier, build_model, list_models, model_options
from unirobust.models.registry import MODELS, ModelSpec, register_model
from unirobust.pipeline import train

# ------------------------------------------------------------------ a toy model: class + one line


class ToyNet(ImageClassifier):
    """Global average pooling, one hidden layer of ``width`` units."""

    def __init__(self, *, num_classes, input_shape, width: int = 4, normalize=None) -> None:
        super().__init__(num_classes, input_shape, normalize)
        self.hidden = nn.Linear(input_shape[0], width)
        self.linear = nn.Linear(width, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        return torch.relu(self.hidden(x.mean((2, 3))))


# ------------------------------------------------------------------ a toy model with its own spec


class WideToySpec(ModelSpec):
    name: Literal["toy_wide"] = "toy_wide"
    width: int = Field(8, ge=2, le=64)


def build_wide_toy(spec: WideToySpec, num_classes: int, input_shape) -> nn.Module:
    """ToyNet whose width is range-checked by its spec."""
    net = ToyNet(num_classes=num_classes, input_shape=input_shape, width=spec.width)
    net.normalize = spec.normalize_layer(input_shape[0]) or nn.Identity()
    return net


# ------------------------------------------------------------------ a toy dataset: spec + loader


class BlobsSpec(DatasetSpec):
    name: Literal["toy_blobs"] = "toy_blobs"
    shape = (3, (1, 8, 8))
    n: int = Field(90, ge=30)


def blobs(spec: BlobsSpec, data_dir: str | None) -> RawData:
    """Three classes of 8x8 images, class c brighter by c/3 (random tensors)."""
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(spec.n + 30) % 3
    x = (torch.rand(len(y), 1, 8, 8, generator=gen) + y.view(-1, 1, 1, 1)) / 3
    return RawData(x[: spec.n], y[: spec.n], x[spec.n :], y[spec.n :], ["a", "b", "c"], 1.0)


@pytest.fixture(autouse=True)
def _toys():
    register_model("toy_net", ToyNet, "Toy: pooled pixels, one hidden layer")
    MODELS.register("toy_wide", WideToySpec)(build_wide_toy)
    DATASETS.register("toy_blobs", BlobsSpec)(blobs)
    yield
    for name in ("toy_net", "toy_wide"):
        MODELS.unregister(name)
    DATASETS.unregister("toy_blobs")


# ------------------------------------------------------------------ models


def test_model_specs_are_the_constructors_options() -> None:
    assert list_models() == MODELS.names()
    assert {"lenet", "mlp", "wrn_28_10", "toy_net"} <= set(list_models())
    lenet = MODELS.get("lenet").spec.model_fields
    assert lenet["channels"].default == (16, 32) and lenet["hidden"].annotation is int
    assert model_options("toy_net") == {"normalize": False, "mean": None, "std": None, "width": 4}
    assert "depth" not in model_options("wrn_28_10")  # fixed by the name
    assert model_options("toy_wide")["width"] == 8


def test_recipe_model_options_are_checked_at_load() -> None:
    def load(name: str, **options):
        return validate_recipe(tiny_recipe(model={"name": name, "options": options}), "r.yaml")

    one_line = (
        "r.yaml: model.options: unknown option 'hiden_sizes' for model 'mlp'; did you mean "
        "'hidden_sizes'? (valid options: hidden_sizes, mean, normalize, std)"
    )
    with pytest.raises(ConfigError) as err:
        load("mlp", hiden_sizes=[8])
    assert str(err.value) == one_line
    with pytest.raises(ConfigError, match=r"option 'hidden' of model 'lenet': got 'many'.*integer"):
        load("lenet", hidden="many")
    with pytest.raises(ConfigError, match="unknown option 'depth' for model 'wrn_28_10'"):
        load("wrn_28_10", depth=34)
    with pytest.raises(ConfigError, match=r"'width' of model 'toy_wide'.*less than or equal to 64"):
        load("toy_wide", width=100)
    with pytest.raises(ConfigError, match=r"^r.yaml: model.name: unknown model 'vgg' \(regis"):
        load("vgg")
    config = load("lenet", hidden="16", channels=[2, 3])
    assert config.model.options == {"hidden": 16, "channels": [2, 3]}  # as written, coerced


def test_build_model_validates_through_the_spec() -> None:
    with pytest.raises(ConfigError, match=r"did you mean 'width'.*valid options: mean, normalize"):
        build_model("toy_net", num_classes=2, input_shape=(1, 8, 8), widht=3)
    net = build_model("toy_net", num_classes=2, input_shape=(1, 8, 8), width="6")
    assert net.hidden.out_features == 6
    norm = {"normalize": True, "mean": 0.5, "std": 0.25}
    wide = build_model("toy_wide", num_classes=2, input_shape=(1, 8, 8), **norm)
    assert wide.hidden.out_features == 8 and wide.normalize.std.flatten().tolist() == [0.25]


def test_toy_model_trains_through_the_pipeline(tmp_path: Path) -> None:
    data = tiny_recipe(model={"name": "toy_net", "options": {"width": 8}})
    data["train"]["epochs"] = 1
    run = train(validate_recipe(data), out=tmp_path / "run", progress=False)
    model, meta = load_model(run)
    assert isinstance(model, ToyNet) and model.hidden.out_features == 8
    assert meta["model"] == {"name": "toy_net", "options": {"width": 8}}


# ------------------------------------------------------------------ datasets


def test_dataset_registry_keeps_the_helpers() -> None:
    assert list_datasets() == DATASETS.names()
    assert {"digits", "fashion_mnist", "cifar10", "imagefolder", "toy_blobs"} <= set(
        DATASETS.names()
    )
    assert dataset_shape("fmnist") == (10, (1, 28, 28)) and dataset_shape("toy_blobs")[0] == 3
    assert normalization_stats("digits") == ((0.3053,), (0.3760,))
    with pytest.raises(ConfigError, match="no fixed shape; choose one of cifar10"):
        dataset_shape("imagefolder")
    with pytest.raises(ConfigError, match="no built-in mean/std for 'toy_blobs'"):
        normalization_stats("toy_blobs")
    with pytest.raises(ConfigError, match="dataset 'digits': unknown key 'image_size'"):
        load_dataset("digits", image_size=32)
    with pytest.raises(ConfigError, match="dataset 'imagefolder': bad value for 'image_size'"):
        load_dataset("imagefolder", image_size=4)
    small = load_dataset("toy_blobs", n=30, val_size=6, n_test=10)
    assert (len(small.train.y), len(small.val.y), len(small.test.y)) == (24, 6, 10)


def test_unknown_dataset_is_one_line_listing_the_registered() -> None:
    with pytest.raises(ConfigError) as err:
        validate_recipe(tiny_recipe(data={"name": "toy_blob"}), "r.yaml")
    text = str(err.value)
    assert "\n" not in text and text.startswith("r.yaml: data.name: unknown dataset 'toy_blob'")
    assert "did you mean 'toy_blobs'" in text and "cifar10, cifar100, digits" in text


def test_toy_dataset_trains_through_the_pipeline(tmp_path: Path) -> None:
    data = tiny_recipe(data={"name": "toy_blobs", "val_size": 9, "batch_size": 16})
    data["train"]["epochs"] = 1
    config = validate_recipe(data)
    run = train(config, out=tmp_path / "run", progress=False)
    model, meta = load_model(run)
    assert meta["dataset"] == "toy_blobs" and model.head.out_features == 3
    assert (run / "metrics.jsonl").is_file()


def test_cli_lists_models_and_datasets_from_their_registries(capsys) -> None:
    from unirobust.cli import app

    with pytest.raises(SystemExit) as stop:
        app(["recipes", "--registered"])
    assert stop.value.code in (0, None)
    lines = capsys.readouterr().out.splitlines()
    assert "models:" in lines and "datasets:" in lines
    toy = next(line for line in lines if line.split()[:1] == ["toy_net"])
    assert "Toy: pooled pixels" in toy and toy.endswith("[normalize, mean, std, width]")
    blobs_line = next(line for line in lines if line.split()[:1] == ["toy_blobs"])
    assert blobs_line.endswith("[n]")
    folder = next(line for line in lines if line.split()[:1] == ["imagefolder"])
    assert folder.endswith("[image_size, resize_size, train_crop, crop_scale, decode_threads]")
