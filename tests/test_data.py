"""Behaviour tests for unirobust.data: IDX/CIFAR readers, splits, augmentation, loader."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from unirobust.data import (
    Augment,
    AugmentParams,
    BatchLoader,
    DatasetFormatError,
    Split,
    list_datasets,
    load_dataset,
    read_idx,
)
from unirobust.data.idx import FASHION_MNIST_DEFAULT_DIR, load_fashion_mnist, parse_idx
from unirobust.errors import ConfigError, DatasetNotFoundError

HAVE_FMNIST = Path(FASHION_MNIST_DEFAULT_DIR, "train-images-idx3-ubyte.gz").is_file()
needs_fmnist = pytest.mark.skipif(not HAVE_FMNIST, reason="apt-get install dataset-fashion-mnist")


# ----------------------------------------------------------------------------- IDX


@pytest.fixture(scope="module")
def fmnist_raw():
    if not HAVE_FMNIST:
        pytest.skip("Fashion-MNIST not installed")
    return load_fashion_mnist()


def test_fashion_mnist_idx_known_labels_shapes_and_range(fmnist_raw):
    x_train, y_train, x_test, y_test = fmnist_raw
    assert y_train[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert y_test[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    assert x_train.dtype == np.uint8 and y_train.dtype == np.int64
    assert x_train.min() == 0 and x_train.max() == 255
    assert np.bincount(y_train).tolist() == [6000] * 10
    assert np.bincount(y_test).tolist() == [1000] * 10


def _idx_bytes(arr: np.ndarray, type_code: int, be_dtype: str) -> bytes:
    header = bytes([0, 0, type_code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(be_dtype).tobytes()


def test_idx_roundtrip_plain_gzip_and_multibyte(tmp_path):
    a = np.arange(24, dtype=np.int32).reshape(2, 3, 4) * 1000 - 5000
    raw = _idx_bytes(a, 0x0C, ">i4")
    (tmp_path / "a.idx").write_bytes(raw)
    (tmp_path / "a.idx.gz").write_bytes(gzip.compress(raw))
    for name in ("a.idx", "a.idx.gz"):
        out = read_idx(tmp_path / name)
        assert out.shape == (2, 3, 4) and out.dtype == np.int32
        np.testing.assert_array_equal(out, a)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"\x01\x00\x08\x01" + struct.pack(">I", 3) + b"abc", "magic"),
        (b"\x00\x00\x07\x01" + struct.pack(">I", 3) + b"abc", "magic"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 10) + b"abcde", "truncated"),
        (b"\x00\x00\x08\x02" + struct.pack(">I", 10), "truncated IDX header"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 2) + b"abc", "trailing"),
        (b"\x00\x00", "not an IDX"),
    ],
)
def test_malformed_idx_raises_clear_error(raw, match):
    with pytest.raises(DatasetFormatError, match=match):
        parse_idx(raw, source="bad.idx")


def test_truncated_gzip_and_missing_files(tmp_path):
    raw = _idx_bytes(np.zeros((100, 5), np.uint8), 0x08, ">u1")
    (tmp_path / "t.gz").write_bytes(gzip.compress(raw)[:-12])
    with pytest.raises(DatasetFormatError, match=r"t\.gz"):
        read_idx(tmp_path / "t.gz")
    with pytest.raises(DatasetNotFoundError, match="nowhere"):
        read_idx(tmp_path / "nowhere.idx")
    with pytest.raises(DatasetNotFoundError, match=r"apt-get install dataset-fashion-mnist"):
        load_dataset("fashion_mnist", data_dir=tmp_path / "empty")
    assert issubclass(DatasetFormatError, DatasetNotFoundError)


# ----------------------------------------------------------------------------- CIFAR


def _pickle(path: Path, obj) -> None:
    with path.open("wb") as fh:
        pickle.dump(obj, fh, protocol=2)


def _images(rng, n):
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def make_cifar10(root: Path, per_batch: int = 20, n_test: int = 30, dump=None) -> dict:
    """Write a miniature CIFAR-10 in the exact layout of cifar-10-python.tar.gz (``dump(path,
    obj)`` writes each pickle; default: Python 3's protocol 2)."""
    write = dump or _pickle
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    xs, ys = [], []
    for i in range(1, 6):
        data = _images(rng, per_batch)
        labels = [int(v) for v in np.arange(per_batch) % 10]
        batch = {
            b"batch_label": f"training batch {i} of 5".encode(),
            b"labels": labels,
            b"data": data,
            b"filenames": [f"img_{i}_{j}.png".encode() for j in range(per_batch)],
        }
        write(folder / f"data_batch_{i}", batch)
        xs.append(data)
        ys += labels
    test = _images(rng, n_test)
    test_labels = [int(v) for v in rng.integers(0, 10, n_test)]
    write(
        folder / "test_batch",
        {b"batch_label": b"testing batch 1 of 1", b"labels": test_labels, b"data": test},
    )
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer"]
    names += [b"dog", b"frog", b"horse", b"ship", b"truck"]
    write(
        folder / "batches.meta",
        {b"num_cases_per_batch": per_batch, b"label_names": names, b"num_vis": 3072},
    )
    return {"x": np.concatenate(xs), "y": ys, "x_test": test, "y_test": test_labels}


def make_cifar100(root: Path, n_train: int = 200, n_test: int = 50) -> dict:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        data = _images(rng, n)
        fine = [int(v) for v in np.arange(n) % 100]
        _pickle(
            folder / split,
            {
                b"filenames": [b"x.png"] * n,
                b"batch_label": split.encode(),
                b"fine_labels": fine,
                b"coarse_labels": [v // 5 for v in fine],
                b"data": data,
            },
        )
        out[split] = (data, fine)
    _pickle(
        folder / "meta",
        {
            b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
        },
    )
    return out


def test_cifar10_reader_layout_labels_and_names(tmp_path):
    ref = make_cifar10(tmp_path)
    for data_dir in (tmp_path, tmp_path / "cifar-10-batches-py"):
        ds = load_dataset("cifar10", data_dir=str(data_dir), val_size=0)
        assert ds.input_shape == (3, 32, 32) and ds.num_classes == 10
        assert ds.class_names[0] == "airplane" and ds.class_names[9] == "truck"
        assert len(ds.train) == 100 and len(ds.test) == 30 and ds.val is None
        assert ds.train.y.tolist() == ref["y"]
        assert ds.test.y.tolist() == ref["y_test"]
        # channel-planar rows: first 1024 bytes are red, row-major
        row = ref["x"][57]
        red = torch.from_numpy(row[:1024].reshape(32, 32)).float() / 255
        blue = torch.from_numpy(row[2048:].reshape(32, 32)).float() / 255
        assert torch.equal(ds.train.x[57, 0], red) and torch.equal(ds.train.x[57, 2], blue)
        assert ds.train.x.dtype == torch.float32


def test_cifar100_reader_uses_fine_labels(tmp_path):
    ref = make_cifar100(tmp_path)
    ds = load_dataset("cifar100", data_dir=tmp_path, val_size=100, n_test=10)
    assert ds.num_classes == 100 and ds.class_names[3] == "fine3"
    assert torch.bincount(ds.val.y, minlength=100).tolist() == [1] * 100
    assert len(ds.train) == 100 and ds.test.y.tolist() == ref["test"][1][:10]
    x0 = torch.from_numpy(ref["test"][0][0].reshape(3, 32, 32)).float() / 255
    assert torch.equal(ds.test.x[0], x0)


def test_cifar_missing_dir_and_malicious_pickle(tmp_path):
    missing = tmp_path / "no_such_dir"
    with pytest.raises(DatasetNotFoundError, match="no_such_dir"):
        load_dataset("cifar10", data_dir=missing)
    with pytest.raises(DatasetNotFoundError, match="cifar-100-python"):
        load_dataset("cifar100", data_dir=missing)
    with pytest.raises(DatasetNotFoundError, match="data_dir"):
        load_dataset("cifar10")
    make_cifar10(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    _pickle(tmp_path / "cifar-10-batches-py" / "test_batch", {b"data": Evil(), b"labels": []})
    with pytest.raises(DatasetFormatError, match="refusing"):
        load_dataset("cifar10", data_dir=tmp_path)
    assert not marker.exists()


# ----------------------------------------------------------------------------- splits


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", val_size=100, seed=0)


def test_digits_canonical_split(digits):
    full = load_dataset("digits", val_size=0)
    assert (len(full.train), len(full.test)) == (1437, 360)
    assert full.input_shape == (1, 8, 8) and full.num_classes == 10
    assert full.class_names == [str(i) for i in range(10)]
    assert torch.bincount(full.test.y).tolist() == [36] * 10
    assert full.test.indices.tolist() == list(range(360))
    x = full.train.x
    assert x.min() == 0 and x.max() == 1 and torch.equal(x * 16, (x * 16).round())
    # the canonical train/test split does not move with the seed
    other = load_dataset("digits", val_size=0, seed=5)
    assert torch.equal(other.test.x, full.test.x) and torch.equal(other.train.y, full.train.y)
    # val + train reassemble the canonical training file
    assert len(digits.train) + len(digits.val) == 1437
    assert torch.equal(full.train.x[digits.val.indices], digits.val.x)


def test_val_split_determinism_disjointness_and_stratification(digits):
    same = load_dataset("digits", val_size=100, seed=0)
    assert torch.equal(same.val.indices, digits.val.indices)
    assert torch.equal(same.train.indices, digits.train.indices)
    diff = load_dataset("digits", val_size=100, seed=1)
    assert not torch.equal(diff.val.indices, digits.val.indices)
    val_idx, train_idx = set(digits.val.indices.tolist()), set(digits.train.indices.tolist())
    assert not val_idx & train_idx and len(val_idx | train_idx) == 1437
    assert torch.bincount(digits.val.y).tolist() == [10] * 10  # divisible: equal per class
    assert torch.all(digits.val.indices[1:] > digits.val.indices[:-1])  # canonical order


def test_val_not_divisible_is_proportional_and_exact():
    ds = load_dataset("digits", val_size=105, seed=3)
    counts = torch.bincount(ds.val.y, minlength=10)
    assert counts.sum() == 105 and counts.min() >= 10 and counts.max() <= 11
    assert load_dataset("digits", val_size=0).val is None


def test_n_train_is_stratified_deterministic_and_from_remaining(digits):
    a = load_dataset("digits", val_size=100, n_train=200, seed=0)
    b = load_dataset("digits", val_size=100, n_train=200, seed=0)
    c = load_dataset("digits", val_size=100, n_train=200, seed=1)
    assert torch.equal(a.train.indices, b.train.indices)
    assert not torch.equal(a.train.indices, c.train.indices)
    assert torch.bincount(a.train.y).tolist() == [20] * 10
    assert set(a.train.indices.tolist()) <= set(digits.train.indices.tolist())
    assert torch.equal(a.val.indices, digits.val.indices)  # n_train does not move val


@needs_fmnist
def test_fashion_mnist_bundle_first_test_points_and_val(fmnist_raw):
    ds = load_dataset("fmnist", n_train=1000, n_test=50, val_size=500, seed=7)
    assert ds.name == "fashion_mnist" and ds.input_shape == (1, 28, 28)
    assert ds.class_names[9] == "Ankle boot"
    assert ds.test.indices.tolist() == list(range(50))
    x_ref = torch.from_numpy(fmnist_raw[2][:50]).float().div(255).unsqueeze(1)
    assert torch.equal(ds.test.x, x_ref)
    assert ds.test.y[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    assert torch.bincount(ds.val.y).tolist() == [50] * 10
    assert torch.bincount(ds.train.y).tolist() == [100] * 10
    assert not set(ds.val.indices.tolist()) & set(ds.train.indices.tolist())
    assert torch.equal(ds.train.y, torch.from_numpy(fmnist_raw[1][ds.train.indices.numpy()]))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_train": 0},
        {"n_train": 1438 - 100},
        {"val_size": -1},
        {"val_size": 1437},
        {"n_test": 361},
        {"n_test": 0},
        {"n_train": 2.5},
    ],
)
def test_out_of_range_counts_raise_config_error(kwargs):
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        load_dataset("digits", **{"val_size": 100, **kwargs})


def test_unknown_dataset_lists_names():
    with pytest.raises(ConfigError, match=r"cifar10.*digits.*fashion_mnist"):
        load_dataset("mnist2")
    assert set(list_datasets()) == {
        "cifar10",
        "cifar100",
        "digits",
        "fashion_mnist",
        "imagefolder",
        "text",
    }


def test_split_accepts_uint8_and_validates_lengths():
    s = Split(torch.full((3, 1, 2, 2), 255, dtype=torch.uint8), torch.arange(3), torch.arange(3))
    assert s.x.dtype == torch.float32 and float(s.x.max()) == 1.0 and len(s) == 3
    assert s.subset([2, 0]).indices.tolist() == [2, 0]
    with pytest.raises(ValueError, match="disagree"):
        Split(torch.zeros(3, 1, 2, 2), torch.arange(2), torch.arange(3))


# ----------------------------------------------------------------------------- augmentation


def _shift_reference(img: torch.Tensor, dy: int, dx: int, pad: int) -> torch.Tensor:
    """out[r, c] = img[r + dy - pad, c + dx - pad], zero outside."""
    out = torch.zeros_like(img)
    h, w = img.shape[-2:]
    sy, sx = dy - pad, dx - pad
    out[..., max(0, -sy) : min(h, h - sy), max(0, -sx) : min(w, w - sx)] = img[
        ..., max(0, sy) : min(h, h + sy), max(0, sx) : min(w, w + sx)
    ]
    return out


def test_crop_equals_shifted_copy_with_zero_fill():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 9, 11, generator=gen) * 0.9 + 0.1  # strictly positive: zeros are fill
    aug = Augment(crop_padding=3)
    params = aug.sample(64, gen)
    assert params.flip is None and params.offsets.min() >= 0 and params.offsets.max() <= 6
    out = aug.apply(x, params)
    assert out.shape == x.shape
    for i in range(64):
        dy, dx = params.offsets[i].tolist()
        assert torch.equal(out[i], _shift_reference(x[i], dy, dx, 3))
    # a fixed known shift: down-right by one pixel (offset pad-1) moves content and zero-fills
    known = aug.apply(x[:1], AugmentParams(torch.tensor([[2, 2]]), None))
    assert torch.equal(known[0, :, 1:, 1:], x[0, :, :-1, :-1])
    assert known[0, :, 0, :].abs().sum() == 0 and known[0, :, :, 0].abs().sum() == 0


def test_flip_proportion_range_and_identity():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(4000, 1, 8, 8, generator=gen)
    out = Augment(crop_padding=2, hflip=True)(x, gen)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    flips = Augment(hflip=True).sample(20000, gen).flip
    assert abs(flips.float().mean().item() - 0.5) < 0.02
    params = Augment(hflip=True).sample(100, gen)
    out = Augment(hflip=True).apply(x[:100], params)
    assert torch.equal(out[params.flip], x[:100][params.flip].flip(-1))
    assert torch.equal(out[~params.flip], x[:100][~params.flip])
    assert torch.equal(Augment()(x, gen), x)
    with pytest.raises(ConfigError, match="crop_padding"):
        Augment(crop_padding=-1)


# ----------------------------------------------------------------------------- loader


def _toy_split(n=50):
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    return Split(x, torch.arange(n) % 10, torch.arange(100, 100 + n))


def _collect(loader):
    return [tuple(t.clone() for t in batch) for batch in loader]


def test_loader_len_order_and_coverage():
    split = _toy_split(50)
    plain = BatchLoader(split, 16, shuffle=False)
    batches = _collect(plain)
    assert len(plain) == 4 and [len(b[0]) for b in batches] == [16, 16, 16, 2]
    assert torch.equal(torch.cat([b[0] for b in batches]), split.x)
    dropped = BatchLoader(split, 16, shuffle=True, drop_last=True)
    assert len(dropped) == 3 and len(_collect(dropped)) == 3
    shuffled = BatchLoader(split, 16, shuffle=True, return_indices=True)
    idx = torch.cat([b[2] for b in _collect(shuffled)])
    assert sorted(idx.tolist()) == list(range(100, 150)) and idx.tolist() != sorted(idx.tolist())
    assert shuffled.global_batch_sizes() == [16, 16, 16, 2]


def test_loader_determinism_per_seed_epoch_and_global_rng_independence():
    split = _toy_split(40)
    aug = Augment(crop_padding=2, hflip=True)

    def run(seed, epoch):
        loader = BatchLoader(split, 8, shuffle=True, seed=seed, augment=aug)
        loader.set_epoch(epoch)
        return _collect(loader)

    torch.manual_seed(123)
    a = run(0, 3)
    state = torch.get_rng_state()
    torch.manual_seed(999)  # a different global RNG must not matter
    b = run(0, 3)
    torch.manual_seed(999)
    before = torch.get_rng_state()
    c = run(0, 4)
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG is never consumed
    d = run(1, 3)
    assert all(
        torch.equal(u, v) for ba, bb in zip(a, b, strict=True) for u, v in zip(ba, bb, strict=True)
    )
    assert not torch.equal(a[0][1], c[0][1]) and not torch.equal(a[0][1], d[0][1])
    assert state.shape == before.shape


@pytest.mark.parametrize(("n", "batch", "world"), [(50, 16, 2), (50, 16, 3), (21, 8, 4), (5, 4, 3)])
def test_shard_union_equals_global_batch(n, batch, world):
    split = _toy_split(n)
    aug = Augment(crop_padding=1, hflip=True)
    full = BatchLoader(split, batch, shuffle=True, seed=5, augment=aug, return_indices=True)
    full.set_epoch(2)
    shards = [full.shard(r, world) for r in range(world)]
    for s in shards:
        s.set_epoch(2)
        assert len(s) == len(full)
    ref = _collect(full)
    per_rank = [_collect(s) for s in shards]
    for i, (gx, gy, gi) in enumerate(ref):
        parts = [per_rank[r][i] for r in range(world)]
        sizes = [len(p[0]) for p in parts]
        assert max(sizes) - min(sizes) <= 1 and sum(sizes) == len(gx)
        for k, glob in enumerate((gx, gy, gi)):
            assert torch.equal(torch.cat([p[k] for p in parts]), glob)
    with pytest.raises(ConfigError):
        full.shard(world, world)


def test_classes_subset_is_relabelled_and_keeps_file_positions() -> None:
    from unirobust.data import load_dataset

    full = load_dataset("digits", val_size=100, seed=2)
    part = load_dataset("digits", val_size=50, seed=2, classes=[7, 3])
    assert part.num_classes == 2 and part.class_names == [full.class_names[7], full.class_names[3]]
    for split in (part.train, part.val, part.test):
        assert set(split.y.tolist()) == {0, 1}
    # a test point keeps its original file position and its image; its label is relabelled
    test_all = load_dataset("digits", val_size=0)
    for pos, label in zip(part.test.indices.tolist()[:20], part.test.y.tolist()[:20], strict=True):
        assert int(test_all.test.y[pos]) == (7, 3)[label]
    with pytest.raises(ConfigError, match="distinct class indices"):
        load_dataset("digits", classes=[1, 1])
