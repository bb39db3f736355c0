"""Recipes: YAML files validated by pydantic (DESIGN.md "config.py").

Every section forbids unknown keys; :func:`load_recipe` turns pydantic's errors into one line that
names the file, the bad key, the closest valid key and what is allowed. ``--set a.b=value``
overrides are parsed as YAML scalars and applied before validation, so they get the same checks.
Threats are parsed once here into threat objects (``schema.Threat``); nothing downstream re-parses.

A run is a list of **stages** (default: one, written with the short form ``train.epochs`` /
``train.experts`` / ``train.merge``). A stage is a set of experts (objective, optimizer, lr
schedule), a merge rule, the parameters that train and the BatchNorm mode. Objectives and merge
rules are plug-ins: their sections are validated by the registered plug-in's own spec
(``unirobust.registry``). ``train.generalist`` is a compact preset that expands into the experts
and mix weights of generalist.md §3.3 (:meth:`GeneralistConfig.experts`). ``init_from`` starts the
run's weights from a run directory, an exported ``.safetensors`` file or a foreign state dict.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    Field,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from unirobust.attacks.pgd import quarter_step
from unirobust.config_eval import EvalConfig, MembersValidation, ValidationConfig  # noqa: F401 (re-exported)
from unirobust.data.registry import DATASETS, dataset_spec
from unirobust.errors import ConfigError
from unirobust.experts.merge import MERGE_RULES, NoMergeSpec
from unirobust.finetune.head import HeadInit
from unirobust.finetune.lora import LoraSpec
from unirobust.finetune.ntk_stage import NtkSpec
from unirobust.models.registry import MODELS, model_spec
from unirobust.objectives.base import OBJECTIVES
from unirobust.objectives.natural import NaturalSpec
from unirobust.objectives.pgd_at import PgdATSpec
from unirobust.objectives.trades import TradesSpec
from unirobust.registry import Registry
from unirobust.schema import Spec, Strict, Threat, describe_error, plugin_field
from unirobust.threats import LinfBall, ThreatModel

ObjectiveField = Annotated[SerializeAsAny[Spec], plugin_field(OBJECTIVES)]
MergeField = Annotated[SerializeAsAny[Spec], plugin_field(MERGE_RULES)]


class AugmentConfig(Strict):
    """Batched on-device augmentation (random crop with zero padding, horizontal flip)."""

    crop_padding: int = Field(0, ge=0, le=16)
    hflip: bool = False


def _registered(registry: Registry[Any], value: str, where: str) -> str:
    """``value`` if it names a registered plug-in, else a one-line ConfigError listing them."""
    try:
        registry.get(value)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    return value


def _checked_options(
    where: str,
    spec_of: Any,
    value: dict[str, Any],
    info: ValidationInfo,
    mode: Literal["python", "json"] = "python",
) -> dict[str, Any]:
    """A plug-in's own options checked by its spec (``spec_of(name, options)``), kept as
    written with types coerced; a bad one is a one-line error naming ``where``."""
    if "name" not in info.data:
        return value
    try:
        spec = spec_of(info.data["name"], value)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    return spec.model_dump(mode=mode, exclude={"name"}, exclude_unset=True)


class DataConfig(Strict):
    """The dataset (a name in ``unirobust.data.registry.DATASETS``) and how it is split.

    ``classes`` keeps a subset of the classes, relabelled 0..k-1 in the order given (transfer
    tasks: pretrain on classes 0-4, fine-tune on 5-9); the exported model records it, so its
    evaluation reads the same classes. The dataset's own options (``imagefolder``'s
    ``image_size``, ``resize_size``, ...; the ``text`` dataset's tokenizer, files and columns) are
    written next to ``name`` or under ``options``, validated by the dataset's spec at load time and
    recorded with the exported model too. ``stream: true`` reads training batches from disk
    instead of holding the split in memory (``imagefolder`` always streams; evaluation always
    streams).
    """

    name: str = "fashion_mnist"
    options: dict[str, Any] = Field(default_factory=dict)
    data_dir: str | None = None
    n_train: int | None = Field(None, gt=0)
    n_test: int | None = Field(None, gt=0)
    val_size: int = Field(1000, ge=0)
    batch_size: int = Field(128, gt=0)
    augment: AugmentConfig = AugmentConfig()
    classes: list[int] | None = Field(None, min_length=1)
    stream: bool = False
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _gather_options(cls, data: Any) -> Any:
        """Move the dataset's own options written next to ``name`` into ``options``."""
        if not isinstance(data, dict) or "name" not in data:
            return data
        try:
            spec = DATASETS.get(str(data["name"])).spec
        except ConfigError:
            return data  # the name's own validator reports it
        own = set(spec.model_fields) - {"name"} - set(cls.model_fields)
        moved = {k: v for k, v in data.items() if k in own}
        if not moved:
            return data
        options = dict(data.get("options") or {})
        rest = {k: v for k, v in data.items() if k not in moved}
        return {**rest, "options": {**options, **moved}}

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        return _registered(DATASETS, value, "data.name")

    @field_validator("options")
    @classmethod
    def _valid_options(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        return _checked_options("data.options", dataset_spec, value, info, mode="json")


class ModelConfig(Strict):
    """A registered model (``unirobust.models.registry.MODELS``) and its options.

    ``options`` are validated at load time by the model's own spec, so an unknown option or a bad
    type fails before any data is read; they are kept as written (types coerced), and the model's
    defaults fill the rest when it is built.
    """

    name: str = "lenet"
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        return _registered(MODELS, value, "model.name")

    @field_validator("options")
    @classmethod
    def _valid_options(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        return _checked_options("model.options", model_spec, value, info)


class OptimizerConfig(Strict):
    """SGD (momentum, no Nesterov by default) or Adam/AdamW.

    ``no_decay`` lists parameter-name substrings (e.g. ``[bn, bias]``) put in a second group with
    weight decay 0; empty means one group with decay on everything (generalist.md §2, pitfall 7).
    ``compat_official_lr`` keeps that second group at lr 1.0 for the whole run, reproducing the
    RAMP/E-AT quirk of multinorm.md §7; off by default.
    """

    name: Literal["sgd", "adam", "adamw"] = "sgd"
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    no_decay: list[str] = Field(default_factory=list)
    compat_official_lr: bool = False


class ExpertConfig(Strict):
    """One model trained by one objective (any registered one) with its optimizer and lr."""

    name: str
    objective: ObjectiveField
    optimizer: OptimizerConfig = OptimizerConfig()
    lr_schedule: dict[str, Any] = Field(default_factory=lambda: {"kind": "constant", "value": 0.1})


class GeneralistConfig(Strict):
    """generalist.md §3.3 presets; expands into ``train.experts`` (robust expert first = anchor).

    Attack step sizes default to eps/4 (2/255 at 8/255, §3.7). ``official_eps`` switches the l_inf
    expert to the released script's 0.031 / 0.007 for bit-level comparison (§3.7).
    ``robust_objective: trades`` makes the l_inf expert a TRADES expert (§3.2).
    ``natural_lr_values`` gives the second expert (natural, or l_2) its own lr knots: the
    abstract's "task-aware strategies" (issue 12 ablation). Off by default, since the released
    code and pitfall 6 use one schedule for every expert.
    """

    preset: Literal["nat_linf", "linf_l2"] = "nat_linf"
    linf: Threat = "linf:8/255"
    l2: Threat = "l2:0.5"
    official_eps: bool = False
    robust_objective: Literal["pgd_at", "trades"] = "pgd_at"
    trades_beta: float = Field(6.0, ge=0)
    attack_steps: int = Field(10, ge=1)
    linf_step_size: float | None = Field(None, gt=0)
    l2_step_size: float | None = Field(None, gt=0)
    lr_values: list[float] = Field(default_factory=lambda: [0.01, 0.01, 0.001, 0.0001])
    natural_lr_values: list[float] | None = None
    beta_values: list[float] = Field(default_factory=lambda: [1.0, 1.0, 1.0, 0.4])
    robust_weight_decay: float = Field(3.5e-3, ge=0)
    natural_weight_decay: float = Field(5e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    schedule_granularity: Literal["epoch", "iteration"] = "epoch"

    def experts(self) -> tuple[list[ExpertConfig], dict[str, dict[str, Any]]]:
        """The preset's two experts (anchor first) and their mix-weight schedules by name.

        Every expert gets the same lr schedule (pitfall 6); attack steps default to eps/4
        (§3.7); ``official_eps`` uses 0.031 / 0.007; weights are beta and 1 - beta.
        """
        timing = {"kind": "generalist", "granularity": self.schedule_granularity}
        lr = {**timing, "values": list(self.lr_values)}
        beta = {**timing, "values": list(self.beta_values)}
        one_minus = {**beta, "values": [1.0 - b for b in self.beta_values]}
        linf = LinfBall(0.031) if self.official_eps else self.linf
        linf_step = 0.007 if self.official_eps else self.linf_step_size

        def sgd(weight_decay: float) -> OptimizerConfig:
            return OptimizerConfig(name="sgd", momentum=self.momentum, weight_decay=weight_decay)

        first = ExpertConfig(
            name="linf" if self.preset == "linf_l2" else "robust",
            objective=self._robust(linf, linf_step, self.robust_objective),
            optimizer=sgd(self.robust_weight_decay),
            lr_schedule=lr,
        )
        if self.preset == "nat_linf":
            second_name, objective = "natural", NaturalSpec()
            weight_decay = self.natural_weight_decay
        else:
            second_name = "l2"
            objective = self._robust(self.l2, self.l2_step_size, "pgd_at")
            weight_decay = self.robust_weight_decay
        second_lr = lr
        if self.natural_lr_values is not None:
            second_lr = {**timing, "values": list(self.natural_lr_values)}
        second = ExpertConfig(
            name=second_name,
            objective=objective,
            optimizer=sgd(weight_decay),
            lr_schedule=second_lr,
        )
        return [first, second], {first.name: beta, second.name: one_minus}

    def _robust(self, threat: ThreatModel, step: float | None, kind: str) -> Spec:
        step = step if step is not None else quarter_step(threat)
        if kind == "trades":
            return TradesSpec(
                threat=threat, steps=self.attack_steps, step_size=step, beta=self.trades_beta
            )
        return PgdATSpec(
            threat=threat, attack="pgd", steps=self.attack_steps, step_size=step, random_start=True
        )


class DistributedConfig(Strict):
    """How ranks are used under torchrun: ``data`` splits each batch over all ranks for every
    expert; ``experts`` gives each expert its own process group (generalist.md §3.4). ``auto``
    picks ``experts`` for an ema_mix run whose process count is a multiple of its experts, else
    ``data``."""

    mode: Literal["auto", "data", "experts"] = "auto"


def _check_trainable(value: str) -> str:
    if value in ("all", "head", "lora"):
        return value
    try:
        re.compile(value)
    except re.error as err:
        raise ValueError(
            f"trainable must be all, head, lora or a regular expression over parameter names; "
            f"{value!r} is not a valid pattern ({err})"
        ) from None
    return value


class StageFields(Strict):
    """What a stage sets (shared by :class:`StageConfig` and the one-stage short form).

    ``head_init`` sets the classifier head when the stage starts (keep, random, the ``logreg``
    linear probe, rescaling: ``finetune.head``); ``batch_size`` overrides ``data.batch_size``
    for this stage (LP-FT's stages use different batch sizes, lpft.md §1.3-§1.4).
    ``trainable: lora`` trains LoRA adapters (``lora``: r, alpha, dropout, target_modules) and
    a copy of the head through peft (``finetune.lora``). ``ntk`` computes the NTK decomposition
    of the model the stage starts from into ``RUN/ntk/<stage>.json`` (``finetune.ntk_stage``).
    """

    epochs: int = Field(10, ge=1)
    experts: list[ExpertConfig] = Field(default_factory=list)
    generalist: GeneralistConfig | None = None
    merge: MergeField = NoMergeSpec()
    trainable: str = "all"
    bn_mode: Literal["train", "frozen"] = "train"
    head_init: HeadInit = HeadInit()
    batch_size: int | None = Field(None, gt=0)
    lora: LoraSpec = LoraSpec()
    ntk: NtkSpec | None = None

    @field_validator("trainable")
    @classmethod
    def _trainable(cls, value: str) -> str:
        return _check_trainable(value)

    def _check_experts(self) -> None:
        if self.generalist is not None and self.experts:
            raise ValueError("give either generalist (a preset) or experts, not both")
        if self.generalist is None and not self.experts:
            raise ValueError("experts is empty: list at least one expert")
        names = [e.name for e in self.experts]
        if len(set(names)) != len(names):
            raise ValueError(f"expert names must be unique, got {names}")


class StageConfig(StageFields):
    """One stage of a run (issue 7 point 6): experts, a merge rule, what trains, the BN mode.

    ``trainable``: ``all``, ``head`` (the model's classifier head) or a regular expression
    matched (``re.search``) against parameter names; only those parameters get gradients and go
    into the optimizer. ``bn_mode: frozen`` keeps every BatchNorm layer in eval mode and its affine
    parameters out of the optimizer, so running statistics and affine stay bit for bit.
    """

    name: str = "train"

    @model_validator(mode="after")
    def _experts_present(self) -> StageConfig:
        self._check_experts()
        return self

    def expanded(self) -> StageConfig:
        """This stage with a ``generalist`` preset replaced by its experts and ema_mix weights."""
        if self.generalist is None:
            return self
        experts, weights = self.generalist.experts()
        merge = self.merge
        if merge.name == "ema_mix" and not getattr(merge, "weights", None):
            merge = merge.model_copy(update={"weights": weights})
        return self.model_copy(update={"experts": experts, "generalist": None, "merge": merge})


def _official(experts: list[ExpertConfig]) -> list[ExpertConfig]:
    """``compat: official`` applied to a stage's experts (multinorm.md §7)."""
    out = []
    for expert in experts:
        optimizer = expert.optimizer.model_copy(update={"compat_official_lr": True})
        objective = expert.objective
        if "compat" in type(objective).model_fields:
            objective = objective.model_copy(update={"compat": "official"})
        out.append(expert.model_copy(update={"optimizer": optimizer, "objective": objective}))
    return out


class TrainConfig(StageFields):
    """The run's stages and the options they share.

    Short form (one stage): the :class:`StageFields` directly here. Long form:
    ``stages: [...]``, each a :class:`StageConfig`. ``log_every``: steps between reads of the
    on-device running sums (progress, finiteness); ``check_finite: every_step`` checks each loss
    before its update instead (one host sync a step); ``check_finite: skip`` checks it there
    too, but skips the batch (no update) instead of stopping, counted as ``skipped`` in the
    epoch's train metrics (the skip needs the value before the update, so it cannot be deferred
    to the log interval: one host sync a step). ``compat: official`` reproduces the
    RAMP/E-AT reference code's quirks (multinorm.md §7): every expert's no-decay group stays at
    lr 1.0, and objectives with a ``compat`` option (RAMP's TRADES variant) follow it.
    """

    stages: list[StageConfig] = Field(default_factory=list)
    grad_clip: float | None = Field(None, gt=0)
    bf16_autocast: bool = False
    channels_last: bool = False
    compile: Literal["off", "default", "eager"] = "off"
    distributed: DistributedConfig = DistributedConfig()
    log_every: int = Field(50, ge=1)
    check_finite: Literal["every_step", "log_interval", "skip"] = "log_interval"
    compat: Literal["default", "official"] = "default"

    @model_validator(mode="after")
    def _one_form(self) -> TrainConfig:
        if not self.stages:
            self._check_experts()
            return self
        short = sorted(set(StageFields.model_fields) & self.model_fields_set)
        if short:
            raise ValueError(
                f"with train.stages, set {', '.join(short)} inside each stage, not in train"
            )
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        return self

    def resolved_stages(self) -> list[StageConfig]:
        """The stages with presets expanded (what runs, and what ``stages.json`` records)."""
        short = {k: getattr(self, k) for k in StageFields.model_fields}
        stages = [s.expanded() for s in self.stages or [StageConfig(**short)]]
        if self.compat == "official":
            stages = [s.model_copy(update={"experts": _official(s.experts)}) for s in stages]
        return stages

    @property
    def total_epochs(self) -> int:
        return sum(s.epochs for s in self.stages) if self.stages else self.epochs


class InitFrom(Strict):
    """Where a run's initial weights come from (issue 7 point 5; fine-tuning recipes).

    ``path``: a run directory (its exported ``checkpoint``), an exported ``.safetensors`` file, or
    a foreign state dict (``.pt``/``.pth``, read by the restricted importer; ``module.``-style
    prefixes stripped; a wrapped layout such as the robustness library's ``model.``/``attacker.``
    reduced to the model's sub-dict, ``prefix`` if given, and its input normalisation checked
    against the model's: ``engine.foreign``). Every tensor must match the model's name and shape;
    the first mismatch is a one-line error. ``strict: false`` leaves missing tensors (e.g. a new
    head) at their init.
    """

    path: str
    checkpoint: Literal["best", "last"] = "best"
    strict: bool = True
    prefix: str | None = None


class RunConfig(Strict):
    name: str
    description: str = ""
    seed: int = Field(0, ge=0, lt=2**32)
    device: str = "cpu"
    checkpoint_every: int = Field(1, ge=1)
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig
    validation: ValidationConfig = ValidationConfig()
    eval: EvalConfig = EvalConfig()
    init_from: InitFrom | None = None

    @field_validator("init_from", mode="before")
    @classmethod
    def _init_from_text(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _semantics(self) -> RunConfig:
        """Checks that need the registries: raise ConfigError (prefixed with the file later)."""
        from unirobust.checks import check_run

        check_run(self)
        return self

    @model_validator(mode="before")
    @classmethod
    def _validation_threats_from_preset(cls, data: Any) -> Any:
        """generalist.md §3.6: select on clean + PGD-20 over the preset's norms by default."""
        if not isinstance(data, dict):
            return data
        preset = (data.get("train") or {}).get("generalist")
        validation = data.get("validation") or {}
        if (
            isinstance(preset, dict)
            and isinstance(validation, dict)
            and "threats" not in validation
        ):
            official = preset.get("official_eps", False)
            threats = ["linf:0.031" if official else preset.get("linf", "linf:8/255")]
            if preset.get("preset") == "linf_l2":
                threats.append(preset.get("l2", "l2:0.5"))
            data = {**data, "validation": {**validation, "threats": threats}}
        return data

    @field_validator("name")
    @classmethod
    def _name_is_path_safe(cls, value: str) -> str:
        if not value or any(c in value for c in "/\\ ") or value.startswith("."):
            raise ValueError(f"name '{value}' must be a non-empty word without '/', '\\' or spaces")
        return value


# ---------------------------------------------------------------------------------------------
# Loading, overrides and error messages


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], value parsed as a YAML scalar or list)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.path=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_override(data: dict[str, Any], parts: list[str], value: Any) -> None:
    """Set a nested key, creating sections; list items are addressed by index (``experts.0``)."""
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = node[_list_index(node, part, parts[: i + 1])]
            continue
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        node = nxt
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(node, last, parts)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"cannot set '{'.'.join(parts)}': its parent is not a section")


def _list_index(node: list[Any], part: str, where: list[str]) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"'{'.'.join(where)}': index must be 0..{len(node) - 1}")
    return int(part)


def validate_recipe(data: Any, source: str = "<recipe>") -> RunConfig:
    """Validate a parsed recipe; raise :class:`ConfigError` with one line per the first error."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: a recipe must be a mapping of sections, got {type(data).__name__}"
        )
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(describe_error(err.errors()[0], RunConfig, source)) from None
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``: mappings merge key by key; lists, scalars and an empty mapping
    (``options: {}``, which clears the base's) replace."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and value and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


MAX_DEPTH = 64
MAX_NODES = 100_000


_REFUSED_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("binary", "set", "omap", "pairs")}


class RecipeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (no Python tags, so no code runs) that also refuses what a recipe
    never needs: a key given twice in one mapping (the first value would be silently dropped),
    nesting deeper than ``MAX_DEPTH`` and more than ``MAX_NODES`` values once aliases are
    expanded (a "billion laughs" file), and the tags that make bytes, sets or ordered pairs."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise ConfigError(f"nested deeper than {MAX_DEPTH} levels (line {mark.line + 1})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_document(self, node: Any) -> Any:
        self._count(node, set())
        return super().construct_document(node)

    def _count(self, node: Any, path: set[int]) -> None:
        if node.tag in _REFUSED_TAGS:
            name = node.tag.rsplit(":", 1)[-1]
            raise ConfigError(
                f"YAML tag '!!{name}' (line {node.start_mark.line + 1}) has no place in a recipe"
            )
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise ConfigError(f"more than {MAX_NODES} values (aliases expanded); not a recipe")
        if id(node) in path:
            raise ConfigError("a YAML alias refers to itself; not a recipe")
        children = node.value if isinstance(node.value, list) else []
        for child in children:
            for item in child if isinstance(child, tuple) else (child,):
                self._count(item, path | {id(node)})

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                line = key_node.start_mark.line + 1
                raise ConfigError(f"key '{key}' is given twice in one section (line {line})")
            if isinstance(key, (str, int, float, bool)):
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_recipe_data(path: Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A recipe file as plain data, with ``extends: other.yaml`` (a path relative to the file)
    merged underneath it, so recipes that share a configuration state it once."""
    if not path.is_file():
        raise ConfigError(f"recipe '{path}' does not exist (list them with: unirobust recipes)")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=RecipeLoader) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; a recipe is a YAML text file") from None
    except OSError as err:
        raise ConfigError(f"recipe '{path}' cannot be read ({err.strerror})") from None
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML ({first})") from None
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}"
        )
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: 'extends' must be a recipe path, got {base!r}")
    base_path = (path.parent / base).resolve()
    if base_path in _chain or base_path == path.resolve():
        raise ConfigError(f"{path}: 'extends: {base}' makes a cycle")
    return _deep_merge(read_recipe_data(base_path, (*_chain, path.resolve())), data)


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read (with ``extends``), override and validate a recipe file."""
    path = Path(path)
    data = read_recipe_data(path)
    for text in overrides:
        parts, value = parse_override(text)
        apply_override(data, parts, value)
    return validate_recipe(data, str(path))


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    """The resolved recipe as plain data (what goes to ``config.yaml`` in the run directory).

    With ``train.stages`` the short-form stage fields are left out: validation refuses both
    forms at once, so ``--resume`` and ``eval`` could not read the file back otherwise."""
    data = config.model_dump(mode="json")
    if config.train.stages:
        for key in StageFields.model_fields:
            data["train"].pop(key, None)
    return data
