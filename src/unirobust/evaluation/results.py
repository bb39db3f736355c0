"""Per-sample evaluation results: the table every robustness number is recomputed from.

An :class:`EvalResults` holds one row per evaluated point (its original dataset index and label),
whether the point is classified correctly when clean, and, for every threat model, whether it
survived the attack suite. Union, per-norm and subset metrics are computed from this table and are
never obtained by re-attacking (DESIGN.md, "Evaluation results are per sample").

Encoding of the per-threat columns (``robust[spec]``, ``np.int8``):

* ``1``  -- the point is clean-correct and every attack of the suite failed on it;
* ``0``  -- the point is not robust: it is misclassified clean, or an attack succeeded;
* ``-1`` -- unknown: the point was not attacked under this threat because it was already broken
  under an earlier threat in union-only mode (multinorm.md §8). Such points are non-robust for the
  union over all threats, but their per-threat status is undefined.

The table also keeps the clean **logits** (float32, N x classes) so calibration is recomputed
from it, the validation logits and labels when temperature scaling is asked for (the temperature
is fitted on them, never on the test rows), and per-sample correctness on each corrupted copy
(``corrupted["<corruption>:<severity>"]``, bool). Every metric group of the summary is a function
of this table (:mod:`unirobust.evaluation.summary`). A few **adversarial examples** per threat
(:class:`AdvExamples`: the first attacked points' clean and final adversarial inputs and the
prediction on them) are kept beside it, for figures; no metric is computed from them.

Files written by :meth:`EvalResults.save`: ``<stem>.npz`` (arrays, loadable with
``allow_pickle=False``) and ``<stem>.json`` (the summary; its keys are defined in
:mod:`unirobust.evaluation.keys`, which the report reads with).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unirobust.errors import ConfigError
from unirobust.evaluation.keys import REQUIRED, Summary
from unirobust.evaluation.keys import Corruptions as CorKeys
from unirobust.io import atomic_savez, atomic_write_text

__all__ = [
    "NOT_ATTACKED",
    "AdvExamples",
    "EvalResults",
    "describe_points",
    "model_hash",
]

#: Corruption settings kept with the table (the summary reports them back).
CORRUPTION_INFO = (CorKeys.SEED, CorKeys.PAD_MODE, CorKeys.BACKEND)

_OPTIONAL_ARRAYS = ("logits", "val_logits", "val_labels")

#: Value of a per-threat cell for a point that was not attacked (union-only mode).
NOT_ATTACKED = -1

#: npz keys of the adversarial examples (one stacked array each, padded rows have index -1).
_EXAMPLE_KEYS = ("indices", "labels", "pred", "x", "x_adv")


@dataclass
class AdvExamples:
    """A few adversarial examples of one threat: the first points the suite attacked.

    Attributes:
        indices, labels: original dataset indices and true labels (int64, length k).
        pred: the model's prediction on the adversarial input (int64, length k).
        x, x_adv: clean and final adversarial inputs (float32, k x C x H x W): the input that
            broke the point, or for a robust point what the last attack returned (AutoAttack
            returns the clean input when it fails, the ``fast`` suite its last iterate).
    """

    indices: np.ndarray
    labels: np.ndarray
    pred: np.ndarray
    x: np.ndarray
    x_adv: np.ndarray

    def __post_init__(self) -> None:
        for name in ("indices", "labels", "pred"):
            setattr(self, name, np.asarray(getattr(self, name), dtype=np.int64).reshape(-1))
        self.x = np.asarray(self.x, dtype=np.float32)
        self.x_adv = np.asarray(self.x_adv, dtype=np.float32)
        k = self.indices.size
        sizes = {self.labels.size, self.pred.size, self.x.shape[0], self.x_adv.shape[0]}
        if sizes != {k} or self.x.shape != self.x_adv.shape:
            raise ValueError("adversarial examples: indices, labels, pred, x, x_adv disagree")

    def __len__(self) -> int:
        return int(self.indices.size)

    @property
    def fooled(self) -> np.ndarray:
        """Whether the adversarial input is misclassified (bool, length k)."""
        return self.pred != self.labels

    def take(self, keep: np.ndarray) -> AdvExamples:
        return AdvExamples(*(getattr(self, key)[keep] for key in _EXAMPLE_KEYS))


def _examples_arrays(examples: dict[str, AdvExamples]) -> dict[str, np.ndarray]:
    """The examples as stacked npz arrays ``example_<key>``, padded to the largest k."""
    if not examples:
        return {}
    k = max(len(e) for e in examples.values())
    first = next(iter(examples.values()))
    arrays: dict[str, np.ndarray] = {"example_threats": np.array(list(examples), dtype=np.str_)}
    for key in _EXAMPLE_KEYS:
        proto = getattr(first, key)
        fill = -1 if key in ("indices", "labels", "pred") else 0
        stacked = np.full((len(examples), k, *proto.shape[1:]), fill, dtype=proto.dtype)
        for i, ex in enumerate(examples.values()):
            stacked[i, : len(ex)] = getattr(ex, key)
        arrays[f"example_{key}"] = stacked
    return arrays


def load_examples(arrays: Any) -> dict[str, AdvExamples]:
    """Threat spec -> :class:`AdvExamples` from an npz written by :meth:`EvalResults.save` (or
    its path); empty when the file has none (tables written before examples were kept)."""
    if isinstance(arrays, (str, os.PathLike)):
        with np.load(arrays, allow_pickle=False) as data:
            return load_examples(data)
    if "example_threats" not in arrays.files:
        return {}
    stacked = {key: arrays[f"example_{key}"] for key in _EXAMPLE_KEYS}
    out = {}
    for i, spec in enumerate(str(t) for t in arrays["example_threats"]):
        keep = stacked["indices"][i] >= 0
        out[spec] = AdvExamples(*(stacked[key][i][keep] for key in _EXAMPLE_KEYS))
    return out


def model_hash(model: torch.nn.Module) -> str:
    """Return a short fingerprint of a model's weights and buffers.

    sha256 over the ``state_dict`` entries sorted by name; each entry contributes its name, dtype,
    shape and raw bytes (CPU, contiguous). Returns the first 16 hex digits. Two models with equal
    state dicts hash equally regardless of device or of the module's Python identity.
    """
    digest = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        tensor = state[name]
        digest.update(name.encode("utf-8"))
        if not isinstance(tensor, torch.Tensor):
            digest.update(repr(tensor).encode("utf-8"))
            continue
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(str(flat.dtype).encode("utf-8"))
        digest.update(str(tuple(tensor.shape)).encode("utf-8"))
        if flat.numel() > 0:
            digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def describe_points(indices: np.ndarray, split: str = "test") -> str:
    """Human description of which points were evaluated, e.g. ``"first 1000 test points"``."""
    idx = np.asarray(indices, dtype=np.int64)
    n = int(idx.size)
    if n == 0:
        return f"no {split} points"
    if np.array_equal(idx, np.arange(n)):
        return f"first {n} {split} points"
    start = int(idx[0])
    if np.array_equal(idx, np.arange(start, start + n)):
        return f"{split} points {start}..{start + n - 1} ({n} points)"
    digest = hashlib.sha256(idx.tobytes()).hexdigest()[:8]
    return f"{n} selected {split} points (index list sha256 {digest}, stored in the .npz)"


def _fraction_robust(flags: np.ndarray) -> float | None:
    """Fraction of 1s over all points; ``None`` if a point is unknown, NaN without points."""
    if (flags == NOT_ATTACKED).any():
        return None
    return float((flags == 1).mean()) if flags.size else float("nan")


def _spec(threat: Any) -> str:
    return str(threat)


@dataclass
class EvalResults:
    """Per-sample evaluation table plus the metadata needed to say what was measured.

    Attributes:
        indices: original dataset indices of the evaluated points (int64, length N).
        labels: true labels (int64, length N).
        clean_correct: whether each point is classified correctly without perturbation.
        robust: threat spec (``str(ThreatModel)``, e.g. ``"linf:0.0314"``) -> int8 column with
            values 1 / 0 / -1 (robust / not robust / not attacked), see the module docstring.
            A clean-wrong point is always 0.
        suite: attack suite name (``aa-apgd``, ``aa-standard``, ``fast`` or a custom name).
        threats: threat specs in evaluation order (union-only mode: linf, l1, l2, then others).
        threat_labels: display label per threat, same order.
        model_hash: :func:`model_hash` of the evaluated model.
        dataset, split: where the points come from.
        seed, batch_size: attack seed and batch size.
        union_only: whether union-only mode was used (per-norm numbers are then undefined).
        wall_time_s: total attack wall time, summed over resumed sessions.
        points: human description of the points; derived from ``indices`` when empty.
        logits: clean logits (float32, N x classes), or ``None`` for tables without them.
        val_logits, val_labels: validation logits and labels for temperature scaling (optional).
        calibration: whether the calibration group is part of the summary (needs ``logits``).
        corrupted: ``"<corruption>:<severity>"`` -> bool column, correct on the corrupted copy.
        corruption_info: how the corrupted copies were made (seed, pad mode, backend).
        examples: threat spec -> :class:`AdvExamples` (a few points, for figures; may be empty).
    """

    indices: np.ndarray
    labels: np.ndarray
    clean_correct: np.ndarray
    robust: dict[str, np.ndarray]
    suite: str = ""
    threats: list[str] = field(default_factory=list)
    threat_labels: list[str] = field(default_factory=list)
    model_hash: str = ""
    dataset: str = ""
    split: str = "test"
    seed: int = 0
    batch_size: int = 500
    union_only: bool = False
    wall_time_s: float = 0.0
    points: str = ""
    logits: np.ndarray | None = None
    val_logits: np.ndarray | None = None
    val_labels: np.ndarray | None = None
    calibration: bool = False
    corrupted: dict[str, np.ndarray] = field(default_factory=dict)
    corruption_info: dict[str, Any] = field(default_factory=dict)
    examples: dict[str, AdvExamples] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.indices = np.asarray(self.indices, dtype=np.int64).reshape(-1)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.clean_correct = np.asarray(self.clean_correct, dtype=bool).reshape(-1)
        n = self.indices.size
        if self.labels.size != n or self.clean_correct.size != n:
            raise ValueError(
                f"indices ({n}), labels ({self.labels.size}) and clean_correct "
                f"({self.clean_correct.size}) must have the same length"
            )
        robust: dict[str, np.ndarray] = {}
        for key, column in self.robust.items():
            col = np.asarray(column)
            if col.dtype == bool:
                col = col.astype(np.int8)
            col = col.astype(np.int8).reshape(-1)
            if col.size != n:
                raise ValueError(f"robust[{key!r}] has {col.size} entries, expected {n}")
            if not np.isin(col, (-1, 0, 1)).all():
                raise ValueError(f"robust[{key!r}] must contain only 1, 0 or -1")
            if (col[~self.clean_correct] == 1).any():
                raise ValueError(f"robust[{key!r}] marks a clean-misclassified point as robust")
            robust[_spec(key)] = col
        self.robust = robust
        if not self.threats:
            self.threats = list(self.robust)
        self.threats = [_spec(t) for t in self.threats]
        if set(self.threats) != set(self.robust):
            raise ValueError(
                f"threats {self.threats} do not match the robust columns {list(self.robust)}"
            )
        if not self.threat_labels:
            self.threat_labels = list(self.threats)
        if len(self.threat_labels) != len(self.threats):
            raise ValueError("threat_labels must have one entry per threat")
        if not self.points:
            self.points = describe_points(self.indices, self.split)
        self._check_logits_and_corruptions()

    def _check_logits_and_corruptions(self) -> None:
        n = self.n_points
        if self.logits is not None:
            self.logits = np.asarray(self.logits, dtype=np.float32)
            if self.logits.ndim != 2 or self.logits.shape[0] != n:
                raise ValueError(f"logits must have shape ({n}, classes), got {self.logits.shape}")
            if n and not np.array_equal(self.logits.argmax(1) == self.labels, self.clean_correct):
                raise ValueError("clean_correct disagrees with the argmax of the stored logits")
        if (self.val_logits is None) != (self.val_labels is None):
            raise ValueError("give val_logits and val_labels together")
        if self.val_logits is not None:
            self.val_logits = np.asarray(self.val_logits, dtype=np.float32)
            self.val_labels = np.asarray(self.val_labels, dtype=np.int64).reshape(-1)
            if self.val_logits.shape[0] != self.val_labels.size:
                raise ValueError("val_logits and val_labels have different lengths")
        if self.calibration and self.logits is None:
            raise ValueError("the calibration group needs the clean logits")
        corrupted = {}
        for key, column in self.corrupted.items():
            col = np.asarray(column, dtype=bool).reshape(-1)
            if col.size != n:
                raise ValueError(f"corrupted[{key!r}] has {col.size} entries, expected {n}")
            corrupted[str(key)] = col
        self.corrupted = corrupted
        unknown = sorted(set(self.examples) - set(self.threats))
        if unknown:
            raise ValueError(f"adversarial examples for threats not in the table: {unknown}")

    # ------------------------------------------------------------------ metrics
    @property
    def n_points(self) -> int:
        """Number of evaluated points N (the denominator of every accuracy)."""
        return int(self.indices.size)

    def clean_acc(self) -> float:
        """Fraction of points classified correctly without perturbation."""
        if self.n_points == 0:
            return float("nan")
        return float(self.clean_correct.mean())

    def _column(self, threat: Any) -> np.ndarray:
        spec = _spec(threat)
        if spec not in self.robust:
            raise ConfigError(
                f"threat {spec!r} was not evaluated; available: {', '.join(self.threats)}"
            )
        return self.robust[spec]

    def robust_acc(self, threat: Any) -> float | None:
        """Robust accuracy under one threat, or ``None`` when it is undefined.

        It is undefined when some point was not attacked under ``threat`` (union-only mode).
        """
        return _fraction_robust(self._column(threat))

    def union_flags(self, threats: Iterable[Any] | None = None) -> np.ndarray:
        """Per-sample union status as int8: 1 robust, 0 not robust, -1 undefined.

        A point is robust for the union when it is clean-correct and robust under every threat
        (a per-sample AND). A 0 under any threat makes the point non-robust even if another threat
        is unknown; the point is undefined only when no threat broke it and one is unknown.
        """
        specs = self.threats if threats is None else [_spec(t) for t in threats]
        flags = np.where(self.clean_correct, 1, 0).astype(np.int8)
        unknown = np.zeros(self.n_points, dtype=bool)
        for spec in specs:
            column = self._column(spec)
            flags[column == 0] = 0
            unknown |= column == NOT_ATTACKED
        flags[(flags == 1) & unknown] = NOT_ATTACKED
        return flags

    def union_acc(self, threats: Iterable[Any] | None = None) -> float | None:
        """Union accuracy over ``threats`` (default all): mean over all N points of the per-sample
        AND of clean-correct and robust under each threat. ``None`` if undefined for some point
        (union-only results restricted to a subset of threats that omits the breaking norm)."""
        return _fraction_robust(self.union_flags(threats))

    # ------------------------------------------------------------------ subsets
    def subset(
        self,
        *,
        indices: Sequence[int] | np.ndarray | None = None,
        mask: Sequence[bool] | np.ndarray | None = None,
        threats: Iterable[Any] | None = None,
    ) -> EvalResults:
        """Restrict the table to some points and/or threats; nothing is re-attacked.

        Args:
            indices: original dataset indices to keep (each must be present in ``self.indices``);
                rows come out in the given order.
            mask: boolean mask over the N rows (alternative to ``indices``).
            threats: threat specs (or ThreatModels) to keep, default all.
        """
        if indices is not None and mask is not None:
            raise ValueError("pass either indices or mask, not both")
        rows = np.arange(self.n_points)
        if mask is not None:
            m = np.asarray(mask, dtype=bool).reshape(-1)
            if m.size != self.n_points:
                raise ValueError(f"mask has {m.size} entries, expected {self.n_points}")
            rows = rows[m]
        elif indices is not None:
            wanted = np.asarray(indices, dtype=np.int64).reshape(-1)
            position = {int(v): i for i, v in enumerate(self.indices)}
            missing = [int(v) for v in wanted if int(v) not in position]
            if missing:
                raise ConfigError(f"indices not in these results: {missing[:10]}")
            rows = np.array([position[int(v)] for v in wanted], dtype=np.int64)
        specs = self.threats if threats is None else [_spec(t) for t in threats]
        for spec in specs:
            self._column(spec)
        labels = [self.threat_labels[self.threats.index(s)] for s in specs]
        return EvalResults(
            indices=self.indices[rows],
            labels=self.labels[rows],
            clean_correct=self.clean_correct[rows],
            robust={s: self.robust[s][rows] for s in specs},
            suite=self.suite,
            threats=list(specs),
            threat_labels=labels,
            model_hash=self.model_hash,
            dataset=self.dataset,
            split=self.split,
            seed=self.seed,
            batch_size=self.batch_size,
            union_only=self.union_only,
            wall_time_s=self.wall_time_s,
            points="",
            logits=None if self.logits is None else self.logits[rows],
            val_logits=self.val_logits,
            val_labels=self.val_labels,
            calibration=self.calibration,
            corrupted={k: v[rows] for k, v in self.corrupted.items()},
            corruption_info=dict(self.corruption_info),
            examples={
                s: ex.take(np.isin(ex.indices, self.indices[rows]))
                for s, ex in self.examples.items()
                if s in specs
            },
        )

    # ------------------------------------------------------------------ io
    def summary(self) -> dict[str, Any]:
        """The JSON summary: every metric group recomputed from this table (keys: ``keys.py``)."""
        from unirobust.evaluation.summary import summarize

        return summarize(self)

    def default_stem(self) -> str:
        """``eval_<suite>_<split><N>``, e.g. ``eval_aa-apgd_test1000``."""
        suite = self.suite or "custom"
        return f"eval_{suite}_{self.split}{self.n_points}"

    def save(self, directory: str | os.PathLike[str], stem: str | None = None) -> tuple[Path, Path]:
        """Write ``<stem>.npz`` (per-sample arrays) and ``<stem>.json`` (summary), atomically.

        Returns ``(npz_path, json_path)``. Existing files with the same stem are replaced.
        """
        directory = Path(directory)
        stem = stem or self.default_stem()
        npz_path = directory / f"{stem}.npz"
        json_path = directory / f"{stem}.json"
        matrix = (
            np.stack([self.robust[s] for s in self.threats]).astype(np.int8)
            if self.threats
            else np.zeros((0, self.n_points), dtype=np.int8)
        )
        arrays: dict[str, np.ndarray] = {
            "indices": self.indices,
            "labels": self.labels,
            "clean_correct": self.clean_correct,
            "robust": matrix,
            "threats": np.array(self.threats, dtype=np.str_),
            "corrupted_keys": np.array(list(self.corrupted), dtype=np.str_),
            "corrupted": np.stack(list(self.corrupted.values()))
            if self.corrupted
            else np.zeros((0, self.n_points), dtype=bool),
        }
        for name in _OPTIONAL_ARRAYS:
            if getattr(self, name) is not None:
                arrays[name] = getattr(self, name)
        arrays.update(_examples_arrays(self.examples))
        atomic_savez(npz_path, **arrays)
        atomic_write_text(json_path, json.dumps(self.summary(), indent=2, allow_nan=True) + "\n")
        return npz_path, json_path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> EvalResults:
        """Load results written by :meth:`save`; ``path`` may be the .npz, the .json or the stem."""
        path = Path(path)
        stem_path = path.with_suffix("") if path.suffix in (".npz", ".json") else path
        npz_path = stem_path.with_name(stem_path.name + ".npz")
        json_path = stem_path.with_name(stem_path.name + ".json")
        for p in (npz_path, json_path):
            if not p.exists():
                raise ConfigError(f"evaluation results file not found: {p}")
        meta = json.loads(json_path.read_text(encoding="utf-8"))
        missing = [k for k in REQUIRED if k not in meta]
        if missing:
            raise ConfigError(f"{json_path} is not an evaluation summary (missing {missing})")
        with np.load(npz_path, allow_pickle=False) as arrays:
            threats = [str(t) for t in arrays["threats"]]
            if threats != list(meta["threats"]):
                raise ConfigError(f"{npz_path} and {json_path} disagree on the threat list")
            matrix = arrays["robust"]
            present = set(arrays.files)
            optional = {k: arrays[k] for k in _OPTIONAL_ARRAYS if k in present}
            corrupted = {}
            if "corrupted_keys" in present:
                keys = [str(k) for k in arrays["corrupted_keys"]]
                corrupted = dict(zip(keys, arrays["corrupted"], strict=True))
            cor = meta.get(Summary.CORRUPTIONS) or {}
            return cls(
                indices=arrays["indices"],
                labels=arrays["labels"],
                clean_correct=arrays["clean_correct"],
                robust={spec: matrix[i] for i, spec in enumerate(threats)},
                suite=meta[Summary.SUITE],
                threats=threats,
                threat_labels=list(meta[Summary.THREAT_LABELS]),
                model_hash=meta[Summary.MODEL_HASH],
                dataset=meta[Summary.DATASET],
                split=meta[Summary.SPLIT],
                seed=int(meta[Summary.SEED]),
                batch_size=int(meta[Summary.BATCH_SIZE]),
                union_only=bool(meta[Summary.UNION_ONLY]),
                wall_time_s=float(meta[Summary.WALL_TIME_S]),
                points=meta[Summary.POINTS],
                calibration=Summary.CALIBRATION in meta and "logits" in optional,
                corrupted=corrupted,
                corruption_info={k: cor[k] for k in CORRUPTION_INFO if k in cor},
                examples=load_examples(arrays),
                **optional,
            )
