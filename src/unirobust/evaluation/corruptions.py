"""Common-corruption accuracy (the 15 ImageNet-C corruptions, severities 1-5).

Backend: the ``imagecorruptions`` module of the ``imagecorruptions-imaug`` package (optional extra:
``pip install 'unirobust[corruptions]'``). Its constants are the **ImageNet-C** ones; Hendrycks'
CIFAR-10-C script uses milder constants for 32 px images, so accuracies computed here are *not*
comparable with published CIFAR-10-C numbers. They are comparable between models evaluated here.

Pre-processing, exactly (for an image x in [0,1], shape C×H×W):

1. quantise: ``u = round(255·x)`` as uint8 (corruptions are defined on 8-bit images);
2. pad: if H or W < 32 (the backend's minimum), pad to 32 with ``pad_mode`` (``"edge"`` -- repeat
   the border pixel, the default -- or ``"zero"``), split as evenly as possible with the extra
   pixel at the bottom/right (28 px: 2 + 2);
3. channels: a 1-channel image is replicated to 3 channels; 3-channel images are used as they are;
4. corrupt with ``imagecorruptions.corrupt(..., severity)``;
5. back: a 1-channel input takes the mean of the 3 output channels; the padding is cropped away;
6. the result is rounded to uint8 (like the published -C datasets) and divided by 255.

Randomness: image i of corruption c at severity s uses the seed
``SeedSequence([seed, index of c, s, i])``: the global NumPy RNG is seeded with it (inside
``preserve_rng``, so the caller's RNG state is unchanged) and it is passed explicitly to
``glass_blur`` and ``impulse_noise``, which otherwise draw fresh OS entropy. A point's corrupted
image therefore depends only on (seed, corruption, severity, its position, its pixels).

Caching: each (dataset, corruption, severity) array is stored as
``<cache_dir>/<dataset>-<corruption>-s<severity>-<fingerprint>.npy`` (uint8, N×C×H×W, written
atomically); the fingerprint hashes the quantised inputs, the seed and the pad mode, so a cache
never serves other points.

Timings (32×32, one CPU core, per image): most corruptions 0.2-6 ms; frost ≈ 10-15 ms (it resizes
a full-size frost photograph); glass_blur ≈ 1 ms after a one-off numba JIT compile of ≈ 1-2 s per
process. The full 15×5 grid on 10,000 images therefore costs a few minutes the first time; pass
``corruptions=`` to evaluate a subset.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from unirobust.attacks.context import preserve_rng
from unirobust.errors import ConfigError
from unirobust.evaluation.keys import Corruptions as Keys
from unirobust.io import atomic_write_bytes
from unirobust.models import batched_logits

if TYPE_CHECKING:
    from unirobust.evaluation.results import EvalResults

__all__ = [
    "BACKEND",
    "CORRUPTIONS",
    "SEVERITIES",
    "add_corruptions",
    "column_key",
    "corrupt_images",
    "corruption_columns",
    "corruption_info",
    "corruption_summary",
    "evaluate_corruptions",
]

#: The 15 ImageNet-C "common" corruptions, in the standard order.
CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
_MIN_SIZE = 32
_SEEDED_KWARG = ("glass_blur", "impulse_noise")
BACKEND = "imagecorruptions (ImageNet-C constants)"


def _backend():
    try:
        from imagecorruptions import corrupt
    except ImportError:
        raise ConfigError(
            "corruption evaluation needs the optional 'imagecorruptions' backend: "
            "pip install 'unirobust[corruptions]' (package imagecorruptions-imaug)"
        ) from None
    return corrupt


def _check_names(corruptions: Sequence[str] | None) -> list[str]:
    names = list(CORRUPTIONS) if corruptions is None else list(corruptions)
    unknown = [c for c in names if c not in CORRUPTIONS]
    if unknown or not names:
        raise ConfigError(
            f"unknown corruption(s) {unknown or names}: choose from {', '.join(CORRUPTIONS)}"
        )
    return names


def _check_severity(severity: int) -> int:
    if isinstance(severity, bool) or int(severity) != severity or severity not in SEVERITIES:
        raise ConfigError(f"corruption severity {severity!r} is invalid: choose from 1-5")
    return int(severity)


def _quantise(x: torch.Tensor) -> np.ndarray:
    """float [0,1] N×C×H×W -> uint8 N×C×H×W (round half to even, as numpy rint)."""
    if x.ndim != 4:
        raise ConfigError(f"images must be N×C×H×W, got shape {tuple(x.shape)}")
    if x.shape[1] not in (1, 3):
        raise ConfigError(f"corruptions need 1- or 3-channel images, got {x.shape[1]} channels")
    arr = x.detach().to("cpu", torch.float32).numpy()
    return np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)


def _pads(size: int) -> tuple[int, int]:
    extra = max(0, _MIN_SIZE - size)
    return extra // 2, extra - extra // 2


def _image_seed(seed: int, corruption: str, severity: int, i: int) -> int:
    seq = np.random.SeedSequence([int(seed), CORRUPTIONS.index(corruption), severity, i])
    return int(seq.generate_state(1, dtype=np.uint32)[0])


def _corrupt_uint8(
    images: np.ndarray, corruption: str, severity: int, *, seed: int, pad_mode: str
) -> np.ndarray:
    corrupt = _backend()
    n, c, h, w = images.shape
    top, bottom = _pads(h)
    left, right = _pads(w)
    mode = {"edge": "edge", "zero": "constant"}[pad_mode]
    out = np.empty_like(images)
    with preserve_rng():
        for i in range(n):
            hwc = np.transpose(images[i], (1, 2, 0))
            hwc = np.pad(hwc, ((top, bottom), (left, right), (0, 0)), mode=mode)
            if c == 1:
                hwc = np.repeat(hwc, 3, axis=2)
            image_seed = _image_seed(seed, corruption, severity, i)
            np.random.seed(image_seed)
            kwargs: dict[str, Any] = {"seed": image_seed} if corruption in _SEEDED_KWARG else {}
            result = corrupt(
                np.ascontiguousarray(hwc), severity=severity, corruption_name=corruption, **kwargs
            )
            result = np.asarray(result, dtype=np.float64)
            if result.shape != hwc.shape:
                raise RuntimeError(
                    f"{corruption} returned shape {result.shape} for an input of shape {hwc.shape}"
                )
            result = result[top : top + h, left : left + w]
            if c == 1:
                result = result.mean(axis=2, keepdims=True)
            out[i] = np.clip(np.rint(result), 0, 255).astype(np.uint8).transpose(2, 0, 1)
    return out


def corrupt_images(
    x: torch.Tensor,
    corruption: str,
    severity: int,
    *,
    seed: int = 0,
    pad_mode: str = "edge",
) -> torch.Tensor:
    """Corrupt a batch of images in [0,1] (N×C×H×W, C = 1 or 3); returns float32 in [0,1].

    See the module docstring for the exact pre-processing and seeding.
    """
    (corruption,) = _check_names([corruption])
    severity = _check_severity(severity)
    if pad_mode not in ("edge", "zero"):
        raise ConfigError(f"pad_mode {pad_mode!r} is invalid: choose 'edge' or 'zero'")
    out = _corrupt_uint8(_quantise(x), corruption, severity, seed=seed, pad_mode=pad_mode)
    return torch.from_numpy(out.astype(np.float32) / 255.0)


def _fingerprint(images: np.ndarray, seed: int, pad_mode: str) -> str:
    digest = hashlib.sha256()
    digest.update(str(images.shape).encode())
    digest.update(images.tobytes())
    digest.update(f"seed={seed};pad={pad_mode}".encode())
    return digest.hexdigest()[:12]


def _safe_name(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text) or "data"


def _cached(
    images: np.ndarray,
    corruption: str,
    severity: int,
    *,
    seed: int,
    pad_mode: str,
    cache_dir: Path | None,
    dataset: str,
) -> np.ndarray:
    if cache_dir is None:
        return _corrupt_uint8(images, corruption, severity, seed=seed, pad_mode=pad_mode)
    fp = _fingerprint(images, seed, pad_mode)
    path = Path(cache_dir) / f"{_safe_name(dataset)}-{corruption}-s{severity}-{fp}.npy"
    if path.exists():
        arr = np.load(path, allow_pickle=False)
        if arr.shape == images.shape and arr.dtype == np.uint8:
            return arr
    arr = _corrupt_uint8(images, corruption, severity, seed=seed, pad_mode=pad_mode)
    buffer = io.BytesIO()
    np.save(buffer, arr, allow_pickle=False)
    atomic_write_bytes(path, buffer.getvalue())
    return arr


def column_key(corruption: str, severity: int) -> str:
    """Name of a per-sample column of the evaluation table, e.g. ``"fog:3"``."""
    return f"{corruption}:{severity}"


def _correct(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int):
    pred = batched_logits(model, x, batch_size, out_device="cpu").argmax(1)
    return (pred == y).numpy()


def corruption_columns(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] = SEVERITIES,
    cache_dir: str | os.PathLike[str] | None,
    dataset: str,
    seed: int = 0,
    batch_size: int = 500,
    pad_mode: str = "edge",
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Per-sample correctness (bool, length N) of ``model`` on each corrupted copy of ``(x, y)``.

    Keys are :func:`column_key` ``(corruption, severity)``; arguments as in
    :func:`evaluate_corruptions`.
    """
    names = _check_names(corruptions)
    sevs = [_check_severity(s) for s in severities]
    if not sevs:
        raise ConfigError("no corruption severities given: choose from 1-5")
    if pad_mode not in ("edge", "zero"):
        raise ConfigError(f"pad_mode {pad_mode!r} is invalid: choose 'edge' or 'zero'")
    _backend()
    images = _quantise(x)
    labels = y.detach().to("cpu", torch.long)
    cache = Path(cache_dir) if cache_dir is not None else None
    columns: dict[str, np.ndarray] = {}
    for name in names:
        for severity in sevs:
            corrupted = _cached(
                images,
                name,
                severity,
                seed=seed,
                pad_mode=pad_mode,
                cache_dir=cache,
                dataset=dataset,
            )
            batch = torch.from_numpy(corrupted.astype(np.float32) / 255.0)
            column = _correct(model, batch, labels, batch_size)
            columns[column_key(name, severity)] = column
            if progress:
                print(
                    f"[unirobust corruptions] {name} s{severity}: {column.mean():.2%}",
                    file=sys.stderr,
                    flush=True,
                )
    return columns


def corruption_summary(
    columns: Mapping[str, np.ndarray], info: Mapping[str, Any] | None = None
) -> dict[str, Any] | None:
    """The ``corruptions`` block of the summary from per-sample columns (``None`` without any)."""
    if not columns:
        return None
    table: dict[str, dict[str, float]] = {}
    for key, column in columns.items():
        name, severity = key.rsplit(":", 1)
        table.setdefault(name, {})[severity] = float(np.mean(column)) if column.size else np.nan
    severities = sorted({int(s) for accs in table.values() for s in accs})
    return {
        Keys.NAMES: list(table),
        Keys.SEVERITIES: severities,
        Keys.PER_CORRUPTION: table,
        Keys.MEAN_PER_CORRUPTION: {n: float(np.mean(list(v.values()))) for n, v in table.items()},
        Keys.MEAN_ACC: float(np.mean([a for v in table.values() for a in v.values()])),
        **(info or {}),
    }


def corruption_info(seed: int, pad_mode: str) -> dict[str, Any]:
    """How corrupted copies were made, as reported in the summary."""
    return {Keys.SEED: int(seed), Keys.PAD_MODE: pad_mode, Keys.BACKEND: BACKEND}


def add_corruptions(
    table: EvalResults,
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    seed: int = 0,
    pad_mode: str = "edge",
    **options: Any,
) -> EvalResults:
    """The ``corruptions`` group: add per-sample corrupted-copy columns to ``table``.

    ``x, y`` are the table's points in its row order; ``options`` as :func:`corruption_columns`.
    """
    if int(x.shape[0]) != table.n_points:
        raise ConfigError(f"{int(x.shape[0])} images for a table of {table.n_points} points")
    columns = corruption_columns(model, x, y, seed=seed, pad_mode=pad_mode, **options)
    table.corrupted.update(columns)
    table.corruption_info = corruption_info(seed, pad_mode)
    return table


def evaluate_corruptions(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    seed: int = 0,
    batch_size: int = 500,
    pad_mode: str = "edge",
    **options: Any,
) -> dict[str, Any]:
    """Accuracy of ``model`` on corrupted copies of ``(x, y)``.

    Args:
        model: classifier on [0,1] inputs; evaluated in eval mode (mode restored).
        x, y: clean images N×C×H×W in [0,1] (C = 1 or 3) and labels.
        seed: corruption seed (see the module docstring).
        batch_size: prediction batch size.
        pad_mode: ``"edge"`` or ``"zero"`` padding for images smaller than 32 px.
        options: the rest of :func:`corruption_columns`: ``cache_dir`` (required; directory of
            the cached corrupted arrays, ``None``: no cache), ``dataset`` (required; part of the
            cache file names), ``corruptions`` (subset of :data:`CORRUPTIONS`, default all 15),
            ``severities`` (subset of 1-5, default all) and ``progress`` (one line per
            corruption and severity on stderr).

    Returns:
        ``{"accuracy": {corruption: {"1": acc, ..., "5": acc}}, "mean_per_corruption":
        {corruption: acc}, "mean_acc": mean over every (corruption, severity),
        "clean_acc": accuracy on the unquantised clean x, "corruptions": [...],
        "severities": [...], "n_points", "seed", "dataset", "pad_mode", "backend"}``.
    """
    columns = corruption_columns(
        model, x, y, seed=seed, batch_size=batch_size, pad_mode=pad_mode, **options
    )
    summary = corruption_summary(columns, corruption_info(seed, pad_mode)) or {}
    labels = y.detach().to("cpu", torch.long)
    clean = _correct(model, x.detach().to("cpu", torch.float32), labels, batch_size)
    return {
        "accuracy": summary[Keys.PER_CORRUPTION],
        "mean_per_corruption": summary[Keys.MEAN_PER_CORRUPTION],
        "mean_acc": summary[Keys.MEAN_ACC],
        "clean_acc": float(np.mean(clean)),
        "corruptions": summary[Keys.NAMES],
        "severities": summary[Keys.SEVERITIES],
        "n_points": int(x.shape[0]),
        "seed": int(seed),
        "dataset": options["dataset"],
        "pad_mode": pad_mode,
        "backend": BACKEND,
    }
