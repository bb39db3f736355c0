"""Dataset registry :data:`DATASETS`: in-memory splits with reproducible validation and subsets.

A dataset is a name mapped to a loader and its spec (a :class:`DatasetSpec`: the dataset's own
options, if any, such as ``imagefolder``'s ``image_size``, and what is known without reading it:
class count, input shape, mean/std). A loader ``(spec, data_dir) -> RawData`` returns the whole
train and test files; :func:`load_dataset` does the rest the same way for every dataset. The
built-in datasets live in :mod:`unirobust.data.sources`; a new one is one module with a spec and
``@DATASETS.register("name", Spec)`` on its loader.

Conventions
-----------
- ``Split.x`` is float32 ``(N, C, H, W)`` in [0, 1] for an image dataset and int64 ``(N, K, L)``
  packed tokens for a text one (its spec's ``inputs = "tokens"``; :mod:`unirobust.data.tokens`);
  ``Split.y`` int64; ``Split.indices`` are the
  positions of the rows in the original split file, so results on "the first N test points" can be
  reproduced and per-sample tables can be joined.
- Validation: ``val_size`` points are held out from the *training* file, stratified by class,
  chosen by ``seed``. When ``val_size`` is divisible by ``num_classes`` (and every class has enough
  points) each class gives exactly ``val_size // num_classes``; otherwise each class gives its
  share ``count_c * val_size / n`` rounded by the largest-remainder rule (ties: lower class id), so
  the total is exactly ``val_size``. ``val_size=0`` gives ``val=None``.
- ``n_train`` picks that many of the remaining training points with the same rule (and an
  independent stream of the same seed). ``n_test`` keeps the *first* ``n_test`` test points.
- ``test_indices`` (an index list, e.g. from :func:`~unirobust.data.index_list.read_index_list`)
  evaluates those test-file positions, in the list's order; ``n_test`` then keeps the first
  ``n_test`` of them (multinorm.md §8: ImageNet is evaluated on a stored fixed list, because the
  class-sorted validation order makes the first N points biased).
- Selected rows keep their original (ascending) order.

Streaming: a loader may return an :class:`~unirobust.data.source.ImageSource` instead of an
array. ``stream=True`` (and always for a source that can only stream, such as ``imagefolder``)
gives splits whose ``x`` is :class:`~unirobust.data.source.LazyImages`: only labels and row
positions are held, each batch is read when used. Otherwise the selected rows are read into
float32 tensors on ``device``, exactly as before.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import ValidationError
from torch import Tensor

from unirobust.data.source import ArraySource, ImageSource, LazyImages
from unirobust.data.split import DatasetBundle, Split
from unirobust.errors import ConfigError
from unirobust.registry import Entry, Registry
from unirobust.schema import Spec, describe_error
from unirobust.seeding import derive_seed

__all__ = [
    "DATASETS",
    "DatasetBundle",
    "DatasetSpec",
    "RawData",
    "Split",
    "dataset_shape",
    "dataset_spec",
    "is_text_dataset",
    "list_datasets",
    "load_dataset",
    "normalization_stats",
    "stratified_pick",
]


class DatasetSpec(Spec):
    """Base of a dataset's spec: its own options as fields, and (class variables) what is known
    without reading it: ``shape`` ``(num_classes, (C, H, W))`` and ``stats`` (per-channel mean and
    std of the training images in [0, 1], for a ``Normalize`` layer); ``None`` when unknown.
    ``inputs`` says what the loader returns: images, or packed token ids (text datasets)."""

    shape: ClassVar[tuple[int, tuple[int, int, int]] | None] = None
    stats: ClassVar[tuple[tuple[float, ...], tuple[float, ...]] | None] = None
    inputs: ClassVar[Literal["images", "tokens"]] = "images"


@dataclass(frozen=True)
class RawData:
    """A dataset's two files as its loader reads them: ``(N, C, H, W)`` images (numpy arrays or
    CPU tensors of any numeric type, divided by ``scale`` they lie in [0, 1]; or
    :class:`~unirobust.data.source.ImageSource` objects, which carry their own scale) or, for a
    text dataset, ``(N, K, L)`` packed token ids (``scale`` unused), integer labels
    ``0..len(class_names)-1`` and the class names."""

    x_train: Any
    y_train: Any
    x_test: Any
    y_test: Any
    class_names: list[str]
    scale: float = 255.0


DATASETS: Registry[RawData] = Registry("dataset", modules=("unirobust.data.sources",))
"""Every dataset by name; a loader is ``(spec, data_dir: str | None) -> RawData``."""

_ALIASES = {
    "fmnist": "fashion_mnist",
    "fashionmnist": "fashion_mnist",
    "cifar_10": "cifar10",
    "cifar_100": "cifar100",
    "image_folder": "imagefolder",
}
_SALT_VAL, _SALT_TRAIN = 1, 2


def list_datasets() -> list[str]:
    """Registered dataset names accepted by :func:`load_dataset` (aliases such as fmnist too)."""
    return DATASETS.names()


def _entry(name: str) -> Entry[RawData]:
    """The entry of a registered name or alias (unknown: a ConfigError listing the names)."""
    key = str(name).strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    return DATASETS.get(key if key in DATASETS.names() else str(name))  # errors name it as given


def normalization_stats(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Training-set per-channel ``(mean, std)`` for a known dataset, for ``normalize=True``."""
    spec = _entry(name).spec
    if getattr(spec, "stats", None) is None:
        known = [e.name for e in DATASETS.entries() if getattr(e.spec, "stats", None)]
        raise ConfigError(f"no built-in mean/std for '{name}'; known: {', '.join(known)}")
    return spec.stats  # type: ignore[attr-defined]


def dataset_shape(name: str) -> tuple[int, tuple[int, int, int]]:
    """(number of classes, input shape) of a dataset without reading it (for imported weights)."""
    spec = _entry(name).spec
    if getattr(spec, "shape", None) is None:
        fixed = [e.name for e in DATASETS.entries() if getattr(e.spec, "shape", None)]
        raise ConfigError(f"dataset '{name}' has no fixed shape; choose one of {', '.join(fixed)}")
    return spec.shape  # type: ignore[attr-defined]


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


def _shape(x: Any) -> tuple[int, ...]:
    if isinstance(x, ImageSource):
        return (len(x), *x.image_shape)
    return tuple(int(v) for v in np.shape(x))


def _make_split(
    x: Any,
    y: np.ndarray,
    rows: np.ndarray,
    scale: float | None,
    device: torch.device,
    *,
    stream: bool = False,
    train: bool = False,
) -> Split:
    """The split of ``rows``: lazy when streamed (module docstring), else tensors on ``device``;
    images become float [0, 1] (``scale``), token ids (``scale=None``) stay int64.

    ``train`` marks the training split, whose loader may apply the source's random transform."""
    idx = torch.from_numpy(rows.astype(np.int64))
    if isinstance(x, ImageSource) and (stream or x.stream_only):
        return Split(LazyImages(x, rows, train=train), torch.from_numpy(y[rows]), idx)
    if stream and scale is not None:
        return Split(LazyImages(ArraySource(x, scale), rows), torch.from_numpy(y[rows]), idx)
    raw = x.read(rows) if isinstance(x, ImageSource) else x[rows]
    scale = x.scale if isinstance(x, ImageSource) else scale
    xt = torch.from_numpy(np.ascontiguousarray(raw)).to(device)
    xt = xt.to(torch.int64) if scale is None else xt.to(torch.float32).div_(scale)
    yt = torch.from_numpy(y[rows]).to(device)
    return Split(xt, yt, idx.to(device))


def _test_rows(canon: str, available: np.ndarray, test_indices: Any, n_file: int) -> np.ndarray:
    """Test-file positions to evaluate: all ``available`` ones, or the given index list."""
    if test_indices is None:
        return available
    rows = np.asarray(test_indices, dtype=np.int64).reshape(-1)
    if rows.size == 0 or np.unique(rows).size != rows.size:
        raise ConfigError(f"{canon}: the test index list must be non-empty without repeats")
    outside = rows[~np.isin(rows, available)]
    if outside.size:
        where = f"0..{n_file - 1}" if available.size == n_file else "the kept classes"
        raise ConfigError(
            f"{canon}: test index {int(outside[0])} is not a test point here (allowed: {where}; "
            f"{outside.size} such indices in the list)"
        )
    return rows


def dataset_spec(name: str, options: dict[str, Any]) -> DatasetSpec:
    """A dataset's own options validated by its spec; a one-line ConfigError names a bad one."""
    entry = _entry(name)
    try:
        return entry.spec.model_validate({"name": entry.name, **options})  # type: ignore[return-value]
    except ValidationError as err:
        raise ConfigError(
            describe_error(err.errors()[0], entry.spec, f"dataset '{entry.name}'")
        ) from None


def _read(entry: Entry[RawData], data_dir: str | None, options: dict[str, Any]) -> RawData:
    """Validate a dataset's own options with its spec and run its loader."""
    raw = entry.builder(dataset_spec(entry.name, options), data_dir)
    tokens = _is_text(entry)
    what, dims, ndim = ("token ids", "(N, K, L)", 3) if tokens else ("images", "(N, C, H, W)", 4)
    for part, x, y in (("train", raw.x_train, raw.y_train), ("test", raw.x_test, raw.y_test)):
        if len(_shape(x)) != ndim or _shape(x)[0] != len(y):
            raise ConfigError(
                f"dataset '{entry.name}': {part} {what} must be {dims} with one label each, "
                f"got shape {_shape(x)} and {len(y)} labels"
            )
    return raw


def _is_text(entry: Entry[RawData]) -> bool:
    return getattr(entry.spec, "inputs", "images") == "tokens"


def is_text_dataset(name: str) -> bool:
    """Whether a registered dataset gives packed token ids (a text dataset) rather than images."""
    return _is_text(_entry(name))


def _check_classes(name: str, classes: list[int], num_classes: int) -> None:
    bad = [c for c in classes if not isinstance(c, int) or not 0 <= c < num_classes]
    if bad or not classes or len(set(classes)) != len(classes):
        raise ConfigError(
            f"{name}: classes {classes} must be distinct class indices in 0..{num_classes - 1}"
        )


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    n_train: int | None = None,
    n_test: int | None = None,
    val_size: int = 1000,
    seed: int = 0,
    device: str | torch.device = "cpu",
    classes: list[int] | None = None,
    stream: bool = False,
    test_indices: Any = None,
    **options: Any,
) -> DatasetBundle:
    """Load a registered dataset as float [0, 1] tensors on ``device``, or streamed.

    Names (:func:`list_datasets`): ``fashion_mnist`` (alias ``fmnist``; default dir: the Debian
    dataset-fashion-mnist package), ``digits``, ``cifar10``, ``cifar100`` (``data_dir`` contains
    ``cifar-10-batches-py/`` / ``cifar-100-python/`` or is that folder), ``imagefolder``
    (``data_dir`` with ``train/`` and ``val/`` class folders, decoded with Pillow and cropped to
    the option ``image_size``, default 64; always streamed; ``val/`` becomes the test split), and
    any dataset registered in :data:`DATASETS`. ``options`` are the dataset's own options,
    validated by its spec. See the module docstring for how the validation split, ``n_train``,
    ``n_test`` and ``test_indices`` are chosen, and for ``stream``. ``classes`` keeps only those
    classes of the files, relabelled 0..k-1 in the order given (a transfer task: pretrain on
    some classes, fine-tune on others); split indices stay positions in the original files.
    """
    ddir = None if data_dir is None else str(Path(data_dir).expanduser())
    entry = _entry(name)
    canon = entry.name
    raw = _read(entry, ddir, options)
    xtr, xte = (
        x if isinstance(x, ImageSource) else np.asarray(x) for x in (raw.x_train, raw.x_test)
    )
    ytr = np.asarray(raw.y_train, dtype=np.int64)
    yte = np.asarray(raw.y_test, dtype=np.int64)
    class_names = list(raw.class_names)
    scale = None if _is_text(entry) else float(raw.scale)
    num_classes = len(class_names)
    if ytr.size and int(max(ytr.max(), yte.max())) >= num_classes:
        raise ConfigError(f"{canon}: labels exceed the {num_classes} class names found")
    train_rows, test_rows_all = np.arange(len(ytr)), np.arange(len(yte))
    if classes is not None:
        _check_classes(canon, classes, num_classes)
        relabel = np.full(num_classes, -1, dtype=np.int64)
        relabel[np.asarray(classes)] = np.arange(len(classes))
        train_rows, test_rows_all = (
            np.flatnonzero(relabel[ytr] >= 0),
            np.flatnonzero(relabel[yte] >= 0),
        )
        ytr, yte = relabel[ytr], relabel[yte]
        class_names, num_classes = [class_names[c] for c in classes], len(classes)
    test_rows_all = _test_rows(canon, test_rows_all, test_indices, len(yte))
    n_all, n_test_all = len(train_rows), len(test_rows_all)

    _check_count("val_size", val_size, 0, n_all - 1)
    _check_count("n_train", n_train, 1, n_all - val_size)
    _check_count("n_test", n_test, 1, n_test_all)
    _check_count("seed", seed, 0, 2**63 - 1)
    dev = torch.device(device)

    labels = torch.from_numpy(ytr[train_rows])
    pool = train_rows
    val = None
    if val_size > 0:
        val_mask = stratified_pick(labels, val_size, derive_seed(seed, _SALT_VAL), num_classes)
        val_mask_np = val_mask.numpy()
        val = _make_split(xtr, ytr, pool[val_mask_np], scale, dev, stream=stream)
        labels = labels[~val_mask]
        pool = pool[~val_mask_np]
    if n_train is not None and n_train < len(pool):
        keep = stratified_pick(labels, n_train, derive_seed(seed, _SALT_TRAIN), num_classes)
        pool = pool[keep.numpy()]
    train = _make_split(xtr, ytr, pool, scale, dev, stream=stream, train=True)
    test_rows = test_rows_all[: n_test_all if n_test is None else n_test]
    test = _make_split(xte, yte, test_rows, scale, dev, stream=stream)
    return DatasetBundle(
        name=canon,
        train=train,
        val=val,
        test=test,
        num_classes=num_classes,
        input_shape=_shape(xtr)[1:],
        class_names=list(class_names),
    )
