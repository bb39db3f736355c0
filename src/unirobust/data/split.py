"""Dataset containers: :class:`Split` (one split) and :class:`DatasetBundle`.

A split's images are a tensor in memory or, for a streamed split, a
:class:`~unirobust.data.source.LazyImages` that reads rows on indexing (``x[rows]``, ``x[a:b]``
give the same float32 values either way). They live apart from the registry (which builds them)
and the loader (which iterates them), so neither of those imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from unirobust.data.source import LazyImages
from unirobust.data.tokens import is_token_batch

__all__ = ["DatasetBundle", "Split"]


@dataclass(eq=False)
class Split:
    """One split: images, float ``(N, C, H, W)`` in [0, 1] (uint8 0..255 is converted), or packed
    token ids, int64 ``(N, K, L)`` (:mod:`unirobust.data.tokens`). A streamed split holds
    :class:`LazyImages` (``y`` and ``indices`` stay tensors on the CPU)."""

    x: Tensor | LazyImages
    y: Tensor
    indices: Tensor

    @property
    def streamed(self) -> bool:
        return isinstance(self.x, LazyImages)

    def __post_init__(self) -> None:
        if isinstance(self.x, Tensor) and self.x.dtype == torch.uint8:
            self.x = self.x.to(torch.float32).div_(255.0)
        if is_token_batch(self.x):
            self.x = self.x.to(torch.int64)
        elif self.x.ndim != 4 or not self.x.is_floating_point():
            raise ValueError(
                "Split.x must be float (N, C, H, W) images or integer (N, K, L) tokens; got "
                f"{self.x.dtype} {tuple(self.x.shape)}"
            )
        self.y = self.y.to(torch.int64)
        self.indices = self.indices.to(torch.int64)
        n = self.x.shape[0]
        if self.y.shape != (n,) or self.indices.shape != (n,):
            raise ValueError(
                f"Split sizes disagree: x {n}, y {tuple(self.y.shape)}, "
                f"indices {tuple(self.indices.shape)}"
            )

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def is_text(self) -> bool:
        """Whether the split holds packed tokens rather than images."""
        return is_token_batch(self.x)

    def subset(self, positions: Tensor | list[int]) -> Split:
        """Rows at ``positions`` (positions in this split, not original indices)."""
        if isinstance(self.x, LazyImages):
            pos = torch.as_tensor(positions, dtype=torch.int64)
            return Split(self.x.subset(pos), self.y[pos], self.indices[pos])
        pos = torch.as_tensor(positions, dtype=torch.int64, device=self.x.device)
        return Split(self.x[pos], self.y[pos], self.indices[pos])

    def to(self, device: str | torch.device) -> Split:
        """On ``device`` (a streamed split stays on the CPU; its batches are moved when read)."""
        if isinstance(self.x, LazyImages):
            return self
        return Split(self.x.to(device), self.y.to(device), self.indices.to(device))


@dataclass(eq=False)
class DatasetBundle:
    name: str
    train: Split
    val: Split | None
    test: Split
    num_classes: int
    input_shape: tuple[int, ...]
    class_names: list[str]

    @property
    def is_text(self) -> bool:
        """Token inputs (``input_shape`` is ``(K, L)``) rather than images (``(C, H, W)``)."""
        return self.train.is_text
