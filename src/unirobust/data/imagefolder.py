"""Small image-folder datasets held in memory (optional; needs torchvision).

``data_dir/train/<class>/*.png`` and ``data_dir/val/<class>/*.png``. Every image is converted to
RGB, its shorter side resized to ``image_size`` and centre-cropped to a square, then stored as
uint8. Everything is kept in memory, so this is meant for small sets (e.g. Imagenette-sized), not
full ImageNet. ``val/`` is returned as the test split; validation is held out from ``train/``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from unirobust.errors import ConfigError, DatasetNotFoundError

__all__ = ["load_imagefolder", "torchvision_available"]


def torchvision_available() -> bool:
    try:
        import torchvision  # noqa: F401
    except ImportError:
        return False
    return True


def _read(folder: Path, image_size: int, classes: list[str] | None):
    from torchvision import datasets, transforms

    tf = transforms.Compose(
        [
            transforms.Lambda(lambda im: im.convert("RGB")),
            transforms.Resize(image_size),
            transforms.CenterCrop(image_size),
            transforms.PILToTensor(),
        ]
    )
    ds = datasets.ImageFolder(str(folder), transform=tf)
    if classes is not None and ds.classes != classes:
        raise DatasetNotFoundError(
            f"{folder}: class folders {ds.classes} differ from the training classes {classes}"
        )
    if len(ds) == 0:
        raise DatasetNotFoundError(f"{folder}: no images found")
    x = np.stack([ds[i][0].numpy() for i in range(len(ds))]).astype(np.uint8)
    y = np.asarray(ds.targets, dtype=np.int64)
    return x, y, list(ds.classes)


def load_imagefolder(
    data_dir: str | Path | None, *, image_size: int = 64
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Return ``(x_train, y_train, x_test, y_test, class_names)``; images uint8 ``(N,3,S,S)``."""
    if not torchvision_available():
        raise ConfigError(
            "dataset 'imagefolder' needs torchvision, which is not installed; "
            "install it with `pip install 'unirobust[vision]'`"
        )
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise ConfigError(f"image_size must be an int >= 8, got {image_size!r}")
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
    x_train, y_train, classes = _read(root / "train", image_size, None)
    x_test, y_test, _ = _read(root / "val", image_size, classes)
    return x_train, y_train, x_test, y_test, classes
