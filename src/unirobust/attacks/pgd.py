"""Fixed-step PGD for every norm (multinorm.md §3; generalist.md §2 "Training attack").

One loop serves all norms: the threat model supplies the random start, the steepest-ascent step
(sign for linf, normalised gradient for l2, the sparse top-k sign step for l1) and the projection.
The default run does exactly ``steps`` forward+gradient evaluations.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unirobust.attacks.context import attack_mode, loss_and_grad, resolve_generator
from unirobust.errors import ConfigError
from unirobust.threats import LinfBall, ThreatModel

__all__ = [
    "LossFn",
    "ce_loss",
    "dlr_loss",
    "dlr_targeted_loss",
    "margin_loss",
    "pgd",
    "pgd_default_step",
    "quarter_step",
    "resolve_loss",
    "threats_by_norm",
]

LossFn = Callable[[Tensor, Tensor], Tensor]


def ce_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Per-sample cross-entropy."""
    return F.cross_entropy(logits, y, reduction="none")


def margin_loss(logits: Tensor, y: Tensor) -> Tensor:
    """CW-style margin max_{j != y} z_j - z_y (positive iff misclassified)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    mask = F.one_hot(y, logits.shape[1]).bool()
    other = logits.masked_fill(mask, float("-inf")).amax(dim=1)
    return other - true


def dlr_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Untargeted DLR loss of Croce & Hein (2020): -(z_y - max_{j!=y} z_j)/(z_pi1 - z_pi3)."""
    srt, ind = logits.sort(dim=1)
    true = logits.gather(1, y[:, None]).squeeze(1)
    top_is_true = (ind[:, -1] == y).to(logits.dtype)
    other = srt[:, -2] * top_is_true + srt[:, -1] * (1.0 - top_is_true)
    return -(true - other) / (srt[:, -1] - srt[:, -3] + 1e-12)


def dlr_targeted_loss(logits: Tensor, y: Tensor, y_target: Tensor) -> Tensor:
    """Targeted DLR loss: -(z_y - z_t)/(z_pi1 - (z_pi3 + z_pi4)/2)."""
    srt = logits.sort(dim=1).values
    true = logits.gather(1, y[:, None]).squeeze(1)
    target = logits.gather(1, y_target[:, None]).squeeze(1)
    return -(true - target) / (srt[:, -1] - 0.5 * (srt[:, -3] + srt[:, -4]) + 1e-12)


def resolve_loss(loss: str | LossFn) -> LossFn:
    """``'ce'``, ``'margin'`` or a callable ``(logits, y) -> per-sample loss``."""
    if callable(loss):
        return loss
    table = {"ce": ce_loss, "margin": margin_loss}
    if loss not in table:
        raise ConfigError(f"unknown attack loss {loss!r}: allowed are 'ce', 'margin' or a callable")
    return table[loss]


def pgd_default_step(threat: ThreatModel, steps: int) -> float:
    """multinorm.md §3: alpha = 2.5 eps / K (2/255, 0.125 and 3 at the CIFAR-10 radii, K=10)."""
    return 2.5 * threat.eps / steps if steps > 0 else 0.0


def quarter_step(threat: ThreatModel) -> float:
    """eps / 4: the step of TRADES, Generalist's experts (§3.7) and PGD validation (§3.6)."""
    return threat.eps / 4


def check_threat(threat: object) -> ThreatModel:
    if not isinstance(threat, ThreatModel):
        raise ConfigError(
            f"threat must be a ThreatModel (e.g. parse_threat('linf:8/255')), got {threat!r}"
        )
    return threat


def threats_by_norm(
    threats: Iterable[object], required: Sequence[str] = (), who: str = "this method"
) -> dict[str, ThreatModel]:
    """``{norm: threat}`` in the order given: one threat per norm, at least one, and every norm
    in ``required`` present; otherwise a one-line ConfigError naming ``who``."""
    out: dict[str, ThreatModel] = {}
    for threat in map(check_threat, threats):
        if threat.norm in out:
            raise ConfigError(f"{who} got two {threat.norm} threats ({out[threat.norm]}, {threat})")
        out[threat.norm] = threat
    if not out:
        raise ConfigError(f"{who} needs at least one threat")
    missing = [n for n in required if n not in out]
    if missing:
        raise ConfigError(
            f"{who} needs one {', one '.join(required)} threat; missing {', '.join(missing)}"
        )
    return out


def check_count(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name}={value!r} is invalid: must be an integer >= {minimum}")
    return value


def _misclassified(logits: Tensor, y: Tensor) -> Tensor:
    if y.dim() == 1 and not y.is_floating_point() and y.shape[0] == logits.shape[0]:
        return logits.argmax(dim=1) != y
    return torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)


class _Best:
    """Per-sample best point: a misclassified point beats a correct one, then higher loss wins."""

    def __init__(self) -> None:
        self.x: Tensor | None = None
        self.loss: Tensor | None = None
        self.wrong: Tensor | None = None

    def update(self, x_adv: Tensor, loss: Tensor, wrong: Tensor) -> None:
        if self.x is None:
            self.x, self.loss, self.wrong = x_adv.clone(), loss.clone(), wrong.clone()
            return
        better = (wrong & ~self.wrong) | ((wrong == self.wrong) & (loss > self.loss))
        shape = (-1, *([1] * (x_adv.dim() - 1)))
        self.x = torch.where(better.reshape(shape), x_adv, self.x)
        self.loss = torch.where(better, loss, self.loss)
        self.wrong = self.wrong | wrong


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    *,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool | None = None,
    restarts: int = 1,
    loss: str | LossFn = "ce",
    start: Tensor | None = None,
    generator: torch.Generator | None = None,
    return_best: bool = False,
    sparsity: float = 0.05,
) -> Tensor:
    """Projected gradient ascent with a fixed step (multinorm.md §3).

    Args:
        model: classifier returning logits; run in eval mode with parameter grads off.
        x, y: clean batch in [0,1] and labels.
        threat: the feasible set.
        steps: number of gradient steps K (exactly K forward+grad evaluations per restart).
        step_size: fixed step alpha; default 2.5 * eps / K.
        random_start: default on for linf (classic U[-eps, eps]) and l2, off for l1.
        restarts: independent runs; the per-sample best final point is kept.
        loss: ``'ce'``, ``'margin'`` (max_other - true) or ``(logits, y) -> per-sample loss``.
        start: explicit starting point for the first restart (projected onto the feasible set).
        generator: source of randomness; a local generator seeded 0 if None.
        return_best: return the per-sample best iterate (a misclassified point beats a correct
            one, then the higher loss) instead of the last; costs one extra forward per restart.
        sparsity: fraction of coordinates kept by the l1 sparse step.

    Returns:
        Detached adversarial points inside the ball and the box.
    """
    threat = check_threat(threat)
    steps = check_count("steps", steps, 0)
    restarts = check_count("restarts", restarts, 1)
    if step_size is None:
        step_size = pgd_default_step(threat, steps)
    elif isinstance(step_size, bool) or not math.isfinite(step_size) or step_size < 0:
        raise ConfigError(f"step_size={step_size!r} is invalid: must be a finite number >= 0")
    if random_start is None:
        random_start = threat.norm != "l1"
    loss_fn = resolve_loss(loss)
    gen = resolve_generator(generator)
    track = return_best or restarts > 1
    best = _Best()
    x = x.detach()
    x_adv = x
    with attack_mode(model):
        for r in range(restarts):
            if start is not None and r == 0:
                x_adv = threat.project(x, start.detach().to(dtype=x.dtype, device=x.device))
            elif random_start:
                if isinstance(threat, LinfBall):
                    x_adv = threat.random_start(x, gen, uniform=True)
                else:
                    x_adv = threat.random_start(x, gen)
            else:
                x_adv = x.clone()
            for _ in range(steps):
                logits, values, grad = loss_and_grad(model, x_adv, y, loss_fn)
                if return_best:
                    best.update(x_adv, values, _misclassified(logits, y))
                with torch.no_grad():
                    step = threat.ascent_step(grad, step_size, sparsity=sparsity)
                    x_adv = threat.project(x, x_adv + step)
            if track:
                logits, values, _ = loss_and_grad(model, x_adv, y, loss_fn, need_grad=False)
                best.update(x_adv, values, _misclassified(logits, y))
    result = best.x if track and best.x is not None else x_adv
    result = result.detach()
    threat.assert_feasible(x, result)
    return result
