"""IDX file reader (the MNIST / Fashion-MNIST format), numpy only.

Layout of an IDX file: two zero bytes, one byte naming the element type, one byte with the number
of dimensions ``d``, then ``d`` big-endian uint32 sizes, then the elements in C order (big-endian
for multi-byte types). Files may be gzip-compressed; that is detected from the content, not the
name.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from unirobust.errors import DatasetNotFoundError

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DEFAULT_DIR",
    "DatasetFormatError",
    "load_fashion_mnist",
    "parse_idx",
    "read_idx",
]

FASHION_MNIST_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]

# IDX type byte -> big-endian numpy dtype.
_IDX_TYPES: dict[int, str] = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}
_GZIP_MAGIC = b"\x1f\x8b"


class DatasetFormatError(DatasetNotFoundError):
    """A dataset file exists but is not in the expected format (corrupt, truncated, foreign)."""


def parse_idx(raw: bytes, *, source: str = "<bytes>") -> np.ndarray:
    """Decode the bytes of an (uncompressed) IDX file into a native-endian numpy array."""
    if len(raw) < 4:
        raise DatasetFormatError(f"{source}: not an IDX file (only {len(raw)} bytes)")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DatasetFormatError(
            f"{source}: bad IDX magic number 0x{raw[:4].hex()} "
            f"(expected 0x0000TTDD with type TT in {sorted(hex(t) for t in _IDX_TYPES)})"
        )
    ndim = raw[3]
    if ndim == 0:
        raise DatasetFormatError(f"{source}: IDX header declares 0 dimensions")
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise DatasetFormatError(f"{source}: truncated IDX header ({len(raw)} bytes)")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    got = len(raw) - header_len
    if got != expected:
        kind = "truncated" if got < expected else "has trailing bytes"
        raise DatasetFormatError(
            f"{source}: IDX data {kind}: header shape {shape} needs {expected} bytes, found {got}"
        )
    arr = np.frombuffer(raw, dtype=dtype, offset=header_len).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (plain or gzip-compressed) into a numpy array."""
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"IDX file not found: {path}")
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DatasetFormatError(f"{path}: corrupt gzip stream ({exc})") from exc
    return parse_idx(raw, source=str(path))


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def load_fashion_mnist(
    data_dir: str | Path | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(x_train, y_train, x_test, y_test)`` as uint8 ``(N, 28, 28)`` and int64 ``(N,)``.

    ``data_dir`` holds the four standard files (``train-images-idx3-ubyte[.gz]`` ...), directly or
    in a ``fashion-mnist/`` subfolder. Default: the Debian ``dataset-fashion-mnist`` location.
    """
    root = Path(data_dir) if data_dir is not None else Path(FASHION_MNIST_DEFAULT_DIR)
    stems = {
        "x_train": "train-images-idx3-ubyte",
        "y_train": "train-labels-idx1-ubyte",
        "x_test": "t10k-images-idx3-ubyte",
        "y_test": "t10k-labels-idx1-ubyte",
    }
    for folder in (root, root / "fashion-mnist"):
        paths = {key: _find_idx(folder, stem) for key, stem in stems.items()}
        if all(p is not None for p in paths.values()):
            break
    else:
        raise DatasetNotFoundError(
            f"Fashion-MNIST not found in {root} (need train-images-idx3-ubyte.gz, "
            "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz); "
            "install it with `apt-get install dataset-fashion-mnist` or pass data_dir"
        )
    arrays = {key: read_idx(p) for key, p in paths.items()}  # type: ignore[arg-type]
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0] or x.dtype != np.uint8:
            raise DatasetFormatError(
                f"Fashion-MNIST {split} files in {root} disagree: images {x.shape} {x.dtype}, "
                f"labels {y.shape}"
            )
    return (
        arrays["x_train"],
        arrays["y_train"].astype(np.int64),
        arrays["x_test"],
        arrays["y_test"].astype(np.int64),
    )
