"""unirobust.data: in-memory datasets, reproducible splits, batched on-device augmentation.

>>> from unirobust.data import load_dataset, BatchLoader, Augment
>>> ds = load_dataset("fashion_mnist", n_test=1000)            # doctest: +SKIP
>>> aug = Augment(crop_padding=2, hflip=True)
>>> loader = BatchLoader(ds.train, 128, shuffle=True, augment=aug)  # doctest: +SKIP
"""

from unirobust.data.idx import DatasetFormatError, read_idx
from unirobust.data.loader import Augment, AugmentParams, BatchLoader, derive_seed
from unirobust.data.registry import (
    DatasetBundle,
    Split,
    dataset_shape,
    list_datasets,
    load_dataset,
    normalization_stats,
    stratified_pick,
)

__all__ = [
    "Augment",
    "AugmentParams",
    "BatchLoader",
    "DatasetBundle",
    "DatasetFormatError",
    "Split",
    "dataset_shape",
    "derive_seed",
    "list_datasets",
    "load_dataset",
    "normalization_stats",
    "read_idx",
    "stratified_pick",
]
