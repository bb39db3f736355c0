"""RAMP's key pair (q = source, r = target) per radius configuration (multinorm.md §4.1).

The pair is a hard-coded table, not the paper's "largest lp-ball volume" rule: taken literally that
rule gives (linf, l2) at the standard radii and contradicts the released scripts. A configuration
is the three radii (linf, l2, l1); one not listed needs an explicit ``pair:`` in the recipe, and
:func:`key_pair` raises a one-line :class:`~unirobust.errors.ConfigError` otherwise, at recipe load.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from unirobust.errors import ConfigError

__all__ = ["KEY_PAIRS", "KeyPairRow", "find_key_pair", "key_pair"]

_REL_TOL = 1e-9  # radii are parsed from text such as 8/255: equal configs match to the last bits


@dataclass(frozen=True)
class KeyPairRow:
    """Radii (linf, l2, l1) in [0,1]-pixel units and the attacked pair (q, r)."""

    linf: float
    l2: float
    l1: float
    q: str
    r: str
    note: str = ""

    def matches(self, radii: Mapping[str, float]) -> bool:
        mine = {"linf": self.linf, "l2": self.l2, "l1": self.l1}
        return set(radii) == set(mine) and all(
            math.isclose(radii[n], mine[n], rel_tol=_REL_TOL, abs_tol=0.0) for n in mine
        )


def _cifar(linf: float = 8 / 255, l2: float = 0.5, l1: float = 12.0) -> tuple[float, ...]:
    """A CIFAR-10 configuration: the standard radii except those given."""
    return (linf, l2, l1)


KEY_PAIRS: tuple[KeyPairRow, ...] = (
    KeyPairRow(*_cifar(), "linf", "l1", "CIFAR-10 standard"),
    KeyPairRow(4 / 255, 2.0, 255.0, "linf", "l1", "ImageNet standard"),
    KeyPairRow(*_cifar(linf=2 / 255), "l1", "l2", "CIFAR-10, linf 2/255"),
    KeyPairRow(*_cifar(linf=4 / 255), "l1", "linf", "CIFAR-10, linf 4/255"),
    KeyPairRow(*_cifar(linf=12 / 255), "linf", "l1", "CIFAR-10, linf 12/255"),
    KeyPairRow(*_cifar(linf=16 / 255), "linf", "l1", "CIFAR-10, linf 16/255"),
    KeyPairRow(*_cifar(l1=6.0), "linf", "l1", "CIFAR-10, l1 6"),
    KeyPairRow(*_cifar(l1=9.0), "linf", "l1", "CIFAR-10, l1 9"),
    KeyPairRow(*_cifar(l1=15.0), "linf", "l1", "CIFAR-10, l1 15"),
    KeyPairRow(*_cifar(l1=18.0), "l1", "linf", "CIFAR-10, l1 18"),
    KeyPairRow(*_cifar(l2=0.25), "linf", "l1", "CIFAR-10, l2 0.25"),
    KeyPairRow(*_cifar(l2=0.75), "linf", "l1", "CIFAR-10, l2 0.75"),
    KeyPairRow(*_cifar(l2=1.0), "linf", "l1", "CIFAR-10, l2 1"),
    KeyPairRow(*_cifar(l2=1.5), "l2", "linf", "CIFAR-10, l2 1.5"),
    # Fashion-MNIST proxy (the project's own row; docs/results.md "Multi-norm radii"): measured
    # with benchmarks/multinorm_radii.py, the strongest conflict is l_inf <-> l_1 (l_inf-AT keeps
    # 4.2% l_1 against the l_1-AT model's 48.4%; l_1-AT keeps 13.8% l_inf against 42.8%).
    KeyPairRow(0.15, 2.0, 15.0, "linf", "l1", "Fashion-MNIST proxy"),
)
"""Every configuration with a known key pair (§4.1); matched on all three radii."""


def find_key_pair(radii: Mapping[str, float]) -> tuple[str, str] | None:
    """(q, r) for radii ``{linf, l2, l1}``, or None if the configuration is not in the table."""
    for row in KEY_PAIRS:
        if row.matches(radii):
            return row.q, row.r
    return None


def key_pair(radii: Mapping[str, float], override: Sequence[str] | None = None) -> tuple[str, str]:
    """The (q, r) RAMP attacks: ``override`` if given, else the table row of ``radii``."""
    if override is not None:
        if isinstance(override, str) or len(override) != 2:
            raise ConfigError(f"ramp pair must name two norms [q, r], got {list(override)}")
        q, r = override
        if q == r:
            raise ConfigError(f"ramp pair must name two different norms, got [{q}, {r}]")
        missing = [n for n in (q, r) if n not in radii]
        if missing:
            raise ConfigError(f"ramp pair [{q}, {r}] names {', '.join(missing)}, not in threats")
        return q, r
    found = find_key_pair(radii)
    if found is None:
        shown = ", ".join(f"{n}:{v:g}" for n, v in radii.items())
        raise ConfigError(
            f"ramp: no key-pair table entry (multinorm.md §4.1) for threats {shown}; "
            f"set 'pair: [q, r]' explicitly, e.g. pair: [linf, l1]"
        )
    return found
