"""What produced a run: package versions, the source's git commit, device, host, command line.

:func:`session_provenance` is recorded in ``RUN/provenance.json`` at the start of every training
session (a fresh start and each resume), next to ``config.yaml`` (the full resolved recipe, whose
SHA-256 the record carries). Nothing here fails a run: a fact that cannot be found is ``None``.
"""

from __future__ import annotations

import hashlib
import os
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

PACKAGES = ("unirobust", "torch", "numpy", "pyautoattack", "safetensors", "pydantic", "pyyaml")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution (``None`` when it is not installed)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit(source: Path | None = None) -> dict[str, Any] | None:
    """Commit and dirtiness of the repository unirobust runs from, or ``None`` (an installed
    package, or no git). Only a checkout whose root holds this source tree counts, never a
    repository that merely encloses a virtual environment."""
    root = source or Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def session_provenance(
    event: str, device: torch.device | str, config_path: Path | None = None
) -> dict[str, Any]:
    """One session's record: see the module docstring."""
    config_sha = None
    if config_path is not None and Path(config_path).is_file():
        config_sha = hashlib.sha256(Path(config_path).read_bytes()).hexdigest()
    return {
        "event": event,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "git": git_commit(),
        "device": str(device),
        "cuda": torch.version.cuda,
        "torch_threads": torch.get_num_threads(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "argv": list(sys.argv),
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "config": {"file": "config.yaml", "sha256": config_sha},
    }
