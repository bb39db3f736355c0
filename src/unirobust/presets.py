"""Presets: compact recipe blocks that expand into ordinary experts and merge specs.

``generalist`` (generalist.md §3.3): ``nat_linf`` is the CVPR method (a PGD-AT or TRADES l_inf
expert and a natural expert), ``linf_l2`` the project's own pairing. The robust (l_inf) expert
comes first: it is the anchor whose integer buffers G copies. Every expert gets the same lr
schedule (pitfall 6). Attack steps default to eps/4 (§3.7: 2/255 at 8/255, and the l_2 expert's
eps/4 of §3.3); ``official_eps`` uses 0.031 and 0.007. Mix weights (beta for the anchor,
1 - beta for the other) go into the ``ema_mix`` rule's own ``weights``.
"""

from __future__ import annotations

from typing import Any

from unirobust.attacks.pgd import quarter_step
from unirobust.config import ExpertConfig, GeneralistConfig, OptimizerConfig, StageConfig
from unirobust.objectives.pgd_at import PgdATSpec
from unirobust.objectives.trades import TradesSpec
from unirobust.schema import Spec
from unirobust.threats import LinfBall, ThreatModel


def _robust(g: GeneralistConfig, threat: ThreatModel, step: float | None, kind: str) -> Spec:
    step = step if step is not None else quarter_step(threat)
    if kind == "trades":
        return TradesSpec(threat=threat, steps=g.attack_steps, step_size=step, beta=g.trades_beta)
    return PgdATSpec(
        threat=threat, attack="pgd", steps=g.attack_steps, step_size=step, random_start=True
    )


def generalist_experts(g: GeneralistConfig) -> tuple[list[ExpertConfig], dict[str, Any]]:
    """The two experts of a preset and their mix-weight schedules by expert name."""
    from unirobust.objectives.natural import NaturalSpec

    lr = {"kind": "generalist", "values": list(g.lr_values), "granularity": g.schedule_granularity}
    beta = {
        "kind": "generalist",
        "values": list(g.beta_values),
        "granularity": g.schedule_granularity,
    }
    one_minus = {**beta, "values": [1.0 - b for b in g.beta_values]}
    linf, linf_step = (LinfBall(0.031), 0.007) if g.official_eps else (g.linf, g.linf_step_size)

    def sgd(weight_decay: float) -> OptimizerConfig:
        return OptimizerConfig(name="sgd", momentum=g.momentum, weight_decay=weight_decay)

    first = ExpertConfig(
        name="linf" if g.preset == "linf_l2" else "robust",
        objective=_robust(g, linf, linf_step, g.robust_objective),
        optimizer=sgd(g.robust_weight_decay),
        lr_schedule=lr,
    )
    if g.preset == "nat_linf":
        second = ExpertConfig(
            name="natural",
            objective=NaturalSpec(),
            optimizer=sgd(g.natural_weight_decay),
            lr_schedule=lr,
        )
    else:
        second = ExpertConfig(
            name="l2",
            objective=_robust(g, g.l2, g.l2_step_size, "pgd_at"),
            optimizer=sgd(g.robust_weight_decay),
            lr_schedule=lr,
        )
    return [first, second], {first.name: beta, second.name: one_minus}


def expand_generalist(stage: StageConfig) -> StageConfig:
    """A stage with its ``generalist`` block replaced by experts (and ema_mix weights)."""
    if stage.generalist is None:
        return stage
    experts, weights = generalist_experts(stage.generalist)
    merge = stage.merge
    if merge.name == "ema_mix" and not getattr(merge, "weights", None):
        merge = merge.model_copy(update={"weights": weights})
    return stage.model_copy(update={"experts": experts, "generalist": None, "merge": merge})
