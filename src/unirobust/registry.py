"""Registries: a name maps to a builder and the pydantic config it takes (DESIGN.md "seams").

Objectives, merge rules, models and datasets each have one :class:`Registry`. A plug-in is one
module that defines a config class (a :class:`~unirobust.schema.Spec` whose ``name`` is a
``Literal`` of its registered name) and a builder, and registers them with the decorator::

    @OBJECTIVES.register("pgd_at", PgdATSpec)
    def build_pgd_at(spec: PgdATSpec, ctx: BuildContext) -> PgdAT: ...

Recipes name the plug-in; :meth:`Registry.validate` dispatches on that name to the plug-in's own
config class, so the recipe section is a discriminated union over everything registered, including
plug-ins registered after import (a test's toy objective). ``unirobust recipes --registered`` and
error messages list :meth:`Registry.names`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from unirobust.errors import ConfigError

T = TypeVar("T")
B = TypeVar("B", bound=Callable[..., Any])


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered plug-in: its builder, its config class and a one-line description."""

    name: str
    builder: Callable[..., T]
    spec: type[BaseModel]
    summary: str


class Registry(Generic[T]):
    """``name -> (builder, spec class)`` for one kind of plug-in (objective, merge rule, ...)."""

    def __init__(self, kind: str, modules: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self._modules = modules  # imported on first lookup: built-ins register themselves
        self._entries: dict[str, Entry[T]] = {}
        self._loaded = False

    def register(self, name: str, spec: type[BaseModel]) -> Callable[[B], B]:
        """Decorator registering ``builder(spec_instance, *context) -> T`` under ``name``."""

        def add(builder: B) -> B:
            if name in self._entries and self._entries[name].builder is not builder:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            doc = (builder.__doc__ or spec.__doc__ or "").strip().splitlines()
            self._entries[name] = Entry(name, builder, spec, doc[0] if doc else "")
            return builder

        return add

    def unregister(self, name: str) -> None:
        """Remove a plug-in (tests that register toys clean up with this)."""
        self._entries.pop(name, None)

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            import importlib

            for module in self._modules:
                importlib.import_module(module)

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def entries(self) -> list[Entry[T]]:
        self._load()
        return [self._entries[n] for n in sorted(self._entries)]

    def get(self, name: str) -> Entry[T]:
        self._load()
        if name not in self._entries:
            close = difflib.get_close_matches(str(name), list(self._entries), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"unknown {self.kind} '{name}'{hint} (registered: {', '.join(self.names())})"
            )
        return self._entries[name]

    def validate(self, data: Any) -> BaseModel:
        """A recipe section (mapping with ``name``, or a spec instance) -> the plug-in's spec."""
        if isinstance(data, BaseModel):
            data = data.model_dump()
        if isinstance(data, str):
            data = {"name": data}
        if not isinstance(data, dict) or "name" not in data:
            raise ConfigError(
                f"a {self.kind} needs a 'name' (registered: {', '.join(self.names())})"
            )
        return self.get(str(data["name"])).spec.model_validate(data)

    def build(self, spec: BaseModel, *context: Any) -> T:
        return self.get(spec.name).builder(spec, *context)  # type: ignore[attr-defined]
