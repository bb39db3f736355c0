"""Process layout under torchrun (torch.distributed; gloo on CPU, nccl on GPU).

Two layouts (``train.distributed.mode``):

* ``data``: every rank runs every expert on its slice of each global batch; gradients are averaged
  over all ranks after each backward (an explicit all-reduce rather than a DDP wrapper, because
  attacks call the raw module in eval mode with parameter gradients off, which DDP's reducer does
  not expect between backward passes).
* ``experts`` (generalist.md §3.4): N experts x R replicas. Expert k owns ranks [kR, (k+1)R); its
  gradients are averaged in that group. The *mix group* joins the ranks with the same replica
  index across experts; EmaMix all-reduces w_k·E_k there.

With R = 1 both layouts reproduce the single-process run up to float summation order. With R > 1
each replica's BatchNorm sees only its slice, which changes batch statistics (documented as not
equivalent unless the model has no BatchNorm).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor

from unirobust.errors import ConfigError


@dataclass
class DistContext:
    """Where this process sits; the single-process default has world size 1."""

    rank: int = 0
    world_size: int = 1
    local_experts: list[int] = field(default_factory=list)
    replica: int = 0
    replicas: int = 1
    expert_group: object | None = None
    mix_group: object | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def grad_sync(self) -> Callable[[list[Tensor]], None] | None:
        """Average gradients over the expert's replicas (None when there is nothing to sync)."""
        if self.replicas == 1:
            return None
        group, n = self.expert_group, self.replicas

        def sync(grads: list[Tensor]) -> None:
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
            flat.div_(n)
            offset = 0
            for g in grads:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()

        return sync

    def mix_all_reduce(self) -> Callable[[Tensor], None] | None:
        """SUM over the mix group (experts mode only)."""
        if self.mix_group is None:
            return None
        group = self.mix_group

        def reduce(flat: Tensor) -> None:
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)

        return reduce

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(mode: str, n_experts: int, device: torch.device) -> DistContext:
    """Join the process group torchrun prepared and build the layout's subgroups."""
    if not launched_by_torchrun():
        return DistContext(local_experts=list(range(n_experts)))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    if mode == "data":
        return DistContext(
            rank=rank,
            world_size=world,
            local_experts=list(range(n_experts)),
            replica=rank,
            replicas=world,
            expert_group=dist.group.WORLD,
        )
    if world % n_experts != 0:
        raise ConfigError(
            f"distributed.mode=experts needs the number of processes ({world}) to be a multiple "
            f"of the number of experts ({n_experts})"
        )
    replicas = world // n_experts
    expert, replica = divmod(rank, replicas)
    expert_group = mix_group = None
    for k in range(n_experts):  # every rank must create every group, in the same order
        group = dist.new_group(list(range(k * replicas, (k + 1) * replicas)))
        if k == expert:
            expert_group = group
    for j in range(replicas):
        group = dist.new_group([k * replicas + j for k in range(n_experts)])
        if j == replica:
            mix_group = group
    return DistContext(
        rank=rank,
        world_size=world,
        local_experts=[expert],
        replica=replica,
        replicas=replicas,
        expert_group=expert_group,
        mix_group=mix_group,
    )


def join_process_group(device: torch.device) -> tuple[torch.device, bool]:
    """Under torchrun, join its process group for a job without a training layout (evaluation).

    Backend gloo on the CPU, nccl on CUDA, where each rank takes GPU ``LOCAL_RANK`` of its node.
    Returns this rank's device and whether the group was created here (the caller then ends it
    with :func:`shutdown_distributed`). Outside torchrun: ``(device, False)``."""
    if not launched_by_torchrun():
        return device, False
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if dist.is_initialized():
        return device, False
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device, True


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
