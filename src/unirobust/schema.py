"""Pydantic building blocks shared by the recipe (``config``) and every plug-in's own config.

* :class:`Strict`: unknown keys are errors, assignments are validated.
* :data:`Threat`: a recipe string such as ``linf:8/255`` validated **once, at load time** into a
  :class:`~unirobust.threats.ThreatModel` object (issue 7 point 2); it serialises back to the same
  exact text, so ``config.yaml`` in a run directory re-loads to the same radius bit for bit.
* :func:`plugin_field`: a recipe section whose ``name`` picks a registered plug-in; the section is
  validated by that plug-in's own config class (a discriminated union over the registry).
* :func:`describe_error`: one line for a pydantic error, naming the key, the closest valid key
  and what is allowed.

Plug-in modules import from here, never from ``config``, so there is no import circle.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainSerializer,
    ValidationError,
    WithJsonSchema,
)

from unirobust.errors import ConfigError
from unirobust.threats import ThreatModel, parse_threat

if TYPE_CHECKING:
    from unirobust.registry import Registry


class Strict(BaseModel):
    """Base for every recipe section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(
        extra="forbid",
        validate_assignment=True,
        validate_default=True,
        arbitrary_types_allowed=True,
    )


class Spec(Strict):
    """Base of a plug-in's config: ``name`` is the registry key (a ``Literal`` in subclasses)."""

    name: str

    def options(self, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
        """Every field but ``name`` (and ``exclude``), as validated objects (threats stay
        ThreatModels): the keyword arguments of the plug-in's constructor."""
        return {k: getattr(self, k) for k in type(self).model_fields if k not in ("name", *exclude)}


def _to_threat(value: Any) -> ThreatModel:
    if isinstance(value, ThreatModel):
        return value
    try:
        return parse_threat(value)
    except ConfigError as err:
        raise ValueError(str(err)) from None


Threat = Annotated[
    ThreatModel,
    BeforeValidator(_to_threat),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "examples": ["linf:8/255", "l2:0.5", "l1:12"]}),
]
"""A threat model in a recipe: written ``NORM:RADIUS``, held as a ThreatModel object."""


def plugin_field(registry: Registry[Any]) -> BeforeValidator:
    """A ``BeforeValidator`` that validates a section with the registered plug-in's spec."""

    def dispatch(value: Any) -> BaseModel:
        if isinstance(value, BaseModel) and type(value) is not Spec:
            return value
        try:
            return registry.validate(value)
        except ConfigError as err:
            raise ValueError(str(err)) from None
        except ValidationError as err:
            name = value.get("name") if isinstance(value, dict) else value
            spec = registry.get(str(name)).spec
            raise ValueError(
                describe_error(err.errors()[0], spec, f"{registry.kind} '{name}'")
            ) from None

    return BeforeValidator(dispatch)


def _section_model(root: type[BaseModel], path: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model at a location below ``root``, to list its valid keys."""
    model: type[BaseModel] | None = root
    for part in path:
        if model is None or isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return model
        model = _first_model(field.annotation)
    return model


def _first_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _first_model(arg)
        if found is not None:
            return found
    return None


def describe_error(error: dict[str, Any], root: type[BaseModel], source: str) -> str:
    """One line for one pydantic error below ``root``, prefixed by ``source``."""
    loc = tuple(error["loc"])
    where = ".".join(str(p) for p in loc) or "<top level>"
    if error["type"] == "extra_forbidden":
        parent = _section_model(root, loc[:-1])
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
