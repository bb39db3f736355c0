"""Dataset registry: in-memory splits with reproducible validation and subset selection.

Conventions
-----------
- ``Split.x`` is float32 ``(N, C, H, W)`` in [0, 1]; ``Split.y`` int64; ``Split.indices`` are the
  positions of the rows in the original split file, so results on "the first N test points" can be
  reproduced and per-sample tables can be joined.
- Validation: ``val_size`` points are held out from the *training* file, stratified by class,
  chosen by ``seed``. When ``val_size`` is divisible by ``num_classes`` (and every class has enough
  points) each class gives exactly ``val_size // num_classes``; otherwise each class gives its
  share ``count_c * val_size / n`` rounded by the largest-remainder rule (ties: lower class id), so
  the total is exactly ``val_size``. ``val_size=0`` gives ``val=None``.
- ``n_train`` picks that many of the remaining training points with the same rule (and an
  independent stream of the same seed). ``n_test`` keeps the *first* ``n_test`` test points.
- Selected rows keep their original (ascending) order.
- ``digits`` (scikit-learn 8x8 digits, values 0..16 scaled by 1/16) has no official split: its
  1797 images are split once, stratified, into 1437 train / 360 test with a fixed seed 0 (the
  ``seed`` argument does not move it). Its ``indices`` are positions within those canonical splits.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from unirobust.data.split import DatasetBundle, Split
from unirobust.errors import ConfigError
from unirobust.seeding import derive_seed

__all__ = [
    "DatasetBundle",
    "Split",
    "list_datasets",
    "load_dataset",
    "normalization_stats",
    "stratified_pick",
]

_ALIASES = {
    "fashion_mnist": "fashion_mnist",
    "fmnist": "fashion_mnist",
    "fashionmnist": "fashion_mnist",
    "digits": "digits",
    "cifar10": "cifar10",
    "cifar_10": "cifar10",
    "cifar100": "cifar100",
    "cifar_100": "cifar100",
    "imagefolder": "imagefolder",
    "image_folder": "imagefolder",
}

# Per-channel mean / std of the training images in [0, 1] (for ``Normalize`` inside a model).
_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "digits": ((0.3053,), (0.3760,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

_DIGITS_N_TEST = 360
_SALT_VAL, _SALT_TRAIN = 1, 2


def list_datasets() -> list[str]:
    """Canonical dataset names accepted by :func:`load_dataset` (aliases such as fmnist too)."""
    return sorted(set(_ALIASES.values()))


def _canonical(name: str) -> str:
    key = str(name).strip().lower().replace("-", "_")
    if key not in _ALIASES:
        raise ConfigError(
            f"unknown dataset {name!r}; available: {', '.join(list_datasets())} (alias: fmnist)"
        )
    return _ALIASES[key]


def normalization_stats(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Training-set per-channel ``(mean, std)`` for a known dataset, for ``normalize=True``."""
    canon = _canonical(name)
    if canon not in _STATS:
        raise ConfigError(f"no built-in mean/std for {canon!r}; known: {', '.join(sorted(_STATS))}")
    return _STATS[canon]


def _allocate(class_counts: Tensor, k: int) -> Tensor:
    """How many of ``k`` picks each class gives (see module docstring)."""
    num_classes = class_counts.numel()
    if k % num_classes == 0 and bool((class_counts >= k // num_classes).all()):
        return torch.full_like(class_counts, k // num_classes)
    total = int(class_counts.sum())
    base = class_counts * k // total
    rest = k - int(base.sum())
    if rest > 0:
        remainder = class_counts * k % total
        # stable sort on descending remainder: ties go to the lower class id
        order = torch.sort(-remainder, stable=True).indices
        base[order[:rest]] += 1
    return base


def stratified_pick(labels: Tensor, k: int, seed: int, num_classes: int) -> Tensor:
    """Boolean mask picking ``k`` positions of ``labels``, stratified, driven by ``seed``."""
    n = labels.numel()
    labels = labels.cpu()
    counts = torch.bincount(labels, minlength=num_classes)
    per_class = _allocate(counts, k)
    gen = torch.Generator()
    gen.manual_seed(seed)
    order = torch.randperm(n, generator=gen)
    grouped = order[torch.sort(labels[order], stable=True).indices]  # classes in random order
    starts = torch.cumsum(counts, 0) - counts
    grouped_labels = labels[grouped]
    rank_in_class = torch.arange(n) - starts[grouped_labels]
    mask = torch.zeros(n, dtype=torch.bool)
    mask[grouped[rank_in_class < per_class[grouped_labels]]] = True
    return mask


def _check_count(what: str, value: int | None, low: int, high: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{what}={value!r} is out of range; allowed: integers {low}..{high}")


def _raw(
    name: str, data_dir: str | None, image_size: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str], float]:
    """Return uint8 NCHW train/test arrays, int64 labels, class names and the pixel scale."""
    if image_size is not None and name != "imagefolder":
        raise ConfigError(f"image_size applies to imagefolder only, not {name!r}")
    if name == "fashion_mnist":
        from unirobust.data.idx import FASHION_MNIST_CLASSES, load_fashion_mnist

        xtr, ytr, xte, yte = load_fashion_mnist(data_dir)
        return xtr[:, None], ytr, xte[:, None], yte, list(FASHION_MNIST_CLASSES), 255.0
    if name == "digits":
        return (*_digits(), 16.0)
    if name in ("cifar10", "cifar100"):
        from unirobust.data.cifar import load_cifar10, load_cifar100

        loader = load_cifar10 if name == "cifar10" else load_cifar100
        return (*loader(data_dir), 255.0)
    from unirobust.data.imagefolder import load_imagefolder

    return (*load_imagefolder(data_dir, image_size=image_size or 64), 255.0)


def _digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images).astype(np.uint8)[:, None]  # (1797, 1, 8, 8), values 0..16
    labels = bunch.target.astype(np.int64)
    test_mask = stratified_pick(torch.from_numpy(labels), _DIGITS_N_TEST, 0, 10).numpy()
    return (
        images[~test_mask],
        labels[~test_mask],
        images[test_mask],
        labels[test_mask],
        [str(d) for d in range(10)],
    )


def _make_split(
    x: np.ndarray, y: np.ndarray, rows: np.ndarray, scale: float, device: torch.device
) -> Split:
    xt = torch.from_numpy(np.ascontiguousarray(x[rows])).to(device)
    xt = xt.to(torch.float32).div_(scale)
    yt = torch.from_numpy(y[rows]).to(device)
    return Split(xt, yt, torch.from_numpy(rows.astype(np.int64)).to(device))


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    n_train: int | None = None,
    n_test: int | None = None,
    val_size: int = 1000,
    seed: int = 0,
    device: str | torch.device = "cpu",
    image_size: int | None = None,
) -> DatasetBundle:
    """Load a dataset into memory as float [0, 1] tensors on ``device``.

    Names: ``fashion_mnist`` (alias ``fmnist``; default dir: the Debian dataset-fashion-mnist
    package), ``digits``, ``cifar10``, ``cifar100`` (``data_dir`` contains
    ``cifar-10-batches-py/`` / ``cifar-100-python/`` or is that folder), ``imagefolder``
    (``data_dir`` with ``train/`` and ``val/`` class folders, resized to ``image_size``, default 64;
    needs torchvision; ``val/`` becomes the test split). See the module docstring for how the
    validation split, ``n_train`` and ``n_test`` are chosen.
    """
    canon = _canonical(name)
    ddir = None if data_dir is None else str(Path(data_dir).expanduser())
    xtr, ytr, xte, yte, class_names, scale = _raw(canon, ddir, image_size)
    num_classes = len(class_names)
    if ytr.size and int(max(ytr.max(), yte.max())) >= num_classes:
        raise ConfigError(f"{canon}: labels exceed the {num_classes} class names found")
    n_all, n_test_all = len(ytr), len(yte)

    _check_count("val_size", val_size, 0, n_all - 1)
    _check_count("n_train", n_train, 1, n_all - val_size)
    _check_count("n_test", n_test, 1, n_test_all)
    _check_count("seed", seed, 0, 2**63 - 1)
    dev = torch.device(device)

    labels = torch.from_numpy(ytr)
    pool = np.arange(n_all)
    val = None
    if val_size > 0:
        val_mask = stratified_pick(labels, val_size, derive_seed(seed, _SALT_VAL), num_classes)
        val_mask_np = val_mask.numpy()
        val = _make_split(xtr, ytr, pool[val_mask_np], scale, dev)
        pool = pool[~val_mask_np]
    if n_train is not None and n_train < len(pool):
        keep = stratified_pick(labels[pool], n_train, derive_seed(seed, _SALT_TRAIN), num_classes)
        pool = pool[keep.numpy()]
    train = _make_split(xtr, ytr, pool, scale, dev)
    test_rows = np.arange(n_test_all if n_test is None else n_test)
    test = _make_split(xte, yte, test_rows, scale, dev)
    c, h, w = xtr.shape[1:]
    return DatasetBundle(
        name=canon,
        train=train,
        val=val,
        test=test,
        num_classes=num_classes,
        input_shape=(int(c), int(h), int(w)),
        class_names=list(class_names),
    )


_SHAPES: dict[str, tuple[int, tuple[int, int, int]]] = {
    "fashion_mnist": (10, (1, 28, 28)),
    "digits": (10, (1, 8, 8)),
    "cifar10": (10, (3, 32, 32)),
    "cifar100": (100, (3, 32, 32)),
}


def dataset_shape(name: str) -> tuple[int, tuple[int, int, int]]:
    """(number of classes, input shape) of a dataset without reading it (for imported weights)."""
    canonical = _canonical(name)
    if canonical not in _SHAPES:
        raise ConfigError(
            f"dataset '{name}' has no fixed shape; choose one of {', '.join(sorted(_SHAPES))}"
        )
    return _SHAPES[canonical]
