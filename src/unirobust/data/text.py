"""Text classification data from local files, tokenised with a local tokenizer (``text`` extra).

A split file is found under ``data_dir`` by name: the exact path, else the name with one of
:data:`SUFFIXES` added. By its suffix it is read as CSV, TSV (GLUE's files: tab separated, no
quoting), JSON Lines (``.jsonl``/``.json``: one object per line), or, for a directory, a dataset
written by ``datasets.Dataset.save_to_disk`` (a ``DatasetDict`` saved to disk holds one such
directory per split, so ``train``/``test`` name its splits). Only the standard library reads the
text formats; the ``datasets`` library is imported for saved datasets only.

Labels are class indices (integers, also as CSV text) or class names. Names are ordered by
``label_names`` when given, else by a saved dataset's ``ClassLabel`` names, else sorted (JSON
booleans become the names ``False``/``True``). Indices give ``max + 1`` classes unless
``label_names`` says how many. A negative index (GLUE's unlabeled test files use -1) is an error.

Every example is tokenised to exactly ``max_length`` tokens (truncated, padded; lpft.md §1.1
"max length 128, padded") and packed with :func:`unirobust.data.tokens.pack`.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unirobust.data.idx import DatasetFormatError
from unirobust.data.tokens import pack
from unirobust.errors import ConfigError, DatasetNotFoundError
from unirobust.hf import first_line, local_dir, quiet, transformers_module

__all__ = [
    "SUFFIXES",
    "encode_labels",
    "find_split",
    "load_text",
    "load_tokenizer",
    "read_columns",
    "tokenize",
]

#: Suffixes tried, in order, when a split is named without one.
SUFFIXES: tuple[str, ...] = (".csv", ".tsv", ".jsonl", ".json")
_INT = re.compile(r"^\s*-?\d+\s*$")
_CHUNK = 4096


def find_split(data_dir: Path, name: str) -> Path:
    """The file or saved-dataset directory of split ``name`` (see the module docstring)."""
    path = Path(name).expanduser()
    path = path if path.is_absolute() else data_dir / path
    if path.exists():
        return path
    found = [p for p in (path.with_name(path.name + s) for s in SUFFIXES) if p.exists()]
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise ConfigError(f"split '{name}' is ambiguous in '{data_dir}' ({names}): name one file")
    if not found:
        tried = ", ".join(path.name + s for s in ("", *SUFFIXES))
        raise DatasetNotFoundError(f"no split '{name}' in '{data_dir}' (tried {tried})")
    return found[0]


def _read_delimited(path: Path, columns: Sequence[str], tsv: bool) -> dict[str, list[Any]]:
    options: dict[str, Any] = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if tsv else {}
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle, **options)
        header = reader.fieldnames or []
        _check_columns(path, columns, header)
        out: dict[str, list[Any]] = {c: [] for c in columns}
        for row in reader:
            for c in columns:
                if row.get(c) is None:
                    raise DatasetFormatError(
                        f"{path}: line {reader.line_num} has no value for '{c}'"
                    )
                out[c].append(row[c])
    return out


def _read_jsonl(path: Path, columns: Sequence[str]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {c: [] for c in columns}
    with path.open(encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DatasetFormatError(
                    f"{path}: line {number} is not JSON ({err.msg}); .jsonl/.json files hold one "
                    "JSON object per line"
                ) from None
            if not isinstance(record, dict):
                raise DatasetFormatError(f"{path}: line {number} is not a JSON object")
            _check_columns(path, columns, list(record), f"line {number}")
            for c in columns:
                out[c].append(record[c])
    return out


def _read_saved(path: Path, columns: Sequence[str]) -> tuple[dict[str, list[Any]], list[str]]:
    """Columns of a ``save_to_disk`` dataset and the label's ``ClassLabel`` names (or [])."""
    try:
        import datasets
    except ImportError:
        raise ConfigError(
            f"'{path}' is a directory: reading a dataset saved with save_to_disk needs the "
            "datasets library: pip install 'unirobust[text]'"
        ) from None
    try:
        data = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as err:
        raise DatasetFormatError(
            f"'{path}' is not a dataset saved with save_to_disk ({first_line(err)})"
        ) from None
    if isinstance(data, datasets.DatasetDict):
        raise ConfigError(
            f"'{path}' is a DatasetDict (splits {', '.join(data)}); name one split directory, "
            f"e.g. train: {path.name}/{next(iter(data), 'train')}"
        )
    _check_columns(path, columns, list(data.column_names))
    names = getattr(data.features[columns[-1]], "names", None) or []
    return {c: list(data[c]) for c in columns}, list(names)


def _check_columns(path: Path, wanted: Sequence[str], have: Sequence[str], where: str = "") -> None:
    missing = [c for c in wanted if c not in have]
    if missing:
        at = f" ({where})" if where else ""
        raise ConfigError(
            f"{path}{at} has no column {missing[0]!r}; its columns: {', '.join(map(str, have))}"
        )


def read_columns(path: Path, columns: Sequence[str]) -> tuple[dict[str, list[Any]], list[str]]:
    """``{column: values}`` of a split (the label column last) and ``ClassLabel`` names if any."""
    if path.is_dir():
        return _read_saved(path, columns)
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            return _read_delimited(path, columns, tsv=suffix == ".tsv"), []
        if suffix in (".jsonl", ".json"):
            return _read_jsonl(path, columns), []
    except UnicodeDecodeError:
        raise DatasetFormatError(f"{path}: not UTF-8 text") from None
    except csv.Error as err:
        raise DatasetFormatError(f"{path}: not valid {suffix[1:].upper()} ({err})") from None
    raise ConfigError(
        f"'{path}': unknown format '{suffix or path.name}'; use .csv, .tsv, .jsonl/.json or a "
        "directory saved with datasets' save_to_disk"
    )


def _is_index(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, str):
        return bool(_INT.match(value))
    return isinstance(value, (int, np.integer))


def encode_labels(
    train: list[Any], test: list[Any], label_names: list[str] | None, saved_names: list[str]
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Integer labels of both splits and the class names (rules: the module docstring)."""
    values = train + test
    if any(v is None for v in values):
        raise ConfigError("a label is missing (null): every example needs a label")
    names = list(label_names or saved_names)
    if all(_is_index(v) for v in values):
        codes = [int(v) for v in values]
        if min(codes) < 0:
            raise ConfigError(
                f"label {min(codes)} is negative: unlabeled rows (GLUE test files use -1) cannot "
                "be trained or evaluated; use a labelled split (e.g. the validation file as test)"
            )
        count = len(names) if names else max(codes) + 1
        if max(codes) >= count:
            raise ConfigError(f"label {max(codes)} is out of range for {count} label_names")
        names = names or [str(i) for i in range(count)]
    else:
        text = [str(v) for v in values]
        names = names or sorted(set(text[: len(train)]))
        index = {name: i for i, name in enumerate(names)}
        unknown = sorted(set(text) - set(index))
        if unknown:
            raise ConfigError(
                f"label {unknown[0]!r} is not a known class ({', '.join(names)}); set "
                "data.options.label_names to list every class"
            )
        codes = [index[t] for t in text]
    arr = np.asarray(codes, dtype=np.int64)
    return arr[: len(train)], arr[len(train) :], names


def load_tokenizer(path: str) -> Any:
    """A tokenizer from a local directory (``local_files_only``); it must know its pad token."""
    transformers = transformers_module()
    folder = local_dir(path, "tokenizer")
    try:
        with quiet():
            tokenizer = transformers.AutoTokenizer.from_pretrained(
                str(folder), local_files_only=True
            )
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(
            f"'{path}' holds no tokenizer transformers can read ({first_line(err)})"
        ) from None
    if tokenizer.pad_token_id is None:
        raise ConfigError(
            f"the tokenizer in '{path}' has no padding token; set one (e.g. pad_token = "
            "eos_token) and save it again: every example is padded to max_length"
        )
    return tokenizer


def tokenize(
    tokenizer: Any, texts: list[Any], pairs: list[Any] | None, max_length: int
) -> np.ndarray:
    """``[N, K, max_length]`` int64 packed tokens (truncated and padded to ``max_length``)."""
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and max_length > limit:
        raise ConfigError(f"max_length {max_length} exceeds the tokenizer's limit of {limit}")
    for column in (texts, pairs or []):
        if any(t is None for t in column):
            raise ConfigError("a text is missing (null): every example needs its text")
    parts = []
    for start in range(0, len(texts), _CHUNK):
        part = [str(t) for t in texts[start : start + _CHUNK]]
        pair = None if pairs is None else [str(t) for t in pairs[start : start + _CHUNK]]
        encoding = tokenizer(
            part,
            pair,
            max_length=max_length,
            padding="max_length",
            truncation=True,
            return_tensors="pt",
        )
        parts.append(pack(encoding))
    if not parts:
        raise ConfigError("a text split is empty")
    return torch.cat(parts).numpy()


def load_text(
    data_dir: str | None,
    *,
    tokenizer: str,
    train: str,
    test: str,
    text: str,
    text_pair: str | None,
    label: str,
    label_names: list[str] | None,
    max_length: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Packed tokens and labels of the train and test splits, and the class names."""
    if data_dir is None:
        raise ConfigError("the text dataset needs data.data_dir (the folder of its split files)")
    root = Path(data_dir)
    if not root.is_dir():
        raise DatasetNotFoundError(f"text data directory '{data_dir}' does not exist")
    columns = [text, *([text_pair] if text_pair else []), label]
    tok = load_tokenizer(tokenizer)
    splits, saved = [], []
    for name in (train, test):
        values, names = read_columns(find_split(root, name), columns)
        splits.append(values)
        saved = saved or names
    y_train, y_test, class_names = encode_labels(
        splits[0][label], splits[1][label], label_names, saved
    )
    x_train, x_test = (
        tokenize(tok, s[text], s[text_pair] if text_pair else None, max_length) for s in splits
    )
    return x_train, y_train, x_test, y_test, class_names
