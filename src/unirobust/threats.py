"""Threat models: the only place that knows the geometry of a norm (multinorm.md §1).

A threat model is a small frozen value object: a norm id (``linf``, ``l2`` or ``l1``) and a
radius ``eps`` in [0,1]-pixel units. It knows how to project a candidate onto the feasible set
B_p(x, eps) ∩ [0,1]^d, how to draw a random feasible start, which steepest-ascent step belongs to
the norm, and how to measure a perturbation. Attacks are written once against this interface.

Everything is batched over the first dimension; nothing syncs with the host.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import Tensor

from unirobust.errors import ConfigError

__all__ = [
    "NORMS",
    "L1Ball",
    "L2Ball",
    "LinfBall",
    "ThreatModel",
    "parse_threat",
    "parse_threats",
    "project_l1_box",
    "to_pyautoattack_norm",
]

NORMS: tuple[str, ...] = ("linf", "l2", "l1")

# Tolerances of the feasibility check that every attack runs on its output.
_REL_TOL = 1e-5
_ABS_TOL = 1e-6


def _rows(t: Tensor) -> Tensor:
    """View a batch as (B, d)."""
    return t.reshape(t.shape[0], -1)


def _per_sample(value: float | Tensor, ref: Tensor) -> float | Tensor:
    """Broadcast a scalar or a per-sample tensor (B,) / (B,1,...) against a batch ``ref``."""
    if isinstance(value, Tensor):
        if value.dim() == 0:
            return value.to(ref.dtype)
        return value.to(device=ref.device, dtype=ref.dtype).reshape(
            ref.shape[0], *([1] * (ref.dim() - 1))
        )
    return float(value)


def _work_dtype(t: Tensor) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _draw(kind: str, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Draw U[0,1) or N(0,1) noise shaped like ``like`` from ``generator`` (never the global RNG).

    The noise is drawn on the generator's device and moved to ``like``'s device, so a CPU generator
    works for CUDA inputs. Without a generator a local one seeded 0 is used.
    """
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    fn = torch.rand if kind == "uniform" else torch.randn
    noise = fn(like.shape, generator=generator, device=generator.device, dtype=torch.float32)
    return noise.to(device=like.device, dtype=like.dtype)


def project_l1_box(x: Tensor, delta: Tensor, eps: float | Tensor) -> Tensor:
    """Exact Euclidean projection of ``delta`` onto {d : ||d||_1 <= eps, x + d in [0,1]^d}.

    Implements multinorm.md §1 ('Mind the box'): the solution is
    d_i = s_i * min(max(a_i - tau, 0), m_i) with a_i = |delta_i|, s_i = sign(delta_i) and the cap
    m_i = 1 - x_i (delta_i > 0) or x_i (otherwise). phi(tau) = sum_i min(max(a_i - tau, 0), m_i) is
    piecewise linear and non-increasing; its breakpoints are max(a_i - m_i, 0) (coordinate leaves
    its cap, slope -1 more) and a_i (coordinate reaches 0, slope +1). The breakpoints are sorted
    per row, phi is evaluated at all of them with cumulative sums, the crossing phi(tau) = eps is
    located with ``searchsorted`` and tau is interpolated. Because the cumulative sum starts at
    tau = 0 (where phi(0) > eps), a crossing inside the first segment is handled like any other.
    A Newton correction on the located segment and a final float guard keep the result feasible
    in float32.

    Args:
        x: clean points in [0,1], shape (B, ...).
        delta: candidate perturbations, same shape.
        eps: radius, a float or a per-sample tensor of shape (B,).

    Returns:
        The projected perturbation, shape and dtype of ``delta``.
    """
    out_dtype = delta.dtype
    work = _work_dtype(delta)
    b = delta.shape[0]
    y = _rows(delta).to(work)
    xf = _rows(x).to(work)
    if b == 0 or y.shape[1] == 0:
        return delta.clone()
    if isinstance(eps, Tensor):
        e = eps.to(device=y.device, dtype=work).reshape(-1)
        e = e.expand(b) if e.numel() == 1 else e
    else:
        e = torch.full((b,), float(eps), device=y.device, dtype=work)
    e = e.clamp_min(0.0)

    sign = torch.sign(y)
    a = y.abs()
    cap = torch.where(y > 0, 1.0 - xf, xf).clamp(0.0, 1.0)
    clipped = torch.minimum(a, cap)  # phi(0) terms: the box clip alone
    phi0 = clipped.sum(dim=1)

    # Breakpoints and slope events: +1 where a coordinate leaves its cap, -1 where it reaches 0.
    leave = (a - cap).clamp_min(0.0)
    points = torch.cat([leave, a], dim=1)
    events = torch.cat([torch.ones_like(a), -torch.ones_like(a)], dim=1)
    points, order = torch.sort(points, dim=1, stable=True)
    events = torch.gather(events, 1, order)
    active = torch.cumsum(events, dim=1) - events  # active coordinates on the segment ending here
    seg_len = torch.diff(points, dim=1, prepend=torch.zeros_like(points[:, :1]))
    drop = torch.cumsum(active * seg_len, dim=1)  # phi(0) - phi(points[:, j])

    need = (phi0 - e).clamp_min(0.0)  # how much phi must drop
    j = torch.searchsorted(drop.contiguous(), need.unsqueeze(1).contiguous(), right=False)
    j = j.clamp(max=points.shape[1] - 1)
    prev_j = (j - 1).clamp_min(0)
    at_start = j == 0
    t_prev = torch.where(at_start, torch.zeros_like(need[:, None]), points.gather(1, prev_j))
    drop_prev = torch.where(at_start, torch.zeros_like(need[:, None]), drop.gather(1, prev_j))
    slope = active.gather(1, j).clamp_min(1.0)
    tau = t_prev + (need[:, None] - drop_prev) / slope
    tau = torch.minimum(torch.maximum(tau, t_prev), points.gather(1, j))

    # One Newton step with the exact active count at tau removes the cumsum rounding error.
    def phi_at(t: Tensor) -> Tensor:
        return torch.minimum((a - t).clamp_min(0.0), cap).sum(dim=1, keepdim=True)

    n_active = ((a > tau) & (leave < tau)).sum(dim=1, keepdim=True).to(work)
    tau_newton = tau + (phi_at(tau) - e[:, None]) / n_active.clamp_min(1.0)
    tau = torch.where(n_active > 0, tau_newton.clamp_min(0.0), tau)

    tau = torch.where((phi0 <= e)[:, None], torch.zeros_like(tau), tau)
    d = torch.minimum((a - tau).clamp_min(0.0), cap)
    # Float guard: a shrink by at most a few ulps keeps ||d||_1 <= eps (shrinking stays in the box).
    norm1 = d.sum(dim=1, keepdim=True)
    scale = torch.where(norm1 > e[:, None], e[:, None] / norm1.clamp_min(1e-30), 1.0)
    d = d * scale
    return (sign * d).reshape(delta.shape).to(out_dtype)


@dataclass(frozen=True)
class ThreatModel(ABC):
    """A norm ball of radius ``eps`` intersected with the box [0,1]^d."""

    eps: float
    norm: ClassVar[str] = ""

    def __post_init__(self) -> None:
        eps = self.eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)):
            raise ConfigError(
                f"{self.norm} radius eps={eps!r} is invalid: must be a finite number >= 0"
            )
        eps = float(eps)
        if not math.isfinite(eps) or eps < 0:
            raise ConfigError(
                f"{self.norm} radius eps={eps!r} is invalid: must be a finite number >= 0"
            )
        object.__setattr__(self, "eps", eps)

    # ---- geometry -------------------------------------------------------------------------
    @abstractmethod
    def project(self, x: Tensor, x_adv: Tensor) -> Tensor:
        """Project ``x_adv`` onto B_p(x, eps) ∩ [0,1]^d (batched)."""

    @abstractmethod
    def random_start(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A random feasible point around ``x`` (multinorm.md §1 random initialisation)."""

    @abstractmethod
    def ascent_step(self, grad: Tensor, step_size: float | Tensor, **kw: object) -> Tensor:
        """The steepest-ascent step of size ``step_size`` (scalar or per-sample) for this norm."""

    @abstractmethod
    def distance(self, x: Tensor, x_adv: Tensor) -> Tensor:
        """Per-sample p-norm of ``x_adv - x``, shape (B,)."""

    # ---- helpers --------------------------------------------------------------------------
    def with_eps(self, eps: float) -> ThreatModel:
        """The same threat model with another radius."""
        return replace(self, eps=eps)

    def is_feasible(self, x: Tensor, x_adv: Tensor, eps: float | None = None) -> Tensor:
        """Per-sample bool: inside the ball (with float tolerance) and inside [0,1]."""
        radius = self.eps if eps is None else eps
        dist = self.distance(x, x_adv)
        in_ball = dist <= radius * (1 + _REL_TOL) + _ABS_TOL
        rows = _rows(x_adv)
        in_box = (rows >= 0).all(dim=1) & (rows <= 1).all(dim=1)
        return in_ball & in_box

    def assert_feasible(self, x: Tensor, x_adv: Tensor, eps: float | None = None) -> None:
        """Raise ``AssertionError`` if any point is outside the ball or the box (one host sync)."""
        ok = self.is_feasible(x, x_adv, eps)
        if not bool(ok.all()):
            bad = int((~ok).sum())
            worst = float(self.distance(x, x_adv).max())
            raise AssertionError(
                f"{bad} adversarial point(s) infeasible for {self}: max {self.norm} distance "
                f"{worst:.6g}, range [{float(x_adv.min()):.6g}, {float(x_adv.max()):.6g}]"
            )

    @property
    def label(self) -> str:
        """A human label: ``linf 8/255`` for k/255 linf radii, else ``l2 0.5``."""
        if self.norm == "linf" and self.eps > 0:
            k = round(self.eps * 255)
            if abs(self.eps * 255 - k) < 1e-6:
                return f"linf {k}/255"
        return f"{self.norm} {self.eps:g}"

    def __str__(self) -> str:
        return f"{self.norm}:{_format_radius(self.eps)}"


def _format_radius(eps: float) -> str:
    """Shortest exact text for ``eps``: ``8/255`` for exact k/255 values with long decimals."""
    text = repr(eps)
    if text.endswith(".0"):
        text = text[:-2]
    if len(text) > 8:
        k = round(eps * 255)
        if k > 0 and k / 255 == eps:
            return f"{k}/255"
    return text


@dataclass(frozen=True)
class LinfBall(ThreatModel):
    """l-infinity ball; its projection (clip, then box clip) is exact."""

    norm: ClassVar[str] = "linf"

    def project(self, x: Tensor, x_adv: Tensor) -> Tensor:
        eps = self.eps
        return torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp(0.0, 1.0)

    def random_start(
        self, x: Tensor, generator: torch.Generator | None = None, *, uniform: bool = False
    ) -> Tensor:
        """AutoAttack start eps*t/||t||_inf, t ~ U[-1,1]^d; ``uniform=True``: U[-eps,eps]^d."""
        t = 2.0 * _draw("uniform", x, generator) - 1.0
        if uniform:
            delta = self.eps * t
        else:
            scale = _rows(t).abs().amax(dim=1).clamp_min(1e-12)
            delta = self.eps * t / scale.reshape(-1, *([1] * (x.dim() - 1)))
        return (x + delta).clamp(0.0, 1.0)

    def ascent_step(self, grad: Tensor, step_size: float | Tensor, **kw: object) -> Tensor:
        return _per_sample(step_size, grad) * torch.sign(grad)

    def distance(self, x: Tensor, x_adv: Tensor) -> Tensor:
        return _rows(x_adv - x).abs().amax(dim=1)


@dataclass(frozen=True)
class L2Ball(ThreatModel):
    """l2 ball. Default projection: rescale to ||d|| <= eps, then box clip (AutoAttack parity,
    feasible but not exact). ``exact_projection=True`` bisects the exact ball ∩ box projection."""

    exact_projection: bool = False
    norm: ClassVar[str] = "l2"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.exact_projection, bool):
            raise ConfigError(
                f"l2 exact_projection={self.exact_projection!r} is invalid: must be true or false"
            )

    def _rescale(self, delta: Tensor) -> Tensor:
        norms = _rows(delta).norm(dim=1)
        factor = torch.where(norms > self.eps, self.eps / norms.clamp_min(1e-30), 1.0)
        return delta * factor.reshape(-1, *([1] * (delta.dim() - 1)))

    def project(self, x: Tensor, x_adv: Tensor) -> Tensor:
        if self.exact_projection:
            return x + self._exact_delta(x, x_adv - x)
        return (x + self._rescale(x_adv - x)).clamp(0.0, 1.0)

    def _exact_delta(self, x: Tensor, y: Tensor, iters: int = 60) -> Tensor:
        """argmin ||d - y|| s.t. ||d|| <= eps, x+d in box: d = clip(y/(1+mu)), bisection on mu."""
        lo_box, hi_box = -x, 1.0 - x
        shape = (-1, *([1] * (y.dim() - 1)))

        def at(mu: Tensor) -> Tensor:
            return torch.minimum(torch.maximum(y / (1.0 + mu.reshape(shape)), lo_box), hi_box)

        zero = torch.zeros(y.shape[0], device=y.device, dtype=y.dtype)
        d0 = at(zero)
        inside = _rows(d0).norm(dim=1) <= self.eps
        lo = zero.clone()
        # At mu_hi the unclipped y/(1+mu) has norm eps; clipping only shrinks it further.
        hi = (_rows(y).norm(dim=1) / max(self.eps, 1e-30) - 1.0).clamp_min(0.0)
        for _ in range(iters):
            mid = 0.5 * (lo + hi)
            over = _rows(at(mid)).norm(dim=1) > self.eps
            lo = torch.where(over, mid, lo)
            hi = torch.where(over, hi, mid)
        d = self._rescale(at(hi)) if self.eps > 0 else torch.zeros_like(y)
        d = torch.where(inside.reshape(shape), d0, d)
        return torch.minimum(torch.maximum(d, lo_box), hi_box)

    def random_start(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """eps*t/||t||_2 with t ~ N(0,I), then box clip."""
        t = _draw("normal", x, generator)
        scale = _rows(t).norm(dim=1).clamp_min(1e-12).reshape(-1, *([1] * (x.dim() - 1)))
        return (x + self.eps * t / scale).clamp(0.0, 1.0)

    def ascent_step(self, grad: Tensor, step_size: float | Tensor, **kw: object) -> Tensor:
        norms = _rows(grad).norm(dim=1).reshape(-1, *([1] * (grad.dim() - 1)))
        return _per_sample(step_size, grad) * grad / (norms + 1e-12)

    def distance(self, x: Tensor, x_adv: Tensor) -> Tensor:
        return _rows(x_adv - x).norm(dim=1)


@dataclass(frozen=True)
class L1Ball(ThreatModel):
    """l1 ball; exact ball ∩ box projection (:func:`project_l1_box`)."""

    norm: ClassVar[str] = "l1"

    def project(self, x: Tensor, x_adv: Tensor) -> Tensor:
        return (x + project_l1_box(x, x_adv - x, self.eps)).clamp(0.0, 1.0)

    def random_start(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """project_l1_box of t ~ N(0,I), then box clip."""
        return self.project(x, x + _draw("normal", x, generator))

    def ascent_step(self, grad: Tensor, step_size: float | Tensor, **kw: object) -> Tensor:
        """Sparse sign step with l1 mass ``step_size`` (multinorm.md §2).

        Keeps the coordinates with |g| >= t, t being the row's ascending-sorted |g| at index
        clamp(floor((1 - sparsity) d), 0, d - 1); ``sparsity`` (default 0.05) may be per-sample.
        """
        sparsity = kw.get("sparsity", 0.05)
        b = grad.shape[0]
        g = _rows(grad)
        d = g.shape[1]
        # float64 so that floor((1 - rho) d) is exact for large d (MPS has no float64).
        fdt = torch.float32 if g.device.type == "mps" else torch.float64
        if isinstance(sparsity, Tensor):
            rho = sparsity.to(device=g.device, dtype=fdt).reshape(-1).expand(b)
        else:
            rho = torch.full((b,), float(sparsity), device=g.device, dtype=fdt)
        # +1e-6 absorbs the binary rounding of rho (0.95*20 must give 19, not 18.999...).
        idx = torch.floor((1.0 - rho) * d + 1e-6).clamp(0, d - 1).long()
        mag = g.abs()
        thr = mag.sort(dim=1).values.gather(1, idx[:, None])
        direction = torch.sign(g) * (mag >= thr).to(g.dtype)
        count = direction.abs().sum(dim=1, keepdim=True)
        step = direction / (count + 1e-10)
        return _per_sample(step_size, grad) * step.reshape(grad.shape)

    def distance(self, x: Tensor, x_adv: Tensor) -> Tensor:
        return _rows(x_adv - x).abs().sum(dim=1)


_CLASSES: dict[str, type[ThreatModel]] = {"linf": LinfBall, "l2": L2Ball, "l1": L1Ball}
_EXAMPLE = "'linf:8/255', 'l2:0.5' or 'l1:12'"


def _parse_radius(text: str, spec: str) -> float:
    parts = text.split("/")
    try:
        if len(parts) == 1:
            value = float(parts[0])
        elif len(parts) == 2:
            num, den = float(parts[0]), float(parts[1])
            if den == 0:
                raise ZeroDivisionError
            value = num / den
        else:
            raise ValueError
    except (ValueError, ZeroDivisionError):
        raise ConfigError(
            f"invalid radius {text!r} in threat {spec!r}: expected a number such as 0.5 "
            f"or a fraction such as 8/255"
        ) from None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(
            f"invalid radius {text!r} in threat {spec!r}: must be a finite number >= 0"
        )
    return value


def parse_threat(text: str) -> ThreatModel:
    """Parse ``'linf:8/255'``, ``'l2:0.5'``, ``'L1:12'`` (norm case-insensitive)."""
    if not isinstance(text, str):
        raise ConfigError(f"threat must be a string such as {_EXAMPLE}, got {text!r}")
    spec = text.strip()
    if spec.count(":") != 1:
        raise ConfigError(f"malformed threat {text!r}: expected NORM:RADIUS such as {_EXAMPLE}")
    norm_text, radius_text = (p.strip() for p in spec.split(":"))
    norm = norm_text.lower()
    if norm not in _CLASSES:
        raise ConfigError(
            f"unknown norm {norm_text!r} in threat {text!r}: allowed norms are {', '.join(NORMS)}"
        )
    if not radius_text:
        raise ConfigError(f"malformed threat {text!r}: missing radius after ':'")
    eps = _parse_radius(radius_text, text)
    if norm == "linf" and eps > 1:
        # inputs live in [0,1]: a larger l_inf radius lets the attack reach any image
        raise ConfigError(
            f"invalid radius {radius_text!r} in threat {text!r}: an linf radius must be in "
            "[0, 1] for inputs in [0, 1] (e.g. 8/255)"
        )
    return _CLASSES[norm](eps)


def parse_threats(text: str) -> list[ThreatModel]:
    """Parse a comma-separated list such as ``'linf:0.1,l2:1.5,l1:10'``; duplicates are refused."""
    if not isinstance(text, str):
        raise ConfigError(f"threats must be a comma-separated string, got {text!r}")
    items = [p.strip() for p in text.split(",")]
    if not text.strip() or any(not p for p in items):
        raise ConfigError(
            f"malformed threat list {text!r}: expected comma-separated NORM:RADIUS items"
        )
    threats = [parse_threat(p) for p in items]
    seen: set[ThreatModel] = set()
    for t in threats:
        if t in seen:
            raise ConfigError(f"duplicate threat {t} in {text!r}: list each threat once")
        seen.add(t)
    return threats


def to_pyautoattack_norm(threat: ThreatModel) -> str:
    """The pyautoattack norm name: 'Linf', 'L2' or 'L1'."""
    names = {"linf": "Linf", "l2": "L2", "l1": "L1"}
    if threat.norm not in names:
        raise ConfigError(f"unknown norm {threat.norm!r}: allowed norms are {', '.join(NORMS)}")
    return names[threat.norm]
