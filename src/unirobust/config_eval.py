"""The evaluation side of a recipe: per-epoch validation and the final test-set evaluation.

Split out of :mod:`unirobust.config` (which re-exports these classes) so that module stays about
the training side; the fields and their meaning are unchanged.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from unirobust.schema import Strict, Threat

__all__ = ["EvalConfig", "MembersValidation", "ThreatList", "ValidationConfig"]

ThreatList = list[Threat]
"""Threats such as ``linf:8/255``, each parsed once into a ThreatModel at load time."""


class MembersValidation(Strict):
    """Per-member validation (see :class:`ValidationConfig`): same threats and steps as ``val``."""

    every: int = Field(1, ge=1)
    n: int | None = Field(None, gt=0)


class ValidationConfig(Strict):
    """Per-epoch model selection on the validation split, never the test set.

    PGD-``steps`` (step eps/4, random start) per threat (generalist.md §3.6). ``select`` is the
    selection score (``engine.selection``): ``clean_plus_robust`` (clean + mean robust accuracy
    over the threats, generalist.md §3.6), ``clean``, ``robust`` (mean robust accuracy) or
    ``union`` (per sample, robust under every threat at once; multinorm.md §8). ``diagnostics``
    adds per-epoch measurements of the global model on the same split (``engine.diagnostics``:
    head norm, feature change from the stage start, feature cosine, FDR, calibration).
    ``members`` also validates, every ``members.every`` epochs on the first ``members.n`` points,
    the models the global one is made of (each expert and, for ``ema_mix``, each expert's EMA;
    issue 12), logged under ``val.members``; they play no part in the selection.
    """

    threats: ThreatList = Field(default_factory=list)
    members: MembersValidation | None = None
    select: Literal["clean_plus_robust", "clean", "robust", "union"] = "clean_plus_robust"
    diagnostics: list[
        Literal["head_norm", "feature_change", "feature_cosine", "fdr", "calibration"]
    ] = Field(default_factory=list)
    steps: int = Field(20, ge=1)
    n: int | None = Field(None, gt=0)
    every: int = Field(1, ge=1)


class EvalConfig(Strict):
    """The final test-set evaluation of the saved checkpoints, as metric groups.

    ``clean`` always runs; ``threats``/``union`` when there are threats (``threats``, else the
    recipe's ``validation.threats``); ``calibration`` and ``corruptions`` when asked for. Setting
    ``suite`` or ``union_only`` asks for robust evaluation: without any threat that is an error.
    ``n: null`` evaluates every test point; ``seed`` seeds the attacks and the corruptions.
    ``points`` evaluates a stored list of test positions instead of the first ``n`` (a built-in
    name such as ``imagenet-val-10k`` or a file, one position per line; ``n`` then takes the
    list's first ``n``): ``evaluation.points``, multinorm.md §8.
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
    points: str | None = None

    @field_validator("points")
    @classmethod
    def _known_points(cls, value: str | None) -> str | None:
        from unirobust.evaluation.points import check_points_name

        return None if value is None else check_points_name(value)

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
