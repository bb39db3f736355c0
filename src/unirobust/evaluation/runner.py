"""Metric groups ``threats`` and ``union``: resumable attacks into the per-sample table.

:func:`evaluate` classifies the points clean (the ``clean`` group; the logits are kept in the
table), then, threat by threat, runs an attack suite on the clean-correct points in chunks of
``batch_size`` and records per-point robust flags. With no threats it returns the clean table.

**Union-only mode** (multinorm.md §8). Threats are attacked in the order linf, l1, l2 (other norms
after, each group in the given order), each only on the points still robust under every earlier
threat. The union accuracy equals the full-mode one whenever the suite is *per-point
deterministic*: the verdict for a point depends only on that point (its input, label, the model
and the seed), not on which other points share its batch. Then every point attacked in union-only
mode gets the same verdict as in full mode, and a point skipped under a later threat was already
non-robust under an earlier one, so the per-sample AND is the same for every point. The ``fast``
suite draws its random starts per call from a generator seeded with ``seed`` and so depends on the
batch composition; with pyautoattack (``aa-*`` suites) the same holds for its random starts (see
:mod:`unirobust.evaluation.autoattack`). For those suites union-only mode gives the same union
accuracy only up to the randomness of the starts (statistically, not bit-exactly); bit-exact
equality needs a per-point deterministic suite (e.g. ``batch_size=1``, where each point is attacked
alone and its start depends only on the seed). Per-norm robust accuracies are undefined in
union-only mode and reported as ``None``.

**Resumable state.** With ``state_path`` the evaluation state is written after the clean pass and
after every (threat, chunk): a single ``.npz`` (no pickle) holding the per-threat columns, the
number of finished chunks per threat, per-attack counts and a JSON fingerprint (suite, threats,
seed, batch size, union-only flag, model hash, data hash), replaced atomically (temp file +
``os.replace``). Re-running the same call resumes after the last finished chunk: chunks are
recomputed from the stored columns, so they are identical to the uninterrupted run and finished
chunks are never re-attacked. A state written for a different evaluation is refused
(``ConfigError``). The state file is kept after completion; calling again returns the finished
results without attacking.

**Several processes** (issue 11; :mod:`unirobust.evaluation.sharding`). With a ``shard`` of
``world_size > 1`` (``unirobust eval`` under torchrun) the clean batches and each threat's chunks
are dealt round-robin to the ranks; chunk ``k`` holds the same points, and is attacked with the
same seed, as chunk ``k`` of a single process, so the merged table equals the single-process table
bit for bit. Each rank keeps its own state file (``NAME.rankR-of-W.npz``-style, with the rank in
the fingerprint): killing any rank and re-running the same command resumes every rank after its
last finished chunk. Union-only mode exchanges each threat's column before the next threat; full
mode exchanges once at the end. Every rank returns the merged table.

**Streaming.** ``x`` may be a :class:`~unirobust.data.source.LazyImages` (a streamed split): the
clean pass, the attacks and the examples read only the rows they use, so memory holds one chunk
of images, not the evaluation set. The data fingerprint is a hash of per-clean-batch hashes.

**Adversarial examples.** When the suite returns its adversarial inputs, the first
``n_examples`` attacked points of each threat (clean-correct, in evaluation order; usually the
first chunk) are kept with their final adversarial input and the prediction on it, in the state
file with the chunk that produced them (so a resumed evaluation keeps them) and in the table
(:class:`~unirobust.evaluation.results.AdvExamples`). A state file written without them resumes
with none for the chunks it had finished.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unirobust.data.tokens import float_inputs
from unirobust.errors import ConfigError
from unirobust.evaluation.autoattack import _fp32_model
from unirobust.evaluation.checks import EvaluationWarning, check_black_box, run_sanity_checks
from unirobust.evaluation.clean import clean_logits
from unirobust.evaluation.keys import Summary
from unirobust.evaluation.results import NOT_ATTACKED, AdvExamples, EvalResults, model_hash
from unirobust.evaluation.sharding import Shard, shard_state_path
from unirobust.evaluation.suites import Suite, get_suite
from unirobust.io import atomic_write_bytes
from unirobust.models import model_device
from unirobust.threats import ThreatModel, parse_threat, parse_threats

__all__ = ["N_EXAMPLES", "UNION_ORDER", "evaluate", "order_threats", "threat_summary"]

#: Attack order of union-only mode (multinorm.md §8); other norms follow.
UNION_ORDER = ("linf", "l1", "l2")
_STATE_VERSION = 1
#: Adversarial examples kept per threat (the first attacked points), for the report's figures.
N_EXAMPLES = 8

ChunkCallback = Callable[[str, int, int], None]


def _as_threats(threats: str | ThreatModel | Sequence[str | ThreatModel]) -> list[ThreatModel]:
    if isinstance(threats, str):
        return parse_threats(threats)
    if isinstance(threats, ThreatModel):
        return [threats]
    out = [parse_threat(t) if isinstance(t, str) else t for t in threats]
    specs = [str(t) for t in out]
    dupes = sorted({s for s in specs if specs.count(s) > 1})
    if dupes:
        raise ConfigError(f"duplicate threat(s) {dupes}: list each threat once")
    return out


def order_threats(threats: Sequence[ThreatModel], union_only: bool) -> list[ThreatModel]:
    """Evaluation order: as given, or linf, l1, l2, then others (stable) in union-only mode."""
    if not union_only:
        return list(threats)
    rank = {norm: i for i, norm in enumerate(UNION_ORDER)}
    return sorted(threats, key=lambda t: rank.get(t.norm, len(UNION_ORDER)))


def _batch_digest(x: torch.Tensor, y: torch.Tensor, indices: np.ndarray) -> np.ndarray:
    """sha256 of one clean batch's float32 inputs, labels and indices, as 32 int64 values."""
    digest = hashlib.sha256()
    digest.update(x.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    digest.update(y.detach().to("cpu", torch.int64).contiguous().numpy().tobytes())
    digest.update(indices.astype(np.int64).tobytes())
    return np.frombuffer(digest.digest(), dtype=np.uint8).astype(np.int64)


def _clean_pass(
    model: torch.nn.Module,
    x: Any,
    y: torch.Tensor,
    indices: np.ndarray,
    batch_size: int,
    shard: Shard,
) -> tuple[np.ndarray, str]:
    """Clean logits ``(N, K)`` float32 of every point and the data hash, from batches of
    ``batch_size`` points (this rank computes its own, the rest come from the other ranks)."""
    n = int(y.shape[0])
    n_batches = (n + batch_size - 1) // batch_size
    digests = np.zeros((n_batches, 32), dtype=np.int64)
    parts: dict[int, np.ndarray] = {}
    for j in range(n_batches):
        if not shard.owns(j):
            continue
        rows = np.arange(j * batch_size, min(n, (j + 1) * batch_size))
        xb = x[torch.as_tensor(rows)]
        parts[j] = clean_logits(model, xb, batch_size).numpy()
        digests[j] = _batch_digest(xb, y[rows], indices[rows])
    n_classes = _n_classes(model, x, parts, shard)
    logits = np.zeros((n, n_classes), dtype=np.float32)
    mine = np.zeros(n, dtype=bool)
    for j, part in parts.items():
        logits[j * batch_size : j * batch_size + part.shape[0]] = part
        mine[j * batch_size : j * batch_size + part.shape[0]] = True
    every = np.ones(n, dtype=bool)
    logits = shard.merge_rows(logits, mine, every)
    owned = np.array([shard.owns(j) for j in range(n_batches)], dtype=bool)
    digests = shard.merge_rows(digests, owned, np.ones(n_batches, dtype=bool))
    total = hashlib.sha256(digests.astype(np.uint8).tobytes()).hexdigest()[:16]
    return logits, total


def _n_classes(model: torch.nn.Module, x: Any, parts: dict[int, np.ndarray], shard: Shard) -> int:
    """Number of logits; a rank with no clean batch asks the model (all ranks agree)."""
    if parts:
        return int(next(iter(parts.values())).shape[1])
    if len(x) == 0:
        return int(clean_logits(model, torch.zeros(1, *x.shape[1:]), 1).shape[1])
    return int(clean_logits(model, x[:1], 1).shape[1])


class _State:
    """In-memory evaluation state mirrored to an ``.npz`` file (see module docstring)."""

    def __init__(
        self,
        fingerprint: dict[str, Any],
        clean_correct: np.ndarray,
        specs: list[str],
        attacks: list[str],
        example_shape: tuple[int, ...] = (0, 0),
    ) -> None:
        n = clean_correct.size
        self.fingerprint = fingerprint
        self.clean_correct = clean_correct
        self.robust = np.full((len(specs), n), NOT_ATTACKED, dtype=np.int8)
        self.robust[:, ~clean_correct] = 0
        self.chunks_done = np.zeros(len(specs), dtype=np.int64)
        self.attacks = attacks
        self.fooled_counts = np.zeros((len(specs), len(attacks)), dtype=np.int64)
        self.wall_time_s = 0.0
        # example_rows[t, j]: table row of threat t's j-th kept example, -1 for an empty slot
        self.example_rows = np.full((len(specs), example_shape[0]), -1, dtype=np.int64)
        self.example_pred = np.full_like(self.example_rows, -1)
        self.example_adv = np.zeros((len(specs), *example_shape), dtype=np.float32)

    def keep_examples(
        self, t: int, rows: np.ndarray, x_adv: torch.Tensor, model: torch.nn.Module
    ) -> None:
        """Fill threat ``t``'s empty example slots with the first points of an attacked chunk."""
        slots = np.nonzero(self.example_rows[t] < 0)[0][: rows.size]
        if slots.size == 0:
            return
        adv = x_adv[: slots.size].detach()
        self.example_pred[t, slots] = clean_logits(model, adv, slots.size).argmax(1).numpy()
        self.example_adv[t, slots] = adv.to("cpu", torch.float32).numpy()
        self.example_rows[t, slots] = rows[: slots.size]

    def save(self, path: Path | None) -> None:
        if path is None:
            return
        meta = {
            "version": _STATE_VERSION,
            "fingerprint": self.fingerprint,
            "attacks": self.attacks,
            "wall_time_s": self.wall_time_s,
        }
        buffer = io.BytesIO()
        np.savez(
            buffer,
            meta=np.array(json.dumps(meta, sort_keys=True)),
            clean_correct=self.clean_correct,
            robust=self.robust,
            chunks_done=self.chunks_done,
            fooled_counts=self.fooled_counts,
            example_rows=self.example_rows,
            example_pred=self.example_pred,
            example_adv=self.example_adv,
        )
        atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load(
        cls,
        path: Path,
        fingerprint: dict[str, Any],
        specs: list[str],
        example_shape: tuple[int, ...] = (0, 0),
    ) -> _State:
        try:
            with np.load(path, allow_pickle=False) as arrays:
                meta = json.loads(str(arrays["meta"]))
                clean_correct = arrays["clean_correct"].astype(bool)
                robust = arrays["robust"].astype(np.int8)
                chunks_done = arrays["chunks_done"].astype(np.int64)
                fooled_counts = arrays["fooled_counts"].astype(np.int64)
                names = ("example_rows", "example_pred", "example_adv")
                examples = [arrays[k] for k in names if k in arrays.files]
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"cannot read evaluation state {path}: {exc}") from None
        if meta.get("version") != _STATE_VERSION or meta.get("fingerprint") != fingerprint:
            stored = meta.get("fingerprint", {})
            diff = sorted(k for k in fingerprint if stored.get(k) != fingerprint[k])
            raise ConfigError(
                f"evaluation state {path} was written for a different evaluation "
                f"(differs in: {', '.join(diff) or 'version'}); use another state_path or delete it"
            )
        state = cls(fingerprint, clean_correct, specs, list(meta["attacks"]), example_shape)
        if len(examples) == 3 and examples[2].shape == state.example_adv.shape:
            state.example_rows, state.example_pred, state.example_adv = examples
        state.robust = robust
        state.chunks_done = chunks_done
        state.fooled_counts = fooled_counts
        state.wall_time_s = float(meta["wall_time_s"])
        return state


def evaluate(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    indices: Sequence[int] | np.ndarray | torch.Tensor | None,
    *,
    threats: str | ThreatModel | Sequence[str | ThreatModel],
    suite: str | Suite,
    batch_size: int = 500,
    union_only: bool = False,
    seed: int = 0,
    state_path: Path | str | None = None,
    progress: bool = False,
    dataset: str = "",
    split: str = "test",
    on_chunk: ChunkCallback | None = None,
    sanity_checks: bool = True,
    n_examples: int = N_EXAMPLES,
    shard: Shard | None = None,
) -> EvalResults:
    """Evaluate ``model`` on ``(x, y)`` under every threat with an attack suite.

    Args:
        model: classifier returning logits for inputs in [0,1]; its mode and parameter
            ``requires_grad`` flags are restored, the global RNG is untouched. Evaluation runs
            in float32 with autocast off (through a float32 copy if the model is not float32).
        x, y: points (N, C, H, W) in [0,1] (a tensor, or a streamed split's
            :class:`~unirobust.data.source.LazyImages`) and int labels (N,).
        indices: original dataset indices of the points (``None``: 0..N-1), stored per sample.
        threats: ``"linf:8/255,l2:0.5,l1:12"``, a ThreatModel or a list of either.
        suite: ``"aa-apgd"``, ``"aa-standard"``, ``"fast"`` or a :class:`Suite`.
        batch_size: points per attack chunk (also the state-saving granularity).
        union_only: attack linf, l1, l2 in turn, each only on points robust so far; per-norm
            accuracies are then undefined (``None``).
        seed: attack seed, passed to every chunk.
        state_path: ``.npz`` file for resumable state (see the module docstring).
        progress: print one line per finished chunk to stderr.
        dataset, split: recorded in the results.
        on_chunk: ``callback(threat_spec, chunk_index, n_chunks)`` called after each finished
            chunk has been saved (used for progress hooks and to simulate interruptions).
        sanity_checks: run :func:`~unirobust.evaluation.checks.run_sanity_checks` on the first
            batch (warnings only).
        n_examples: adversarial examples kept per threat (see the module docstring; 0: none).
        shard: this process's rank among several evaluating the same points together
            (:func:`~unirobust.evaluation.sharding.current_shard` under torchrun; default: one
            process). ``state_path`` then names each rank's own state file.

    Returns:
        :class:`EvalResults` with one row per point.
    """
    suite_obj = get_suite(suite)
    threat_list = order_threats(_as_threats(threats), union_only)
    specs = [str(t) for t in threat_list]
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    n = int(x.shape[0])
    if int(y.shape[0]) != n:
        raise ConfigError(f"{n} inputs but {int(y.shape[0])} labels")
    if indices is None:
        idx_np = np.arange(n, dtype=np.int64)
    else:
        idx_np = np.asarray(
            indices.cpu().numpy() if isinstance(indices, torch.Tensor) else indices, dtype=np.int64
        ).reshape(-1)
    if idx_np.size != n:
        raise ConfigError(f"{n} inputs but {idx_np.size} indices")
    shard = shard or Shard()
    state_file = shard_state_path(state_path, shard)

    session_start = time.perf_counter()
    device = model_device(model)
    if isinstance(x, torch.Tensor):
        x = float_inputs(x.detach())  # images in float32; token ids (text models) as they are
    y = y.detach().to(torch.long).cpu()
    labels = y.numpy().astype(np.int64)

    mhash = model_hash(model)
    model = _fp32_model(model)  # evaluation runs in float32 (a copy if the model is not fp32)
    logits_np, data_hash = _clean_pass(model, x, y, idx_np, batch_size, shard)
    logits = torch.from_numpy(logits_np)  # the clean group, kept in the table
    fingerprint = {
        "suite": suite_obj.name,
        "threats": specs,
        "seed": int(seed),
        "batch_size": int(batch_size),
        "union_only": bool(union_only),
        "model_hash": mhash,
        "data_hash": data_hash,
        "n_points": n,
    }
    if shard.enabled:
        fingerprint["shard"] = [shard.rank, shard.world_size]
    clean_correct = (logits.argmax(dim=1) == y).numpy()

    example_shape = (max(0, int(n_examples)), *x.shape[1:])
    if state_file is not None and state_file.exists():
        state = _State.load(state_file, fingerprint, specs, example_shape)
        if not np.array_equal(state.clean_correct, clean_correct):
            raise ConfigError(
                f"evaluation state {state_file}: clean predictions differ from the stored ones "
                "(is the model stochastic?)"
            )
    else:
        state = _State(fingerprint, clean_correct, specs, list(suite_obj.attacks), example_shape)
        state.save(state_file)

    all_done = all(
        state.chunks_done[t] >= len(_own_chunks(_active(state, t, union_only), batch_size, shard))
        for t in range(len(specs))
    )
    if sanity_checks and n and not all_done and shard.rank == 0:
        m = min(n, batch_size, 200)
        run_sanity_checks(model, x[:m].to(device), y[:m].to(device))

    session_chunk_time = 0.0
    who = f"rank {shard.rank}/{shard.world_size} " if shard.enabled else ""
    for t, threat in enumerate(threat_list):
        active = _active(state, t, union_only)
        active_idx = np.nonzero(active)[0]
        n_chunks = _n_chunks(active_idx, batch_size)
        mine = _own_chunks(active, batch_size, shard)
        for j in range(int(state.chunks_done[t]), len(mine)):
            k = mine[j]
            chunk_start = time.perf_counter()
            rows = active_idx[k * batch_size : (k + 1) * batch_size]
            rows_t = torch.as_tensor(rows, dtype=torch.long)
            out = suite_obj.run(
                model,
                x[rows_t].to(device),
                y[rows_t].to(device),
                threat,
                seed=seed,
                batch_size=batch_size,
            )
            robust_rows = out.robust.detach().cpu().numpy().astype(bool)
            state.robust[t, rows] = robust_rows.astype(np.int8)
            if out.x_adv is not None:
                state.keep_examples(t, rows, out.x_adv, model)
            for a, name in enumerate(state.attacks):
                if name in out.fooled_by:
                    state.fooled_counts[t, a] += int(out.fooled_by[name].sum())
            state.chunks_done[t] = j + 1
            chunk_time = time.perf_counter() - chunk_start
            session_chunk_time += chunk_time
            state.wall_time_s += chunk_time
            state.save(state_file)
            if progress:
                print(
                    f"[unirobust eval] {who}{suite_obj.name} {threat}: chunk {k + 1}/{n_chunks} "
                    f"({rows.size} points, {int(robust_rows.sum())} robust)",
                    file=sys.stderr,
                    flush=True,
                )
            if on_chunk is not None:
                on_chunk(specs[t], k, n_chunks)
        if shard.enabled and union_only:  # the next threat attacks what is robust on every rank
            state.robust[t] = _merge_column(state, t, union_only, batch_size, shard)
            state.save(state_file)
        if n_chunks and not shard.enabled:
            _warn_black_box(threat, state, t, n)

    # Add this session's overhead (clean pass, checks, io) to the summed chunk times.
    state.wall_time_s += (time.perf_counter() - session_start) - session_chunk_time
    state.save(state_file)
    robust = {
        spec: _merge_column(state, t, union_only, batch_size, shard) for t, spec in enumerate(specs)
    }
    fooled_counts = shard.sum(state.fooled_counts)
    if shard.enabled and shard.rank == 0:
        for t, threat in enumerate(threat_list):
            if _n_chunks(np.nonzero(_active(state, t, union_only))[0], batch_size):
                _warn_black_box(threat, state, t, n, fooled_counts)
    return EvalResults(
        indices=idx_np,
        labels=labels,
        clean_correct=clean_correct,
        robust=robust,
        suite=suite_obj.name if specs else "",  # no attack ran without threats
        threats=specs,
        threat_labels=[t.label for t in threat_list],
        model_hash=mhash,
        dataset=dataset,
        split=split,
        seed=int(seed),
        batch_size=int(batch_size),
        union_only=bool(union_only),
        wall_time_s=shard.max(float(state.wall_time_s)),
        logits=logits_np,
        examples=_examples(_merge_examples(state, shard), specs, x, idx_np, labels),
    )


def _own_chunks(active: np.ndarray, batch_size: int, shard: Shard) -> list[int]:
    """Chunk numbers of this rank among the chunks of the ``active`` points."""
    return [k for k in range(_n_chunks(active, batch_size)) if shard.owns(k)]


def _merge_column(
    state: _State, t: int, union_only: bool, batch_size: int, shard: Shard
) -> np.ndarray:
    """Threat ``t``'s robust column with every rank's chunks (this rank's state if alone)."""
    column = state.robust[t].copy()
    if not shard.enabled:
        return column
    active_idx = np.nonzero(_active(state, t, union_only))[0]
    mine = np.zeros(column.size, dtype=bool)
    for k in _own_chunks(_active(state, t, union_only), batch_size, shard):
        mine[active_idx[k * batch_size : (k + 1) * batch_size]] = True
    anyone = np.zeros(column.size, dtype=bool)
    anyone[active_idx] = True
    return shard.merge_rows(column, mine, anyone)


def _warn_black_box(
    threat: ThreatModel, state: _State, t: int, n: int, counts: np.ndarray | None = None
) -> None:
    table = state.fooled_counts if counts is None else counts
    message = check_black_box({a: int(table[t, i]) for i, a in enumerate(state.attacks)}, n)
    if message:
        warnings.warn(f"{threat}: {message}", EvaluationWarning, stacklevel=3)


def _merge_examples(state: _State, shard: Shard) -> _State:
    """``state`` with, per threat, the ``n_examples`` lowest-row examples of all ranks (the
    first points attacked, as a single process keeps them)."""
    if not shard.enabled or state.example_rows.shape[1] == 0:
        return state
    rows = np.concatenate(shard.gather(state.example_rows), axis=1)
    pred = np.concatenate(shard.gather(state.example_pred), axis=1)
    adv = np.concatenate(shard.gather(state.example_adv), axis=1)
    keep = state.example_rows.shape[1]
    merged = copy.copy(state)
    merged.example_rows = np.full_like(state.example_rows, -1)
    merged.example_pred = np.full_like(state.example_pred, -1)
    merged.example_adv = np.zeros_like(state.example_adv)
    for t in range(rows.shape[0]):
        filled = np.flatnonzero(rows[t] >= 0)
        order = filled[np.argsort(rows[t, filled], kind="stable")][:keep]
        merged.example_rows[t, : order.size] = rows[t, order]
        merged.example_pred[t, : order.size] = pred[t, order]
        merged.example_adv[t, : order.size] = adv[t, order]
    return merged


def _examples(
    state: _State, specs: list[str], x: torch.Tensor, indices: np.ndarray, labels: np.ndarray
) -> dict[str, AdvExamples]:
    out = {}
    for t, spec in enumerate(specs):
        kept = state.example_rows[t] >= 0
        rows = state.example_rows[t][kept]
        if rows.size:
            out[spec] = AdvExamples(
                indices=indices[rows],
                labels=labels[rows],
                pred=state.example_pred[t][kept],
                x=x[torch.as_tensor(rows)].cpu().numpy(),
                x_adv=state.example_adv[t][kept],
            )
    return out


def threat_summary(table: EvalResults) -> dict[str, Any]:
    """Metric groups ``threats`` and ``union`` of the summary, recomputed from the table."""
    return {
        Summary.THREATS: list(table.threats),
        Summary.THREAT_LABELS: list(table.threat_labels),
        Summary.UNION_ONLY: bool(table.union_only),
        Summary.ROBUST_ACC: {spec: table.robust_acc(spec) for spec in table.threats},
        Summary.UNION_ACC: table.union_acc() if table.threats else None,
    }


def _active(state: _State, t: int, union_only: bool) -> np.ndarray:
    """Points attacked under threat ``t``: clean-correct, and in union-only mode robust (1) under
    every earlier threat (earlier columns are complete when threat ``t`` starts)."""
    active = state.clean_correct.copy()
    if union_only:
        for earlier in range(t):
            active &= state.robust[earlier] == 1
    return active


def _n_chunks(active: np.ndarray, batch_size: int) -> int:
    count = int(active.sum()) if active.dtype == bool else int(active.size)
    return (count + batch_size - 1) // batch_size
