"""An evaluation split over the ranks of a torch.distributed job (issue 11).

:func:`~unirobust.evaluation.runner.evaluate` cuts its work into the same pieces whatever the
number of processes: the clean pass into batches of ``batch_size`` points, each threat into chunks
of ``batch_size`` points still to attack. Piece ``k`` belongs to rank ``k % world_size``. A piece
is computed exactly as a single process computes it (same points, same seed), so a point's result
does not depend on which rank, or how many ranks, handled it: the merged table is the
single-process table, bit for bit.

Ranks exchange results with collectives over the default process group (gloo on CPU, nccl on
GPU): after the clean pass, after each threat in union-only mode (the next threat attacks only
points robust so far, on every rank) and once at the end. A result is exchanged as the sum of
every rank's contribution, where a rank contributes its own rows and zeros elsewhere; floats
travel as their int32 bit patterns, so the sum reproduces them exactly. With one process
(:class:`Shard` defaults) every exchange is the identity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["Shard", "current_shard", "shard_state_path"]


@dataclass(frozen=True)
class Shard:
    """This process's place in the evaluation: ``rank`` of ``world_size``; collectives run on
    ``device`` (the CPU for gloo, this rank's GPU for nccl)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def owns(self, piece: int) -> bool:
        """Whether piece ``piece`` (a clean batch or an attack chunk) is this rank's."""
        return piece % self.world_size == self.rank

    def _reduce(self, array: np.ndarray, op: dist.ReduceOp) -> np.ndarray:
        tensor = torch.from_numpy(np.ascontiguousarray(array)).to(self.device)
        dist.all_reduce(tensor, op=op)
        return tensor.cpu().numpy()

    def merge_rows(self, values: np.ndarray, mine: np.ndarray, anyone: np.ndarray) -> np.ndarray:
        """Rows ``anyone`` from the rank that owns each (``mine`` here), others from ``values``.

        ``values`` is ``(N, ...)`` int8/bool/int64 or float32; every rank must call this with the
        same ``anyone`` and disjoint ``mine`` masks covering it."""
        if not self.enabled:
            return values
        bits = values.view(np.int32) if values.dtype == np.float32 else values.astype(np.int64)
        shape = (-1,) + (1,) * (values.ndim - 1)
        contribution = np.where(mine.reshape(shape), bits, 0).astype(bits.dtype)
        total = self._reduce(contribution, dist.ReduceOp.SUM)
        merged = total.view(np.float32) if values.dtype == np.float32 else total
        return np.where(anyone.reshape(shape), merged.astype(values.dtype), values)

    def sum(self, array: np.ndarray) -> np.ndarray:
        """Element-wise sum over ranks (int64)."""
        if not self.enabled:
            return array
        return self._reduce(array.astype(np.int64), dist.ReduceOp.SUM)

    def max(self, value: float) -> float:
        if not self.enabled:
            return value
        return float(self._reduce(np.array([value], dtype=np.float64), dist.ReduceOp.MAX)[0])

    def gather(self, array: np.ndarray) -> list[np.ndarray]:
        """Every rank's ``array`` (same shape and dtype on all ranks), in rank order."""
        if not self.enabled:
            return [array]
        tensor = torch.from_numpy(np.ascontiguousarray(array)).to(self.device)
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor)
        return [p.cpu().numpy() for p in parts]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def current_shard() -> Shard:
    """The shard of this process: from the initialised default process group, else one process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return Shard()
    device = torch.device("cpu")
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    return Shard(dist.get_rank(), dist.get_world_size(), device)


def shard_state_path(path: Path | str | None, shard: Shard) -> Path | None:
    """Each rank's own resumable state file: ``NAME.rankR-of-W.SUFFIX`` (unchanged for one)."""
    if path is None:
        return None
    path = Path(path)
    if not shard.enabled:
        return path
    return path.with_name(f"{path.stem}.rank{shard.rank}-of-{shard.world_size}{path.suffix}")
