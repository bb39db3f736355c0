"""The run directory: one per run, never deleted, never silently reused.

Layout::

    RUN/config.yaml                        resolved recipe (what actually ran)
    RUN/metrics.jsonl                      one JSON line per epoch / evaluation / resume
    RUN/checkpoints/train_state.pt         everything needed to resume (rank files under torchrun)
    RUN/checkpoints/model_{best,last}.safetensors   the global model, selected on validation
                                           (generalist.md §3.6's g_best.pt / g_last.pt, in a
                                           format that cannot carry code)
    RUN/eval/                              per-sample evaluation results and summaries
    RUN/report/                            markdown report and figures

A new run refuses a directory that exists and is not empty (the RAMP scripts deleted it; we do
not, multinorm.md §9). ``--resume RUN`` reopens it and drops metric lines of epochs newer than
the last checkpoint, so nothing is counted twice.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from unirobust.errors import RunDirError
from unirobust.io import atomic_write_text


class RunDir:
    """Paths and append-only logs of one run."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    def train_state_path(self, rank: int | None = None) -> Path:
        name = "train_state.pt" if rank is None else f"train_state.rank{rank}.pt"
        return self.checkpoints / name

    def model_path(self, which: str) -> Path:
        return self.checkpoints / f"model_{which}.safetensors"

    @staticmethod
    def refuse_existing(root: Path) -> None:
        """A new run never reuses a directory that exists and is not empty."""
        root = Path(root)
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise RunDirError(
                f"run directory '{root}' already exists and is not empty; continue it with "
                f"--resume {root} or choose another with --out"
            )

    @classmethod
    def create(cls, root: Path, config: dict[str, Any]) -> RunDir:
        """Make a fresh run directory; refuse an existing non-empty one."""
        root = Path(root)
        cls.refuse_existing(root)
        root.mkdir(parents=True, exist_ok=True)
        run = cls(root)
        run.checkpoints.mkdir(exist_ok=True)
        text = yaml.safe_dump(config, sort_keys=False)
        atomic_write_text(run.config_path, text)
        run.metrics_path.touch()
        return run

    @classmethod
    def open_existing(cls, root: Path) -> RunDir:
        """Open a run directory for resuming or evaluation."""
        run = cls(Path(root))
        if not run.config_path.is_file():
            raise RunDirError(f"'{root}' is not a unirobust run directory (no config.yaml)")
        return run

    def read_config(self) -> dict[str, Any]:
        return yaml.safe_load(self.config_path.read_text())

    def log(self, record: dict[str, Any]) -> None:
        """Append one JSON line (flushed, so a kill loses at most the line being written)."""
        record = {"time": round(time.time(), 3), **record}
        with open(self.metrics_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()

    def records(self) -> list[dict[str, Any]]:
        if not self.metrics_path.is_file():
            return []
        out = []
        for line in self.metrics_path.read_text().splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a kill
        return out

    def truncate_after_epoch(self, epoch: int) -> None:
        """Drop epoch records newer than ``epoch`` (written after the last checkpoint)."""
        keep = [r for r in self.records() if not (r.get("event") == "epoch" and r["epoch"] > epoch)]
        text = "".join(json.dumps(r) + "\n" for r in keep)
        atomic_write_text(self.metrics_path, text)
