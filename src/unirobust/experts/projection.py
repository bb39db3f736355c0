"""RAMP's gradient projection (GP) as a once-per-epoch merge rule (multinorm.md §4.3).

Two experts: expert 0 is the adversarial (RAMP) model, expert 1 the natural model trained on clean
CE over the same epoch with its own persistent optimizer (its momentum carries across epochs). Per
epoch:

* :meth:`GradientProjection.before_epoch`: theta_old <- expert 0's state; load it into expert 1
  ("nat.load_state_dict(theta_old) every epoch"), so both start the epoch from the same weights.
* the Trainer trains both for one epoch (each model only sees its own updates, so the reference's
  order, natural epoch first, gives the same weights as interleaved steps).
* :meth:`GradientProjection.after_epoch`: new = :func:`project_state` (theta_old, theta_a,
  theta_n) per state_dict key (BN running statistics included), loaded into **both** models.

The global model is expert 0. The rule keeps no checkpoint state: theta_old is re-snapshotted at
the start of every epoch, so a resume at an epoch boundary needs nothing saved (a mid-epoch resume
is not supported and raises in :meth:`GradientProjection.after_epoch`). GP is for training from
scratch only, never fine-tuning (§4.3); that is the recipe's choice, not checked here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from unirobust.errors import CheckpointError
from unirobust.experts.expert import Expert
from unirobust.experts.merge import MERGE_RULES, MergeContext, MergeRule
from unirobust.schema import Spec

__all__ = ["GPSpec", "GradientProjection", "project_state", "project_tensor"]


class GPSpec(Spec):
    """Gradient projection of RAMP (§4.3): expert 0 adversarial, expert 1 natural; once an epoch."""

    name: Literal["gp"] = "gp"
    beta: float = Field(0.5, ge=0, le=1)


def project_tensor(old: Tensor, theta_a: Tensor, theta_n: Tensor, beta: float) -> Tensor:
    """One tensor of §4.3: 0-dim or integer tensors are copied from theta_a; otherwise

        g_a = theta_a - old,  g_n = theta_n - old,  c = cos(flat g_n, flat g_a)  (0 if a norm is 0)
        new = old + (1 - beta) g_a + beta * max(c, 0) * g_n

    c * g_n as written in §4.3 (not the appendix's norm-rescaled projection). No host sync.
    """
    if theta_a.dim() == 0 or not theta_a.is_floating_point():
        return theta_a.clone()
    work = torch.promote_types(theta_a.dtype, torch.float32)
    g_a = (theta_a.to(work) - old.to(work)).reshape(-1)
    g_n = (theta_n.to(work) - old.to(work)).reshape(-1)
    denom = g_a.norm() * g_n.norm()
    c = torch.where(denom > 0, (g_a @ g_n) / torch.where(denom > 0, denom, 1.0), 0.0)
    new = old.to(work).reshape(-1) + (1.0 - beta) * g_a + beta * c.clamp_min(0.0) * g_n
    return new.reshape(theta_a.shape).to(theta_a.dtype)


def project_state(
    theta_old: Mapping[str, Tensor],
    theta_a: Mapping[str, Tensor],
    theta_n: Mapping[str, Tensor],
    beta: float = 0.5,
) -> dict[str, Tensor]:
    """:func:`project_tensor` for every key of theta_a (weights, biases, BN affine and buffers)."""
    if set(theta_old) != set(theta_a) or set(theta_n) != set(theta_a):
        raise ValueError("gp: the three state dicts must have the same keys")
    return {k: project_tensor(theta_old[k], theta_a[k], theta_n[k], beta) for k in theta_a}


def _snapshot(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


class GradientProjection(MergeRule):
    """RAMP GP: merge the adversarial and natural epochs' updates per tensor (see module doc)."""

    every_epoch = True
    n_experts = (2, 2)

    def __init__(self, beta: float = 0.5) -> None:
        self.beta = float(beta)
        self._theta_old: dict[str, Tensor] | None = None

    def setup(self, experts: list[Expert]) -> None:
        super().setup(experts)
        self._theta_old = None

    def before_epoch(self, experts: list[Expert], epoch: int) -> None:
        self._theta_old = _snapshot(experts[0].model.state_dict())
        experts[1].model.load_state_dict(self._theta_old)

    def after_epoch(self, experts: list[Expert], epoch: int) -> None:
        if self._theta_old is None:
            raise CheckpointError(
                "gp merge: no epoch-start snapshot (before_epoch was not called for this epoch; "
                "gp runs resume only at epoch boundaries)"
            )
        adv, nat = experts[0].model, experts[1].model
        theta_a, theta_n = adv.state_dict(), nat.state_dict()
        with torch.no_grad():
            new = project_state(self._theta_old, theta_a, theta_n, self.beta)
        adv.load_state_dict(new)
        nat.load_state_dict(new)
        self._theta_old = None


@MERGE_RULES.register("gp", GPSpec)
def build_gp(spec: GPSpec, ctx: MergeContext) -> GradientProjection:
    """RAMP gradient projection: adversarial expert 0 + natural expert 1, merged every epoch."""
    return GradientProjection(beta=spec.beta)
