"""CIFAR-10 / CIFAR-100 readers for the "python version" pickle archives.

CIFAR-10 (``cifar-10-batches-py/``): ``data_batch_1`` .. ``data_batch_5``, ``test_batch``,
``batches.meta``; each batch is a dict with ``data`` (uint8, N x 3072, the 1024 red then green then
blue values of each 32x32 image, row-major) and ``labels``. CIFAR-100 (``cifar-100-python/``):
``train``, ``test``, ``meta`` with ``fine_labels`` / ``fine_label_names``.

The pickles are read with a restricted unpickler that only resolves the numpy globals needed to
rebuild arrays, so a tampered file cannot run code.

**Reading in place.** :func:`open_cifar10` / :func:`open_cifar100` return each file as an
:class:`~unirobust.data.source.ImageSource`. A file is unpickled once when opened (one file at a
time; labels and names are kept, the pixels are not): if the pixel bytes of ``data`` are stored
verbatim in the file -- as a binary string or bytes opcode (``BINSTRING``, ``BINBYTES``,
``BINBYTES8``, ...), which is how the official Python-2 pickles and protocol >= 3 re-pickles store
them -- the source reads just the rows asked for from that offset (:class:`RecordSource`, checked
at opening against the unpickled array). Otherwise (e.g. a Python-3 protocol-2 copy, which stores
bytes as a latin-1 text string) that one file is kept decoded in memory. Memory is therefore the
batch being read, plus at opening one file and its decoded copy (30 MB each for a CIFAR-10 batch,
150 MB for CIFAR-100's train file), released before the next file is opened.
"""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np

from unirobust.data.idx import DatasetFormatError
from unirobust.data.source import ArraySource, ConcatSource, ImageSource, RecordSource
from unirobust.errors import DatasetNotFoundError

__all__ = ["load_cifar10", "load_cifar100", "open_cifar10", "open_cifar100", "resolve_cifar_dir"]

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct, scalar
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct, scalar

_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): scalar,
    ("numpy._core.multiarray", "scalar"): scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Python 3 pickles bytes at protocol 2 as _codecs.encode(str, "latin1").
    return text.encode(encoding)


_SAFE_GLOBALS[("_codecs", "encode")] = _latin1_encode

_CIFAR10_FOLDER = "cifar-10-batches-py"
_CIFAR100_FOLDER = "cifar-100-python"
_CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: not part of a CIFAR pickle"
            ) from None


def _unpickle(raw: bytes, path: Path) -> dict[str, Any]:
    try:
        obj = _SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise DatasetFormatError(f"{path}: not a readable CIFAR pickle ({exc})") from exc
    if not isinstance(obj, dict):
        raise DatasetFormatError(f"{path}: expected a dict, found {type(obj).__name__}")
    # Keys are bytes in the official (Python 2) files, str in re-pickled copies.
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise DatasetNotFoundError(f"CIFAR file missing: {path}")
    return path.read_bytes()


def _load_pickle(path: Path) -> dict[str, Any]:
    return _unpickle(_read_bytes(path), path)


# Pickle opcodes that store a byte string verbatim: opcode, then its length field's struct format.
_RAW_OPCODES = (
    (b"T", "<I"),
    (b"B", "<I"),
    (b"\x8e", "<Q"),
    (b"\x96", "<Q"),
    (b"U", "<B"),
    (b"C", "<B"),
)


def _raw_offset(raw: bytes, data: np.ndarray) -> int | None:
    """Byte offset in ``raw`` where ``data``'s C-order bytes are stored verbatim, else None."""
    size = data.nbytes
    flat = np.ascontiguousarray(data).reshape(-1)
    for opcode, fmt in _RAW_OPCODES:
        if size >= 1 << (8 * struct.calcsize(fmt)):
            continue
        header = opcode + struct.pack(fmt, size)
        pos = raw.find(header)
        while pos >= 0:
            start = pos + len(header)
            if start + size <= len(raw) and np.array_equal(
                np.frombuffer(raw, dtype=np.uint8, count=size, offset=start), flat
            ):
                return start
            pos = raw.find(header, pos + 1)
    return None


def _check_batch(
    batch: dict[str, Any], path: Path, label_key: str
) -> tuple[np.ndarray, np.ndarray]:
    for key in ("data", label_key):
        if key not in batch:
            raise DatasetFormatError(f"{path}: missing key {key!r} (found {sorted(batch)})")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetFormatError(
            f"{path}: 'data' must be uint8 of shape (N, 3072), found {data.dtype} {data.shape}"
        )
    if labels.shape != (data.shape[0],):
        raise DatasetFormatError(
            f"{path}: {data.shape[0]} images but {labels.shape[0]} {label_key}"
        )
    return data, labels


def _file_source(path: Path, label_key: str) -> tuple[ImageSource, np.ndarray]:
    """One batch file as a source (read in place when possible; module docstring) + labels."""
    raw = _read_bytes(path)
    data, labels = _check_batch(_unpickle(raw, path), path, label_key)
    offset = _raw_offset(raw, data)
    if offset is None:
        return ArraySource(data.reshape(-1, 3, 32, 32)), labels
    return RecordSource(path, offset, data.shape[0], (3, 32, 32)), labels


def _names(path: Path, key: str) -> list[str]:
    meta = _load_pickle(path)
    if key not in meta:
        raise DatasetFormatError(f"{path}: missing key {key!r} (found {sorted(meta)})")
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in meta[key]]


def resolve_cifar_dir(data_dir: str | Path | None, *, cifar100: bool) -> Path:
    """Find the extracted archive folder: ``data_dir`` itself or its standard subfolder."""
    folder = _CIFAR100_FOLDER if cifar100 else _CIFAR10_FOLDER
    marker = "train" if cifar100 else "data_batch_1"
    url = _CIFAR100_URL if cifar100 else _CIFAR10_URL
    name = "cifar100" if cifar100 else "cifar10"
    if data_dir is None:
        raise DatasetNotFoundError(
            f"{name} needs data_dir: a folder containing {folder}/ "
            f"(download {url} and extract it there)"
        )
    root = Path(data_dir).expanduser()
    for candidate in (root / folder, root):
        if (candidate / marker).is_file():
            return candidate
    raise DatasetNotFoundError(
        f"{name} not found: neither {root / folder} nor {root} contains {marker}; "
        f"download {url} and extract it into {root}"
    )


def open_cifar10(
    data_dir: str | Path | None,
) -> tuple[ImageSource, np.ndarray, ImageSource, np.ndarray, list[str]]:
    """``(train, y_train, test, y_test, class_names)`` with the images as sources.

    The training source is ``data_batch_1`` .. ``data_batch_5`` in that order."""
    folder = resolve_cifar_dir(data_dir, cifar100=False)
    parts = [_file_source(folder / f"data_batch_{i}", "labels") for i in range(1, 6)]
    train = ConcatSource([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    test, y_test = _file_source(folder / "test_batch", "labels")
    names = _names(folder / "batches.meta", "label_names")
    return train, y_train, test, y_test, names


def open_cifar100(
    data_dir: str | Path | None,
) -> tuple[ImageSource, np.ndarray, ImageSource, np.ndarray, list[str]]:
    """``(train, y_train, test, y_test, fine_class_names)`` for CIFAR-100 with image sources."""
    folder = resolve_cifar_dir(data_dir, cifar100=True)
    train, y_train = _file_source(folder / "train", "fine_labels")
    test, y_test = _file_source(folder / "test", "fine_labels")
    names = _names(folder / "meta", "fine_label_names")
    return train, y_train, test, y_test, names


def _in_memory(opened: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    train, y_train, test, y_test, names = opened
    x_train = train.read(np.arange(len(train)))
    return x_train, y_train, test.read(np.arange(len(test))), y_test, names


def load_cifar10(
    data_dir: str | Path | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Return ``(x_train, y_train, x_test, y_test, class_names)``; images uint8 ``(N,3,32,32)``.

    The training set is the concatenation of ``data_batch_1`` .. ``data_batch_5`` in that order.
    """
    return _in_memory(open_cifar10(data_dir))


def load_cifar100(
    data_dir: str | Path | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Return ``(x_train, y_train, x_test, y_test, fine_class_names)`` for CIFAR-100 (fine)."""
    return _in_memory(open_cifar100(data_dir))
