"""Token batches as one integer tensor, so text flows through the image data path unchanged.

Every part of the engine (``Split``, ``BatchLoader``, ``batched_logits``, feature extraction,
evaluation, the NTK) slices and moves one tensor ``x``. A tokenised text batch is therefore packed
into an int64 tensor ``[N, K, L]``: row ``k`` of each example is one of :data:`FIELDS` (the token
ids, the attention mask, and the token type ids when the tokenizer makes them), ``L`` the padded
length. Text models unpack it with :func:`unpack`; nothing else needs to know.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from unirobust.errors import ConfigError

__all__ = ["FIELDS", "check_token_shape", "float_inputs", "is_token_batch", "pack", "unpack"]

#: The packed fields in order; the first two are always present.
FIELDS: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")


def pack(encoding: Mapping[str, Tensor]) -> Tensor:
    """``{input_ids, attention_mask[, token_type_ids]}``, each ``[N, L]`` -> int64 ``[N, K, L]``."""
    missing = [f for f in FIELDS[:2] if f not in encoding]
    if missing:
        raise ConfigError(f"a token batch needs {', '.join(FIELDS[:2])}; missing {missing}")
    fields = [f for f in FIELDS if f in encoding]
    return torch.stack([torch.as_tensor(encoding[f]).long() for f in fields], dim=1)


def unpack(x: Tensor) -> dict[str, Tensor]:
    """The keyword arguments of a Hugging Face model for a packed batch ``[B, K, L]``."""
    if x.ndim != 3 or not 2 <= x.shape[1] <= len(FIELDS) or x.is_floating_point():
        raise ValueError(
            f"expected a packed token batch (integer [batch, 2 or 3, length]), got {x.dtype} "
            f"{tuple(x.shape)}"
        )
    return {name: x[:, k] for k, name in enumerate(FIELDS[: x.shape[1]])}


def is_token_batch(x: Tensor) -> bool:
    """Whether ``x`` holds packed tokens (an integer tensor ``[N, K, L]``) rather than images."""
    return x.ndim == 3 and not x.is_floating_point()


def float_inputs(x: Tensor) -> Tensor:
    """Images as float32 (evaluation's precision); token ids unchanged (they are indices)."""
    return x if is_token_batch(x) else x.to(torch.float32)


def check_token_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """``(K, L)`` of a packed token input, or a one-line ConfigError."""
    try:
        k, length = (int(v) for v in shape)
    except (TypeError, ValueError):
        k = length = 0
    if not 2 <= k <= len(FIELDS) or length < 1:
        raise ConfigError(
            f"token input_shape must be (fields, length) with fields in 2..{len(FIELDS)} "
            f"({', '.join(FIELDS)}) and length >= 1, got {shape!r}"
        )
    return k, length
