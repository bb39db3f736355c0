"""Semantic recipe checks that need the registries (run by ``RunConfig`` at load time).

Everything that can be checked without data or models is checked at load time, so a recipe with
an unknown model or model option, a bad schedule, an objective whose options contradict each
other, or mix weights that do not sum to one fails in a second with a one-line message, before
any file is written. Dataset and model names and the model's options are checked by their own
sections (``config.DataConfig``, ``config.ModelConfig``) against ``DATASETS`` and ``MODELS``.
Objectives and merge rules are *built* once (they are cheap without a model) so each plug-in's
own constructor checks apply; nothing is kept.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from unirobust.data.registry import is_text_dataset
from unirobust.errors import ConfigError
from unirobust.experts.merge import MERGE_RULES, MergeContext, check_expert_count
from unirobust.experts.schedules import schedule_for
from unirobust.models.registry import model_inputs
from unirobust.objectives.base import OBJECTIVES, ObjectiveContext, perturbs_inputs

if TYPE_CHECKING:
    from unirobust.config import RunConfig


def check_inputs(config: RunConfig) -> None:
    """The model reads what the dataset gives; a text run asks for nothing made for images.

    Token ids have no ball around them to attack and no pixels to corrupt or augment, so a text
    run refuses input-perturbing objectives, threats, corruptions, augmentation and
    channels_last (spec lpft.md §2 is image-only)."""
    text = is_text_dataset(config.data.name)
    model_kind = model_inputs(config.model.name)
    if text != (model_kind == "tokens"):
        data_kind = "token ids" if text else "images"
        raise ConfigError(
            f"model '{config.model.name}' reads {model_kind} but dataset '{config.data.name}' "
            f"gives {data_kind}; text data needs a text model (hf_sequence_classifier) and "
            "images an image model"
        )
    if not text:
        return
    for s, stage in enumerate(config.train.resolved_stages()):
        for i, expert in enumerate(stage.experts):
            if perturbs_inputs(expert.objective):
                where = "train" if not config.train.stages else f"train.stages.{s}"
                raise ConfigError(
                    f"{where}.experts.{i}.objective: '{expert.objective.name}' attacks the "
                    "inputs, which are token ids for a text dataset; use natural"
                )
    refused = {
        "validation.threats": bool(config.validation.threats),
        "eval.threats": bool(config.eval.threats),
        "eval.corruptions": bool(config.eval.corruptions),
        "data.augment": config.data.augment.crop_padding > 0 or config.data.augment.hflip,
        "train.channels_last": config.train.channels_last,
    }
    for key, asked in refused.items():
        if asked:
            raise ConfigError(
                f"{key}: a text dataset gives token ids, which are not attacked, corrupted or "
                "augmented; text runs evaluate clean accuracy and calibration only"
            )


def check_run(config: RunConfig) -> None:
    check_inputs(config)
    stages = config.train.resolved_stages()
    for s, stage in enumerate(stages):
        where = "train" if not config.train.stages else f"train.stages.{s}"
        for i, expert in enumerate(stage.experts):
            schedule_for(expert.lr_schedule, stage.epochs, f"{where}.experts.{i}.lr_schedule")
            try:
                OBJECTIVES.build(expert.objective, ObjectiveContext(torch.Generator()))
            except ConfigError as err:
                raise ConfigError(f"{where}.experts.{i}.objective: {err}") from None
        if stage.merge.name == "gp" and config.init_from is not None:
            raise ConfigError(
                f"{where}.merge: gradient projection is for training from scratch only "
                "(multinorm.md §4.3); a run with init_from fine-tunes — use merge none"
            )
        names = tuple(e.name for e in stage.experts)
        try:
            rule = MERGE_RULES.build(
                stage.merge, MergeContext(stage.epochs, names, tuple(range(len(names))))
            )
            check_expert_count(stage.merge.name, type(rule), len(names))
        except ConfigError as err:
            raise ConfigError(f"{where}.merge: {err}") from None
