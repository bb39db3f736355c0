"""Build a stage's live objects from a validated recipe: experts and merge rule (DESIGN.md).

No if/else per method: objectives and merge rules come from their registries
(``OBJECTIVES``, ``MERGE_RULES``), so a new method is one module plus one registry entry.
Recipes are checked at load time (``unirobust.checks``); this module only builds.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from unirobust.errors import ConfigError
from unirobust.experts.expert import Expert
from unirobust.experts.merge import MERGE_RULES, MergeContext, MergeRule
from unirobust.experts.schedules import schedule_for
from unirobust.experts.tensors import unwrap
from unirobust.finetune.lora import submodule, wrap_lora
from unirobust.objectives.base import OBJECTIVES, ObjectiveContext
from unirobust.seeding import derive_seed

if TYPE_CHECKING:
    from unirobust.config import OptimizerConfig, RunConfig, StageConfig


def build_optimizer(
    model: nn.Module, spec: OptimizerConfig
) -> tuple[torch.optim.Optimizer, list[bool]]:
    """Parameter groups over the *trainable* parameters: decayed, then (if ``no_decay``) names
    matching a substring at wd 0.

    Returns the optimizer and which groups follow the lr schedule (all, unless
    ``compat_official_lr`` pins the no-decay group at lr 1.0: multinorm.md §7).
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
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


def head_prefix(model: nn.Module) -> str:
    """The parameter-name prefix of the model's classifier head (``head_name``, e.g. ``linear``)."""
    inner = unwrap(model)
    name = getattr(inner, "head_name", None)
    if name is None or not isinstance(submodule(inner, name), nn.Module):
        raise ConfigError(
            f"trainable: head needs a model with a named head (head_name); "
            f"{type(inner).__name__} has none — use a name pattern instead"
        )
    return f"{name}."


def set_trainable(model: nn.Module, trainable: str, bn_mode: str) -> list[str]:
    """Turn ``requires_grad`` on for the stage's trainable parameters only; return their names.

    ``all``, ``head`` or a regular expression (``re.search`` over names). Under
    ``bn_mode='frozen'`` the BatchNorm affine parameters are frozen as well.
    """
    inner = unwrap(model)
    frozen_bn = set()
    if bn_mode == "frozen":
        for module in inner.modules():
            if isinstance(module, _BatchNorm):
                frozen_bn.update(id(p) for p in module.parameters(recurse=False))
    prefix = head_prefix(inner) if trainable == "head" else None
    names = []
    for name, param in inner.named_parameters():
        if trainable == "all":
            on = True
        elif prefix is not None:
            on = name.startswith(prefix)
        else:
            on = re.search(trainable, name) is not None
        on = on and id(param) not in frozen_bn
        param.requires_grad_(on)
        if on:
            names.append(name)
    if not names:
        raise ConfigError(f"trainable: {trainable!r} matches no trainable parameter of the model")
    return names


@dataclass
class Built:
    """A stage's live objects."""

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


def expert_seed(seed: int, expert: int, stage: int) -> int:
    """The seed of an expert's own random stream (attack starts, sampled norms)."""
    return derive_seed(seed, 1, expert) if stage == 0 else derive_seed(seed, 1, expert, stage)


def build_stage(
    config: RunConfig,
    stage: StageConfig,
    stage_index: int,
    initial_model: nn.Module,
    device: torch.device,
    local_experts: list[int],
    grad_sync: Any = None,
    mix_all_reduce: Any = None,
) -> Built:
    """Experts as deep copies of one initial model (generalist.md pitfall 8), and the merge."""
    train = config.train
    experts, generators = [], {}
    for k in local_experts:
        spec = stage.experts[k]
        model = copy.deepcopy(initial_model).to(device)
        if train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if stage.trainable == "lora":
            model = wrap_lora(model, stage.lora)
        else:
            set_trainable(model, stage.trainable, stage.bn_mode)
        generator = torch.Generator(device="cpu").manual_seed(
            expert_seed(config.seed, k, stage_index)
        )
        generators[spec.name] = generator
        optimizer, follows = build_optimizer(model, spec.optimizer)
        experts.append(
            Expert(
                name=spec.name,
                model=model,
                objective=OBJECTIVES.build(spec.objective, ObjectiveContext(generator)),
                optimizer=optimizer,
                lr_schedule=schedule_for(spec.lr_schedule, stage.epochs, spec.name),
                grad_clip=train.grad_clip,
                autocast_bf16=train.bf16_autocast,
                group_follows_schedule=follows,
                grad_sync=grad_sync,
                bn_mode=stage.bn_mode,
                check_finite=train.check_finite != "log_interval",
                skip_non_finite=train.check_finite == "skip",
            )
        )
    names = tuple(e.name for e in stage.experts)
    context = MergeContext(stage.epochs, names, tuple(local_experts), mix_all_reduce)
    merge = MERGE_RULES.build(stage.merge, context)
    merge.setup(experts)
    if train.compile != "off":
        for expert in experts:
            backend = "inductor" if train.compile == "default" else "eager"
            expert.model.compile(backend=backend)
    return Built(experts, merge, generators, list(local_experts))
