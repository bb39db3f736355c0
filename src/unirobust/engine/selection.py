"""Model selection on the validation split (issue 7 point 7; generalist.md §3.6, multinorm.md §8).

Per epoch the global model is scored on the held-out validation split — never the test set — with
clean accuracy and PGD-K (step eps/4, random start) per validation threat. The per-sample
correctness is kept, so every score below comes from the same attacks:

* ``clean_plus_robust``: clean + mean robust accuracy over the threats (generalist.md §3.6);
* ``clean``: clean accuracy only (LP-FT's paper recipe);
* ``robust``: the mean robust accuracy;
* ``union``: the fraction of points correct clean *and* under every threat (multinorm.md §8).

With no threats every score falls back to clean accuracy. Each threat's attack draws from its own
generator seeded by the run seed, so validation never moves a training random stream.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from unirobust.attacks import pgd
from unirobust.attacks.pgd import quarter_step
from unirobust.models import batched_logits
from unirobust.seeding import derive_seed
from unirobust.threats import ThreatModel


@dataclass
class ValidationResult:
    clean_acc: float
    robust_acc: float | None
    union_acc: float | None
    select: float
    attack: str
    per_threat: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "clean_acc": self.clean_acc,
            "robust_acc": self.robust_acc,
            "union_acc": self.union_acc,
            "per_threat": self.per_threat,
            "select": self.select,
            "attack": self.attack,
        }


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


SELECTORS: dict[str, Callable[[float, list[float], float | None], float]] = {
    "clean_plus_robust": lambda clean, accs, union: clean + (_mean(accs) if accs else 0.0),
    "clean": lambda clean, accs, union: clean,
    "robust": lambda clean, accs, union: _mean(accs) if accs else clean,
    "union": lambda clean, accs, union: union if union is not None else clean,
}


def _correct(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return batched_logits(model, x).argmax(1) == y


def validate(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threats: list[ThreatModel],
    *,
    steps: int,
    seed: int,
    select: str,
    chunk: int = 500,
) -> ValidationResult:
    """Score the model on validation data (see the module docstring)."""
    clean_mask = _correct(model, x, y)
    clean = clean_mask.float().mean().item()
    union_mask = clean_mask.clone()
    accs: list[float] = []
    per_threat: dict[str, float] = {}
    for i, threat in enumerate(threats):
        generator = torch.Generator().manual_seed(derive_seed(seed, 2, i))
        masks = []
        for j in range(0, len(x), chunk):
            xb, yb = x[j : j + chunk], y[j : j + chunk]
            x_adv = pgd(
                model,
                xb,
                yb,
                threat,
                steps=steps,
                step_size=quarter_step(threat),
                random_start=True,
                generator=generator,
            )
            masks.append(_correct(model, x_adv, yb))
        mask = torch.cat(masks)
        union_mask &= mask
        accs.append(mask.float().mean().item())
        per_threat[str(threat)] = accs[-1]
    robust = _mean(accs) if accs else None
    union = union_mask.float().mean().item() if threats else None
    labels = ", ".join(t.label for t in threats)
    attack = f"PGD-{steps} {labels}, {len(x)} validation points" if threats else "clean only"
    score = SELECTORS[select](clean, accs, union)
    return ValidationResult(clean, robust, union, score, attack, per_threat)
