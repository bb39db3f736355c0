"""Image sources: a dataset file's images served by row, so a split need not live in memory.

An :class:`ImageSource` is one file of a dataset (train or test) with a length, a fixed image
shape and ``read(rows)``: the raw values of those rows, ``(n, C, H, W)``, which divided by
``scale`` lie in [0, 1]. Sources:

* :class:`ArraySource` -- an array already in memory (Fashion-MNIST, digits, a CIFAR file that
  could not be read in place);
* :class:`RecordSource` -- fixed-size records at an offset of a file, read with ``os.pread``
  (CIFAR pickles whose pixel bytes are stored verbatim: only the rows asked for are read);
* :class:`ConcatSource` -- several sources one after another (CIFAR-10's five training batches);
* ``ImageFolderSource`` (:mod:`unirobust.data.imagefolder`) -- image files decoded with Pillow.

A source may have a random (training) transform: ``random_numbers`` uniform numbers in [0, 1)
per image, passed as ``read(rows, numbers)``; without ``numbers`` it reads the deterministic
(evaluation) version. The numbers are drawn by the loader from its own generator, for the whole
global batch, so what a rank reads never depends on the number of ranks.

:class:`LazyImages` is what a streamed :class:`~unirobust.data.split.Split` holds instead of a
tensor: ``x[rows]`` and ``x[a:b]`` read just those rows and return float32 tensors in [0, 1],
converted exactly as an in-memory split is (``uint8 -> float32``, then ``/ scale``), so a streamed
evaluation sees the same bits as an in-memory one.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "ArraySource",
    "ConcatSource",
    "ImageSource",
    "LazyImages",
    "RecordSource",
    "as_rows",
]


def as_rows(rows: Any) -> np.ndarray:
    """Row positions as a flat int64 numpy array (from a tensor, array, list or int)."""
    if isinstance(rows, Tensor):
        rows = rows.detach().cpu().numpy()
    return np.asarray(rows, dtype=np.int64).reshape(-1)


class ImageSource(ABC):
    """One dataset file's images, read by row (see the module docstring)."""

    #: Raw values divided by ``scale`` lie in [0, 1].
    scale: float = 255.0
    #: Uniform numbers per image the random (training) transform needs; 0: no random transform.
    random_numbers: int = 0
    #: True when the images cannot be held in memory sensibly (decoded files): always streamed.
    stream_only: bool = False

    @property
    @abstractmethod
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of every image."""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def read(self, rows: np.ndarray, numbers: np.ndarray | None = None) -> np.ndarray:
        """Raw images ``(len(rows), C, H, W)`` in the order of ``rows`` (positions in the file)."""

    def _check(self, rows: np.ndarray) -> np.ndarray:
        rows = as_rows(rows)
        n = len(self)
        if rows.size and (int(rows.min()) < 0 or int(rows.max()) >= n):
            raise IndexError(f"rows out of range 0..{n - 1}: {rows.min()}..{rows.max()}")
        return rows


class ArraySource(ImageSource):
    """An ``(N, C, H, W)`` array in memory (numpy, or a CPU tensor)."""

    def __init__(self, array: Any, scale: float = 255.0) -> None:
        self.array = array.numpy() if isinstance(array, Tensor) else np.asarray(array)
        if self.array.ndim != 4:
            raise ValueError(f"ArraySource needs (N, C, H, W) images, got {self.array.shape}")
        self.scale = float(scale)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.array.shape[1:]
        return int(c), int(h), int(w)

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def read(self, rows: np.ndarray, numbers: np.ndarray | None = None) -> np.ndarray:
        return self.array[self._check(rows)]


class RecordSource(ImageSource):
    """``n`` uint8 records of ``image_shape`` stored contiguously from byte ``offset`` of a file.

    Only the rows asked for are read (``os.pread``, consecutive rows in one call), so memory is
    the batch being read, whatever the file size; the OS page cache does the rest.
    """

    def __init__(self, path: str | Path, offset: int, n: int, shape: tuple[int, int, int]) -> None:
        self.path = Path(path)
        self.offset = int(offset)
        self.n = int(n)
        self.shape = tuple(int(s) for s in shape)
        self.record = int(np.prod(self.shape))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.shape  # type: ignore[return-value]

    def __len__(self) -> int:
        return self.n

    def read(self, rows: np.ndarray, numbers: np.ndarray | None = None) -> np.ndarray:
        rows = self._check(rows)
        out = np.empty((rows.size, self.record), dtype=np.uint8)
        if rows.size == 0:
            return out.reshape(0, *self.shape)
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        # runs of consecutive rows: one read each
        breaks = np.flatnonzero(np.diff(ordered) != 1) + 1
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for run in np.split(np.arange(ordered.size), breaks):
                first, count = int(ordered[run[0]]), run.size
                size = count * self.record
                data = os.pread(fd, size, self.offset + first * self.record)
                if len(data) != size:
                    raise OSError(f"{self.path}: file ended early (truncated?)")
                out[order[run]] = np.frombuffer(data, dtype=np.uint8).reshape(count, self.record)
        finally:
            os.close(fd)
        return out.reshape(rows.size, *self.shape)


class ConcatSource(ImageSource):
    """Sources one after another (same image shape and scale), read as one file."""

    def __init__(self, parts: Sequence[ImageSource]) -> None:
        if not parts:
            raise ValueError("ConcatSource needs at least one part")
        shapes = {p.image_shape for p in parts}
        if len(shapes) != 1:
            raise ValueError(f"ConcatSource parts differ in image shape: {sorted(shapes)}")
        self.parts = list(parts)
        self.scale = parts[0].scale
        self.random_numbers = max(p.random_numbers for p in parts)
        self.stream_only = any(p.stream_only for p in parts)
        self.starts = np.cumsum([0] + [len(p) for p in parts])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.parts[0].image_shape

    def __len__(self) -> int:
        return int(self.starts[-1])

    def read(self, rows: np.ndarray, numbers: np.ndarray | None = None) -> np.ndarray:
        rows = self._check(rows)
        part = np.searchsorted(self.starts, rows, side="right") - 1
        out = None
        for k in np.unique(part):
            mine = np.flatnonzero(part == k)
            local = rows[mine] - self.starts[k]
            got = self.parts[k].read(local, None if numbers is None else numbers[mine])
            if out is None:
                out = np.empty((rows.size, *got.shape[1:]), dtype=got.dtype)
            out[mine] = got
        if out is None:
            return np.empty((0, *self.image_shape), dtype=np.uint8)
        return out


class LazyImages:
    """The images of a streamed split: rows of a source, read on indexing (module docstring).

    Supports what the library does with a split's ``x``: ``len``, ``shape``, ``x[a:b]``,
    ``x[rows]`` (tensor, array or list of positions in the split), ``x[i]``. ``train=True``
    marks a training split whose loader draws the source's random numbers.
    """

    ndim = 4
    dtype = torch.float32
    device = torch.device("cpu")

    def __init__(
        self, source: ImageSource, rows: np.ndarray | None = None, *, train: bool = False
    ) -> None:
        self.source = source
        self.rows = np.arange(len(source), dtype=np.int64) if rows is None else as_rows(rows)
        self.train = bool(train)

    @property
    def random_numbers(self) -> int:
        """Uniform numbers per image a training loader draws for this split (0 if none)."""
        return self.source.random_numbers if self.train else 0

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self.source.image_shape))

    def __len__(self) -> int:
        return int(self.rows.size)

    def is_floating_point(self) -> bool:
        return True

    def read(self, positions: Any, numbers: np.ndarray | None = None) -> Tensor:
        """Float32 images in [0, 1] at ``positions`` of this split (random transform if
        ``numbers`` is given)."""
        raw = self.source.read(self.rows[as_rows(positions)], numbers)
        return torch.from_numpy(np.ascontiguousarray(raw)).to(torch.float32).div_(self.source.scale)

    def __getitem__(self, key: Any) -> Tensor:
        if isinstance(key, slice):
            return self.read(np.arange(len(self))[key])
        if isinstance(key, (int, np.integer)) or (isinstance(key, Tensor) and key.ndim == 0):
            return self.read([int(key)])[0]
        if isinstance(key, Tensor) and key.dtype == torch.bool:
            key = torch.nonzero(key.cpu()).reshape(-1)
        return self.read(key)

    def subset(self, positions: Any) -> LazyImages:
        return LazyImages(self.source, self.rows[as_rows(positions)], train=self.train)

    def materialize(self, chunk: int = 1024) -> Tensor:
        """Every image of the split as one float32 tensor (for code that needs them all)."""
        parts = [
            self.read(np.arange(i, min(i + chunk, len(self)))) for i in range(0, len(self), chunk)
        ]
        return torch.cat(parts) if parts else torch.empty(0, *self.source.image_shape)

    def to(self, device: Any) -> LazyImages:
        """Stays lazy on the CPU; readers move each batch to their device."""
        return self

    def detach(self) -> LazyImages:
        return self

    def __repr__(self) -> str:
        kind = type(self.source).__name__
        return f"LazyImages(n={len(self)}, shape={tuple(self.shape)}, source={kind})"
