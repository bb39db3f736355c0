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
    RUN/provenance.json                    versions, git commit, device, host of every session
    RUN/.lock                              held (flock) by the one process using the run

A new run refuses a directory that exists and is not empty (the RAMP scripts deleted it; we do
not, multinorm.md §9). ``--resume RUN`` reopens it and drops metric lines of epochs newer than
the last checkpoint, so nothing is counted twice.

**One process per run.** A process that trains, resumes or evaluates a run holds ``RUN/.lock``
(an exclusive ``flock`` on a file that records its pid, host and start time). A second process
is refused with that pid and host. The kernel drops the lock of a killed process, so a lock file
left by ``kill -9`` is stale and taken over (said on stderr), as are the temporary files its
writes left (``.<name>.<random>.tmp``; the files they were to replace are intact).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from unirobust.errors import RunDirError
from unirobust.io import TEMP_SUFFIX, atomic_write_text, output_error

LOCK_NAME = ".lock"
PROVENANCE_NAME = "provenance.json"


def _ours(name: str, allow: tuple[str, ...]) -> bool:
    """A name that does not make a directory a run: ``allow``ed, or a killed writer's temp file."""
    return name in allow or (name.startswith(".") and name.endswith(TEMP_SUFFIX))


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

    @property
    def lock_path(self) -> Path:
        return self.root / LOCK_NAME

    @property
    def provenance_path(self) -> Path:
        return self.root / PROVENANCE_NAME

    @staticmethod
    def refuse_existing(root: Path, allow: tuple[str, ...] = (LOCK_NAME,)) -> None:
        """A new run never reuses a directory that exists and is not empty (a lock file and the
        temporary files of a process killed while creating the run do not count; a live
        holder of the lock is refused by the lock itself)."""
        root = Path(root)
        if root.exists() and (
            not root.is_dir() or any(not _ours(p.name, allow) for p in root.iterdir())
        ):
            raise RunDirError(
                f"run directory '{root}' already exists and is not empty; continue it with "
                f"--resume {root} or choose another with --out"
            )

    @classmethod
    def create(cls, root: Path, config: dict[str, Any], lock: RunLock | None = None) -> RunDir:
        """Make a fresh run directory; refuse an existing non-empty one.

        With ``lock`` (not yet held), the lock is taken right after the directory exists and
        the directory is checked again, so two processes racing for one ``--out`` cannot both
        create it."""
        root = Path(root)
        cls.refuse_existing(root)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise output_error(root, err, "cannot create run directory") from None
        run = cls(root)
        if lock is not None:
            lock.acquire()
            cls.refuse_existing(root)
        # config.yaml first: from then on the directory is a run that --resume continues
        atomic_write_text(run.config_path, yaml.safe_dump(config, sort_keys=False))
        try:
            run.checkpoints.mkdir(exist_ok=True)
            run.metrics_path.touch()
        except OSError as err:
            raise output_error(root, err, "cannot write run directory") from None
        return run

    def lock(self) -> RunLock:
        return RunLock(self.lock_path)

    @contextlib.contextmanager
    def locked(self) -> Iterator[RunLock]:
        """Hold the run's lock for the ``with`` block (see the module docstring)."""
        lock = self.lock()
        lock.acquire()
        try:
            yield lock
        finally:
            lock.release()

    def remove_stale_temps(self) -> list[Path]:
        """Delete temporary files that a killed writer left (call with the lock held)."""
        removed = []
        for path in self.root.rglob(f".*{TEMP_SUFFIX}"):
            if path.is_file() and path.name != LOCK_NAME:
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed

    def add_provenance(self, session: dict[str, Any]) -> None:
        """Append one session (a fresh start or a resume) to ``provenance.json``."""
        sessions: list[dict[str, Any]] = []
        if self.provenance_path.is_file():
            try:
                sessions = json.loads(self.provenance_path.read_text())["sessions"]
            except (ValueError, KeyError, TypeError):
                sessions = []  # unreadable: start a new list rather than refuse to train
        sessions.append(session)
        atomic_write_text(self.provenance_path, json.dumps({"sessions": sessions}, indent=2))

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
        try:
            with open(self.metrics_path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
                handle.flush()
        except OSError as err:
            raise output_error(self.metrics_path, err) from None

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


class RunLock:
    """An exclusive lock on a run directory: ``flock`` on ``RUN/.lock`` holding pid and host.

    ``flock`` is released by the kernel when its process dies (even by ``kill -9``), so a lock
    file without a live holder is stale and is taken over. The file is removed on release; a
    process that locked a file another one just removed retries on the new file.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self.took_over: dict[str, Any] | None = None

    def _holder(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def acquire(self) -> None:
        if self._fd is not None:
            return
        for _ in range(10):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise output_error(self.path, err, "cannot create lock file") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = self._holder()
                who = (
                    f"process {holder.get('pid')} on host {holder.get('host')} (since "
                    f"{holder.get('started')})"
                    if holder
                    else "another process"
                )
                raise RunDirError(
                    f"run directory '{self.path.parent}' is in use by {who}; wait for it to "
                    f"finish or stop it (lock file {self.path})"
                ) from None
            try:
                same_file = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same_file = False
            if same_file:
                break
            os.close(fd)  # the holder released and removed the file meanwhile: lock the new one
        else:
            raise RunDirError(f"could not lock '{self.path}' (it keeps being replaced)")
        previous = self._holder()
        if previous:
            self.took_over = previous
            print(
                f"note: took over the stale lock of process {previous.get('pid')} on host "
                f"{previous.get('host')} (it no longer runs)",
                file=sys.stderr,
            )
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
            os.fsync(fd)
        except OSError as err:
            os.close(fd)
            raise output_error(self.path, err, "cannot write lock file") from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None
