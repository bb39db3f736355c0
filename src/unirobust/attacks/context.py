"""State hygiene for attacks: eval mode, frozen parameters, untouched global RNG.

``attack_mode`` puts a model in eval mode with parameter gradients off and restores every module's
``training`` flag and every parameter's ``requires_grad`` exactly, even on exceptions.
``preserve_rng`` snapshots the global torch (CPU and every CUDA device), NumPy and Python ``random``
states and restores them on exit; wrappers around third-party code that reseeds the global RNG
(pyautoattack) run inside it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["attack_mode", "loss_and_grad", "preserve_rng", "resolve_generator"]


@contextmanager
def attack_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and ``requires_grad=False`` on every parameter; restored exactly on exit."""
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in grads:
            p.requires_grad_(False)
        yield model
    finally:
        for m, training in modes:
            m.training = training
        for p, flag in grads:
            p.requires_grad_(flag)


@contextmanager
def preserve_rng() -> Iterator[None]:
    """Save the torch CPU/CUDA, NumPy and ``random`` global states; restore them in ``finally``."""
    cpu_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    np_state = np.random.get_state()
    py_state = random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(cpu_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        np.random.set_state(np_state)
        random.setstate(py_state)


def resolve_generator(generator: torch.Generator | None) -> torch.Generator:
    """The caller's generator, or a fresh local CPU generator seeded 0 (never the global RNG)."""
    if generator is not None:
        return generator
    return torch.Generator().manual_seed(0)


def loss_and_grad(
    model: nn.Module,
    x_adv: Tensor,
    y: Tensor,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    need_grad: bool = True,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """One forward at ``x_adv``: (logits, per-sample loss, d sum(loss) / d x_adv or None).

    The gradient is taken with ``torch.autograd.grad`` with respect to the input only, so no
    parameter ``.grad`` is ever touched; it works even when the caller is under ``no_grad``.
    """
    xa = x_adv.detach().requires_grad_(need_grad)
    with torch.set_grad_enabled(need_grad):
        logits = model(xa)
        loss = loss_fn(logits, y)
        if not need_grad:
            grad = None
        elif loss.requires_grad:
            grad = torch.autograd.grad(loss.sum(), xa)[0].detach()
        else:  # the loss does not depend on the input (e.g. a constant model)
            grad = torch.zeros_like(xa)
    return logits.detach(), loss.detach(), grad
