"""Attack suites: which attacks decide that a point is robust under one threat model.

A suite is run by :func:`unirobust.evaluation.runner.evaluate` once per threat on a chunk of
points and returns per-point robust flags (clean-correct AND every attack failed), plus which
attack broke each point.

Suites (multinorm.md §8):

* ``aa-apgd`` -- the E-AT/RAMP paper protocol: AutoAttack APGD-CE then APGD-T (targeted DLR),
  100 iterations each, as a cascade. linf/l2: APGD-CE 1 restart, APGD-T 9 targets; l1: APGD-CE
  5 restarts, APGD-T 5 targets, both with the large-ε schedule. Backend: pyautoattack
  (:mod:`unirobust.evaluation.autoattack`).
* ``aa-standard`` -- AutoAttack standard: APGD-CE, APGD-T, FAB-T (9 targets), Square (5000
  queries), as a cascade, with the same per-norm APGD settings. The runner applies the black-box
  check to its per-attack counts (Square breaking more than 0.2 % of the points that the
  white-box attacks missed -> ``EvaluationWarning``).
* ``fast`` -- a cheap monitoring suite on unirobust's own APGD (:func:`unirobust.attacks.apgd`):
  APGD-CE with 50 iterations and 1 restart, then targeted APGD-DLR with 50 iterations on the top-3
  target classes, on the points still robust. It under-estimates the attack strength of
  ``aa-apgd`` (about a tenth of the gradient evaluations) and is meant for training curves and
  smoke tests, never for reported numbers. Each call draws its random starts from a local
  ``torch.Generator`` seeded with ``seed`` (never the global RNG), so a point's start depends on
  its position in the batch; with ``batch_size=1`` the suite is per-point deterministic. Runs in
  eval mode and float32 like the AutoAttack suites.

All suites: ε = 0 gives robust == clean-correct without running any attack (the feasible set is
{x}); the model's mode, parameter ``requires_grad`` flags and the global RNG are restored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from unirobust.attacks.context import attack_mode, preserve_rng
from unirobust.errors import ConfigError
from unirobust.evaluation.autoattack import (
    _fp32_model,
    _no_autocast,
    run_autoattack_detailed,
)
from unirobust.models import batched_logits
from unirobust.threats import ThreatModel, parse_threat

__all__ = [
    "SUITES",
    "Suite",
    "SuiteOutput",
    "get_suite",
]


@dataclass
class SuiteOutput:
    """Per-point flags for one chunk: ``robust`` and, per attack, the points that attack broke.

    ``x_adv`` (optional): each point's final adversarial input (the one that broke it, else what
    the last attack returned, which for AutoAttack is the clean input; clean if no attack ran on
    it), kept by the runner for a few points so a report can show them. ``None`` when the suite
    does not return inputs or no attack ran."""

    robust: torch.Tensor
    fooled_by: dict[str, torch.Tensor] = field(default_factory=dict)
    x_adv: torch.Tensor | None = None


SuiteFn = Callable[..., SuiteOutput]


@dataclass(frozen=True)
class Suite:
    """A named attack suite.

    ``fn(model, x, y, threat, *, seed, batch_size) -> SuiteOutput`` does the work; callers use
    :meth:`run`, which handles ε = 0 and argument normalisation. Custom suites (tests, research)
    can be built directly and passed to ``evaluate``.
    """

    name: str
    description: str
    attacks: tuple[str, ...]
    fn: SuiteFn

    def run(
        self,
        model: torch.nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        threat: ThreatModel | str,
        *,
        seed: int = 0,
        batch_size: int = 500,
    ) -> SuiteOutput:
        """Robust flags (bool, on ``x.device``) for the points ``(x, y)`` under ``threat``."""
        threat = parse_threat(threat) if isinstance(threat, str) else threat
        if threat.eps == 0 or x.shape[0] == 0:
            return _clean_only(model, x, y, self.attacks, batch_size)
        out = self.fn(model, x, y, threat, seed=seed, batch_size=batch_size)
        out.robust = out.robust.to(device=x.device, dtype=torch.bool)
        return out


def _clean_only(model, x, y, attacks, batch_size) -> SuiteOutput:
    """ε = 0 (or no points): robust is clean-correct; no attack runs."""
    with preserve_rng(), attack_mode(model):
        correct = batched_logits(model, x.float(), batch_size).argmax(1) == y.to(x.device)
    return SuiteOutput(
        robust=correct.to(x.device),
        fooled_by={a: torch.zeros_like(correct, device=x.device) for a in attacks},
    )


def _aa_fn(attacks: tuple[str, ...]) -> SuiteFn:
    def run(model, x, y, threat, *, seed, batch_size) -> SuiteOutput:
        out = run_autoattack_detailed(
            model, x, y, threat, attacks=list(attacks), seed=seed, batch_size=batch_size
        )
        return SuiteOutput(robust=out.robust, fooled_by=out.fooled_by, x_adv=out.x_adv)

    return run


FAST_N_ITER = 50
FAST_TARGETS = 3


def _fast_fn(model, x, y, threat, *, seed, batch_size) -> SuiteOutput:
    from unirobust.attacks import apgd

    device = x.device
    model = _fp32_model(model)
    with preserve_rng(), attack_mode(model), _no_autocast(device):
        x = x.detach().float()
        y = y.detach().to(device)
        n_classes = 0
        robust = torch.zeros(x.shape[0], dtype=torch.bool, device=device)
        fooled_ce = torch.zeros_like(robust)
        fooled_t = torch.zeros_like(robust)
        x_final = x.clone()
        for start in range(0, x.shape[0], batch_size):
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            with torch.no_grad():
                logits = model(xb)
            n_classes = logits.shape[-1]
            alive = logits.argmax(dim=1) == yb
            # Stage 1: APGD-CE on all clean-correct points of the batch.
            idx = torch.nonzero(alive).reshape(-1)
            if idx.numel():
                gen = torch.Generator().manual_seed(int(seed))
                x_adv = apgd(
                    model, xb[idx], yb[idx], threat, n_iter=FAST_N_ITER, loss="ce", generator=gen
                )
                x_final[start + idx] = x_adv
                ok = threat.is_feasible(xb[idx], x_adv)
                broken = (batched_logits(model, x_adv, batch_size).argmax(1) != yb[idx]) & ok
                alive[idx[broken]] = False
                fooled_ce[start + idx[broken]] = True
            # Stage 2: targeted APGD-DLR on the survivors (needs >= 4 classes).
            idx = torch.nonzero(alive).reshape(-1)
            if idx.numel() and n_classes >= 4:
                gen = torch.Generator().manual_seed(int(seed))
                x_adv = apgd(
                    model,
                    xb[idx],
                    yb[idx],
                    threat,
                    n_iter=FAST_N_ITER,
                    loss="dlr",
                    targeted=True,
                    n_target_classes=min(FAST_TARGETS, n_classes - 1),
                    generator=gen,
                )
                x_final[start + idx] = x_adv
                ok = threat.is_feasible(xb[idx], x_adv)
                broken = (batched_logits(model, x_adv, batch_size).argmax(1) != yb[idx]) & ok
                alive[idx[broken]] = False
                fooled_t[start + idx[broken]] = True
            robust[start : start + xb.shape[0]] = alive
    fooled_by = {"apgd-ce": fooled_ce, "apgd-t": fooled_t}
    return SuiteOutput(robust=robust, fooled_by=fooled_by, x_adv=x_final)


SUITES: Mapping[str, Suite] = {
    "aa-standard": Suite(
        name="aa-standard",
        description=(
            "AutoAttack standard: APGD-CE, APGD-T, FAB-T (9 targets), Square (5000 queries)"
        ),
        attacks=("apgd-ce", "apgd-t", "fab-t", "square"),
        fn=_aa_fn(("apgd-ce", "apgd-t", "fab-t", "square")),
    ),
    "aa-apgd": Suite(
        name="aa-apgd",
        description=(
            "AutoAttack APGD-CE + APGD-T, 100 iterations (linf/l2: 1 restart, 9 targets; "
            "l1: 5 restarts, 5 targets, large-eps schedule) -- the E-AT/RAMP protocol"
        ),
        attacks=("apgd-ce", "apgd-t"),
        fn=_aa_fn(("apgd-ce", "apgd-t")),
    ),
    "fast": Suite(
        name="fast",
        description=(
            f"unirobust APGD-CE ({FAST_N_ITER} it) then targeted APGD-DLR ({FAST_N_ITER} it, "
            f"{FAST_TARGETS} targets); monitoring only, weaker than aa-apgd"
        ),
        attacks=("apgd-ce", "apgd-t"),
        fn=_fast_fn,
    ),
}


def get_suite(suite: str | Suite) -> Suite:
    """Return the :class:`Suite` for a name (or the suite itself); unknown -> ``ConfigError``."""
    if isinstance(suite, Suite):
        return suite
    if suite not in SUITES:
        raise ConfigError(f"unknown evaluation suite {suite!r}: choose one of {', '.join(SUITES)}")
    return SUITES[suite]
