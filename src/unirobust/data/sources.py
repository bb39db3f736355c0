"""The built-in datasets, each a spec and a loader registered in :data:`DATASETS`.

A loader returns the dataset's whole train and test files as :class:`RawData` (CIFAR and
imagefolder as image sources read on demand, the small sets as arrays);
:func:`~unirobust.data.registry.load_dataset` picks validation, ``n_train`` and ``n_test`` the same
way for every dataset. File readers are imported inside the loaders, so registering costs nothing.

``digits`` (scikit-learn 8x8 digits, values 0..16 scaled by 1/16) has no official split: its
1797 images are split once, stratified, into 1437 train / 360 test with a fixed seed 0 (the
``seed`` of ``load_dataset`` does not move it). Its ``indices`` are positions within those
canonical splits.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from unirobust.data.registry import DATASETS, DatasetSpec, RawData, stratified_pick

__all__ = [
    "Cifar10Spec",
    "Cifar100Spec",
    "DigitsSpec",
    "FashionMnistSpec",
    "ImageFolderSpec",
    "TextSpec",
]

_DIGITS_N_TEST = 360


class FashionMnistSpec(DatasetSpec):
    name: Literal["fashion_mnist"] = "fashion_mnist"
    shape = (10, (1, 28, 28))
    stats = ((0.2860,), (0.3530,))


class DigitsSpec(DatasetSpec):
    name: Literal["digits"] = "digits"
    shape = (10, (1, 8, 8))
    stats = ((0.3053,), (0.3760,))


class Cifar10Spec(DatasetSpec):
    name: Literal["cifar10"] = "cifar10"
    shape = (10, (3, 32, 32))
    stats = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


class Cifar100Spec(DatasetSpec):
    name: Literal["cifar100"] = "cifar100"
    shape = (100, (3, 32, 32))
    stats = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))


class ImageFolderSpec(DatasetSpec):
    """``train/`` and ``val/`` folders of class folders, decoded with Pillow on read (streamed).

    Evaluation transform: shorter side to ``resize_size`` (default ``image_size * 256 / 224``,
    rounded), centre crop ``image_size``. Training (``train_crop: random_resized``): random-resized
    crop (area fraction in ``crop_scale``) to ``image_size`` and a horizontal flip, drawn from the
    training loader's generator; ``center`` uses the evaluation transform for training too.
    ``decode_threads`` threads decode each batch (the images do not depend on it)."""

    name: Literal["imagefolder"] = "imagefolder"
    image_size: int = Field(64, ge=8)
    resize_size: int | None = Field(None, ge=8)
    train_crop: Literal["random_resized", "center"] = "random_resized"
    crop_scale: tuple[float, float] = (0.08, 1.0)
    decode_threads: int = Field(4, ge=1, le=64)

    @model_validator(mode="after")
    def _sizes(self) -> ImageFolderSpec:
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        if self.resize_size is not None and self.resize_size < self.image_size:
            raise ValueError(
                f"resize_size ({self.resize_size}) must be >= image_size ({self.image_size})"
            )
        return self


class TextSpec(DatasetSpec):
    """Text classification files under ``data_dir`` and a tokenizer directory (``text`` extra).

    ``train``/``test``: the split files (CSV, TSV, JSON Lines; the suffix may be left out) or
    directories written by ``datasets``' ``save_to_disk``; ``text`` (and ``text_pair`` for
    sentence pairs) and ``label`` name the columns; ``label_names`` fixes the class order;
    every example is truncated and padded to ``max_length`` tokens (lpft.md §1.1: 128).
    """

    name: Literal["text"] = "text"
    inputs = "tokens"
    tokenizer: str
    train: str = "train"
    test: str = "test"
    text: str = "text"
    text_pair: str | None = None
    label: str = "label"
    label_names: list[str] | None = Field(None, min_length=2)
    max_length: int = Field(128, ge=2)


@DATASETS.register("fashion_mnist", FashionMnistSpec)
def fashion_mnist(spec: FashionMnistSpec, data_dir: str | None) -> RawData:
    """Fashion-MNIST: 60000/10000 grey 28x28 images, 10 classes (IDX files)."""
    from unirobust.data.idx import FASHION_MNIST_CLASSES, load_fashion_mnist

    xtr, ytr, xte, yte = load_fashion_mnist(data_dir)
    return RawData(xtr[:, None], ytr, xte[:, None], yte, list(FASHION_MNIST_CLASSES))


@DATASETS.register("digits", DigitsSpec)
def digits(spec: DigitsSpec, data_dir: str | None) -> RawData:
    """scikit-learn digits: 1437/360 grey 8x8 images, 10 classes (fixed stratified split)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images).astype(np.uint8)[:, None]  # (1797, 1, 8, 8), values 0..16
    labels = bunch.target.astype(np.int64)
    test = stratified_pick(torch.from_numpy(labels), _DIGITS_N_TEST, 0, 10).numpy()
    names = [str(d) for d in range(10)]
    return RawData(images[~test], labels[~test], images[test], labels[test], names, 16.0)


@DATASETS.register("cifar10", Cifar10Spec)
def cifar10(spec: Cifar10Spec, data_dir: str | None) -> RawData:
    """CIFAR-10: 50000/10000 colour 32x32 images, 10 classes (python pickles, read in place)."""
    from unirobust.data.cifar import open_cifar10

    return RawData(*open_cifar10(data_dir))


@DATASETS.register("cifar100", Cifar100Spec)
def cifar100(spec: Cifar100Spec, data_dir: str | None) -> RawData:
    """CIFAR-100: 50000/10000 colour 32x32 images, 100 fine classes (python pickles)."""
    from unirobust.data.cifar import open_cifar100

    return RawData(*open_cifar100(data_dir))


@DATASETS.register("imagefolder", ImageFolderSpec)
def imagefolder(spec: ImageFolderSpec, data_dir: str | None) -> RawData:
    """train/ and val/ folders of class folders (Pillow, streamed); val/ is the test split."""
    from unirobust.data.imagefolder import open_imagefolder

    train, y_train, test, y_test, classes = open_imagefolder(
        data_dir,
        image_size=spec.image_size,
        resize_size=spec.resize_size,
        train_crop=spec.train_crop,
        crop_scale=spec.crop_scale,
        threads=spec.decode_threads,
    )
    return RawData(train, y_train, test, y_test, classes)


@DATASETS.register("text", TextSpec)
def text(spec: TextSpec, data_dir: str | None) -> RawData:
    """Text classification (CSV, TSV, JSON Lines, save_to_disk), tokenised locally."""
    from unirobust.data.text import load_text

    return RawData(*load_text(data_dir, **spec.options()))
