"""Reading a run directory: ``config.yaml``, ``metrics.jsonl``, ``stages.json``, ``eval/*.json``.

Nothing here trains or attacks. Missing pieces are empty and problems are listed, so the report of
a half-finished run still renders.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from unirobust.errors import RunDirError
from unirobust.evaluation.keys import Summary as S
from unirobust.report.fmt import _slug
from unirobust.report.stages import STAGES_FILE


@dataclass
class EvalRecord:
    """One evaluation summary of a run (``eval/*.json``) and the checkpoint it belongs to."""

    checkpoint: str
    path: Path
    rel: str
    summary: dict[str, Any] | None = None
    error: str | None = None

    @property
    def stem(self) -> str:
        return _slug(self.path.stem)


@dataclass
class RunRecord:
    """The parsed contents of a run directory; missing pieces are empty, problems are listed."""

    run_dir: Path
    config: dict[str, Any] = field(default_factory=dict)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    evals: list[EvalRecord] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    stages: list[dict[str, Any]] | None = None  # from stages.json; None when the run has none
    ntk: dict[str, dict[str, Any]] = field(default_factory=dict)  # RUN/ntk/<stage>.json by stage

    @property
    def name(self) -> str:
        return str(self.config.get("name") or self.run_dir.name)

    @property
    def val_epochs(self) -> list[dict[str, Any]]:
        return [e for e in self.epochs if isinstance(e.get("val"), Mapping)]

    @property
    def best_epoch(self) -> dict[str, Any] | None:
        """The last epoch flagged ``is_best`` (the flag marks a new best when it is logged)."""
        best = [e for e in self.epochs if e.get("is_best") is True]
        return best[-1] if best else None

    def summaries(self, checkpoint: str | None = None) -> list[EvalRecord]:
        return [
            r
            for r in self.evals
            if r.summary is not None and (checkpoint is None or r.checkpoint == checkpoint)
        ]


def load_run(run_dir: Path | str) -> RunRecord:
    """Parse ``config.yaml``, ``metrics.jsonl`` and the evaluation summaries of a run.

    Epoch events logged twice (e.g. an epoch redone after a resume) keep their last occurrence.
    Unknown events are ignored; unreadable lines and files are recorded in ``problems``.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} does not exist")
    markers = ("config.yaml", "metrics.jsonl", "eval")
    if not any((run_dir / m).exists() for m in markers):
        raise RunDirError(
            f"{run_dir} is not a run directory (none of config.yaml, metrics.jsonl, eval/ found)"
        )
    run = RunRecord(run_dir=run_dir)
    run.config = _read_config(run_dir / "config.yaml", run.problems)
    events = _read_events(run_dir / "metrics.jsonl", run.problems)
    by_epoch: dict[int, dict[str, Any]] = {}
    for ev in events:
        if ev.get("event") == "epoch" and isinstance(ev.get("epoch"), int):
            by_epoch[ev["epoch"]] = ev
    run.epochs = [by_epoch[k] for k in sorted(by_epoch)]
    run.evals = _collect_evals(run_dir, events, run.problems)
    run.stages = _read_stages(run_dir / STAGES_FILE, run.problems)
    run.ntk = _read_ntk(run_dir / "ntk", run.problems)
    return run


def _read_ntk(folder: Path, problems: list[str]) -> dict[str, dict[str, Any]]:
    """The start-of-stage NTK reports (``finetune.ntk_stage``), by stage name."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            problems.append(f"ntk/{path.name} could not be read ({type(exc).__name__}).")
            continue
        if isinstance(data, dict):
            out[path.stem] = data
    return out


def _read_stages(path: Path, problems: list[str]) -> list[dict[str, Any]] | None:
    """The resolved stages the training engine wrote, or ``None`` (no fallback re-derivation)."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        problems.append(f"{STAGES_FILE} could not be read ({type(exc).__name__}).")
        return None
    stages = data.get("stages") if isinstance(data, dict) else None
    if not isinstance(stages, list):
        problems.append(f"{STAGES_FILE} has no list under 'stages'; stages are not shown.")
        return None
    return [st for st in stages if isinstance(st, dict)]


def _read_config(path: Path, problems: list[str]) -> dict[str, Any]:
    if not path.is_file():
        problems.append("config.yaml is missing; configuration is unknown.")
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        problems.append(f"config.yaml could not be parsed ({type(exc).__name__}).")
        return {}
    if not isinstance(data, dict):
        problems.append("config.yaml does not hold a mapping; configuration is unknown.")
        return {}
    return data


def _read_events(path: Path, problems: list[str]) -> list[dict[str, Any]]:
    if not path.is_file():
        problems.append("metrics.jsonl is missing; no training curves.")
        return []
    events: list[dict[str, Any]] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            problems.append(f"metrics.jsonl line {lineno} is not valid JSON and was skipped.")
            continue
        if isinstance(obj, dict):
            events.append(obj)
    return events


def _looks_like_summary(obj: Any) -> bool:
    return isinstance(obj, dict) and S.CLEAN_ACC in obj and (S.THREATS in obj or S.SUITE in obj)


def _collect_evals(
    run_dir: Path, events: list[dict[str, Any]], problems: list[str]
) -> list[EvalRecord]:
    # path -> checkpoint named by the (last) final_eval event that references it, in event order
    referenced: dict[Path, str] = {}
    for ev in events:
        if ev.get("event") != "final_eval" or not ev.get("summary_path"):
            continue
        p = Path(str(ev["summary_path"]))
        p = p if p.is_absolute() else run_dir / p
        referenced[p] = str(ev.get("checkpoint") or "unknown")
    found: list[tuple[Path, str | None]] = list(referenced.items())
    eval_dir = run_dir / "eval"
    if eval_dir.is_dir():
        known = {p.resolve() for p in referenced}
        found += [(p, None) for p in sorted(eval_dir.glob("*.json")) if p.resolve() not in known]

    records: list[EvalRecord] = []
    for path, event_ckpt in found:
        try:
            rel = path.relative_to(run_dir).as_posix()
        except ValueError:
            rel = str(path)
        rec = EvalRecord(checkpoint=event_ckpt or "unknown", path=path, rel=rel)
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            rec.error = f"summary {rel} (named by a final_eval event) is missing"
        except (OSError, json.JSONDecodeError) as exc:
            rec.error = f"summary {rel} could not be read ({type(exc).__name__})"
        else:
            if not _looks_like_summary(obj):
                if event_ckpt is None:
                    continue  # some other JSON file in eval/ (e.g. evaluation state): not ours
                rec.error = f"{rel} is not an evaluation summary (no clean_acc/threats keys)"
            else:
                rec.summary = obj
                rec.checkpoint = str(obj.get(S.CHECKPOINT) or event_ckpt or "unknown")
        if rec.error:
            problems.append(rec.error + ".")
        records.append(rec)
    return records


def _val_split_text(run: RunRecord) -> str:
    vs = (run.config.get("data") or {}).get("val_size")
    return f"validation split (data.val_size={vs})" if vs is not None else "validation split"
