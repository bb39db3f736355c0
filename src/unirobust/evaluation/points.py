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

``eval.points`` also accepts a path to such a file (text integers or ``.npy``). Positions refer
to the test file's rows before any ``data.classes`` filtering; the dataset loader
(``load_dataset(test_indices=...)``) reads just those rows, streamed, in list order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from unirobust.data.index_list import read_index_list
from unirobust.errors import ConfigError

__all__ = ["BUILTIN_POINTS", "check_points_name", "read_points"]

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


def read_points(name: str, n: int | None = None) -> np.ndarray:
    """The positions of a built-in list or a file (text integers or ``.npy``, read by
    :func:`~unirobust.data.index_list.read_index_list`), in list order; the first ``n`` (the
    whole list when it is shorter: ``eval.n`` defaults to 1000)."""
    path = _DIR / f"{name}.txt" if name in BUILTIN_POINTS else Path(name).expanduser()
    points = read_index_list(path)
    return points if n is None else points[:n]
