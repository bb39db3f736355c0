"""Recipes: YAML files validated by pydantic (DESIGN.md "config.py").

Every section forbids unknown keys; :func:`load_recipe` turns pydantic's errors into one line that
names the file, the bad key, the closest valid key and what is allowed. ``--set a.b=value``
overrides are parsed as YAML scalars and applied before validation, so they get the same checks.

A run is a list of experts (objective, optimizer, lr schedule, optional mix weight) and a merge
rule (DESIGN.md). ``train.generalist`` is a compact preset block that expands into the experts of
generalist.md §3.3 (``nat_linf``: the CVPR method; ``linf_l2``: the project's own pairing).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from unirobust.errors import ConfigError


def _check_threats(texts: list[str]) -> list[str]:
    for text in texts:
        _check_threat(text)
    return texts


ThreatList = Annotated[list[str], AfterValidator(_check_threats)]
"""Threat strings such as ``linf:8/255``, each checked by the one threat parser."""


class Strict(BaseModel):
    """Base for every section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AugmentConfig(Strict):
    """Batched on-device augmentation (random crop with zero padding, horizontal flip)."""

    crop_padding: int = Field(0, ge=0, le=16)
    hflip: bool = False


class DataConfig(Strict):
    name: str = "fashion_mnist"
    data_dir: str | None = None
    n_train: int | None = Field(None, gt=0)
    n_test: int | None = Field(None, gt=0)
    val_size: int = Field(1000, ge=0)
    batch_size: int = Field(128, gt=0)
    augment: AugmentConfig = AugmentConfig()


class ModelConfig(Strict):
    name: str = "lenet"
    options: dict[str, Any] = Field(default_factory=dict)


class ObjectiveConfig(Strict):
    """A training loss; ``threat`` is written like ``linf:8/255`` (issue 3)."""

    name: Literal["natural", "pgd_at", "trades"] = "natural"
    threat: str | None = None
    attack: Literal["pgd", "apgd"] = "pgd"
    steps: int = Field(10, ge=1)
    step_size: float | None = Field(None, gt=0)
    random_start: bool | None = None
    beta: float = Field(6.0, ge=0)

    @model_validator(mode="after")
    def _threat_needed(self) -> ObjectiveConfig:
        if self.name != "natural" and self.threat is None:
            raise ValueError(f"objective '{self.name}' needs a threat, e.g. threat: linf:8/255")
        if self.threat is not None:
            _check_threat(self.threat)
        return self


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
    name: str
    objective: ObjectiveConfig
    optimizer: OptimizerConfig = OptimizerConfig()
    lr_schedule: dict[str, Any] = Field(default_factory=lambda: {"kind": "constant", "value": 0.1})
    mix_weight: dict[str, Any] | None = None


class GeneralistConfig(Strict):
    """generalist.md §3.3 presets; expands into ``train.experts`` (robust expert first = anchor).

    Attack step sizes default to eps/4 (2/255 at 8/255, §3.7). ``official_eps`` switches the l_inf
    expert to the released script's 0.031 / 0.007 for bit-level comparison (§3.7).
    ``robust_objective: trades`` makes the l_inf expert a TRADES expert (§3.2).
    """

    preset: Literal["nat_linf", "linf_l2"] = "nat_linf"
    linf: str = "linf:8/255"
    l2: str = "l2:0.5"
    official_eps: bool = False
    robust_objective: Literal["pgd_at", "trades"] = "pgd_at"
    trades_beta: float = Field(6.0, ge=0)
    attack_steps: int = Field(10, ge=1)
    linf_step_size: float | None = Field(None, gt=0)
    l2_step_size: float | None = Field(None, gt=0)
    lr_values: list[float] = Field(default_factory=lambda: [0.01, 0.01, 0.001, 0.0001])
    beta_values: list[float] = Field(default_factory=lambda: [1.0, 1.0, 1.0, 0.4])
    robust_weight_decay: float = Field(3.5e-3, ge=0)
    natural_weight_decay: float = Field(5e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    schedule_granularity: Literal["epoch", "iteration"] = "epoch"


class MergeConfig(Strict):
    """``none``: one expert, no merge. ``ema_mix``: Generalist's global learner (generalist.md)."""

    name: Literal["none", "ema_mix"] = "none"
    ema_cap: float = Field(0.999, gt=0, lt=1)
    sync_start: int | None = Field(None, ge=1)
    sync_interval: int | None = Field(None, ge=1)
    sync_mode: Literal["every_iteration", "once_per_epoch", "off"] = "every_iteration"


class DistributedConfig(Strict):
    """How ranks are used under torchrun: ``data`` splits each batch over all ranks for every
    expert; ``experts`` gives each expert its own process group (generalist.md §3.4). ``auto``
    picks ``experts`` for an ema_mix run whose process count is a multiple of its experts, else
    ``data``."""

    mode: Literal["auto", "data", "experts"] = "auto"


class TrainConfig(Strict):
    epochs: int = Field(10, ge=1)
    experts: list[ExpertConfig] = Field(default_factory=list)
    generalist: GeneralistConfig | None = None
    merge: MergeConfig = MergeConfig()
    grad_clip: float | None = Field(None, gt=0)
    bf16_autocast: bool = False
    channels_last: bool = False
    compile: Literal["off", "default", "eager"] = "off"
    distributed: DistributedConfig = DistributedConfig()

    @model_validator(mode="after")
    def _experts_present(self) -> TrainConfig:
        if self.generalist is not None and self.experts:
            raise ValueError("give either train.generalist (a preset) or train.experts, not both")
        if self.generalist is None and not self.experts:
            raise ValueError("train.experts is empty: list at least one expert")
        names = [e.name for e in self.experts]
        if len(set(names)) != len(names):
            raise ValueError(f"expert names must be unique, got {names}")
        return self


class ValidationConfig(Strict):
    """Per-epoch model selection on the validation split (generalist.md §3.6): clean + PGD."""

    threats: ThreatList = Field(default_factory=list)
    steps: int = Field(20, ge=1)
    n: int | None = Field(None, gt=0)
    every: int = Field(1, ge=1)


class EvalConfig(Strict):
    """The final test-set evaluation of the saved checkpoints, as metric groups.

    ``clean`` always runs; ``threats``/``union`` when there are threats (``threats``, else the
    recipe's ``validation.threats``); ``calibration`` and ``corruptions`` when asked for. Setting
    ``suite`` or ``union_only`` asks for robust evaluation: without any threat that is an error.
    ``n: null`` evaluates every test point; ``seed`` seeds the attacks and the corruptions.
    """

    enabled: bool = True
    suite: Literal["aa-standard", "aa-apgd", "fast"] = "aa-standard"
    threats: ThreatList = Field(default_factory=list)
    n: int | None = Field(1000, gt=0)
    batch_size: int = Field(500, gt=0)
    checkpoints: list[Literal["best", "last"]] = Field(default_factory=lambda: ["best", "last"])
    union_only: bool = False
    seed: int = 0
    calibration: bool = True
    corruptions: list[str] = Field(default_factory=list)
    corruption_severities: list[int] = Field(default_factory=lambda: [1, 2, 3, 4, 5])

    @field_validator("corruptions")
    @classmethod
    def _known_corruptions(cls, value: list[str]) -> list[str]:
        from unirobust.evaluation.corruptions import CORRUPTIONS

        if value == ["all"]:
            return list(CORRUPTIONS)
        unknown = [c for c in value if c not in CORRUPTIONS]
        if unknown:
            raise ValueError(
                f"unknown corruptions {unknown}; allowed: all, {', '.join(CORRUPTIONS)}"
            )
        return value

    @field_validator("corruption_severities")
    @classmethod
    def _severities(cls, value: list[int]) -> list[int]:
        if not value or any(v not in range(1, 6) for v in value):
            raise ValueError(f"severities must be a non-empty subset of 1..5, got {value}")
        return value


class RunConfig(Strict):
    name: str
    description: str = ""
    seed: int = 0
    device: str = "cpu"
    checkpoint_every: int = Field(1, ge=1)
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig
    validation: ValidationConfig = ValidationConfig()
    eval: EvalConfig = EvalConfig()

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


def _check_threat(text: str) -> None:
    """Validate a threat string through the threat parser (one source of truth)."""
    from unirobust.threats import parse_threat

    try:
        parse_threat(text)
    except ConfigError as err:
        raise ValueError(str(err)) from None


# ---------------------------------------------------------------------------------------------
# Loading, overrides and error messages


def _section_model(path: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model at a location in the recipe, to list its valid keys."""
    model: type[BaseModel] | None = RunConfig
    for part in path:
        if model is None or isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return model
        annotation = field.annotation
        model = _first_model(annotation)
    return model


def _first_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _first_model(arg)
        if found is not None:
            return found
    return None


def _describe(error: dict[str, Any], source: str) -> str:
    loc = tuple(error["loc"])
    where = ".".join(str(p) for p in loc) or "<top level>"
    if error["type"] == "extra_forbidden":
        parent = _section_model(loc[:-1])
        valid = sorted(parent.model_fields) if parent else []
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return f"{source}: unknown key '{where}'{hint} (valid keys here: {', '.join(valid)})"
    if error["type"] == "missing":
        return f"{source}: missing required key '{where}'"
    value = error.get("input")
    shown = "" if isinstance(value, dict) else f" got {value!r};"
    msg = error["msg"].removeprefix("Value error, ")
    return f"{source}: bad value for '{where}':{shown} {msg}"


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
        config = RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_describe(err.errors()[0], source)) from None
    from unirobust.build import check_config

    check_config(config, source)
    return config


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read, override and validate a recipe file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe '{path}' does not exist (list them with: unirobust recipes)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML ({first})") from None
    for text in overrides:
        parts, value = parse_override(text)
        apply_override(data, parts, value)
    return validate_recipe(data, str(path))


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    """The resolved recipe as plain data (what goes to ``config.yaml`` in the run directory)."""
    return config.model_dump(mode="json")
