"""Single-threat adversarial objectives: PGD-AT and TRADES (multinorm.md §5, generalist.md §3.2).

Both craft their attack in eval mode from the raw model (the attack functions switch modes and
restore them) and compute the loss with the model in the caller's train mode.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unirobust.attacks.apgd import apgd_train
from unirobust.attacks.context import attack_mode
from unirobust.attacks.pgd import check_count, check_threat, pgd
from unirobust.errors import ConfigError
from unirobust.objectives.base import ObjectiveOutput
from unirobust.threats import ThreatModel

__all__ = ["PgdAT", "Trades"]


def _check_step(step_size: float | None) -> float | None:
    if step_size is None:
        return None
    if isinstance(step_size, bool) or not isinstance(step_size, (int, float)):
        raise ConfigError(f"step_size={step_size!r} is invalid: must be a finite number > 0")
    if not math.isfinite(step_size) or step_size <= 0:
        raise ConfigError(f"step_size={step_size!r} is invalid: must be a finite number > 0")
    return float(step_size)


class PgdAT:
    """PGD adversarial training: CE on adversarial points (Madry et al.).

    ``attack='pgd'``: classic fixed-step PGD (linf random start U[-eps, eps], default step
    2.5 eps / steps). ``attack='apgd'``: E-AT/RAMP APGD-train with ``steps`` iterations, training on
    its best-loss iterate (no random start; step size is adaptive, so ``step_size`` and
    ``random_start`` must be left unset). Logs ``adv_acc`` (eval-mode accuracy along the attack)
    for ``apgd``, where it is free.
    """

    name = "pgd_at"

    def __init__(
        self,
        threat: ThreatModel,
        *,
        attack: str = "pgd",
        steps: int = 10,
        step_size: float | None = None,
        random_start: bool | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        self.threat = check_threat(threat)
        if attack not in ("pgd", "apgd"):
            raise ConfigError(f"unknown pgd_at attack {attack!r}: allowed are 'pgd' and 'apgd'")
        self.attack = attack
        self.steps = check_count("steps", steps, 1)
        self.step_size = _check_step(step_size)
        if attack == "apgd" and self.step_size is not None:
            raise ConfigError("step_size is not used by attack 'apgd' (adaptive); leave it unset")
        if attack == "apgd" and random_start:
            raise ConfigError("random_start is not used by attack 'apgd' (it starts at x)")
        if random_start is not None and not isinstance(random_start, bool):
            raise ConfigError(f"random_start={random_start!r} is invalid: must be true or false")
        self.random_start = random_start
        self.generator = generator

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> ObjectiveOutput:
        logs: dict[str, float] = {}
        if self.attack == "pgd":
            x_adv = pgd(
                model,
                x,
                y,
                self.threat,
                steps=self.steps,
                step_size=self.step_size,
                random_start=self.random_start,
                generator=self.generator,
            )
        else:
            result = apgd_train(model, x, y, self.threat, n_iter=self.steps, is_train=True)
            x_adv = result.x_best
            logs["adv_acc"] = float(result.robust.float().mean())
        logits = model(x_adv)
        return ObjectiveOutput(F.cross_entropy(logits, y), logits, logs)


def _kl_rows(p_log_target: Tensor, log_q: Tensor) -> Tensor:
    """Per-row KL(p || q) from log p and log q."""
    return (p_log_target.exp() * (p_log_target - log_q)).sum(dim=1)


class Trades:
    """TRADES (Zhang et al. 2019): CE(f(x), y) + beta * (1/B) sum_i KL(p(x)_i || p(x')_i).

    x' is PGD on the per-example KL against the eval-mode clean distribution, starting from
    x + 0.001 N(0, I) (drawn from ``generator``), ``steps`` steps of size ``step_size`` (default
    eps / 4, i.e. 2/255 at 8/255). The loss uses train-mode forwards on x and x'; gradients flow
    through both p(x) and p(x'). The returned logits are the clean train-mode logits.
    """

    name = "trades"

    def __init__(
        self,
        threat: ThreatModel,
        *,
        beta: float = 6.0,
        steps: int = 10,
        step_size: float | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        self.threat = check_threat(threat)
        if isinstance(beta, bool) or not isinstance(beta, (int, float)):
            raise ConfigError(f"trades beta={beta!r} is invalid: must be a finite number >= 0")
        if not math.isfinite(beta) or beta < 0:
            raise ConfigError(f"trades beta={beta!r} is invalid: must be a finite number >= 0")
        self.beta = float(beta)
        self.steps = check_count("steps", steps, 1)
        step = _check_step(step_size)
        self.step_size = step if step is not None else self.threat.eps / 4.0
        self.generator = generator

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> ObjectiveOutput:
        x = x.detach()
        with attack_mode(model), torch.no_grad():
            log_p_clean = F.log_softmax(model(x), dim=1)

        def kl_to_clean(logits: Tensor, _y: Tensor) -> Tensor:
            return _kl_rows(log_p_clean, F.log_softmax(logits, dim=1))

        gen = self.generator
        if gen is None:
            gen = torch.Generator().manual_seed(0)
        noise = torch.randn(x.shape, generator=gen, device=gen.device, dtype=torch.float32)
        start = (x + 0.001 * noise.to(device=x.device, dtype=x.dtype)).clamp(0.0, 1.0)
        x_adv = pgd(
            model,
            x,
            y,
            self.threat,
            steps=self.steps,
            step_size=self.step_size,
            random_start=False,
            loss=kl_to_clean,
            start=start,
            generator=gen,
        )
        logits = model(x)
        logits_adv = model(x_adv)
        natural = F.cross_entropy(logits, y)
        robust = _kl_rows(F.log_softmax(logits, dim=1), F.log_softmax(logits_adv, dim=1)).mean()
        loss = natural + self.beta * robust
        return ObjectiveOutput(
            loss,
            logits,
            {"loss_natural": float(natural.detach()), "loss_robust": float(robust.detach())},
        )
