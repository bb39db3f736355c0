"""Generalist's merge rule: EMA experts mixed into an EMA global learner (generalist.md §2, §3).

Per iteration, after the Trainer stepped every expert on the batch, :meth:`EmaMix.after_step` does

    d   = min(cap, (s+1)/(s+10))                       decay from the step counter s
    E_k <- d*E_k + (1-d)*theta_k        for every k    (§2 steps 3 and 5)
    G   <- d*G   + (1-d)*sum_k w_k(t)*E_k              (§2 step 6, summed in expert order)
    if sync: theta_k <- G (params and buffers)         (§2 step 7, §3.1 sync_mode)
    s   <- s+1                                         (§2 step 8)

The released code updates E_R right after the robust step and before the natural step. E_k depends
only on theta_k, and theta_k is not touched by the other experts' steps, so updating all E_k after
all steps gives the same numbers.

Tensors (§3.5). Each model's tensors are collected once at :meth:`EmaMix.setup`: parameters and
floating buffers (BN running stats) are updated with ``torch._foreach_lerp_``; integer buffers
(``num_batches_tracked``) are never averaged: E_k copies theta_k's value and G copies the anchor's
E (the first local expert's E; every expert takes the same number of steps, so they are all
equal). The mix is accumulated into a preallocated scratch (views of one flat buffer), so a step
allocates nothing and never calls ``.item()``. The expert models must not be moved or have their
parameters replaced after ``setup`` (``load_state_dict`` on them is fine: it copies in place).

Distributed mode (§3.4). ``local_experts`` lists the global indices of the experts this rank holds
(the ``experts`` passed to the hooks are exactly those, in that order) and ``all_reduce`` sums one
flat tensor in place over the mix group (e.g. ``lambda t: dist.all_reduce(t, group=mix_group)``).
The rank packs sum over its local k of w_k*E_k into the flat scratch, all-reduces it, and applies
the same G update as every other rank. G starts as a copy of the first local expert's initial
weights, identical on every rank because all experts start from one initialisation (pitfall 8);
``setup`` must therefore be called before training, and a resume goes through
:meth:`load_state_dict`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from unirobust.errors import CheckpointError, ConfigError
from unirobust.experts.expert import Expert
from unirobust.experts.merge import MERGE_RULES, MergeContext, MergeRule
from unirobust.experts.schedules import schedule_for
from unirobust.experts.tensors import StateTensors, copy_list, lerp_list, shadow, unwrap
from unirobust.schema import Spec

SYNC_MODES: tuple[str, ...] = ("every_iteration", "once_per_epoch", "off")
WEIGHT_TOL = 1e-6


# --------------------------------------------------------------------------------------------
# pure helpers


def ema_decay(s: int, cap: float = 0.999) -> float:
    """``min(cap, (s+1)/(s+10))``: 0.1 at s=0, 2/11 at s=1, the cap 0.999 from s=8990 on."""
    return min(cap, (s + 1) / (s + 10))


def sync_schedule(
    epochs: int, sync_start: int | None = None, sync_interval: int | None = None
) -> tuple[int, int]:
    """``(sync_start, sync_interval)`` of §3.1, with explicit values overriding the defaults.

    Defaults are round-half-up in exact integer arithmetic: ``floor(0.625E + 0.5) = (5E+4)//8``
    and ``max(1, floor(E/24 + 0.5)) = max(1, (E+12)//24)``. E=120 gives (75, 5).
    """
    for name, v, minimum in (("epochs", epochs, 1), ("sync_start", sync_start, 1)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < minimum):
            raise ConfigError(f"{name} must be an integer >= {minimum}; got {v!r}")
    if sync_interval is not None and (
        isinstance(sync_interval, bool) or not isinstance(sync_interval, int) or sync_interval < 1
    ):
        raise ConfigError(f"sync_interval must be an integer >= 1; got {sync_interval!r}")
    start = (5 * epochs + 4) // 8 if sync_start is None else sync_start
    interval = max(1, (epochs + 12) // 24) if sync_interval is None else sync_interval
    return start, interval


def is_sync_epoch(epoch: int, start: int, interval: int) -> bool:
    """True for epochs ``e >= start`` with ``(e - start) % interval == 0`` (1-based epochs)."""
    return epoch >= start and (epoch - start) % interval == 0


def sync_epochs(
    epochs: int,
    sync_start: int | None = None,
    sync_interval: int | None = None,
    sync_mode: str = "every_iteration",
) -> list[int]:
    """The 1-based epochs in which a run of ``epochs`` epochs syncs (none for ``sync_mode: off``),
    for reports and studies that show the schedule (issue 12)."""
    if sync_mode == "off":
        return []
    start, interval = sync_schedule(epochs, sync_start, sync_interval)
    return [e for e in range(1, epochs + 1) if is_sync_epoch(e, start, interval)]


def check_mix_weights(weights: Sequence[Any], epochs: int, tol: float = WEIGHT_TOL) -> None:
    """§3.3: each ``w_k`` in [0, 1] and ``sum_k w_k = 1`` (within ``tol``), else ``ConfigError``.

    The check runs at the union of all knots (sufficient for piecewise-linear weights) plus every
    integer epoch 1..E and the midpoints between consecutive check points, so step schedules (and
    plain functions without ``knots``) are covered on every interval as well. Weights are called
    as ``w(t)``; objects that are not callable but have ``at`` are evaluated as ``w.at(e, 0, 1)``
    (t = e in both time conventions) at integer epochs.
    """
    if not weights:
        raise ConfigError("a merge 'ema_mix' needs at least one expert mix weight")
    points: set[float] = {float(e) for e in range(1, epochs + 1)}
    for w in weights:
        points.update(float(k) for k in getattr(w, "knots", ()))
    ordered = sorted(points)
    # knots and whole epochs first, so an error names one of them when it can
    ordered += sorted({(a + b) / 2.0 for a, b in itertools.pairwise(ordered)})

    def value(w: Any, t: float) -> float | None:
        if callable(w):
            return float(w(t))
        if t == int(t) and t >= 1:
            return float(w.at(int(t), 0, 1))
        return None

    for t in ordered:
        vals = [value(w, t) for w in weights]
        if any(v is None for v in vals):
            continue
        for k, v in enumerate(vals):
            assert v is not None
            if not (-tol <= v <= 1.0 + tol) or not math.isfinite(v):
                raise ConfigError(
                    f"mix weight of expert {k} is {v:g} at epoch {t:g}; each weight must be in "
                    f"[0, 1]"
                )
        total = math.fsum(v for v in vals if v is not None)
        if abs(total - 1.0) > tol:
            raise ConfigError(
                f"mix weights sum to {total:.9g} at epoch {t:g}; they must sum to 1 "
                f"(tolerance {tol:g}) at every epoch"
            )


# --------------------------------------------------------------------------------------------
# the merge rule


class EmaMix(MergeRule):
    """Generalist merge rule (see the module docstring); implements ``MergeRule``.

    ``mix_weights[k]`` is expert k's weight schedule (global index, anchor first), evaluated with
    ``at(epoch, iteration, n_iters)``; they are checked with :func:`check_mix_weights` here.
    ``sync_mode``: ``every_iteration`` (faithful: sync after every iteration of a sync epoch),
    ``once_per_epoch`` (one sync in :meth:`after_epoch` of a sync epoch, a documented deviation)
    or ``off``.
    """

    every_step = True
    every_epoch = True

    def __init__(
        self,
        *,
        mix_weights: Sequence[Any],
        epochs: int,
        ema_cap: float = 0.999,
        sync_start: int | None = None,
        sync_interval: int | None = None,
        sync_mode: str = "every_iteration",
        local_experts: Sequence[int] | None = None,
        n_experts: int | None = None,
        all_reduce: Callable[[Tensor], None] | None = None,
    ) -> None:
        if sync_mode not in SYNC_MODES:
            raise ConfigError(
                f"sync_mode must be one of {', '.join(SYNC_MODES)}; got {sync_mode!r}"
            )
        if isinstance(ema_cap, bool) or not isinstance(ema_cap, (int, float)):
            raise ConfigError(f"ema_cap must be a number in [0, 1]; got {ema_cap!r}")
        if not 0.0 <= ema_cap <= 1.0:
            raise ConfigError(f"ema_cap must be in [0, 1]; got {ema_cap}")
        self.sync_start, self.sync_interval = sync_schedule(epochs, sync_start, sync_interval)
        n = len(mix_weights)
        if n_experts is not None and n_experts != n:
            raise ConfigError(f"n_experts is {n_experts} but {n} mix weights were given")
        check_mix_weights(mix_weights, epochs)
        if local_experts is not None:
            local = [int(k) for k in local_experts]
            if not local or any(b <= a for a, b in itertools.pairwise(local)):
                raise ConfigError(f"local_experts must be increasing and non-empty; got {local}")
            if local[0] < 0 or local[-1] >= n:
                raise ConfigError(f"local_experts {local} out of range for {n} experts")
            if len(local) < n and all_reduce is None:
                raise ConfigError(
                    "local_experts holds only some experts; the mix then needs all_reduce"
                )
        else:
            local = None
        self.mix_weights = list(mix_weights)
        self.epochs = epochs
        self.ema_cap = float(ema_cap)
        self.sync_mode = sync_mode
        self.local_experts = local
        self.all_reduce = all_reduce
        self.s = 0
        self._ready = False

    # -- setup ---------------------------------------------------------------------------------

    def setup(self, experts: list[Expert]) -> None:
        """Build E_k for the local experts and G from the first local expert (the anchor)."""
        local = self.local_experts if self.local_experts is not None else None
        if local is None:
            if len(experts) != len(self.mix_weights):
                raise ConfigError(
                    f"{len(experts)} experts but {len(self.mix_weights)} mix weights were given"
                )
            local = list(range(len(experts)))
        elif len(experts) != len(local):
            raise ValueError(
                f"setup got {len(experts)} experts for local_experts {local}; pass the local ones"
            )
        models = [unwrap(e.model) for e in experts]
        self._local = local
        self._weights = [self.mix_weights[k] for k in local]
        self._names = [e.name for e in experts]
        self._theta = [StateTensors(m) for m in models]
        ref = self._theta[0].signature()
        for e, th in zip(experts, self._theta, strict=True):
            if th.signature() != ref:
                raise ValueError(
                    f"expert '{e.name}' does not have the anchor's parameters and buffers; all "
                    "experts must share one architecture"
                )
        self._ema_models = [shadow(m) for m in models]
        self._ema = [StateTensors(m) for m in self._ema_models]
        self._g_model = shadow(models[0])
        self._g = StateTensors(self._g_model)
        floats = self._g.floats
        kinds = {(t.dtype, t.device) for t in floats}
        self._flat: Tensor | None = None
        if len(kinds) == 1:
            dtype, device = kinds.pop()
            numels = [t.numel() for t in floats]
            self._flat = torch.zeros(sum(numels), dtype=dtype, device=device)
            self._scratch = [
                v.view(t.shape) for v, t in zip(self._flat.split(numels), floats, strict=True)
            ]
        elif not floats:
            self._scratch = []
        elif self.all_reduce is not None:
            raise ValueError(
                "distributed ema_mix needs every parameter and floating buffer in one dtype on one "
                f"device; got {sorted(str(k) for k in kinds)}"
            )
        else:
            self._scratch = [torch.zeros_like(t) for t in floats]
        self._ready = True

    def _check_ready(self) -> None:
        if not self._ready:
            raise RuntimeError("EmaMix.setup(experts) was not called")

    # -- hooks ---------------------------------------------------------------------------------

    def after_step(self, experts: list[Expert], epoch: int, iteration: int, n_iters: int) -> None:
        """§2 steps 3, 5, 6, 7, 8 after all experts stepped on batch ``iteration`` of ``epoch``."""
        self._check_ready()
        weight = 1.0 - ema_decay(self.s, self.ema_cap)
        with torch.no_grad():
            for th, ema in zip(self._theta, self._ema, strict=True):
                lerp_list(ema.floats, th.floats, weight)
                copy_list(ema.ints, th.ints)
            self._mix(epoch, iteration, n_iters)
            if self.all_reduce is not None and self._flat is not None:
                self.all_reduce(self._flat)
            lerp_list(self._g.floats, self._scratch, weight)
            self._copy_anchor_ints()
            if self.sync_mode == "every_iteration" and self.is_sync_epoch(epoch):
                self._sync()
        self.s += 1

    def _copy_anchor_ints(self) -> None:
        """G's integer buffers (num_batches_tracked) come from E_anchor (§3.5, pitfall 20).

        Under torchrun only the anchor's ranks hold E_anchor: the others contribute zeros to a
        SUM all-reduce, so every rank receives the anchor's values (they differ from another
        expert's when its objective runs more train-mode forwards, e.g. TRADES).
        """
        if not self._g.ints:
            return
        if self.all_reduce is None or (self.local_experts is None):
            copy_list(self._g.ints, self._ema[0].ints)
            return
        holds_anchor = self._local[0] == 0
        flat = torch.cat(
            [
                (t if holds_anchor else torch.zeros_like(t)).reshape(-1).to(torch.int64)
                for t in self._ema[0].ints
            ]
        )
        self.all_reduce(flat)
        offset = 0
        for t in self._g.ints:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()

    def after_epoch(self, experts: list[Expert], epoch: int) -> None:
        """``once_per_epoch``: the single sync of a sync epoch, after its last ``after_step``."""
        self._check_ready()
        if self.sync_mode == "once_per_epoch" and self.is_sync_epoch(epoch):
            with torch.no_grad():
                self._sync()

    def is_sync_epoch(self, epoch: int) -> bool:
        return is_sync_epoch(epoch, self.sync_start, self.sync_interval)

    def _mix(self, epoch: int, iteration: int, n_iters: int) -> None:
        """scratch <- sum over local k (in expert order) of w_k * E_k; zero weights are skipped."""
        scratch = self._scratch
        if not scratch:
            return
        first = True
        for sched, ema in zip(self._weights, self._ema, strict=True):
            w = float(sched.at(epoch, iteration, n_iters))
            if w == 0.0:
                continue
            if first:
                torch._foreach_copy_(scratch, ema.floats)
                if w != 1.0:
                    torch._foreach_mul_(scratch, w)
                first = False
            else:
                torch._foreach_add_(scratch, ema.floats, alpha=w)
        if first:
            torch._foreach_zero_(scratch)

    def _sync(self) -> None:
        """theta_k <- G in place (params and all buffers); optimizer state and E_k untouched."""
        for th in self._theta:
            copy_list(th.floats, self._g.floats)
            copy_list(th.ints, self._g.ints)

    # -- models and state ----------------------------------------------------------------------

    def log(self, epoch: int, n_iters: int) -> dict[str, Any]:
        """The local experts' mix weights at the epoch's last iteration."""
        weights = {
            name: float(w.at(epoch, n_iters - 1, n_iters))
            for name, w in zip(self._names, self._weights, strict=True)
        }
        return {"mix_weights": weights}

    def global_model(self) -> nn.Module:
        """G, in eval mode with ``requires_grad=False`` parameters."""
        self._check_ready()
        return self._g_model

    def ema_model(self, k: int) -> nn.Module:
        """E_k of the local expert with global index ``k``."""
        self._check_ready()
        return self._ema_models[self._local.index(k)]

    def member_models(self, experts: list[Expert]) -> dict[str, nn.Module]:
        """Each local expert theta_k and its EMA E_k (``ema_<name>``), issue 12's diagnostics."""
        self._check_ready()
        out = super().member_models(experts)
        out.update({f"ema_{n}": m for n, m in zip(self._names, self._ema_models, strict=True)})
        return out

    def state_dict(self) -> dict[str, Any]:
        """``{"s", "ema.{k}.{name}", "global.{name}"}``; tensors alias the live shadows (like
        ``nn.Module.state_dict``), so save or clone them before the next step."""
        self._check_ready()
        state: dict[str, Any] = {"s": self.s}
        for k, ema in zip(self._local, self._ema, strict=True):
            for name, t in ema.named():
                state[f"ema.{k}.{name}"] = t.detach()
        for name, t in self._g.named():
            state[f"global.{name}"] = t.detach()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore s, the E_k and G exactly; a ``module.`` prefix after ``ema.{k}.``/``global.``
        is stripped. Missing, unexpected or mis-shaped entries raise :class:`CheckpointError`."""
        self._check_ready()
        targets: dict[str, Tensor] = {}
        for k, ema in zip(self._local, self._ema, strict=True):
            targets.update((f"ema.{k}.{n}", t) for n, t in ema.named())
        targets.update((f"global.{n}", t) for n, t in self._g.named())
        given: dict[str, Any] = {}
        for key, value in state.items():
            if key == "s":
                continue
            head, _, rest = key.partition(".") if key.startswith("global.") else _split_ema(key)
            rest = rest.removeprefix("module.")
            given[f"{head}.{rest}"] = value
        s = state.get("s")
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise CheckpointError(f"ema_mix state has no valid step counter 's' (got {s!r})")
        missing = sorted(set(targets) - set(given))
        unexpected = sorted(set(given) - set(targets))
        if missing or unexpected:
            raise CheckpointError(
                f"ema_mix state does not match the experts: missing {missing[:3]}"
                f"{'...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}"
                f"{'...' if len(unexpected) > 3 else ''}"
            )
        for key, dst in targets.items():
            src = given[key]
            if not isinstance(src, Tensor) or src.shape != dst.shape:
                got = tuple(src.shape) if isinstance(src, Tensor) else type(src).__name__
                raise CheckpointError(
                    f"ema_mix state entry '{key}' is {got}, expected shape {tuple(dst.shape)}"
                )
        with torch.no_grad():
            for key, dst in targets.items():
                dst.copy_(given[key])
        self.s = s
        self._g_model.eval()
        for m in self._ema_models:
            m.eval()


def _split_ema(key: str) -> tuple[str, str, str]:
    """``"ema.3.layer.weight"`` -> ``("ema.3", ".", "layer.weight")``; other keys pass through."""
    parts = key.split(".", 2)
    if len(parts) == 3 and parts[0] == "ema":
        return f"ema.{parts[1]}", ".", parts[2]
    return key, ".", ""


class EmaMixSpec(Spec):
    """Generalist's global learner: EMA experts mixed by ``weights`` (generalist.md §2, §3).

    ``weights`` maps every expert's name to its mix-weight schedule w_k(t); they must lie in
    [0, 1] and sum to 1 at every epoch (§3.3). A ``train.generalist`` preset fills them in.
    """

    name: Literal["ema_mix"] = "ema_mix"
    ema_cap: float = Field(0.999, gt=0, lt=1)
    sync_start: int | None = Field(None, ge=1)
    sync_interval: int | None = Field(None, ge=1)
    sync_mode: Literal["every_iteration", "once_per_epoch", "off"] = "every_iteration"
    weights: dict[str, dict[str, Any]] = Field(default_factory=dict)


@MERGE_RULES.register("ema_mix", EmaMixSpec)
def build_ema_mix(spec: EmaMixSpec, ctx: MergeContext) -> EmaMix:
    """Generalist: EMA experts mixed into an EMA global learner."""
    names = list(ctx.expert_names)
    if sorted(spec.weights) != sorted(names):
        raise ConfigError(
            f"merge 'ema_mix' weights are given for {sorted(spec.weights)} but the experts are "
            f"{names}; give one weight schedule per expert (train.merge.weights)"
        )
    schedules = [
        schedule_for(spec.weights[n], ctx.epochs, f"train.merge.weights.{n}") for n in names
    ]
    return EmaMix(
        mix_weights=schedules,
        epochs=ctx.epochs,
        ema_cap=spec.ema_cap,
        sync_start=spec.sync_start,
        sync_interval=spec.sync_interval,
        sync_mode=spec.sync_mode,
        local_experts=list(ctx.local_experts),
        n_experts=len(names),
        all_reduce=ctx.all_reduce,
    )
