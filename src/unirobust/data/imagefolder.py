"""Image-folder datasets (ImageNet layout), decoded with Pillow one batch at a time.

``data_dir/train/<class>/**/<image>`` and ``data_dir/val/<class>/**/<image>``: class indices are
the sorted class-folder names of ``train/``; files are found recursively (sorted, extensions
``.jpg .jpeg .png .ppm .bmp .pgm .tif .tiff .webp``, any case), the order torchvision's
``ImageFolder`` uses. ``val/`` is the test split (it must have the same class folders);
validation is held out from ``train/``.

Nothing is decoded up front: the dataset keeps the file list (relative paths as bytes) and the
labels, and each batch is decoded when read (:class:`ImageFolderSource`), so memory does not grow
with the number of images. Evaluation reads (test, validation, and training images read for a
deterministic purpose such as a linear-probe head) use the evaluation transform: shorter side
resized to ``resize_size`` (default ``round(image_size * 256 / 224)``: 256 for 224), centre crop
``image_size``. A training loader passes random numbers and gets the random-resized crop and flip
of :mod:`unirobust.data.transforms` (``train_crop: center`` turns that off). ``resize_size:
<image_size>`` reproduces the earlier loader of this dataset (resize to ``image_size``, crop).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from unirobust.data.idx import DatasetFormatError
from unirobust.data.source import ImageSource
from unirobust.data.transforms import RRC_NUMBERS, eval_transform, train_transform
from unirobust.errors import ConfigError, DatasetNotFoundError

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderSource", "open_imagefolder", "scan_folder"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def scan_folder(
    folder: Path, classes: list[str] | None = None
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(class_names, relative_paths, labels)`` of the images under ``folder/<class>/``.

    ``classes`` (the training classes) must equal the folder's class folders when given."""
    found = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    if classes is not None and found != classes:
        raise DatasetNotFoundError(
            f"{folder}: class folders {found} differ from the training classes {classes}"
        )
    paths: list[bytes] = []
    labels: list[int] = []
    for label, name in enumerate(found):
        for root, _, files in sorted(os.walk(folder / name, followlinks=True)):
            for file in sorted(files):
                if file.lower().endswith(IMAGE_EXTENSIONS):
                    paths.append(os.fsencode(os.path.relpath(os.path.join(root, file), folder)))
                    labels.append(label)
    if not paths:
        raise DatasetNotFoundError(f"{folder}: no images found (one folder per class expected)")
    return found, np.array(paths, dtype=bytes), np.asarray(labels, dtype=np.int64)


class ImageFolderSource(ImageSource):
    """The images of one folder, decoded on read (module docstring).

    ``read(rows)``: evaluation transform; ``read(rows, numbers)`` with :data:`RRC_NUMBERS`
    numbers per row (``train=True`` only): random-resized crop and flip. Images are decoded by
    ``threads`` threads (Pillow releases the GIL while decoding); the result does not depend on it.
    """

    stream_only = True

    def __init__(
        self,
        folder: Path,
        paths: np.ndarray,
        *,
        image_size: int,
        resize_size: int,
        train: bool,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        threads: int = 1,
    ) -> None:
        self.folder = Path(folder)
        self.paths = paths
        self.image_size = int(image_size)
        self.resize_size = int(resize_size)
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
        self.random_numbers = RRC_NUMBERS if train else 0
        self.threads = max(1, int(threads))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return 3, self.image_size, self.image_size

    def __len__(self) -> int:
        return int(self.paths.size)

    def _decode(self, row: int, numbers: np.ndarray | None) -> np.ndarray:
        path = self.folder / os.fsdecode(self.paths[row])
        try:
            with Image.open(path) as image:
                image.load()
                if numbers is None:
                    return eval_transform(image, self.resize_size, self.image_size)
                return train_transform(image, self.image_size, numbers, self.crop_scale)
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise DatasetFormatError(f"{path}: not a readable image ({exc})") from None

    def read(self, rows: np.ndarray, numbers: np.ndarray | None = None) -> np.ndarray:
        rows = self._check(rows)
        if numbers is not None and self.random_numbers == 0:
            numbers = None  # an evaluation source ignores random numbers
        if numbers is not None and np.shape(numbers) != (rows.size, self.random_numbers):
            raise ValueError(
                f"need ({rows.size}, {self.random_numbers}) numbers, got {np.shape(numbers)}"
            )
        out = np.empty((rows.size, *self.image_shape), dtype=np.uint8)

        def fill(i: int) -> None:
            out[i] = self._decode(int(rows[i]), None if numbers is None else numbers[i])

        if self.threads > 1 and rows.size > 1:
            with ThreadPoolExecutor(min(self.threads, rows.size)) as pool:
                list(pool.map(fill, range(rows.size)))
        else:
            for i in range(rows.size):
                fill(i)
        return out


def _check_sizes(image_size: int, resize_size: int | None) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise ConfigError(f"image_size must be an int >= 8, got {image_size!r}")
    resize = round(image_size * 256 / 224) if resize_size is None else resize_size
    if isinstance(resize, bool) or not isinstance(resize, int) or resize < image_size:
        raise ConfigError(
            f"resize_size must be an int >= image_size ({image_size}), got {resize_size!r}"
        )
    return int(resize)


def open_imagefolder(
    data_dir: str | Path | None,
    *,
    image_size: int = 64,
    resize_size: int | None = None,
    train_crop: str = "random_resized",
    crop_scale: tuple[float, float] = (0.08, 1.0),
    threads: int = 1,
) -> tuple[ImageFolderSource, np.ndarray, ImageFolderSource, np.ndarray, list[str]]:
    """``(train, y_train, test, y_test, class_names)``; images are decoded on read."""
    resize = _check_sizes(image_size, resize_size)
    if train_crop not in ("random_resized", "center"):
        raise ConfigError(f"train_crop must be random_resized or center, got {train_crop!r}")
    if data_dir is None:
        raise DatasetNotFoundError(
            "imagefolder needs data_dir: a folder with train/ and val/ subfolders of class folders"
        )
    root = Path(data_dir)
    for sub in ("train", "val"):
        if not (root / sub).is_dir():
            raise DatasetNotFoundError(
                f"imagefolder: {root / sub} not found (data_dir needs train/ and val/ subfolders, "
                "one folder per class in each)"
            )
    classes, train_paths, y_train = scan_folder(root / "train")
    _, test_paths, y_test = scan_folder(root / "val", classes)
    common = {"image_size": image_size, "resize_size": resize, "threads": threads}
    train = ImageFolderSource(
        root / "train",
        train_paths,
        train=train_crop == "random_resized",
        crop_scale=crop_scale,
        **common,
    )
    test = ImageFolderSource(root / "val", test_paths, train=False, **common)
    return train, y_train, test, y_test, classes
