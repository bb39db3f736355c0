"""Streamed data (issue 11): image sources, CIFAR read in place, ImageFolder with Pillow, index
lists, and evaluation/training on streamed splits giving the in-memory results."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from conftest import tiny_recipe
from PIL import Image
from test_data import make_cifar10

from unirobust.config import validate_recipe
from unirobust.data import BatchLoader, load_dataset
from unirobust.data.cifar import open_cifar10
from unirobust.data.idx import DatasetFormatError
from unirobust.data.imagefolder import scan_folder
from unirobust.data.index_list import read_index_list, write_index_list
from unirobust.data.source import (
    ArraySource,
    ConcatSource,
    ImageSource,
    LazyImages,
    RecordSource,
)
from unirobust.data.transforms import (
    RRC_NUMBERS,
    eval_transform,
    random_resized_box,
    train_transform,
)
from unirobust.engine.checkpoint import read_model_file
from unirobust.errors import ConfigError, DatasetNotFoundError
from unirobust.evaluation import EvalResults, evaluate
from unirobust.models import build_model
from unirobust.pipeline import evaluate_run, train

# ----------------------------------------------------------------------------- sources


def test_record_source_reads_any_rows_of_a_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(12, 2, 3, 4), dtype=np.uint8)
    path = tmp_path / "records.bin"
    path.write_bytes(b"HEADER7" + images.tobytes() + b"tail")
    source = RecordSource(path, 7, 12, (2, 3, 4))
    rows = np.array([5, 2, 3, 2, 11, 0, 1])  # unsorted, repeated, runs of consecutive rows
    assert np.array_equal(source.read(rows), images[rows])
    assert source.read(np.array([], dtype=np.int64)).shape == (0, 2, 3, 4)
    with pytest.raises(IndexError):
        source.read(np.array([12]))
    both = ConcatSource([source, ArraySource(images[:3])])
    assert len(both) == 15 and np.array_equal(both.read(np.array([14, 0, 12])), images[[2, 0, 0]])


def test_lazy_images_index_like_the_tensor_they_stand_for() -> None:
    images = np.random.default_rng(1).integers(0, 256, size=(10, 1, 2, 2), dtype=np.uint8)
    reference = torch.from_numpy(images[3:9]).to(torch.float32).div_(255.0)
    lazy = LazyImages(ArraySource(images), np.arange(3, 9))
    assert len(lazy) == 6 and tuple(lazy.shape) == (6, 1, 2, 2)
    assert torch.equal(lazy[1:5], reference[1:5]) and torch.equal(lazy[-1], reference[-1])
    rows = torch.tensor([4, 0, 4])
    assert torch.equal(lazy[rows], reference[rows])
    mask = torch.tensor([True, False, True, False, False, True])
    assert torch.equal(lazy[mask], reference[mask])
    assert torch.equal(lazy.subset([2, 1]).materialize(), reference[[2, 1]])
    assert lazy.random_numbers == 0 and lazy.to("cpu") is lazy


# ----------------------------------------------------------------------------- CIFAR in place


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes bytes as (SHORT_)BINSTRING, as Python 2's cPickle wrote ``str`` (official files)."""

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def save_bytes(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(b"U" + bytes([len(obj)]) + obj)
        else:
            self.write(b"T" + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


def _py2_dump(path: Path, obj) -> None:
    with path.open("wb") as fh:
        _Py2Pickler(fh, protocol=2).dump(obj)


def _protocol4_dump(path: Path, obj) -> None:
    with path.open("wb") as fh:
        pickle.dump(obj, fh, protocol=4)


@pytest.mark.parametrize(
    ("dump", "in_place"), [(_py2_dump, True), (_protocol4_dump, True), (None, False)]
)
def test_cifar_files_are_read_in_place_when_their_pixels_are_verbatim(
    tmp_path: Path, dump, in_place: bool
) -> None:
    ref = make_cifar10(tmp_path, dump=dump)
    train_src, y_train, test_src, y_test, names = open_cifar10(tmp_path)
    kind = RecordSource if in_place else ArraySource
    assert isinstance(test_src, kind) and all(isinstance(p, kind) for p in train_src.parts)
    assert names[0] == "airplane" and y_test.tolist() == ref["y_test"]
    rows = np.array([99, 0, 57, 58, 20])
    expected = ref["x"][rows].reshape(-1, 3, 32, 32)
    assert np.array_equal(train_src.read(rows), expected) and y_train[rows].tolist() == [
        ref["y"][r] for r in rows
    ]
    assert np.array_equal(test_src.read(np.arange(30)), ref["x_test"].reshape(-1, 3, 32, 32))


def test_streamed_cifar_splits_equal_the_in_memory_ones(tmp_path: Path) -> None:
    make_cifar10(tmp_path, dump=_py2_dump)
    classes = [0, 3, 7, 1, 2]
    test_y = load_dataset("cifar10", data_dir=tmp_path, val_size=0).test.y.numpy()
    kept = np.flatnonzero(np.isin(test_y, classes))
    chosen = kept[[4, 1, 6, 0, 3]]  # a list in its own order, not the file's
    index_file = write_index_list(tmp_path / "points.txt", chosen, "fixed evaluation points")
    kwargs = {
        "data_dir": tmp_path,
        "val_size": 10,
        "n_train": 25,
        "seed": 4,
        "classes": classes,
        "test_indices": read_index_list(index_file),
    }
    memory = load_dataset("cifar10", **kwargs)
    streamed = load_dataset("cifar10", stream=True, **kwargs)
    for a, b in ((memory.train, streamed.train), (memory.val, streamed.val)):
        assert isinstance(b.x, LazyImages) and isinstance(a.x, torch.Tensor)
        assert torch.equal(a.x, b.x.materialize()) and torch.equal(a.y, b.y)
        assert torch.equal(a.indices, b.indices)
    assert streamed.test.indices.tolist() == memory.test.indices.tolist() == chosen.tolist()
    assert torch.equal(memory.test.x, streamed.test.x[:])
    other = int(np.flatnonzero(~np.isin(test_y, classes))[0])
    with pytest.raises(ConfigError, match=f"test index {other} is not a test point here"):
        load_dataset("cifar10", **{**kwargs, "test_indices": [int(chosen[0]), other]})


# ----------------------------------------------------------------------------- index lists


def test_index_list_formats_and_bad_files(tmp_path: Path) -> None:
    text = tmp_path / "a.txt"
    text.write_text("# ImageNet eval points\n5, 3\n\n9 1  # tail comment\n")
    assert read_index_list(text).tolist() == [5, 3, 9, 1]
    npy = tmp_path / "b.npy"
    np.save(npy, np.array([4, 0, 2], dtype=np.int32))
    assert read_index_list(npy).tolist() == [4, 0, 2]
    for content, match in (
        ("1 2 x", "'x' is not a non-negative integer"),
        ("1 2 1", "index 1 is repeated"),
        ("# nothing\n", "is empty"),
        ("-3", "'-3' is not a non-negative integer"),
    ):
        text.write_text(content)
        with pytest.raises(ConfigError, match=match):
            read_index_list(text)
    np.save(npy, np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(ConfigError, match="1-d integer array"):
        read_index_list(npy)
    with pytest.raises(ConfigError, match="not found"):
        read_index_list(tmp_path / "missing.txt")


def test_test_indices_pick_points_in_list_order() -> None:
    full = load_dataset("digits", val_size=0)
    picked = load_dataset("digits", val_size=0, test_indices=[300, 2, 41], n_test=2)
    assert picked.test.indices.tolist() == [300, 2]
    assert torch.equal(picked.test.x, full.test.x[[300, 2]])
    with pytest.raises(
        ConfigError, match=r"test index 360 is not a test point here \(allowed: 0..359"
    ):
        load_dataset("digits", val_size=0, test_indices=[1, 360])
    with pytest.raises(ConfigError, match="without repeats"):
        load_dataset("digits", val_size=0, test_indices=[1, 1])


# ----------------------------------------------------------------------------- ImageFolder


def _pattern(width: int, height: int, seed: int) -> np.ndarray:
    """An RGB image whose red channel is the column, green the row, blue noise."""
    cols, rows = np.meshgrid(np.arange(width), np.arange(height))
    noise = np.random.default_rng(seed).integers(0, 256, (height, width))
    return np.stack([cols % 256, rows % 256, noise], axis=-1).astype(np.uint8)


def make_imagefolder(root: Path, sizes: dict[str, list[tuple[int, int]]]) -> dict[str, list]:
    """``root/{train,val}/<class>/`` with PNGs (and one JPEG and one nested file per class)."""
    made: dict[str, list] = {}
    for split in ("train", "val"):
        for c, (name, shapes) in enumerate(sorted(sizes.items())):
            folder = root / split / name
            (folder / "nested").mkdir(parents=True)
            (folder / "notes.txt").write_text("not an image")
            for i, (w, h) in enumerate(shapes):
                array = _pattern(w, h, seed=100 * c + i)
                target = folder / f"img{i}.png"
                if i == 1:
                    target = folder / "nested" / "deep.PNG"
                if i == 2:
                    target = folder / f"img{i}.JPEG"
                Image.fromarray(array).save(target)
                made.setdefault(split, []).append((target, c, array))
    return made


SIZES = {"cat": [(40, 30), (30, 50), (64, 48)], "ant": [(36, 36), (50, 40), (33, 60)]}


def test_imagefolder_lists_files_like_torchvision(tmp_path: Path) -> None:
    make_imagefolder(tmp_path, SIZES)
    classes, paths, labels = scan_folder(tmp_path / "train")
    assert classes == ["ant", "cat"] and labels.tolist() == [0, 0, 0, 1, 1, 1]
    names = [p.decode() for p in paths]
    assert names[:3] == ["ant/img0.png", "ant/img2.JPEG", "ant/nested/deep.PNG"]
    ds = load_dataset("imagefolder", data_dir=tmp_path, val_size=0, image_size=24)
    assert isinstance(ds.train.x, LazyImages) and isinstance(ds.test.x, LazyImages)
    assert ds.input_shape == (3, 24, 24) and ds.class_names == ["ant", "cat"]
    assert ds.train.x.random_numbers == RRC_NUMBERS and ds.test.x.random_numbers == 0
    x = ds.test.x[:]
    assert x.shape == (6, 3, 24, 24) and x.dtype == torch.float32 and 0 <= x.min() <= x.max() <= 1


def test_eval_transform_crops_the_centre_of_the_resized_image(tmp_path: Path) -> None:
    array = _pattern(40, 30, seed=0)
    image = Image.fromarray(array)
    # the short side already has the resize size: no resampling, an exact centre crop
    out = eval_transform(image, resize_size=30, crop_size=24)
    top, left = round((30 - 24) / 2), round((40 - 24) / 2)
    assert np.array_equal(out, array[top : top + 24, left : left + 24].transpose(2, 0, 1))
    # resizing: shorter side 30 -> 20, longer 40 -> int(20 * 40 / 30) = 26, then the centre 16
    resized = np.asarray(image.resize((26, 20), Image.Resampling.BILINEAR))
    out = eval_transform(image, resize_size=20, crop_size=16)
    assert np.array_equal(out, resized[2:18, 5:21].transpose(2, 0, 1))
    # the earlier loader's behaviour (resize to image_size, crop image_size): resize_size=image_size
    make_imagefolder(tmp_path, SIZES)
    ds = load_dataset("imagefolder", data_dir=tmp_path, val_size=0, image_size=16, resize_size=16)
    first = np.asarray(Image.open(tmp_path / "val" / "ant" / "img0.png").convert("RGB"))
    expect = eval_transform(Image.fromarray(first), 16, 16)
    assert torch.equal(ds.test.x[0], torch.tensor(expect, dtype=torch.float32).div_(255))


def test_random_resized_box_stays_inside_with_the_asked_area_and_aspect() -> None:
    rng = np.random.default_rng(3)
    for _ in range(300):
        width, height = (int(v) for v in rng.integers(8, 200, size=2))
        numbers = rng.random(RRC_NUMBERS)
        left, top, w, h = random_resized_box(width, height, numbers, (0.08, 1.0))
        assert min(left, top) >= 0 and left + w <= width and top + h <= height and w * h > 0
    # the first try: area fraction and log-aspect follow the numbers (up to pixel rounding)
    numbers = np.full(RRC_NUMBERS, 0.5)
    left, top, w, h = random_resized_box(400, 300, numbers, (0.2, 0.6))
    assert abs(w * h / (400 * 300) - 0.4) < 0.01 and abs(w / h - 1.0) < 0.01
    assert (left, top) == (int(0.5 * (400 - w + 1)), int(0.5 * (300 - h + 1)))
    # no try fits (whole area at the widest aspect on a tall image): the centred fallback box
    numbers = np.tile([1.0, 1.0, 0.0, 0.0], 11)[:RRC_NUMBERS]
    assert random_resized_box(30, 90, numbers, (1.0, 1.0)) == (0, 25, 30, 40)


def test_train_transform_flip_is_the_mirror_of_the_same_crop() -> None:
    image = Image.fromarray(_pattern(50, 40, seed=1))
    numbers = np.random.default_rng(0).random(RRC_NUMBERS)
    keep, flip = numbers.copy(), numbers.copy()
    keep[-1], flip[-1] = 0.9, 0.1
    plain = train_transform(image, 16, keep, (0.3, 1.0))
    assert plain.shape == (3, 16, 16)
    assert np.array_equal(train_transform(image, 16, flip, (0.3, 1.0)), plain[:, :, ::-1])
    assert np.array_equal(train_transform(image, 16, keep, (0.3, 1.0)), plain)


def test_imagefolder_training_batches_do_not_depend_on_the_number_of_ranks(tmp_path: Path) -> None:
    make_imagefolder(tmp_path, SIZES)
    ds = load_dataset("imagefolder", data_dir=tmp_path, val_size=0, image_size=16)
    full = BatchLoader(ds.train, 4, shuffle=True, seed=7, return_indices=True)
    full.set_epoch(1)
    batches = [tuple(t.clone() for t in b) for b in full]
    again = [tuple(t.clone() for t in b) for b in full]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))
    shards = [full.shard(r, 2) for r in range(2)]
    for s in shards:
        s.set_epoch(1)
    parts = [list(s) for s in shards]
    for i, (gx, _, gi) in enumerate(batches):
        assert torch.equal(torch.cat([parts[0][i][0], parts[1][i][0]]), gx)
        assert torch.equal(torch.cat([parts[0][i][2], parts[1][i][2]]), gi)
    full.set_epoch(2)
    assert not torch.equal(next(iter(full))[0], batches[0][0])
    # random crops differ from the deterministic evaluation read of the same rows
    crops = torch.cat([b[0] for b in batches])[torch.cat([b[2] for b in batches]).argsort()]
    assert crops.shape == ds.train.x[:].shape and not torch.equal(crops, ds.train.x[:])


def test_imagefolder_bad_folders_and_options(tmp_path: Path) -> None:
    make_imagefolder(tmp_path, SIZES)
    (tmp_path / "val" / "bee").mkdir()
    with pytest.raises(DatasetNotFoundError, match=r"class folders \['ant', 'bee', 'cat'\]"):
        load_dataset("imagefolder", data_dir=tmp_path)
    (tmp_path / "val" / "bee").rmdir()
    with pytest.raises(ConfigError, match="resize_size"):
        load_dataset("imagefolder", data_dir=tmp_path, image_size=32, resize_size=16)
    with pytest.raises(ConfigError, match="crop_scale"):
        load_dataset("imagefolder", data_dir=tmp_path, crop_scale=(0.5, 0.2))
    broken = tmp_path / "val" / "cat" / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    ds = load_dataset("imagefolder", data_dir=tmp_path, val_size=0, image_size=16)
    with pytest.raises(DatasetFormatError, match=r"broken\.png: not a readable image"):
        ds.test.x[:]
    empty = tmp_path / "empty"
    for sub in ("train/a", "val/a"):
        (empty / sub).mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="no images found"):
        load_dataset("imagefolder", data_dir=empty)


# ----------------------------------------------------------------------------- evaluation


class _Spy(ImageSource):
    """An in-memory source that records how many rows each read asked for."""

    def __init__(self, images: np.ndarray) -> None:
        self.inner = ArraySource(images)
        self.reads: list[int] = []

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.inner.image_shape

    def __len__(self) -> int:
        return len(self.inner)

    def read(self, rows: np.ndarray, numbers: np.ndarray | None = None) -> np.ndarray:
        self.reads.append(len(rows))
        return self.inner.read(rows)


def test_evaluation_reads_one_chunk_at_a_time_and_equals_in_memory() -> None:
    """Memory holds one chunk of images: no read asks for more than ``batch_size`` rows."""
    images = (np.random.default_rng(5).random((40, 1, 8, 8)) * 255).astype(np.uint8)
    labels = torch.from_numpy(np.random.default_rng(6).integers(0, 10, 40))
    torch.manual_seed(0)
    model = build_model("mlp", num_classes=10, input_shape=(1, 8, 8), hidden_sizes=[16])
    spy = _Spy(images)
    options = {"threats": "linf:0.05,l2:0.3", "suite": "fast", "batch_size": 8, "seed": 2}
    streamed = evaluate(model, LazyImages(spy), labels, None, **options)
    tensor = torch.from_numpy(images).to(torch.float32).div_(255.0)
    in_memory = evaluate(model, tensor, labels, None, **options)
    assert max(spy.reads) <= 8 and sum(spy.reads) >= 40
    for spec in in_memory.threats:
        assert np.array_equal(streamed.robust[spec], in_memory.robust[spec])
    assert np.array_equal(streamed.logits, in_memory.logits)
    for spec, ex in in_memory.examples.items():
        assert np.array_equal(streamed.examples[spec].x, ex.x)


# ----------------------------------------------------------------------------- recipes


def test_dataset_options_sit_next_to_the_name_in_a_recipe() -> None:
    recipe = tiny_recipe(data={"name": "imagefolder", "data_dir": "/x", "image_size": 224})
    config = validate_recipe(recipe)
    assert config.data.options == {"image_size": 224} and not config.data.stream
    nested = tiny_recipe(data={"name": "imagefolder", "options": {"resize_size": 256}})
    assert validate_recipe(nested).data.options == {"resize_size": 256}
    with pytest.raises(ConfigError, match=r"unknown key 'data\.val_sise'; did you mean 'val_size'"):
        validate_recipe(tiny_recipe(data={"name": "digits", "val_sise": 3}))
    with pytest.raises(ConfigError, match="dataset 'imagefolder': bad value for 'image_size'"):
        validate_recipe(tiny_recipe(data={"name": "imagefolder", "image_size": 4}))
    with pytest.raises(ConfigError, match=r"unknown key 'data\.image_size'"):
        validate_recipe(tiny_recipe(data={"name": "digits", "image_size": 32}))


def test_streamed_training_equals_in_memory_training(tmp_path: Path) -> None:
    recipe = tiny_recipe()
    recipe["data"]["augment"] = {"crop_padding": 1, "hflip": True}
    a = train(validate_recipe(recipe), out=tmp_path / "memory", progress=False)
    recipe["data"]["stream"] = True
    b = train(validate_recipe(recipe), out=tmp_path / "stream", progress=False)
    wa = read_model_file(a / "checkpoints" / "model_last.safetensors")[0]
    wb = read_model_file(b / "checkpoints" / "model_last.safetensors")[0]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_imagefolder_run_is_evaluated_on_a_stored_index_list(tmp_path: Path) -> None:
    """Train on a Pillow-decoded folder (random-resized crops), then evaluate the exported model
    on a fixed index list with the preprocessing recorded in the model file."""
    make_imagefolder(tmp_path / "data", SIZES)
    recipe = tiny_recipe(
        data={
            "name": "imagefolder",
            "data_dir": str(tmp_path / "data"),
            "image_size": 16,
            "val_size": 2,
            "batch_size": 2,
        }
    )
    recipe["train"]["epochs"] = 1
    run = train(validate_recipe(recipe), out=tmp_path / "run", progress=False)
    points = write_index_list(tmp_path / "points.txt", np.array([4, 0, 5]))
    summary = evaluate_run(
        run,
        overrides={"checkpoints": ["last"], "points": str(points), "calibration": False},
    )[0]
    table = EvalResults.load(run / "eval" / "last-clean.npz")
    assert table.indices.tolist() == [4, 0, 5] and summary["n_points"] == 3
    assert table.labels.tolist() == [1, 0, 1]  # val/: ant ant ant cat cat cat
    assert "3 selected test points" in summary["points"]
