"""ImageNet-style preprocessing on Pillow images (no torchvision).

* Evaluation: resize the shorter side to ``resize_size`` (bilinear, aspect ratio kept; the longer
  side is ``int(resize_size * long / short)``), then take the centre ``crop_size`` square (top-left
  corner at ``round((H - crop) / 2)``, ``round((W - crop) / 2)``). With ``resize_size = 256`` and
  ``crop_size = 224`` this is the standard ImageNet evaluation transform.
* Training: random-resized crop (Inception-style: a box of area fraction ``scale`` and aspect
  ratio in (3/4, 4/3), log-uniform; up to 10 tries, else the central box of the closest allowed
  aspect), cropped then resized to ``crop_size`` (bilinear), then a horizontal flip with
  probability 1/2.

The random transform is a pure function of the image and :data:`RRC_NUMBERS` uniform numbers in
[0, 1) drawn by the caller (the loader's generator), so a sample's crop does not depend on which
process decodes it.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

__all__ = [
    "RRC_ATTEMPTS",
    "RRC_NUMBERS",
    "center_crop_box",
    "eval_transform",
    "random_resized_box",
    "train_transform",
]

#: Boxes tried before the fallback; each try uses 4 numbers (area, aspect, top, left).
RRC_ATTEMPTS = 10
#: Uniform numbers per image of the training transform: 4 per try, then 1 for the flip.
RRC_NUMBERS = 4 * RRC_ATTEMPTS + 1
_RATIO = (3.0 / 4.0, 4.0 / 3.0)


def _resize_shorter(image: Image.Image, size: int) -> Image.Image:
    w, h = image.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    if (new_w, new_h) == (w, h):
        return image
    return image.resize((new_w, new_h), Image.Resampling.BILINEAR)


def center_crop_box(width: int, height: int, crop: int) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)`` of the centre ``crop`` square (needs crop <= both sides)."""
    top = round((height - crop) / 2.0)
    left = round((width - crop) / 2.0)
    return left, top, left + crop, top + crop


def _to_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)  # (3, H, W)


def eval_transform(image: Image.Image, resize_size: int, crop_size: int) -> np.ndarray:
    """Resize shorter side, centre crop; uint8 ``(3, crop, crop)`` (module docstring)."""
    resized = _resize_shorter(image.convert("RGB"), resize_size)
    return _to_array(resized.crop(center_crop_box(*resized.size, crop_size)))


def random_resized_box(
    width: int, height: int, numbers: np.ndarray, scale: tuple[float, float]
) -> tuple[int, int, int, int]:
    """``(left, top, box_w, box_h)`` of the random-resized crop for these uniform numbers."""
    area = width * height
    lo, hi = math.log(_RATIO[0]), math.log(_RATIO[1])
    for a in range(RRC_ATTEMPTS):
        u_area, u_aspect, u_top, u_left = (float(v) for v in numbers[4 * a : 4 * a + 4])
        target = area * (scale[0] + u_area * (scale[1] - scale[0]))
        aspect = math.exp(lo + u_aspect * (hi - lo))
        box_w = round(math.sqrt(target * aspect))
        box_h = round(math.sqrt(target / aspect))
        if 0 < box_w <= width and 0 < box_h <= height:
            top = min(int(u_top * (height - box_h + 1)), height - box_h)
            left = min(int(u_left * (width - box_w + 1)), width - box_w)
            return left, top, box_w, box_h
    ratio = width / height
    if ratio < _RATIO[0]:
        box_w, box_h = width, round(width / _RATIO[0])
    elif ratio > _RATIO[1]:
        box_w, box_h = round(height * _RATIO[1]), height
    else:
        box_w, box_h = width, height
    return (width - box_w) // 2, (height - box_h) // 2, box_w, box_h


def train_transform(
    image: Image.Image, crop_size: int, numbers: np.ndarray, scale: tuple[float, float]
) -> np.ndarray:
    """Random-resized crop then horizontal flip; uint8 ``(3, crop, crop)`` (module docstring)."""
    if len(numbers) != RRC_NUMBERS:
        raise ValueError(f"train_transform needs {RRC_NUMBERS} numbers, got {len(numbers)}")
    image = image.convert("RGB")
    left, top, box_w, box_h = random_resized_box(*image.size, numbers, scale)
    box = image.crop((left, top, left + box_w, top + box_h))
    out = box.resize((crop_size, crop_size), Image.Resampling.BILINEAR)
    array = _to_array(out)
    return np.ascontiguousarray(array[:, :, ::-1]) if float(numbers[-1]) < 0.5 else array
