"""Launching torchrun subprocesses from tests (gloo on CPU), with the code under test importable.

The children get ``PYTHONPATH`` = the directory of the imported ``unirobust`` package, then this
tests directory, so they run the same code as the test (not another installed copy).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import unirobust

TESTS = Path(__file__).parent
SRC = Path(unirobust.__file__).resolve().parents[1]


def child_env() -> dict[str, str]:
    """The environment of a child process: one thread, this code first on the path."""
    path = os.pathsep.join([str(SRC), str(TESTS)])
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


def free_port() -> int:
    """A TCP port nobody listens on right now (for a c10d rendezvous endpoint)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def torchrun(
    args: list[str], nproc: int = 2, rendezvous: list[str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """``torchrun --nproc-per-node NPROC [rendezvous] ARGS`` (default rendezvous: standalone)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", *(rendezvous or ["--standalone"])]
    cmd += [f"--nproc-per-node={nproc}", *args]
    done = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=600)
    if check:
        assert done.returncode == 0, done.stderr[-4000:]
    return done
