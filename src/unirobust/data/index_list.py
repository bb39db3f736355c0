"""Stored index lists: which test points an evaluation uses (multinorm.md §8).

ImageNet's validation folder is sorted by class, so "the first N points" is a biased sample; its
evaluations use a fixed list of positions stored in a file instead. Two formats:

* text (any other suffix): integers separated by whitespace or commas; ``#`` starts a comment;
* ``.npy``: a one-dimensional integer array (read without pickle).

The positions are rows of the test file in the dataset's order (for ``imagefolder``: the sorted
``val/`` listing); the evaluation keeps the list's order. Range and class checks happen where the
dataset is known (:func:`unirobust.data.registry.load_dataset`).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from unirobust.errors import ConfigError
from unirobust.io import atomic_write_text

__all__ = ["read_index_list", "write_index_list"]


def read_index_list(path: str | Path) -> np.ndarray:
    """The positions stored in ``path`` (int64, in file order); a bad file is a ConfigError."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"index list '{path}' not found (a text file of integers, or a .npy)")
    if path.suffix == ".npy":
        try:
            values = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"index list '{path}': not a readable .npy ({exc})") from None
        if values.ndim != 1 or values.dtype.kind not in "iu":
            raise ConfigError(
                f"index list '{path}': need a 1-d integer array, got {values.dtype} {values.shape}"
            )
        rows = values.astype(np.int64)
    else:
        text = "\n".join(line.split("#", 1)[0] for line in path.read_text().splitlines())
        tokens = [t for t in re.split(r"[\s,]+", text) if t]
        bad = next((t for t in tokens if not re.fullmatch(r"\d+", t)), None)
        if bad is not None:
            raise ConfigError(
                f"index list '{path}': {bad!r} is not a non-negative integer "
                "(allowed: integers separated by spaces, commas or newlines; # comments)"
            )
        rows = np.asarray([int(t) for t in tokens], dtype=np.int64)
    if rows.size == 0:
        raise ConfigError(f"index list '{path}' is empty")
    if (rows < 0).any():
        raise ConfigError(f"index list '{path}': negative index {int(rows[rows < 0][0])}")
    values, counts = np.unique(rows, return_counts=True)
    if (counts > 1).any():
        raise ConfigError(f"index list '{path}': index {int(values[counts > 1][0])} is repeated")
    return rows


def write_index_list(path: str | Path, rows: np.ndarray, comment: str = "") -> Path:
    """Write ``rows`` as a text index list (one per line, an optional ``#`` comment first)."""
    path = Path(path)
    head = "".join(f"# {line}\n" for line in comment.splitlines())
    atomic_write_text(path, head + "".join(f"{int(r)}\n" for r in np.asarray(rows).reshape(-1)))
    return path
