"""Multi steepest descent (Maini et al., ICML 2020; multinorm.md §3).

One loop from delta = 0: per iteration one gradient, three candidate steps (linf, l2, l1) from the
same delta, each projected onto its own ball ∩ box; the candidate with the highest per-example CE
becomes the next delta (ties go to the later one in the order l1, l2, linf). The best delta seen
over all iterations is returned.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from unirobust.attacks.context import attack_mode, loss_and_grad, resolve_generator
from unirobust.attacks.pgd import ce_loss, check_count, threats_by_norm
from unirobust.errors import ConfigError
from unirobust.threats import ThreatModel

__all__ = ["DEFAULT_MSD_STEPS", "msd"]

DEFAULT_MSD_STEPS: dict[str, float] = {"linf": 0.003, "l2": 0.05, "l1": 0.05}


def _l1_topk_step(grad: Tensor, x_cur: Tensor, alpha: float, k: int) -> Tensor:
    """alpha * sign(g) on the top-k |g| among coordinates that can still move (MSD l1 step).

    Blocked: g < 0 with x+delta <= alpha, g > 0 with x+delta >= 1 - alpha, or x+delta outside
    (0, 1).
    """
    b = grad.shape[0]
    g = grad.reshape(b, -1)
    xc = x_cur.reshape(b, -1)
    blocked = ((g < 0) & (xc <= alpha)) | ((g > 0) & (xc >= 1 - alpha)) | (xc <= 0) | (xc >= 1)
    g = torch.where(blocked, torch.zeros_like(g), g)
    mag = g.abs()
    k = min(k, g.shape[1])
    kth = mag.topk(k, dim=1).values[:, -1:]
    keep = (mag >= kth) & (mag > 0)
    return (alpha * torch.sign(g) * keep.to(g.dtype)).reshape(grad.shape)


def msd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threats: Sequence[ThreatModel],
    *,
    n_iter: int = 50,
    step_sizes: dict[str, float] | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """MSD attack over one linf, one l2 and one l1 threat (radii from the threat models).

    ``step_sizes`` overrides the defaults (linf 0.003, l2 0.05, l1 0.05) per norm id. The l1 step
    draws k ~ U{5..20} per iteration from ``generator`` and uses alpha_1 * 20 / k on the top-k
    unblocked coordinates, followed by the exact l1-box projection. Returns x + the best delta seen
    over the iterations (strict >; the clean point itself is not a candidate), detached.
    """
    by_norm = threats_by_norm(threats, ("linf", "l2", "l1"), "msd")
    n_iter = check_count("n_iter", n_iter, 0)
    steps = dict(DEFAULT_MSD_STEPS)
    for key, value in (step_sizes or {}).items():
        if key not in steps:
            raise ConfigError(f"unknown msd step_sizes key {key!r}: allowed are linf, l2, l1")
        if isinstance(value, bool) or not math.isfinite(value) or value < 0:
            raise ConfigError(f"msd step size {key}={value!r} is invalid: must be >= 0")
        steps[key] = float(value)
    t_inf, t_2, t_1 = by_norm["linf"], by_norm["l2"], by_norm["l1"]
    gen = resolve_generator(generator)
    # One draw for all iterations: k ~ U{5..20}, a single host transfer.
    ks = torch.randint(5, 21, (max(n_iter, 1),), generator=gen, device=gen.device).tolist()

    x = x.detach()
    shape = (-1, *([1] * (x.dim() - 1)))
    x_adv = x.clone()
    best_x = x.clone()
    best_loss: Tensor | None = None
    with attack_mode(model):
        for it in range(n_iter):
            _, loss_cur, grad = loss_and_grad(model, x_adv, y, ce_loss)
            assert grad is not None
            if best_loss is None:
                # only iterates count (spec §3): the first candidate always replaces x
                best_loss = torch.full_like(loss_cur, float("-inf"))
            with torch.no_grad():
                alpha1 = steps["l1"] * 20.0 / ks[it]
                cand_l1 = t_1.project(x, x_adv + _l1_topk_step(grad, x_adv, alpha1, ks[it]))
                cand_l2 = t_2.project(x, x_adv + t_2.ascent_step(grad, steps["l2"]))
                cand_inf = t_inf.project(x, x_adv + t_inf.ascent_step(grad, steps["linf"]))
                chosen = cand_l1
                chosen_loss = ce_loss(model(cand_l1), y)
                for cand in (cand_l2, cand_inf):  # ties go to the later candidate
                    cand_loss = ce_loss(model(cand), y)
                    take = cand_loss >= chosen_loss
                    chosen = torch.where(take.reshape(shape), cand, chosen)
                    chosen_loss = torch.where(take, cand_loss, chosen_loss)
                x_adv = chosen
                improved = chosen_loss > best_loss
                best_x = torch.where(improved.reshape(shape), chosen, best_x)
                best_loss = torch.where(improved, chosen_loss, best_loss)
    best_x = best_x.detach()
    ok = t_inf.is_feasible(x, best_x) | t_2.is_feasible(x, best_x) | t_1.is_feasible(x, best_x)
    if not bool(ok.all()):
        raise AssertionError(f"msd returned {int((~ok).sum())} point(s) outside every threat ball")
    return best_x
