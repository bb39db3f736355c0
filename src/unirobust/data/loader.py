"""In-memory batch loader with batched, on-device augmentation.

Randomness: every epoch draws from one CPU ``torch.Generator`` seeded by ``derive_seed(seed,
epoch)``; the global RNG is never touched. The shuffle order is drawn first, then, batch by batch,
the augmentation parameters of the whole *global* batch. A sharded loader draws exactly the same
numbers and keeps its rows, so what a process sees never depends on how many processes there are.
Random parameters are drawn on the CPU and moved to the data's device, so CPU and GPU runs see the
same crops and flips.

A streamed training split whose source has a random transform (``imagefolder``'s random-resized
crop) gets, after the batch's augmentation parameters, ``source.random_numbers`` uniform float64
numbers per sample of the global batch from the same generator; the rank's slice of them goes to
the decoder. In-memory splits draw nothing more, so their streams are unchanged.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from unirobust.data.source import LazyImages
from unirobust.data.split import Split
from unirobust.errors import ConfigError
from unirobust.seeding import derive_seed

__all__ = ["Augment", "AugmentParams", "BatchLoader", "derive_seed"]


@dataclass(eq=False)
class AugmentParams:
    """Per-sample random parameters of one batch (CPU or device tensors).

    ``offsets[i] = (dy, dx)`` in ``[0, 2 * crop_padding]``: the crop window's top-left corner in the
    padded image (``crop_padding`` means no shift). ``flip[i]`` flips sample ``i`` left-right.
    """

    offsets: Tensor | None
    flip: Tensor | None

    def __getitem__(self, rows: slice) -> AugmentParams:
        return AugmentParams(
            None if self.offsets is None else self.offsets[rows],
            None if self.flip is None else self.flip[rows],
        )


@dataclass
class Augment:
    """Random crop with zero padding, then random horizontal flip (p = 0.5), per sample.

    ``aug(x, generator)`` works on a whole ``(N, C, H, W)`` batch with tensor ops on ``x.device``;
    the output has the same shape and, for inputs in [0, 1], stays in [0, 1].
    """

    crop_padding: int = 0
    hflip: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.crop_padding, bool) or not isinstance(self.crop_padding, int):
            raise ConfigError(f"crop_padding must be an int >= 0, got {self.crop_padding!r}")
        if self.crop_padding < 0:
            raise ConfigError(f"crop_padding must be >= 0, got {self.crop_padding}")
        if not isinstance(self.hflip, bool):
            raise ConfigError(f"hflip must be true or false, got {self.hflip!r}")

    @property
    def enabled(self) -> bool:
        return self.crop_padding > 0 or self.hflip

    def sample(self, n: int, generator: torch.Generator) -> AugmentParams:
        """Draw the parameters of ``n`` samples: offsets first, then flips."""
        dev = generator.device
        offsets = flip = None
        if self.crop_padding > 0:
            high = 2 * self.crop_padding + 1
            offsets = torch.randint(0, high, (n, 2), generator=generator, device=dev)
        if self.hflip:
            flip = torch.rand(n, generator=generator, device=dev) < 0.5
        return AugmentParams(offsets, flip)

    def apply(self, x: Tensor, params: AugmentParams) -> Tensor:
        """Apply given parameters to a batch (vectorised; no loop over samples). Without any
        (augmentation off) the batch is returned as it is, whatever it holds (token ids too)."""
        if params.offsets is None and params.flip is None:
            return x
        if x.ndim != 4:
            raise ValueError(f"Augment expects an (N, C, H, W) batch, got shape {tuple(x.shape)}")
        if params.offsets is not None:
            x = _shift_crop(x, params.offsets.to(x.device), self.crop_padding)
        if params.flip is not None:
            x = torch.where(params.flip.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)
        return x

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return self.apply(x, self.sample(x.shape[0], generator))


def _shift_crop(x: Tensor, offsets: Tensor, pad: int) -> Tensor:
    """Zero-pad by ``pad`` and take each sample's HxW window at ``offsets`` via two gathers."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = offsets[:, 0, None] + torch.arange(h, device=x.device)  # (n, h)
    cols = offsets[:, 1, None] + torch.arange(w, device=x.device)  # (n, w)
    padded = padded.gather(2, rows.view(n, 1, h, 1).expand(n, c, h, w + 2 * pad))
    return padded.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))


class BatchLoader:
    """Iterate over a :class:`Split` in batches of ``(x, y)`` on ``device``.

    Call :meth:`set_epoch` before each epoch: the order and augmentation of an epoch are a pure
    function of ``(seed, epoch)``, so iterating twice in the same epoch repeats it exactly.
    ``device=None`` keeps the split's device. With ``return_indices=True`` the loader yields
    ``(x, y, indices)`` where ``indices`` are the split's original-file positions.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        augment: Augment | None = None,
        drop_last: bool = False,
        device: str | torch.device | None = None,
        return_indices: bool = False,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}")
        if augment is not None and not isinstance(augment, Augment):
            raise ConfigError(f"augment must be an Augment or None, got {type(augment).__name__}")
        self.split = split
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.augment = augment
        self.drop_last = bool(drop_last)
        self.device = torch.device(device) if device is not None else split.x.device
        self.return_indices = return_indices
        self.epoch = 0
        self.rank = 0
        self.world_size = 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def global_batch_sizes(self) -> list[int]:
        """Size of every global batch of an epoch (the last one may be smaller)."""
        n, b = len(self.split), self.batch_size
        return [min(b, n - i * b) for i in range(len(self))]

    def shard(self, rank: int, world_size: int) -> BatchLoader:
        """This rank's view: rows ``[rank*b//w, (rank+1)*b//w)`` of every global batch of size b.

        Every rank yields ``len(self)`` batches; slices of an uneven batch differ by at most one
        row, and a rank may get an empty slice when ``b < world_size``.
        """
        if self.world_size != 1:
            raise ConfigError("shard() applies to an unsharded loader; this one is sharded already")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"need 0 <= rank < world_size, got rank={rank}, world={world_size}")
        other = copy.copy(self)
        other.rank, other.world_size = int(rank), int(world_size)
        return other

    def _generator(self) -> torch.Generator:
        gen = torch.Generator()
        gen.manual_seed(derive_seed(self.seed, self.epoch))
        return gen

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        gen = self._generator()
        n = len(self.split)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        data_dev = self.split.x.device
        lazy = self.split.x if isinstance(self.split.x, LazyImages) else None
        k = lazy.random_numbers if lazy is not None else 0
        for i in range(len(self)):
            batch = order[i * self.batch_size : (i + 1) * self.batch_size]
            b = batch.numel()
            lo = self.rank * b // self.world_size
            hi = (self.rank + 1) * b // self.world_size
            params = self.augment.sample(b, gen) if self.augment is not None else None
            rows = batch[lo:hi].to(data_dev)
            if lazy is not None:
                numbers = torch.rand(b, k, generator=gen, dtype=torch.float64) if k else None
                part = None if numbers is None else numbers[lo:hi].numpy()
                x = lazy.read(rows, part).to(self.device)
            else:
                x = self.split.x[rows].to(self.device)
            y = self.split.y[rows].to(self.device)
            if params is not None and self.augment is not None:
                x = self.augment.apply(x, params[lo:hi])
            if self.return_indices:
                yield x, y, self.split.indices[rows].to(self.device)
            else:
                yield x, y

    def __repr__(self) -> str:
        shard = f", rank={self.rank}/{self.world_size}" if self.world_size > 1 else ""
        return (
            f"BatchLoader(n={len(self.split)}, batch_size={self.batch_size}, "
            f"shuffle={self.shuffle}, seed={self.seed}, epoch={self.epoch}, "
            f"augment={self.augment}, drop_last={self.drop_last}{shard})"
        )
