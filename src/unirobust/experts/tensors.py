"""Flat-tensor helpers shared by every merge rule and by checkpoint io (issue 7 point 4).

A model's state is split once into floating tensors (parameters and BN running statistics, which
merge rules average) and other buffers (``num_batches_tracked``, which they copy), in
``named_parameters()`` then ``named_buffers()`` order. Updates use ``torch._foreach_*`` kernels
over those lists, so a merge step is a handful of fused calls and never allocates.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP/DataParallel/torch.compile wrappers (no ``module.`` names)."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


class StateTensors:
    """A model's parameters + floating buffers (``floats``) and other buffers (``ints``), live."""

    def __init__(self, model: nn.Module) -> None:
        named = list(model.named_parameters()) + list(model.named_buffers())
        self.float_names: list[str] = []
        self.floats: list[Tensor] = []
        self.int_names: list[str] = []
        self.ints: list[Tensor] = []
        for name, t in named:
            if t.is_floating_point() or t.is_complex():
                self.float_names.append(name)
                self.floats.append(t)
            else:
                self.int_names.append(name)
                self.ints.append(t)

    def named(self) -> list[tuple[str, Tensor]]:
        return list(zip(self.float_names, self.floats, strict=True)) + list(
            zip(self.int_names, self.ints, strict=True)
        )

    def signature(self) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
        return [(n, tuple(t.shape), t.dtype) for n, t in self.named()]


def shadow(model: nn.Module) -> nn.Module:
    """A frozen eval-mode deep copy (an EMA shadow, G, or a snapshot)."""
    twin = copy.deepcopy(model)
    for p in twin.parameters():
        p.grad = None
        p.requires_grad_(False)
    return twin.eval()


def copy_list(dst: list[Tensor], src: list[Tensor]) -> None:
    """dst[i] <- src[i] in place."""
    if dst:
        torch._foreach_copy_(dst, src)


def lerp_list(dst: list[Tensor], src: list[Tensor], weight: float) -> None:
    """dst[i] <- dst[i] + weight * (src[i] - dst[i]) in place (one EMA step with 1 - decay)."""
    if dst:
        torch._foreach_lerp_(dst, src, weight)
