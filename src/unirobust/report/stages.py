"""The stages and experts of a run, read from ``stages.json`` (written by the training engine).

``stages.json`` = ``{"stages": [{"name", "epochs", "experts": [{"name", "objective": {"name",
...}, "optimizer": {...}, "lr_schedule": {...}}], "merge": {"name", ...}, "trainable",
"bn_mode"}]}``. The report never re-derives experts from the recipe: without the file it says
nothing about experts or merge rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from unirobust.report.fmt import ABSENT, _compact, _md_table, _threat_text

STAGES_FILE = "stages.json"

_OBJECTIVE_KEYS: dict[str, set[str]] = {
    "natural": set(),
    "pgd_at": {"attack", "steps", "step_size", "random_start"},
    "trades": {"beta", "steps", "step_size"},
}
"""Objective settings worth showing (others are defaults that objective ignores)."""


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _experts(stage: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [e for e in stage.get("experts") or [] if isinstance(e, Mapping)]


def _named(value: Any) -> str:
    """``{"name": "sgd", "lr": 0.1}`` -> ``sgd (lr=0.1)``; empty -> ``—``."""
    spec = _mapping(value)
    if not spec:
        return ABSENT
    rest = {k: v for k, v in spec.items() if k != "name"}
    name = str(spec.get("name", "?"))
    return name + (f" ({_compact(rest)})" if rest else "")


def _objective(expert: Mapping[str, Any]) -> tuple[str, str, str]:
    """(objective name, threat text, relevant settings) of one expert."""
    obj = expert.get("objective")
    obj = obj if isinstance(obj, Mapping) else {"name": obj}
    relevant = _OBJECTIVE_KEYS.get(str(obj.get("name")))
    rest = {
        k: v
        for k, v in obj.items()
        if k not in ("name", "threat", "threats") and (relevant is None or k in relevant)
    }
    threat = obj.get("threat", obj.get("threats"))
    return str(obj.get("name", "?")), _threat_text(threat), _compact(rest) or ABSENT


def _expert_labels(stages: list[Mapping[str, Any]] | None) -> dict[str, str]:
    """expert name -> 'name (objective threat)' for legends (empty without stages.json)."""
    out: dict[str, str] = {}
    for stage in stages or []:
        for ex in _experts(stage):
            name, threat, _ = _objective(ex)
            extra = " ".join(x for x in (name, threat if threat != ABSENT else "") if x)
            out.setdefault(str(ex.get("name", "?")), f"{ex.get('name', '?')} ({extra})")
    return out


def _method_text(stages: list[Mapping[str, Any]]) -> str:
    """``natural + pgd_at merged by ema_mix``; stages joined by ``; then``."""
    parts = []
    for stage in stages:
        names = " + ".join(_objective(ex)[0] for ex in _experts(stage)) or "?"
        merge = _mapping(stage.get("merge")).get("name", "none")
        text = names + ("" if merge in (None, "none") else f" merged by {merge}")
        parts.append(f"{stage.get('name')}: {text}" if len(stages) > 1 else text)
    return "; then ".join(parts)


def _stages_section(stages: list[Mapping[str, Any]] | None) -> list[str]:
    """Markdown table of stages and experts; nothing when the run has no ``stages.json``."""
    if not stages:
        return []
    header = ["Stage", "Expert", "Objective", "Threat", "Objective settings"]
    header += ["Optimizer", "LR schedule"]
    rows, srows = [], []
    for stage in stages:
        name = str(stage.get("name", "?"))
        srows.append(
            [
                name,
                stage.get("epochs", "?"),
                _named(stage.get("merge")),
                stage.get("trainable", "?"),
                stage.get("bn_mode", "?"),
            ]
        )
        for ex in _experts(stage):
            obj, threat, settings = _objective(ex)
            optimizer, schedule = _named(ex.get("optimizer")), _named(ex.get("lr_schedule"))
            rows.append([name, ex.get("name", "?"), obj, threat, settings, optimizer, schedule])
    stage_header = ["Stage", "Epochs", "Merge rule", "Trainable", "BN mode"]
    return [
        f"### Stages (from `{STAGES_FILE}`)",
        "",
        _md_table(stage_header, srows, align="lr"),
        "",
        _md_table(header, rows),
        "",
    ]
