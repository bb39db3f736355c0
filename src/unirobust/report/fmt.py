"""Formatting shared by the report's tables and figures: numbers, threats, points, md tables.

Accuracies are fractions in [0, 1] shown as percentages with two decimals; `n/a` marks a number an
evaluation did not produce, `—` something that was not part of it.
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

from unirobust.evaluation.keys import Summary as S

NA = "n/a"  # evaluated, but no number (e.g. per-threat accuracy in a union-only suite)
ABSENT = "—"  # not part of this evaluation
UNION_NOTE = (
    "union = fraction of points that resist every listed threat at once "
    "(per-sample worst case, not an average over threats)"
)


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def _pct(x: Any) -> str:
    v = _num(x)
    return NA if v is None else f"{100.0 * v:.2f}"


def _fmt_agg(agg: Mapping[str, Any] | None, n_runs: int) -> str:
    """``mean ± std`` in % of an aggregate over seeds, ``(n=k)`` when only k of n_runs have it."""
    if agg is None:
        return ABSENT
    if agg["mean"] is None:
        return NA
    text = _pct(agg["mean"])
    if agg["std"] is not None:
        text += f" ± {100 * agg['std']:.2f}"
    if agg["n"] < n_runs:
        text += f" (n={agg['n']})"
    return text


def _pct_or_nan(x: Any) -> float:
    v = _num(x)
    return math.nan if v is None else 100.0 * v


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def _cell(x: Any) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[Any], rows: Sequence[Sequence[Any]], align: str = "") -> str:
    """A pipe table padded to column width, readable both rendered and as plain text.

    ``align`` holds one letter per column: ``l`` (default) or ``r``.
    """
    cells = [[_cell(c) for c in header]] + [[_cell(c) for c in r] for r in rows]
    ncol = len(header)
    align = (align or "").ljust(ncol, "l")
    widths = [max(3, *(len(r[i]) for r in cells)) for i in range(ncol)]

    def line(r: list[str]) -> str:
        parts = [
            c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(r, widths, align, strict=True)
        ]
        return "| " + " | ".join(parts) + " |"

    sep = [
        ("-" * (w - 1) + ":") if a == "r" else "-" * w for w, a in zip(widths, align, strict=True)
    ]
    return "\n".join([line(cells[0]), "| " + " | ".join(sep) + " |", *map(line, cells[1:])])


def _compact(value: Any, nested: bool = False) -> str:
    if isinstance(value, Mapping):
        text = ", ".join(f"{k}={_compact(v, True)}" for k, v in value.items())
        return "{" + text + "}" if nested else text
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_compact(v, True) for v in value) + "]"
    return str(value)


def _threat_text(t: Any) -> str:
    """'linf:0.1' / {'norm': 'linf', 'eps': 0.1} / lists of those -> 'linf 0.1'."""
    if t is None:
        return ABSENT
    if isinstance(t, str):
        return t.replace(":", " ")
    if isinstance(t, Mapping):
        norm = t.get("norm", t.get("name"))
        eps = t.get("eps")
        if norm is not None and eps is not None:
            rest = {k: v for k, v in t.items() if k not in ("norm", "name", "eps")}
            return f"{norm} {eps}" + (f" ({_compact(rest)})" if rest else "")
        return _compact(t)
    if isinstance(t, (list, tuple)):
        return " + ".join(_threat_text(x) for x in t)
    return str(t)


def _threats(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(spec, human label) pairs of a summary, labels falling back to the spec."""
    specs = [str(s) for s in summary.get(S.THREATS) or []]
    labels = summary.get(S.THREAT_LABELS) or []
    if len(labels) != len(specs):
        labels = [s.replace(":", " ") for s in specs]
    return list(zip(specs, (str(x) for x in labels), strict=True))


def _which_points(summary: Mapping[str, Any]) -> str:
    """Which points, always with their number: 'first 1000 test points', 'all test points, n=…'."""
    n = summary.get(S.N_POINTS)
    text = str(summary.get(S.POINTS) or "").strip()
    if not text:
        return f"{n} points" if n is not None else "unknown points"
    if n is None or str(n) in text:
        return text
    return f"{text}, n={n}"


def _robust(summary: Mapping[str, Any], spec: str) -> Any:
    robust = summary.get(S.ROBUST_ACC)
    return robust.get(spec) if isinstance(robust, Mapping) else None


def _show_union(summary: Mapping[str, Any]) -> bool:
    return len(_threats(summary)) > 1 or _num(summary.get(S.UNION_ACC)) is not None


def _wrap(text: str, width: int = 95) -> str:
    return "\n".join(textwrap.fill(part, width) for part in text.split("\n"))


def _seconds(x: Any) -> str:
    v = _num(x)
    if v is None:
        return NA
    if v < 120:
        return f"{v:.1f} s"
    return f"{v:.0f} s ({v / 60:.1f} min)"


def _severities(per: Mapping[str, Any]) -> list[str]:
    sev: set[str] = set()
    for d in per.values():
        if isinstance(d, Mapping):
            sev.update(str(k) for k in d)

    def key(x: str) -> tuple[int, float | str]:
        try:
            return (0, float(x))
        except ValueError:
            return (1, x)

    return sorted(sev, key=key)
