"""Sanity checks that flag common robustness-evaluation mistakes (after AutoAttack's ``checks.py``).

Each check returns a message (or ``None``) and :func:`run_sanity_checks` emits every message as an
:class:`EvaluationWarning` through :func:`warnings.warn`. The checks never change the model's
mode, its parameters' ``requires_grad`` flags, or the global RNG state.

Checks:

* **zero input gradients** -- points whose cross-entropy gradient w.r.t. the input is exactly zero
  (saturated softmax, non-differentiable pre-processing, gradient masking). Gradient attacks make
  no progress on such points, so their robustness is overestimated.
* **probability outputs** -- every output lies in [0, 1] and rows sum to 1: the model returns
  probabilities instead of logits, which flattens the CE/DLR losses.
* **stochastic model** -- two forward passes in eval mode differ (dropout left on, random
  transforms): use an EOT evaluation instead, deterministic attacks are not reliable.
* **too many target classes** -- targeted attacks asked for more targets than classes − 1.
* **black box beats white box** -- a black-box attack (Square) breaks points that all white-box
  attacks of the cascade missed: a sign of gradient masking (:func:`check_black_box`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from unirobust.attacks.context import attack_mode, preserve_rng

__all__ = [
    "EvaluationWarning",
    "check_black_box",
    "check_n_target_classes",
    "check_probability_outputs",
    "check_stochastic",
    "check_zero_gradients",
    "run_sanity_checks",
]


class EvaluationWarning(UserWarning):
    """The robustness evaluation may be unreliable (see :mod:`unirobust.evaluation.checks`)."""


def _warn(message: str | None) -> None:
    if message:
        warnings.warn(message, EvaluationWarning, stacklevel=3)


def check_zero_gradients(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> str | None:
    """Message if some points have an all-zero CE input gradient (model must be in eval mode)."""
    x_req = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x_req), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, [x_req])
    zero = grad.reshape(grad.shape[0], -1).abs().sum(dim=1) == 0
    n_zero = int(zero.sum())
    if n_zero == 0:
        return None
    return (
        f"{n_zero} of {x.shape[0]} points have an exactly zero input gradient of the "
        "cross-entropy loss; gradient-based attacks cannot make progress on them and robust "
        "accuracy may be overestimated (gradient masking or saturated softmax)"
    )


def check_probability_outputs(outputs: torch.Tensor, alpha: float = 1e-5) -> str | None:
    """Message if ``outputs`` look like probabilities (all in [0, 1] and rows summing to 1)."""
    if outputs.ndim != 2 or outputs.numel() == 0:
        return None
    looks_like_probs = (
        float(outputs.max()) < 1.0 + alpha
        and float(outputs.min()) > -alpha
        and bool(((outputs.sum(dim=-1) - 1.0).abs() < alpha).all())
    )
    if not looks_like_probs:
        return None
    return (
        "the model outputs look like probabilities (in [0, 1], rows sum to 1); attacks expect "
        "logits -- remove the final softmax, otherwise CE/DLR losses saturate"
    )


def check_stochastic(
    model: torch.nn.Module, x: torch.Tensor, n: int = 2, alpha: float = 1e-4
) -> str | None:
    """Message if ``n`` forward passes in the current (eval) mode disagree.

    Outputs are compared after normalising each row to unit l2 norm (as AutoAttack does), so a
    relative difference above ``alpha`` or any change of predicted class triggers the message.
    """
    with torch.no_grad():
        outs = [model(x) for _ in range(max(n, 2))]
    normed = [o / (o.reshape(o.shape[0], -1).norm(dim=1).reshape(-1, 1) + 1e-10) for o in outs]
    preds = [o.argmax(dim=1) for o in outs]
    max_diff = max(float((normed[0] - o).norm(dim=1).max()) for o in normed[1:])
    pred_changed = any(bool((preds[0] != p).any()) for p in preds[1:])
    if max_diff <= alpha and not pred_changed:
        return None
    return (
        f"the model is stochastic in eval mode (outputs of repeated forward passes differ by up "
        f"to {max_diff:.3g}); a deterministic attack suite is unreliable here -- check for "
        "dropout/random layers left active, or evaluate with expectation over transformation"
    )


def check_n_target_classes(n_classes: int, n_target_classes: int) -> str | None:
    """Message if targeted attacks request more targets than there are other classes."""
    if n_target_classes <= n_classes - 1:
        return None
    return (
        f"{n_target_classes} target classes requested but the model has only {n_classes} "
        f"classes; targeted attacks will use {max(n_classes - 1, 0)}"
    )


def check_black_box(
    fooled_by: Mapping[str, np.ndarray | torch.Tensor | int],
    n_points: int,
    *,
    black_box: Sequence[str] = ("square",),
    alpha: float = 0.002,
) -> str | None:
    """Message if black-box attacks broke more than ``alpha`` · N points the white-box ones missed.

    ``fooled_by`` maps each attack of a cascade to a boolean array (over the points of the
    evaluation) of the points *that attack* broke first, or directly to that count -- in a cascade
    every attack runs only on the points still robust, so a point appears under at most one attack.
    ``n_points`` is the number of evaluated points (clean-wrong ones included). This is
    AutoAttack's ``check_square_sr`` (robust accuracy dropping by more than 0.2 % after Square).
    """
    if n_points <= 0:
        return None
    white = [k for k in fooled_by if k not in black_box]
    black = [k for k in fooled_by if k in black_box]
    if not black or not white:
        return None
    extra = 0
    for name in black:
        value = fooled_by[name]
        if isinstance(value, (int, np.integer)):
            extra += int(value)
        else:
            extra += int(np.asarray(torch.as_tensor(value).cpu().numpy(), dtype=bool).sum())
    drop = extra / n_points
    if drop <= alpha:
        return None
    return (
        f"the black-box attack(s) {', '.join(black)} broke {extra} points ({drop:.2%} of "
        f"{n_points}) that the white-box attacks ({', '.join(white)}) missed; gradients may be "
        "masked and the evaluation unreliable -- run Square with more queries/restarts or an "
        "adaptive attack"
    )


def run_sanity_checks(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    n_target_classes: int | None = None,
    warn: bool = True,
) -> list[str]:
    """Run the model checks on a batch; warn (``EvaluationWarning``) and return the messages.

    Runs in eval mode with parameter gradients off (restored afterwards) and with the global RNG
    state saved and restored, so it does not disturb training or an evaluation's reproducibility.
    ``n_target_classes`` enables the target-count check.
    """
    messages: list[str] = []
    if x.shape[0] == 0:
        return messages
    with preserve_rng(), attack_mode(model):
        with torch.no_grad():
            outputs = model(x)
        for message in (
            check_probability_outputs(outputs),
            check_stochastic(model, x),
            check_zero_gradients(model, x, y),
            check_n_target_classes(outputs.shape[-1], n_target_classes)
            if n_target_classes is not None
            else None,
        ):
            if message:
                messages.append(message)
    if warn:
        for message in messages:
            _warn(message)
    return messages
