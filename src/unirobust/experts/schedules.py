"""Learning-rate and Generalist mix-weight schedules (generalist.md §2, §3.1; multinorm.md §6).

A schedule is a pure function of a training time ``t`` measured in epochs, plus the convention
(*granularity*) that says how ``t`` is obtained from the Trainer's position. Every schedule built
here is an object with

- ``__call__(t) -> float``: the value at time ``t`` in the schedule's own convention (what
  :func:`unirobust.experts.ema_mix.check_mix_weights` evaluates at the knots);
- ``time(epoch, iteration, n_iters) -> float``: that convention, from the 1-based ``epoch``, the
  0-based ``iteration`` inside it and the number of iterations ``n_iters`` of the epoch;
- ``at(epoch, iteration, n_iters) -> float``: ``self(self.time(epoch, iteration, n_iters))``.

Time conventions (``granularity``):

- ``"epoch"``: ``t = epoch`` (1-based integer), so the value is constant within an epoch. The
  Generalist default (generalist.md §3.1, pitfall 5).
- ``"iteration"``: ``t = (epoch - 1) + (iteration + 1) / n_iters``. Generalist's
  ``schedule_granularity: iteration``; it is also exactly multinorm.md §6's
  ``t = epoch0 + (i + 1) / n_batches`` with the 0-based ``epoch0 = epoch - 1``.

Which kind uses which convention:

- ``constant``: none (the value never changes).
- ``piecewise_linear``, ``generalist``: the ``granularity`` key, default ``"epoch"``.
- ``static``, ``piecewise_ft``, ``superconverge``: always ``"iteration"`` (multinorm.md §6).
- ``piecewise_imagenet``: the fraction ``(iteration + 1) / n_iters`` of the current epoch.

Callers only use ``sched.at(epoch, iteration, n_iters)`` (``Expert.set_lr`` for the lr, ``EmaMix``
for the mix weights; every object here satisfies ``Expert``'s ``Schedule`` protocol), so the time
convention never leaks out of this module. ``as_schedule(fn, granularity)`` adapts a plain
``t -> value`` function.
"""

from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from unirobust.errors import ConfigError

Granularity = Literal["epoch", "iteration"]
GRANULARITIES: tuple[str, ...] = ("epoch", "iteration")
SCHEDULE_KINDS: tuple[str, ...] = (
    "constant",
    "piecewise_linear",
    "generalist",
    "static",
    "piecewise_ft",
    "piecewise_imagenet",
    "superconverge",
)


@runtime_checkable
class Schedule(Protocol):
    """A value as a function of the Trainer's position (1-based epoch, 0-based iteration)."""

    def at(self, epoch: int, iteration: int, n_iters: int) -> float: ...


# --------------------------------------------------------------------------------------------
# time conventions and knots


def schedule_time(epoch: int, iteration: int, n_iters: int, granularity: str = "epoch") -> float:
    """Training time t of batch ``iteration`` (0-based) of ``epoch`` (1-based), generalist.md §3.1.

    ``"epoch"`` gives ``t = epoch``; ``"iteration"`` gives ``t = (epoch-1) + (iteration+1)/n_iters``
    (equal to multinorm.md §6's ``epoch0 + (i+1)/n_batches``), so the last batch of epoch e is at
    t = e in both conventions.
    """
    if granularity == "epoch":
        return float(epoch)
    if granularity == "iteration":
        return (epoch - 1) + (iteration + 1) / n_iters
    raise ConfigError(
        f"schedule granularity must be one of {', '.join(GRANULARITIES)}; got {granularity!r}"
    )


def generalist_knots(epochs: int) -> list[float]:
    """Generalist knots ``[0, E//3, 2E//3, E]`` (floor division, pitfall 5); E=120: 0/40/80/120."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"epochs must be a positive integer; got {epochs!r}")
    return [0.0, float(epochs // 3), float(2 * epochs // 3), float(epochs)]


class TimedSchedule(ABC):
    """Shared ``time``/``at`` for schedule objects that carry a ``granularity`` field."""

    granularity: str

    @abstractmethod
    def __call__(self, t: float) -> float:
        """The value at training time ``t`` (in this schedule's time convention)."""

    def time(self, epoch: int, iteration: int, n_iters: int) -> float:
        return schedule_time(epoch, iteration, n_iters, self.granularity)

    def at(self, epoch: int, iteration: int, n_iters: int) -> float:
        return self(self.time(epoch, iteration, n_iters))


# --------------------------------------------------------------------------------------------
# schedule objects


@dataclass(frozen=True)
class Constant(TimedSchedule):
    """The same value at every time."""

    value: float
    granularity: str = "epoch"

    @property
    def knots(self) -> tuple[float, ...]:
        return ()

    def __call__(self, t: float) -> float:
        return self.value


@dataclass(frozen=True)
class PiecewiseLinear(TimedSchedule):
    """Linear interpolation between ``(knots[j], values[j])``, clamped outside (``np.interp``)."""

    knots: tuple[float, ...]
    values: tuple[float, ...]
    granularity: str = "epoch"

    def __call__(self, t: float) -> float:
        return float(np.interp(t, self.knots, self.values))


@dataclass(frozen=True)
class Static(TimedSchedule):
    """multinorm.md §6 ``static``: ``lr_max`` while ``t <= drop_at``, then ``lr_max / 10``."""

    lr_max: float
    drop_at: float = 70.0
    granularity: str = "iteration"

    @property
    def knots(self) -> tuple[float, ...]:
        return (self.drop_at,)

    def __call__(self, t: float) -> float:
        return self.lr_max if t <= self.drop_at else self.lr_max / 10.0


@dataclass(frozen=True)
class PiecewiseFT(TimedSchedule):
    """multinorm.md §6 ``piecewise-ft``: ``lr_max``, ``/10``, ``/100`` over thirds of ``t/E``."""

    lr_max: float
    epochs: int
    granularity: str = "iteration"

    @property
    def knots(self) -> tuple[float, ...]:
        return (self.epochs / 3.0, 2.0 * self.epochs / 3.0)

    def __call__(self, t: float) -> float:
        return _thirds(self.lr_max, t / self.epochs)


def _thirds(lr_max: float, frac: float) -> float:
    """``lr_max``, ``/10``, ``/100`` over the thirds of ``frac`` in [0, 1]."""
    if frac < 1.0 / 3.0:
        return lr_max
    if frac < 2.0 / 3.0:
        return lr_max / 10.0
    return lr_max / 100.0


@dataclass(frozen=True)
class PiecewiseImagenet(TimedSchedule):
    """multinorm.md §6 ``piecewise-imagenet``: the thirds of ``(i+1)/n_batches`` of each epoch.

    Its time is the fraction of the current epoch (the ImageNet scripts fine-tune for one epoch,
    where this equals ``piecewise-ft`` with E = 1); ``__call__`` takes that fraction.
    """

    lr_max: float
    granularity: str = "iteration"

    @property
    def knots(self) -> tuple[float, ...]:
        return (1.0 / 3.0, 2.0 / 3.0)

    def time(self, epoch: int, iteration: int, n_iters: int) -> float:
        return (iteration + 1) / n_iters

    def __call__(self, t: float) -> float:
        return _thirds(self.lr_max, t)


@dataclass(frozen=True)
class Superconverge(TimedSchedule):
    """multinorm.md §6 ``superconverge``: linear 0 -> ``lr_max`` at ``2E//5`` -> 0 at ``E``."""

    lr_max: float
    epochs: int
    granularity: str = "iteration"

    @property
    def knots(self) -> tuple[float, ...]:
        return (0.0, float(self.epochs * 2 // 5), float(self.epochs))

    def __call__(self, t: float) -> float:
        return float(np.interp(t, self.knots, (0.0, self.lr_max, 0.0)))


# --------------------------------------------------------------------------------------------
# functional constructors


def piecewise_linear(
    knots: Sequence[float], values: Sequence[float], granularity: str = "epoch"
) -> PiecewiseLinear:
    """``t -> np.interp(t, knots, values)``; knots must be non-decreasing (repeats allowed)."""
    ks = tuple(_real(k, "knot") for k in knots)
    vs = tuple(_real(v, "value") for v in values)
    if not ks or len(ks) != len(vs):
        raise ConfigError(
            f"piecewise_linear needs as many values as knots (at least one); got {len(ks)} knots "
            f"and {len(vs)} values"
        )
    if any(b < a for a, b in itertools.pairwise(ks)):
        raise ConfigError(f"piecewise_linear knots must be non-decreasing; got {list(ks)}")
    _check_granularity(granularity)
    return PiecewiseLinear(ks, vs, granularity)


def static(lr_max: float, drop_at: float = 70.0) -> Static:
    """multinorm.md §6 ``static`` (iteration time); ``drop_at`` is the published 70."""
    return Static(_real(lr_max, "lr_max"), _real(drop_at, "drop_at"))


def piecewise_ft(lr_max: float, epochs: int) -> PiecewiseFT:
    """multinorm.md §6 ``piecewise-ft`` (iteration time)."""
    return PiecewiseFT(_real(lr_max, "lr_max"), _epochs(epochs))


def superconverge(lr_max: float, epochs: int) -> Superconverge:
    """multinorm.md §6 ``superconverge`` (iteration time)."""
    return Superconverge(_real(lr_max, "lr_max"), _epochs(epochs))


# --------------------------------------------------------------------------------------------
# builder from config dicts

_KEYS: dict[str, tuple[set[str], set[str]]] = {
    # kind: (required keys, optional keys); "kind" itself is always allowed
    "constant": ({"value"}, {"granularity"}),
    "piecewise_linear": ({"values"}, {"knots", "knot_fractions", "epochs", "granularity"}),
    "generalist": ({"values", "epochs"}, {"granularity"}),
    "static": ({"lr_max"}, {"drop_at"}),
    "piecewise_ft": ({"lr_max", "epochs"}, set()),
    "piecewise_imagenet": ({"lr_max"}, set()),
    "superconverge": ({"lr_max", "epochs"}, set()),
}


def build_schedule(spec: Mapping[str, Any]) -> TimedSchedule:
    """Build a schedule from a config dict ``{"kind": ..., ...}`` (no sign check on values).

    Keys per kind (``-`` in a kind is read as ``_``, so ``piecewise-ft`` works):

    - ``constant``: ``value``; optional ``granularity``.
    - ``piecewise_linear``: ``values`` and either ``knots`` (epochs) or ``knot_fractions`` with
      ``epochs`` (knot = fraction * epochs); optional ``granularity`` (default ``epoch``).
    - ``generalist``: 4 ``values`` at ``generalist_knots(epochs)``; optional ``granularity``.
    - ``static``: ``lr_max``; optional ``drop_at`` (default 70).
    - ``piecewise_ft``, ``superconverge``: ``lr_max``, ``epochs``.
    - ``piecewise_imagenet``: ``lr_max``.

    Any problem raises a one-line :class:`ConfigError`.
    """
    if not isinstance(spec, Mapping):
        raise ConfigError(
            f"a schedule must be a mapping with a 'kind' (one of {', '.join(SCHEDULE_KINDS)}); "
            f"got {spec!r}"
        )
    raw_kind = spec.get("kind")
    kind = raw_kind.replace("-", "_") if isinstance(raw_kind, str) else raw_kind
    if not isinstance(kind, str) or kind not in _KEYS:
        raise ConfigError(
            f"unknown schedule kind {raw_kind!r}; allowed kinds: {', '.join(SCHEDULE_KINDS)}"
        )
    required, optional = _KEYS[kind]
    keys = set(spec) - {"kind"}
    missing = sorted(required - keys)
    unknown = sorted(keys - required - optional)
    if missing or unknown:
        problem = "; ".join(
            p
            for p in (
                f"missing {', '.join(missing)}" if missing else "",
                f"unknown {', '.join(unknown)}" if unknown else "",
            )
            if p
        )
        raise ConfigError(
            f"schedule kind '{kind}': {problem} (takes {', '.join(sorted(required))}"
            + (f"; optional {', '.join(sorted(optional))}" if optional else "")
            + ")"
        )
    gran = spec.get("granularity", "epoch")
    if kind == "constant":
        _check_granularity(gran)
        return Constant(_real(spec["value"], "value"), gran)
    if kind == "piecewise_linear":
        values = _real_list(spec["values"], "values")
        if ("knots" in spec) == ("knot_fractions" in spec):
            raise ConfigError(
                "schedule kind 'piecewise_linear' takes exactly one of knots or knot_fractions"
            )
        if "knots" in spec:
            if "epochs" in spec:
                _epochs(spec["epochs"])
            knots = _real_list(spec["knots"], "knots")
        else:
            if "epochs" not in spec:
                raise ConfigError("schedule kind 'piecewise_linear': knot_fractions needs epochs")
            epochs = _epochs(spec["epochs"])
            knots = [f * epochs for f in _real_list(spec["knot_fractions"], "knot_fractions")]
        return piecewise_linear(knots, values, gran)
    if kind == "generalist":
        values = _real_list(spec["values"], "values")
        if len(values) != 4:
            raise ConfigError(
                f"schedule kind 'generalist' needs 4 values (at epochs 0, E//3, 2E//3, E); "
                f"got {len(values)}"
            )
        return piecewise_linear(generalist_knots(_epochs(spec["epochs"])), values, gran)
    if kind == "static":
        return static(spec["lr_max"], spec.get("drop_at", 70.0))
    if kind == "piecewise_ft":
        return piecewise_ft(spec["lr_max"], spec["epochs"])
    if kind == "piecewise_imagenet":
        return PiecewiseImagenet(_real(spec["lr_max"], "lr_max"))
    return superconverge(spec["lr_max"], spec["epochs"])


def schedule_for(spec: Mapping[str, Any], epochs: int, where: str) -> TimedSchedule:
    """A recipe's schedule for a stage of ``epochs`` epochs; errors are prefixed with ``where``.

    Kinds whose shape depends on the run length (``generalist``, ``piecewise_ft``,
    ``superconverge``, ``knot_fractions``) get ``epochs`` unless the recipe sets it.
    """
    full = dict(spec)
    kind = str(full.get("kind", "")).replace("-", "_")
    if kind in {"generalist", "piecewise_ft", "superconverge"} or "knot_fractions" in full:
        full.setdefault("epochs", epochs)
    try:
        return build_schedule(full)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def build_lr_schedule(spec: Mapping[str, Any]) -> TimedSchedule:
    """:func:`build_schedule` for a learning rate: also rejects negative values."""
    sched = build_schedule(spec)
    for name in ("value", "values", "lr_max"):
        vals = spec.get(name)
        vals = vals if isinstance(vals, (list, tuple)) else [vals]
        for v in vals:
            if v is not None and v < 0:
                raise ConfigError(f"lr schedule '{spec['kind']}': {name} must be >= 0; got {v}")
    return sched


def as_schedule(fn: Callable[[float], float], granularity: str = "epoch") -> TimedSchedule:
    """Wrap a plain ``t -> value`` function into a schedule with the given time convention."""
    _check_granularity(granularity)
    return _Wrapped(fn, granularity)


@dataclass(frozen=True)
class _Wrapped(TimedSchedule):
    fn: Callable[[float], float]
    granularity: str = "epoch"

    def __call__(self, t: float) -> float:
        return float(self.fn(t))


# --------------------------------------------------------------------------------------------
# validation helpers


def _real(x: Any, name: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise ConfigError(f"schedule {name} must be a finite number; got {x!r}")
    return float(x)


def _real_list(xs: Any, name: str) -> list[float]:
    if not isinstance(xs, (list, tuple)):
        raise ConfigError(f"schedule {name} must be a list of numbers; got {xs!r}")
    return [_real(x, name) for x in xs]


def _epochs(epochs: Any) -> int:
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"schedule epochs must be a positive integer; got {epochs!r}")
    return epochs


def _check_granularity(granularity: Any) -> None:
    if granularity not in GRANULARITIES:
        raise ConfigError(
            f"schedule granularity must be one of {', '.join(GRANULARITIES)}; got {granularity!r}"
        )
