"""Adapter to the ``pyautoattack`` package (AutoAttack, Croce & Hein 2020), multinorm.md §8.

:func:`run_autoattack` evaluates one threat model with a list of AutoAttack attacks run as a
cascade (each attack only on the points every earlier attack failed on) and returns per-sample
robust flags.

Protocol (``version='custom'``, configured to mirror what pyautoattack 0.2.0's
``_set_version('standard')`` sets):

* ``apgd-ce``: 100 iterations; linf/l2: 1 restart; l1: ``l1_restarts`` (5) restarts and the
  large-eps schedule (``use_largereps``: 3ε, 2ε, ε over 30/30/40 % of the iterations).
* ``apgd-t``: targeted DLR, 100 iterations, 1 restart per target; linf/l2: ``n_target_classes``
  (9) targets, l1: ``l1_target_classes`` (5) targets and ``use_largereps``. Targets are the clean
  top-2.. classes. The target count is clamped to ``n_classes - 1`` (pyautoattack would index out of
  range); with fewer than 4 classes the targeted DLR loss is undefined and ``apgd-t`` is skipped
  with an :class:`~unirobust.evaluation.checks.EvaluationWarning`.
* ``fab-t``: 1 restart, ``n_target_classes`` (9, clamped) targets, 100 iterations.
* ``square``: 5000 queries, 1 restart, p_init 0.8.

Implementation notes:

* The cascade is driven here: for each attack we set ``attacks_to_run = [attack]`` and call
  ``run_standard_evaluation`` on the points still robust. pyautoattack would run exactly the same
  batches in its own multi-attack loop (points still robust, in order, ``batch_size`` at a time, the
  same seed for every call), so the semantics are unchanged, and we learn which attack broke which
  point (needed for the black-box check).
* Robust flags are computed by us: every returned point is re-predicted and checked for
  feasibility (ball ∩ box with the float tolerance of :meth:`ThreatModel.is_feasible`). An
  infeasible return (pyautoattack's l1 projection is not exact, multinorm.md §1) is projected with
  our exact projection and re-predicted; it counts as a success only if the projected point is
  still misclassified. An ``EvaluationWarning`` reports how many points needed this.
* Everything runs inside ``preserve_rng()`` (AutoAttack reseeds the global torch CPU/CUDA RNGs) and
  ``attack_mode(model)`` (eval mode, parameter gradients off, both restored), with autocast disabled
  and inputs in float32. A model with non-float32 floating parameters is evaluated through a float32
  copy (the caller's model is untouched).
* ε = 0: the feasible set is {x}, so robust = clean-correct and pyautoattack is not called.
  (pyautoattack 0.2.0 accepts ε = 0 and returns x for every attack and norm, but it would spend the
  whole attack budget on an empty ball.)
* pyautoattack's ``check_dynamic`` calls ``sys.settrace(None)`` in every
  ``run_standard_evaluation``, which switches off an active Python tracer (debugger, coverage).
* Batch-composition dependence: pyautoattack draws its random starts for a whole batch from the
  global RNG reseeded with ``seed`` at every ``perturb`` call, so the start of a point depends on
  its position in the batch and on which other points share the batch. Results are reproducible
  for the same inputs and batch size, but a point's outcome can differ when the set of points
  attacked together changes (as it does in union-only mode). With ``batch_size=1`` every point gets
  a start that depends only on the seed.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from unirobust.attacks.context import attack_mode, preserve_rng
from unirobust.errors import ConfigError
from unirobust.evaluation.checks import EvaluationWarning
from unirobust.models import batched_logits, model_device
from unirobust.threats import ThreatModel, parse_threat, to_pyautoattack_norm

__all__ = [
    "AA_ATTACKS",
    "AutoAttackOutput",
    "configure_autoattack",
    "run_autoattack",
    "run_autoattack_detailed",
]

#: Attack names accepted by pyautoattack 0.2.0 (``AutoAttack.run_standard_evaluation``).
AA_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")


@dataclass
class AutoAttackOutput:
    """Result of one cascade: ``robust`` flags plus, per attack, the points it broke first.

    ``x_adv`` holds each point's final adversarial input: the (feasible) point returned by the
    attack that broke it, or by the last attack that ran on it (pyautoattack returns the clean
    input for a point it fails on); a point no attack ran on (clean misclassified, ε = 0) keeps
    its clean input."""

    robust: torch.Tensor
    clean_correct: torch.Tensor
    fooled_by: dict[str, torch.Tensor] = field(default_factory=dict)
    n_projected: int = 0
    x_adv: torch.Tensor | None = None


def _as_threat(threat: ThreatModel | str) -> ThreatModel:
    return parse_threat(threat) if isinstance(threat, str) else threat


def _fp32_model(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` itself if all its floating tensors are float32, else a float32 deep copy."""
    tensors = [*model.parameters(), *model.buffers()]
    if all(t.dtype == torch.float32 for t in tensors if t.is_floating_point()):
        return model
    return copy.deepcopy(model).float()


def _no_autocast(device: torch.device):
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:  # pragma: no cover - device type without autocast support
        return nullcontext()


def configure_autoattack(
    model: torch.nn.Module,
    threat: ThreatModel,
    attacks: Sequence[str],
    *,
    seed: int,
    device: torch.device | str,
    n_classes: int,
    n_target_classes: int = 9,
    l1_restarts: int = 5,
    l1_target_classes: int = 5,
):
    """Build a pyautoattack ``AutoAttack`` (``version='custom'``) set up as in the module doc."""
    from pyautoattack import AutoAttack

    norm = to_pyautoattack_norm(threat)
    adversary = AutoAttack(
        model,
        attacks=list(attacks),
        device=device,
        eps=float(threat.eps),
        norm=norm,
        seed=int(seed),
        version="custom",
    )
    max_targets = max(n_classes - 1, 1)
    wanted = l1_target_classes if norm == "L1" else n_target_classes
    if wanted > max_targets:
        warnings.warn(
            f"{n_classes} classes allow {max_targets} target classes, not {wanted}: APGD-T and "
            "FAB-T run with fewer targets than the protocol (a weaker evaluation)",
            EvaluationWarning,
            stacklevel=3,
        )
    if norm == "L1":
        adversary.apgd.n_restarts = int(l1_restarts)
        adversary.apgd.use_largereps = True
        adversary.apgd_targeted.use_largereps = True
        adversary.apgd_targeted.n_target_classes = min(int(l1_target_classes), max_targets)
    else:
        adversary.apgd.n_restarts = 1
        adversary.apgd_targeted.n_target_classes = min(int(n_target_classes), max_targets)
    adversary.apgd_targeted.n_restarts = 1
    adversary.fab.n_restarts = 1
    adversary.fab.n_target_classes = min(int(n_target_classes), max_targets)
    adversary.square.n_queries = 5000
    return adversary


def run_autoattack_detailed(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel | str,
    *,
    attacks: Sequence[str],
    seed: int = 0,
    batch_size: int = 500,
    n_target_classes: int = 9,
    l1_restarts: int = 5,
    l1_target_classes: int = 5,
) -> AutoAttackOutput:
    """Like :func:`run_autoattack`, also returning which attack broke each point."""
    threat = _as_threat(threat)
    attacks = list(attacks)
    unknown = [a for a in attacks if a not in AA_ATTACKS]
    if unknown or not attacks:
        raise ConfigError(
            f"unknown AutoAttack attack(s) {unknown or attacks}: "
            f"choose from {', '.join(AA_ATTACKS)}"
        )
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{x.shape[0]} inputs but {y.shape[0]} labels")

    out_device = x.device
    device = model_device(model)
    eval_model = _fp32_model(model)
    x_dev = x.detach().to(device=device, dtype=torch.float32)
    y_dev = y.detach().to(device=device, dtype=torch.long)

    with preserve_rng(), attack_mode(eval_model), _no_autocast(device):
        with torch.no_grad():
            n_classes = int(eval_model(x_dev[:1]).shape[-1]) if x_dev.shape[0] else 0
        clean_correct = batched_logits(eval_model, x_dev, batch_size).argmax(1) == y_dev
        robust = clean_correct.clone()
        fooled_by = {a: torch.zeros_like(robust) for a in attacks}
        n_projected = 0
        x_final = x_dev.clone()
        if threat.eps == 0 or not bool(robust.any()):
            return _finish(robust, clean_correct, fooled_by, 0, out_device, x_final)

        to_run = list(attacks)
        for name, loss, needed in (
            ("apgd-t", "the targeted DLR loss", 4),
            ("apgd-dlr", "the DLR loss", 3),
        ):
            if n_classes < needed and name in to_run:
                warnings.warn(
                    f"{name} skipped: {loss} needs at least {needed} classes, the model has "
                    f"{n_classes}",
                    EvaluationWarning,
                    stacklevel=2,
                )
                to_run.remove(name)
        if not to_run:
            return _finish(robust, clean_correct, fooled_by, 0, out_device, x_final)

        adversary = configure_autoattack(
            eval_model,
            threat,
            to_run,
            seed=seed,
            device=device,
            n_classes=n_classes,
            n_target_classes=n_target_classes,
            l1_restarts=l1_restarts,
            l1_target_classes=l1_target_classes,
        )
        for attack in to_run:
            idx = torch.nonzero(robust, as_tuple=False).reshape(-1)
            if idx.numel() == 0:
                break
            x_cur, y_cur = x_dev[idx], y_dev[idx]
            adversary.attacks_to_run = [attack]
            x_adv, _ = adversary.run_standard_evaluation(x_cur, y_cur, batch_size=batch_size)
            x_adv = x_adv.detach().to(device=device, dtype=torch.float32)
            feasible = threat.is_feasible(x_cur, x_adv)
            if not bool(feasible.all()):
                bad = ~feasible
                x_adv[bad] = threat.project(x_cur[bad], x_adv[bad])
                n_projected += int(bad.sum())
            x_final[idx] = x_adv
            # Only feasible misclassified points count (our projection is feasible by design).
            pred = batched_logits(eval_model, x_adv, batch_size).argmax(1)
            fooled = (pred != y_cur) & threat.is_feasible(x_cur, x_adv)
            broken = idx[fooled]
            robust[broken] = False
            fooled_by[attack][broken] = True
        if n_projected:
            warnings.warn(
                f"pyautoattack returned {n_projected} point(s) outside the {threat} ball ∩ box; "
                "they were projected exactly and re-checked",
                EvaluationWarning,
                stacklevel=2,
            )
    return _finish(robust, clean_correct, fooled_by, n_projected, out_device, x_final)


def _finish(robust, clean_correct, fooled_by, n_projected, device, x_adv) -> AutoAttackOutput:
    return AutoAttackOutput(
        robust=robust.to(device),
        clean_correct=clean_correct.to(device),
        fooled_by={k: v.to(device) for k, v in fooled_by.items()},
        n_projected=n_projected,
        x_adv=x_adv.to(device),
    )


def run_autoattack(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel | str,
    *,
    attacks: Sequence[str],
    **options: int,
) -> torch.Tensor:
    """Per-sample robustness of ``model`` on ``(x, y)`` under ``threat`` with AutoAttack.

    Args:
        model: classifier returning logits for inputs in [0,1] (normalisation inside the model).
        x, y: inputs (N, ...) in [0,1] and int labels (N,).
        threat: a :class:`~unirobust.threats.ThreatModel` or a spec such as ``"linf:8/255"``.
        attacks: pyautoattack attack names run as a cascade, e.g. ``["apgd-ce", "apgd-t"]``
            (aa-apgd) or ``["apgd-ce", "apgd-t", "fab-t", "square"]`` (aa-standard).
        options: keyword arguments of :func:`run_autoattack_detailed`:
            ``seed`` -- AutoAttack seed (default 0; always explicit, pyautoattack would otherwise
            use the clock); ``batch_size`` -- attack batch size (500); ``n_target_classes`` --
            targets of apgd-t (linf/l2) and fab-t (9); ``l1_restarts`` -- apgd-ce restarts for
            l1 (5); ``l1_target_classes`` -- apgd-t targets for l1 (5).

    Returns:
        Bool tensor (N,) on ``x.device``: True iff the point is classified correctly clean and
        every attack failed on it. See the module docstring for the exact protocol.
    """
    return run_autoattack_detailed(model, x, y, threat, attacks=attacks, **options).robust
