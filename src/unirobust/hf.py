"""Offline access to Hugging Face ``transformers`` (the ``text`` extra), shared by text data and
models.

Everything is read from a local directory with ``local_files_only=True``: a path that is not a
directory is a one-line error before ``transformers`` could take it for a Hub repository name, so
nothing is ever downloaded. Loading is quiet (no progress bars or load reports on stderr).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from unirobust.errors import ConfigError

__all__ = ["first_line", "local_dir", "quiet", "transformers_module"]


def transformers_module() -> ModuleType:
    """``transformers``, or a ConfigError naming the extra that installs it."""
    try:
        import transformers
    except ImportError:
        raise ConfigError(
            "text models and datasets need transformers: pip install 'unirobust[text]'"
        ) from None
    return transformers


def local_dir(path: str, what: str) -> Path:
    """``path`` as an existing local directory (``~`` expanded), else a one-line ConfigError."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConfigError(
            f"{what} directory '{path}' does not exist; give a local directory (for example one "
            "written by save_pretrained): nothing is downloaded"
        )
    return folder


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    text = str(err).strip()
    return text.splitlines()[0][:limit] if text else type(err).__name__


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """``transformers`` logs errors only and shows no progress bar inside the block."""
    logging = transformers_module().utils.logging
    level = logging.get_verbosity()
    bars = logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()
