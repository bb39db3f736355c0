"""Atomic file writing: a temporary file in the target's directory, fsync, then ``os.replace``.

A reader (or a process killed mid-write) sees either the old file or the new one, never a torn one.
This is the one writer used by checkpoints, the run directory, evaluation tables, corruption
caches and reports. Any failure of the file system (read-only, not a directory, disk full) is
raised as :class:`~unirobust.errors.OutputError` naming the file, after the temporary file is
removed, so the previous version of the file stays intact and the CLI prints one line.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from unirobust.errors import OutputError

__all__ = [
    "TEMP_SUFFIX",
    "atomic_savez",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_writable_dir",
    "output_error",
]

TEMP_SUFFIX = ".tmp"
"""Temporary files are ``.<name>.<random>.tmp`` next to their target (a kill may leave one)."""


def output_error(path: Path, err: OSError, what: str = "cannot write") -> OutputError:
    """A one-line :class:`OutputError` for ``err`` raised while writing ``path``."""
    reason = err.strerror or type(err).__name__
    return OutputError(f"{what} '{path}': {reason}")


_UMASK = os.umask(0)
os.umask(_UMASK)  # read once: mkstemp makes 0600 files; results get the user's usual mode


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through ``write(tmp_path)`` then rename over ``path``: a kill leaves the old file.

    An ``OSError`` (disk full, read-only, a file where a directory should be) becomes an
    :class:`OutputError`; the temporary file is removed and ``path`` keeps its old content."""
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent
        )
        os.close(fd)
        tmp = Path(tmp_name)
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        tmp.chmod(0o666 & ~_UMASK)
        os.replace(tmp, path)
    except OutputError:
        raise
    except OSError as err:
        raise output_error(path, err) from None
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()


def check_writable_dir(path: Path) -> None:
    """Fail early (:class:`OutputError`) when directory ``path`` could not be created or written.

    Walks up to the nearest existing ancestor, which must be a writable directory; creates
    nothing (a probe file is made and removed in that ancestor)."""
    path = Path(path).absolute()
    probe_dir = path
    while not probe_dir.exists():
        if probe_dir.parent == probe_dir:
            break
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise OutputError(f"cannot create '{path}': '{probe_dir}' is not a directory")
    try:
        fd, name = tempfile.mkstemp(prefix=".unirobust-probe.", suffix=TEMP_SUFFIX, dir=probe_dir)
        os.close(fd)
        os.unlink(name)
    except OSError as err:
        raise output_error(path, err, "cannot create or write") from None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    """``np.savez`` (no pickle) written atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())
