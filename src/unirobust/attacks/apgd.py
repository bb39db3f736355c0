"""Auto-PGD: the training variant of E-AT/RAMP (multinorm.md §2) and an evaluation variant with
AutoAttack semantics (Croce & Hein 2020; multinorm.md §8), sharing one iteration core.

Both never touch the global RNG or parameter ``.grad`` and run the model in eval mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn

from unirobust.attacks.context import attack_mode, loss_and_grad, resolve_generator
from unirobust.attacks.pgd import (
    LossFn,
    ce_loss,
    check_count,
    check_threat,
    dlr_loss,
    dlr_targeted_loss,
)
from unirobust.errors import ConfigError
from unirobust.threats import ThreatModel

__all__ = ["ApgdTrainResult", "apgd", "apgd_checkpoints", "apgd_train"]

_MOMENTUM = 0.75  # weight a of the new point in x_{k+1} = P(x_k + a(z - x_k) + (1-a)(x_k - x_prev))
_OSC_THRESHOLD = 0.75  # flag if increases over the window <= 0.75 k


@dataclass
class ApgdTrainResult:
    """Output of :func:`apgd_train`.

    x_best: per-sample highest-CE iterate (may be x itself); loss_best: its eval-mode CE;
    robust: prediction correct at every iterate; x_last_adv: latest misclassified iterate (x if
    none).
    """

    x_best: Tensor
    loss_best: Tensor
    robust: Tensor
    x_last_adv: Tensor


def _window_params(n_iter: int) -> tuple[int, int, int]:
    first = max(int(0.22 * n_iter), 1)
    decrease = max(int(0.03 * n_iter), 1)
    minimum = max(int(0.06 * n_iter), 1)
    return first, decrease, minimum


def checkpoint_windows(n_iter: int) -> dict[int, int]:
    """{0-based iteration: window length k} of the linf/l2 checkpoints (multinorm.md §2).

    The attack loop reads this table, so the tested schedule is the one that runs.
    """
    k, decrease, minimum = _window_params(n_iter)
    out: dict[int, int] = {}
    since = 0
    for i in range(n_iter):
        since += 1
        if since == k:
            out[i] = k
            since = 0
            k = max(k - decrease, minimum)
    return out


def apgd_checkpoints(n_iter: int) -> list[int]:
    """0-based iterations after which a linf/l2 step-size checkpoint fires (multinorm.md §2).

    N = 10 gives 1..9; N = 100 gives [21, 40, 56, 69, 79, 86, 92, 98].
    """
    return sorted(checkpoint_windows(n_iter))


def _l0(delta: Tensor) -> Tensor:
    return (delta != 0).reshape(delta.shape[0], -1).sum(dim=1).to(torch.float32)


def _apgd_core(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    n_iter: int,
    loss_fn: LossFn,
    x_init: Tensor,
    *,
    rho: Tensor | None = None,
    sp_old: Tensor | None = None,
) -> ApgdTrainResult:
    """One APGD run from ``x_init`` (already feasible). The model must be in eval mode.

    For l1, ``rho`` is the initial fraction of kept coordinates and ``sp_old`` the initial
    reference sparsity (both per sample).
    """
    b = x.shape[0]
    d = x[0].numel()
    shape = (-1, *([1] * (x.dim() - 1)))
    eps = threat.eps
    is_l1 = threat.norm == "l1"

    x_adv = x_init.clamp(0.0, 1.0)
    x_best = x_adv.clone()
    x_last_adv = x_adv.clone()
    logits, loss_cur, grad = loss_and_grad(model, x_adv, y, loss_fn)
    loss_steps = torch.zeros(n_iter, b, device=x.device, dtype=loss_cur.dtype)
    assert grad is not None
    grad_best = grad.clone()
    robust = logits.argmax(dim=1) == y
    loss_best = loss_cur.clone()

    alpha = 1.0 if is_l1 else 2.0
    eta = torch.full((b,), alpha * eps, device=x.device, dtype=x.dtype)
    if is_l1:
        k = max(int(0.04 * n_iter), 1)
        rho_t = (
            rho.to(device=x.device, dtype=torch.float32)
            if rho is not None
            else torch.full((b,), 0.2, device=x.device)
        )
        sp_prev = (
            sp_old.to(device=x.device, dtype=torch.float32)
            if sp_old is not None
            else torch.full((b,), float(d), device=x.device)
        )
    else:
        windows = checkpoint_windows(n_iter)
        loss_best_last_check = loss_best.clone()
        reduced_last_check = torch.ones(b, dtype=torch.bool, device=x.device)

    since_check = 0
    x_prev = x_adv.clone()
    for i in range(n_iter):
        with torch.no_grad():
            momentum = x_adv - x_prev
            x_prev = x_adv
            if is_l1:
                step = threat.ascent_step(grad, eta, sparsity=rho_t)
                x_adv = threat.project(x, x_adv + step)
            else:
                a = _MOMENTUM if i > 0 else 1.0
                z = threat.project(x, x_adv + threat.ascent_step(grad, eta))
                x_adv = threat.project(x, x_adv + a * (z - x_adv) + (1.0 - a) * momentum)

        need_grad = i < n_iter - 1  # no gradient on the last iteration
        logits, loss_cur, new_grad = loss_and_grad(model, x_adv, y, loss_fn, need_grad)
        if new_grad is not None:
            grad = new_grad

        with torch.no_grad():
            pred_ok = logits.argmax(dim=1) == y
            robust = robust & pred_ok
            x_last_adv = torch.where((~pred_ok).reshape(shape), x_adv, x_last_adv)
            loss_steps[i] = loss_cur
            improved = loss_cur > loss_best
            x_best = torch.where(improved.reshape(shape), x_adv, x_best)
            grad_best = torch.where(improved.reshape(shape), grad, grad_best)
            loss_best = torch.where(improved, loss_cur, loss_best)

            if is_l1:
                since_check += 1
                if since_check != k:
                    continue
                since_check = 0
            elif i not in windows:
                continue
            if not is_l1:
                k = windows[i]
                # (a) too few increases in the window. For the first window the predecessor of
                # loss_steps[0] is loss_steps[-1], an unfilled slot holding 0 (reference parity).
                increases = torch.zeros(b, device=x.device)
                for c in range(k):
                    increases += (loss_steps[i - c] > loss_steps[i - c - 1]).float()
                flagged = increases <= k * _OSC_THRESHOLD
                # (b) not reduced last time and no improvement of the best loss since then.
                flagged |= ~reduced_last_check & (loss_best_last_check >= loss_best)
                reduced_last_check = flagged
                loss_best_last_check = loss_best.clone()
                eta = torch.where(flagged, eta / 2.0, eta)
                x_adv = torch.where(flagged.reshape(shape), x_best, x_adv)
                grad = torch.where(flagged.reshape(shape), grad_best, grad)
            else:
                sp = _l0(x_best - x)
                reset = (sp / sp_prev) < 0.95
                rho_t = sp / d / 1.5
                eta = torch.where(reset, torch.full_like(eta, eps), eta / 1.5)
                eta = eta.clamp(eps / 10.0, eps)
                sp_prev = sp
                x_adv = torch.where(reset.reshape(shape), x_best, x_adv)
                grad = torch.where(reset.reshape(shape), grad_best, grad)

    return ApgdTrainResult(x_best.detach(), loss_best.detach(), robust, x_last_adv.detach())


def apgd_train(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    n_iter: int = 10,
    is_train: bool = True,
) -> ApgdTrainResult:
    """APGD-train exactly as E-AT/RAMP ``apgd_train`` (multinorm.md §2).

    No random start (x_0 = x, so x_best may be x), per-example CE, momentum 0.75, initial step 2 eps
    (linf/l2) or eps (l1), l1 sparsity 0.05 in training and 0.2 in evaluation (``is_train``).
    Runs under :func:`attack_mode`; the gradient is never computed on the last iteration.
    """
    threat = check_threat(threat)
    n_iter = check_count("n_iter", n_iter, 1)
    x = x.detach()
    rho = torch.full((x.shape[0],), 0.05 if is_train else 0.2, device=x.device)
    with attack_mode(model):
        result = _apgd_core(model, x, y, threat, n_iter, ce_loss, x.clone(), rho=rho)
    threat.assert_feasible(x, result.x_best)
    threat.assert_feasible(x, result.x_last_adv)
    return result


def _largereps_schedule(eps: float, n_iter: int) -> tuple[list[float], list[int]]:
    epss = [3.0 * eps, 2.0 * eps, eps]
    iters = [math.ceil(0.3 * n_iter), math.ceil(0.3 * n_iter)]
    iters.append(n_iter - sum(iters))
    return epss, iters


def _single_eval_run(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    n_iter: int,
    loss_fn: LossFn,
    gen: torch.Generator,
    use_largereps: bool,
) -> ApgdTrainResult:
    d = x[0].numel()
    epss, iters = _largereps_schedule(threat.eps, n_iter)
    if not use_largereps or min(iters) <= 0:  # too few iterations for three stages
        x_init = threat.random_start(x, gen)
        return _apgd_core(model, x, y, threat, n_iter, loss_fn, x_init)
    # l1 large-eps schedule: 3eps, 2eps, eps over 30/30/40% of the iterations, each stage
    # starting from the previous stage's best point (AutoAttack ``decr_eps_pgd``).
    x_init = threat.with_eps(epss[0]).random_start(x, gen)
    result = None
    for eps_stage, n_stage in zip(epss, iters, strict=True):
        stage = threat.with_eps(eps_stage)
        x_init = stage.project(x, x_init)
        sp = _l0(x_init - x)
        result = _apgd_core(
            model, x, y, stage, n_stage, loss_fn, x_init, rho=sp / d / 1.5, sp_old=sp
        )
        x_init = result.x_best
    assert result is not None
    return result


def apgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    *,
    n_iter: int = 100,
    loss: str | None = None,
    targeted: bool = False,
    n_target_classes: int = 9,
    restarts: int = 1,
    generator: torch.Generator | None = None,
    use_largereps: bool | None = None,
) -> Tensor:
    """Evaluation APGD with AutoAttack semantics (APGD-CE, APGD-DLR, APGD-T).

    Random start (linf/l2/l1), ``loss`` ``'ce'`` or ``'dlr'`` (default: ``'ce'``, or the targeted
    DLR loss when ``targeted``), targets = clean top-2..(n_target_classes+1) classes, l1 sparsity
    0.2 and, for l1 by default, the large-eps 3eps/2eps/eps schedule. Only points still robust are
    attacked; a point keeps the first adversarial example found (within a run: the latest
    misclassified iterate). Points never fooled get their best-loss iterate of the last run that
    attacked them; clean-misclassified points are returned unchanged.
    """
    threat = check_threat(threat)
    n_iter = check_count("n_iter", n_iter, 1)
    restarts = check_count("restarts", restarts, 1)
    if loss is None:
        loss = "dlr" if targeted else "ce"
    if loss not in ("ce", "dlr"):
        raise ConfigError(f"unknown APGD loss {loss!r}: allowed are 'ce' and 'dlr'")
    if targeted and loss != "dlr":
        raise ConfigError(f"targeted APGD uses loss 'dlr', got {loss!r}")
    if targeted:
        n_target_classes = check_count("n_target_classes", n_target_classes, 1)
    if use_largereps is None:
        use_largereps = threat.norm == "l1"
    if use_largereps and threat.norm != "l1":
        raise ConfigError(f"use_largereps=True is only defined for l1 threats, got {threat.norm!r}")
    gen = resolve_generator(generator)
    x = x.detach()
    shape = (-1, *([1] * (x.dim() - 1)))

    with attack_mode(model), torch.no_grad():
        clean_logits = model(x)
    n_classes = clean_logits.shape[1]
    robust = clean_logits.argmax(dim=1) == y
    min_classes = 4 if targeted else (3 if loss == "dlr" else 2)
    if n_classes < min_classes:
        raise ConfigError(
            f"APGD with {'targeted ' if targeted else ''}{loss} loss needs at least "
            f"{min_classes} classes, the model has {n_classes}"
        )
    if targeted and n_target_classes > n_classes - 1:
        raise ConfigError(
            f"n_target_classes={n_target_classes} is invalid: the model has {n_classes} classes, "
            f"so at most {n_classes - 1} targets exist"
        )

    adv = x.clone()
    with attack_mode(model):
        ranks: list[int | None] = list(range(2, n_target_classes + 2)) if targeted else [None]
        for rank in ranks:
            for _ in range(restarts):
                idx = robust.nonzero().flatten()
                if idx.numel() == 0:
                    break
                xs, ys = x[idx], y[idx]
                if rank is None:
                    loss_fn: LossFn = ce_loss if loss == "ce" else dlr_loss
                else:
                    with torch.no_grad():
                        target = model(xs).sort(dim=1).indices[:, -rank]
                    loss_fn = partial(_targeted, y_target=target)
                run = _single_eval_run(model, xs, ys, threat, n_iter, loss_fn, gen, use_largereps)
                fooled = ~run.robust
                adv[idx] = torch.where(fooled.reshape(shape), run.x_last_adv, run.x_best)
                robust[idx[fooled]] = False
    adv = adv.detach()
    threat.assert_feasible(x, adv)
    return adv


def _targeted(logits: Tensor, y: Tensor, *, y_target: Tensor) -> Tensor:
    return dlr_targeted_loss(logits, y, y_target)
