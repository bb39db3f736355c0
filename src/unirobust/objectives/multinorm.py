"""Shared pieces of the multi-norm objectives (SAT, AVG, MAX, E-AT, RAMP; multinorm.md §4, §5).

* :class:`MultiNormSpec`: ``threats`` (one per norm, in the order given) and APGD-train ``steps``,
  either one count for every norm or a per-norm mapping (ImageNet RAMP: ``{linf: 5, l1: 15}``).
* :class:`MultiNormObjective`: holds the threats by norm and the expert's generator, and attacks
  one threat with APGD-train (§2, training sparsity; the attack handles eval mode).
* :func:`ce_on`: the train-mode forward and mean CE every baseline ends with.
* :func:`select_max`: per-example choice of the highest eval-mode attack loss with an **explicit**
  tie order (§10: never rely on ``torch.max`` tie behaviour).
* :func:`draw_index`: one categorical draw from an explicit generator (SAT, E-AT), never the
  global RNG.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from unirobust.attacks.apgd import ApgdTrainResult, apgd_train
from unirobust.attacks.context import resolve_generator
from unirobust.attacks.pgd import check_count, threats_by_norm
from unirobust.errors import ConfigError
from unirobust.objectives.base import Metric, Objective, ObjectiveOutput, scored
from unirobust.schema import Spec, Threat
from unirobust.threats import ThreatModel

__all__ = [
    "DEFAULT_STEPS",
    "MAX_TIE_ORDER",
    "MultiNormObjective",
    "MultiNormSpec",
    "NormName",
    "Steps",
    "by_norm",
    "ce_on",
    "draw_index",
    "resolve_steps",
    "robust_metrics",
    "select_max",
    "spec_kwargs",
]

NormName = Literal["linf", "l2", "l1"]
Steps = Annotated[int, Field(ge=1)] | dict[NormName, Annotated[int, Field(ge=1)]]
"""APGD-train iterations: one count for every attacked norm, or one per norm."""

DEFAULT_STEPS = 10  # §5: every baseline uses 10-step APGD-train on CIFAR-10
MAX_TIE_ORDER: tuple[str, ...] = ("linf", "l1", "l2")  # §5 MAX: ties go to the first of these


def by_norm(threats: Iterable[ThreatModel]) -> dict[str, ThreatModel]:
    """``{norm: threat}`` in the order given; two threats of one norm are a config error."""
    return threats_by_norm(threats, who="a multi-norm objective")


def resolve_steps(steps: int | Mapping[str, int], norms: Sequence[str]) -> dict[str, int]:
    """``{norm: iterations}`` for the attacked ``norms``.

    A mapping must name exactly the attacked norms: a missing one has no sensible default and an
    extra one would be silently ignored.
    """
    if not isinstance(steps, Mapping):
        count = check_count("steps", steps, 1)
        return {norm: count for norm in norms}
    missing = [n for n in norms if n not in steps]
    extra = [n for n in steps if n not in norms]
    if missing or extra:
        raise ConfigError(
            f"steps {dict(steps)} must give one count for each attacked norm "
            f"({', '.join(norms)}); missing: {', '.join(missing) or '-'}, "
            f"not attacked: {', '.join(extra) or '-'}"
        )
    return {norm: check_count(f"steps.{norm}", steps[norm], 1) for norm in norms}


class MultiNormSpec(Spec):
    """Threats (one per norm; radii in [0,1]-pixel units) and APGD-train iterations."""

    threats: list[Threat] = Field(min_length=1)
    steps: Steps = DEFAULT_STEPS

    def attacked_norms(self) -> tuple[str, ...]:
        """The norms this method attacks (all given threats unless a subclass says otherwise)."""
        return tuple(by_norm(self.threats))

    @model_validator(mode="after")
    def _check_threats_and_steps(self) -> MultiNormSpec:
        given = by_norm(self.threats)
        attacked = self.attacked_norms()
        missing = [n for n in attacked if n not in given]
        if missing:
            raise ConfigError(
                f"{self.name} attacks {', '.join(missing)} but no such threat is given"
            )
        resolve_steps(self.steps, attacked)
        return self


class MultiNormObjective(Objective):
    """Base of the objectives that attack several threats with APGD-train (multinorm.md §2, §5).

    The attacked norms are ``attacked`` if given, else the class's ``fixed_norms`` (E-AT), else
    every threat. Subclasses with state create it in :meth:`setup_state`.
    """

    fixed_norms: ClassVar[tuple[str, ...] | None] = None

    def __init__(
        self,
        threats: Sequence[ThreatModel],
        steps: int | Mapping[str, int] = DEFAULT_STEPS,
        *,
        attacked: Sequence[str] | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        self.generator = resolve_generator(generator)
        self.threats = by_norm(threats)
        norms = tuple(attacked or self.fixed_norms or self.threats)
        unknown = [n for n in norms if n not in self.threats]
        if unknown:
            raise ConfigError(f"{self.name}: no threat given for {', '.join(unknown)}")
        self.attacked = norms
        self.steps = resolve_steps(steps, norms)
        self.setup_state()

    def setup_state(self) -> None:
        """Create per-run state (none by default)."""

    def attack(self, model: nn.Module, x: Tensor, y: Tensor, norm: str) -> ApgdTrainResult:
        """APGD-train (training sparsity 0.05 for l1) on ``norm``; the model's mode is restored."""
        return apgd_train(model, x, y, self.threats[norm], n_iter=self.steps[norm], is_train=True)

    def attack_all(
        self, model: nn.Module, x: Tensor, y: Tensor, norms: Sequence[str] | None = None
    ) -> dict[str, ApgdTrainResult]:
        """Attack every norm in ``norms`` (default: all attacked norms) on the same model."""
        return {n: self.attack(model, x, y, n) for n in (norms or self.attacked)}

    def train_on_norm(
        self, model: nn.Module, x: Tensor, y: Tensor, index: int, **metrics: Metric
    ) -> tuple[ObjectiveOutput, ApgdTrainResult]:
        """Attack ``attacked[index]`` and take CE on its best point (SAT, E-AT); logs ``norm``."""
        norm = self.attacked[index]
        result = self.attack(model, x, y, norm)
        metrics |= robust_metrics({norm: result})
        return ce_on(model, result.x_best, y, norm=Metric(float(index), "last"), **metrics), result


def ce_on(model: nn.Module, x_adv: Tensor, y: Tensor, **metrics: Metric) -> ObjectiveOutput:
    """One train-mode forward on the rows to train on and their mean CE."""
    logits = model(x_adv)
    return scored(F.cross_entropy(logits, y), logits, y, **metrics)


def robust_metrics(results: Mapping[str, ApgdTrainResult]) -> dict[str, Metric]:
    """``adv_acc_<norm>``: eval-mode accuracy along each attack (free: APGD-train tracks it)."""
    return {f"adv_acc_{n}": Metric(r.robust.float().mean()) for n, r in results.items()}


def select_max(candidates: Sequence[Tensor], losses: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Per example, the candidate with the highest loss; **ties go to the earliest candidate**.

    A later candidate replaces the current choice only if its loss is strictly greater, so the
    tie order is the order of ``candidates`` (RAMP passes (x_r, x_q): ties -> r; MAX passes
    linf, l1, l2). Returns the selected batch and the chosen index per example.
    """
    if not candidates or len(candidates) != len(losses):
        raise ValueError("select_max needs one loss per candidate and at least one candidate")
    chosen = candidates[0]
    best = losses[0]
    index = torch.zeros_like(best, dtype=torch.long)
    shape = (-1, *([1] * (chosen.dim() - 1)))
    for j in range(1, len(candidates)):
        take = losses[j] > best
        chosen = torch.where(take.reshape(shape), candidates[j], chosen)
        best = torch.where(take, losses[j], best)
        index = torch.where(take, torch.full_like(index, j), index)
    return chosen, index


def draw_index(weights: Sequence[float], generator: torch.Generator) -> int:
    """One draw of j with probability w_j / sum(w), from ``generator`` (never the global RNG).

    Inverse-CDF on one uniform number in float64, so the draw depends only on the generator state
    and the weights (bit-exact on resume). The weights must be >= 0 with a positive sum.
    """
    w = torch.tensor([float(v) for v in weights], dtype=torch.float64)
    if w.numel() == 0 or bool((w < 0).any()) or not float(w.sum()) > 0:
        raise ValueError(f"draw_index needs weights >= 0 with a positive sum, got {list(weights)}")
    u = float(torch.rand((), generator=generator, device=generator.device, dtype=torch.float64))
    cdf = torch.cumsum(w, 0) / w.sum()
    index = int((cdf <= u).sum())
    return min(index, w.numel() - 1)  # u < 1, but cdf[-1] may round below 1


def spec_kwargs(spec: Spec) -> dict[str, Any]:
    """The constructor arguments of a multi-norm spec: every field but ``name``."""
    return spec.options()
