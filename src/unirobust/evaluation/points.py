"""Stored, fixed lists of test points to evaluate (multinorm.md §8 "Points").

ImageNet's validation folder is sorted by class, so its "first N" images are the first N/50
classes: a biased sample. The ImageNet recipes therefore evaluate a stored list of positions
(``eval.points``), the same for every run, so results are comparable and reproducible.

Built-in lists (``point_lists/<name>.txt``, one position per line):

* ``imagenet-val-10k``: 10,000 of the 50,000 ImageNet validation images, as positions in the
  image-folder order (classes sorted by WordNet id, files sorted by name within a class), drawn
  once as ``numpy.random.default_rng(0).permutation(50000)[:10000]`` (the reference code drew a
  seeded random 10k subset, which cannot be reproduced across library versions; the list is
  stored instead). Kept in the drawn order, so every prefix (``eval.n``) is itself a uniform
  random subset.

``eval.points`` also accepts a path to such a text file. Positions refer to the test file's
rows before any ``data.classes`` filtering; :func:`select_points` maps them to the split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from unirobust.data.split import Split
from unirobust.errors import ConfigError

__all__ = ["BUILTIN_POINTS", "check_points_name", "read_points", "select_points"]

_DIR = Path(__file__).with_name("point_lists")
BUILTIN_POINTS: tuple[str, ...] = ("imagenet-val-10k",)


def check_points_name(value: str) -> str:
    """``value`` if it names a built-in list or an existing file (checked at recipe load)."""
    if value in BUILTIN_POINTS or Path(value).expanduser().is_file():
        return value
    raise ConfigError(
        f"eval.points '{value}' is neither a built-in list ({', '.join(BUILTIN_POINTS)}) nor an "
        "existing file of test positions (one per line)"
    )


def read_points(name: str) -> np.ndarray:
    """The positions of a built-in list or a text file: int64, unique, non-negative."""
    path = _DIR / f"{name}.txt" if name in BUILTIN_POINTS else Path(name).expanduser()
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read eval.points '{name}': {err.strerror}") from None
    try:
        points = np.array([int(line) for line in text.split()], dtype=np.int64)
    except ValueError:
        raise ConfigError(
            f"eval.points '{name}': every line must be one integer position"
        ) from None
    if points.size == 0 or points.min() < 0 or np.unique(points).size != points.size:
        raise ConfigError(
            f"eval.points '{name}' must list distinct non-negative positions ({points.size} read)"
        )
    return points


def select_points(split: Split, points: np.ndarray, n: int | None, name: str) -> Split:
    """The rows of ``split`` at the listed original positions, in list order; the first ``n``."""
    if n is not None and n > points.size:
        raise ConfigError(f"eval.n is {n} but eval.points '{name}' lists {points.size} points")
    chosen = points if n is None else points[:n]
    row_of = {int(i): r for r, i in enumerate(split.indices.tolist())}
    missing = [int(i) for i in chosen if int(i) not in row_of]
    if missing:
        raise ConfigError(
            f"eval.points '{name}' lists test position {missing[0]} ({len(missing)} missing), "
            f"but the test split has {len(split)} points: is it the dataset the list is for?"
        )
    return split.subset(torch.tensor([row_of[int(i)] for i in chosen], dtype=torch.int64))
