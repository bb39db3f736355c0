"""Build a run's parts from a validated recipe: model, experts, merge rule (DESIGN.md data flow).

The checks in :func:`check_config` run at load time, before any data is read, so a recipe with a
bad schedule, unknown model or mix weights that do not sum to one fails in a second with a
one-line message.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from unirobust.config import ExpertConfig, ObjectiveConfig, OptimizerConfig, RunConfig
from unirobust.errors import ConfigError
from unirobust.experts.expert import Expert, Schedule
from unirobust.experts.merge import MergeRule, NoMerge
from unirobust.seeding import derive_seed


def expand_experts(config: RunConfig) -> list[ExpertConfig]:
    """The run's experts; a ``train.generalist`` block expands to generalist.md §3.3 presets.

    The robust (l_inf) expert comes first: it is the anchor whose integer buffers G copies. Every
    expert gets the same lr schedule (pitfall 6). Attack steps default to eps/4 (§3.7: 2/255 at
    8/255, and the l_2 expert's eps/4 of §3.3); ``official_eps`` uses 0.031 and 0.007. Mix
    weights are beta for the anchor and 1 - beta for the other expert.
    """
    from unirobust.threats import parse_threat

    train = config.train
    if train.generalist is None:
        return list(train.experts)
    g = train.generalist
    lr = {"kind": "generalist", "values": list(g.lr_values), "granularity": g.schedule_granularity}
    beta = {
        "kind": "generalist",
        "values": list(g.beta_values),
        "granularity": g.schedule_granularity,
    }
    one_minus = {**beta, "values": [1.0 - b for b in g.beta_values]}
    linf, linf_step = ("linf:0.031", 0.007) if g.official_eps else (g.linf, g.linf_step_size)

    def sgd(weight_decay: float) -> OptimizerConfig:
        return OptimizerConfig(name="sgd", momentum=g.momentum, weight_decay=weight_decay)

    def robust(threat: str, step: float | None, objective: str) -> ObjectiveConfig:
        step = step if step is not None else parse_threat(threat).eps / 4
        if objective == "trades":
            return ObjectiveConfig(
                name="trades",
                threat=threat,
                steps=g.attack_steps,
                step_size=step,
                beta=g.trades_beta,
            )
        return ObjectiveConfig(
            name="pgd_at",
            threat=threat,
            attack="pgd",
            steps=g.attack_steps,
            step_size=step,
            random_start=True,
        )

    first = ExpertConfig(
        name="linf" if g.preset == "linf_l2" else "robust",
        objective=robust(linf, linf_step, g.robust_objective),
        optimizer=sgd(g.robust_weight_decay),
        lr_schedule=lr,
        mix_weight=beta,
    )
    if g.preset == "nat_linf":
        second = ExpertConfig(
            name="natural",
            objective=ObjectiveConfig(name="natural"),
            optimizer=sgd(g.natural_weight_decay),
            lr_schedule=lr,
            mix_weight=one_minus,
        )
    else:
        second = ExpertConfig(
            name="l2",
            objective=robust(g.l2, g.l2_step_size, "pgd_at"),
            optimizer=sgd(g.robust_weight_decay),
            lr_schedule=lr,
            mix_weight=one_minus,
        )
    return [first, second]


def build_schedule(spec: dict[str, Any], epochs: int, where: str) -> Schedule:
    from unirobust.experts.schedules import build_schedule as build_from_spec

    full = dict(spec)
    kind = str(full.get("kind", "")).replace("-", "_")
    if kind in {"generalist", "piecewise_ft", "superconverge"} or "knot_fractions" in full:
        full.setdefault("epochs", epochs)
    try:
        return build_from_spec(full)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def check_config(config: RunConfig, source: str) -> None:
    """Semantic checks that need more than one field (called by ``validate_recipe``)."""
    from unirobust.data import list_datasets
    from unirobust.models import list_models

    if config.data.name not in list_datasets():
        raise ConfigError(
            f"{source}: unknown dataset '{config.data.name}' (available: "
            f"{', '.join(list_datasets())})"
        )
    if config.model.name not in list_models():
        raise ConfigError(
            f"{source}: unknown model '{config.model.name}' (available: {', '.join(list_models())})"
        )
    experts = expand_experts(config)
    epochs = config.train.epochs
    for i, expert in enumerate(experts):
        build_schedule(expert.lr_schedule, epochs, f"{source}: train.experts.{i}.lr_schedule")
    merge = config.train.merge
    if merge.name == "none" and len(experts) != 1:
        raise ConfigError(
            f"{source}: {len(experts)} experts need a merge rule; set train.merge.name: ema_mix"
        )
    if merge.name == "ema_mix":
        from unirobust.experts.ema_mix import check_mix_weights

        missing = [e.name for e in experts if e.mix_weight is None]
        if missing:
            raise ConfigError(f"{source}: experts {missing} need a mix_weight for ema_mix")
        weights = [
            build_schedule(e.mix_weight or {}, epochs, f"{source}: expert {e.name} mix_weight")
            for e in experts
        ]
        try:
            check_mix_weights(weights, epochs)
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None


def build_objective(spec: ObjectiveConfig, generator: torch.Generator):
    """Objective registry: ``natural``, ``pgd_at``, ``trades`` (issues 2 and 3)."""
    from unirobust.objectives.adversarial import PgdAT, Trades
    from unirobust.objectives.base import NaturalObjective
    from unirobust.threats import parse_threat

    if spec.name == "natural":
        return NaturalObjective(generator=generator)
    threat = parse_threat(spec.threat or "")
    if spec.name == "pgd_at":
        return PgdAT(
            threat,
            attack=spec.attack,
            steps=spec.steps,
            step_size=spec.step_size,
            random_start=spec.random_start,
            generator=generator,
        )
    return Trades(
        threat, beta=spec.beta, steps=spec.steps, step_size=spec.step_size, generator=generator
    )


def build_optimizer(
    model: nn.Module, spec: OptimizerConfig
) -> tuple[torch.optim.Optimizer, list[bool]]:
    """Parameter groups: decayed, then (if ``no_decay``) names matching a substring at wd 0.

    Returns the optimizer and which groups follow the lr schedule (all, unless
    ``compat_official_lr`` pins the no-decay group at lr 1.0: multinorm.md §7).
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if any(s in name for s in spec.no_decay) else decay).append(param)
    groups: list[dict[str, Any]] = [{"params": decay, "weight_decay": spec.weight_decay}]
    follows = [True]
    if spec.no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
        follows.append(not spec.compat_official_lr)
        if spec.compat_official_lr:
            groups[1]["lr"] = 1.0
    if spec.name == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            groups, lr=0.1, momentum=spec.momentum, nesterov=spec.nesterov
        )
    elif spec.name == "adam":
        opt = torch.optim.Adam(groups, lr=1e-3)
    else:
        opt = torch.optim.AdamW(groups, lr=1e-3)
    return opt, follows


@dataclass
class Built:
    """A run's live objects."""

    experts: list[Expert]
    merge: MergeRule
    generators: dict[str, torch.Generator]
    expert_indices: list[int]


def build_model_for(
    config: RunConfig, num_classes: int, input_shape: tuple[int, int, int]
) -> nn.Module:
    from unirobust.models import build_model

    return build_model(
        config.model.name, num_classes=num_classes, input_shape=input_shape, **config.model.options
    )


def build_experts(
    config: RunConfig,
    initial_model: nn.Module,
    device: torch.device,
    local_experts: list[int],
    grad_sync: Any = None,
    mix_all_reduce: Any = None,
) -> Built:
    """Experts as deep copies of one initial model (generalist.md pitfall 8), and the merge."""
    specs = expand_experts(config)
    epochs = config.train.epochs
    experts, generators = [], {}
    for k in local_experts:
        spec = specs[k]
        model = copy.deepcopy(initial_model).to(device)
        if config.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        generator = torch.Generator(device="cpu").manual_seed(derive_seed(config.seed, 1, k))
        generators[spec.name] = generator
        optimizer, follows = build_optimizer(model, spec.optimizer)
        experts.append(
            Expert(
                name=spec.name,
                model=model,
                objective=build_objective(spec.objective, generator),
                optimizer=optimizer,
                lr_schedule=build_schedule(spec.lr_schedule, epochs, spec.name),
                mix_weight=(
                    build_schedule(spec.mix_weight, epochs, spec.name) if spec.mix_weight else None
                ),
                grad_clip=config.train.grad_clip,
                autocast_bf16=config.train.bf16_autocast,
                group_follows_schedule=follows,
                grad_sync=grad_sync,
            )
        )
    merge_cfg = config.train.merge
    merge: MergeRule
    if merge_cfg.name == "none":
        merge = NoMerge()
    else:
        from unirobust.experts.ema_mix import EmaMix

        merge = EmaMix(
            mix_weights=[build_schedule(s.mix_weight or {}, epochs, s.name) for s in specs],
            ema_cap=merge_cfg.ema_cap,
            sync_start=merge_cfg.sync_start,
            sync_interval=merge_cfg.sync_interval,
            epochs=epochs,
            sync_mode=merge_cfg.sync_mode,
            local_experts=local_experts,
            n_experts=len(specs),
            all_reduce=mix_all_reduce,
        )
    merge.setup(experts)
    if config.train.compile != "off":
        for expert in experts:
            backend = "inductor" if config.train.compile == "default" else "eager"
            expert.model.compile(backend=backend)
    return Built(experts, merge, generators, list(local_experts))
