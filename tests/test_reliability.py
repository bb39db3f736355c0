"""Issue 9: kills and resumes, the run lock, full disks, skipped non-finite batches, provenance,
evaluation edge cases."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Literal

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import tiny_recipe
from typer.testing import CliRunner

from unirobust.cli import app
from unirobust.config import validate_recipe
from unirobust.engine.checkpoint import load_train_state
from unirobust.engine.rundir import RunDir, RunLock
from unirobust.errors import OutputError, RunDirError
from unirobust.objectives.base import OBJECTIVES, Objective, scored
from unirobust.pipeline import train
from unirobust.schema import Spec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import kill_resume

runner = CliRunner()


def _one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    text = " ".join(result.output.split())
    assert text.startswith("error:"), text
    for needle in needles:
        assert needle in text, (needle, text)


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


# ------------------------------------------------------------------ kill -9 and resume


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["generalist", "staged", "eat"])
def test_three_kills_resume_bit_exactly(tmp_path: Path, scenario: str) -> None:
    """The harness of benchmarks/kill_resume.py: SIGKILL mid-batch, mid-write (checkpoint or
    evaluation file), in validation or in an attack chunk, resume with the CLI, compare."""
    result = kill_resume.run_harness(
        scenario, 3, tmp_path / scenario, seed=11, timers=False, reports=False
    )
    assert result["kills"] == 3
    assert result["half_written_files"] == 0
    assert result["torn_metric_lines"] == 0
    assert result["temp_files_left_after_completion"] == 0
    assert result["mismatches"] == []


def test_harness_detects_a_torn_checkpoint(tmp_path: Path) -> None:
    """The harness's own check: a truncated checkpoint or evaluation table does not pass."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "model_last.safetensors").write_bytes(b"\x10\x00\x00")
    (run / "eval").mkdir()
    (run / "eval" / "best-fast.json").write_text('{"clean_acc": 0.')
    (run / "eval" / ".best-fast.npz.abc.tmp").write_bytes(b"x")
    files = kill_resume.inspect_files(run)
    assert sorted(files["torn"]) == ["checkpoints/model_last.safetensors", "eval/best-fast.json"]
    assert files["temps"] == ["eval/.best-fast.npz.abc.tmp"]


# ------------------------------------------------------------------ one process per run


def test_second_process_is_refused_and_stale_lock_taken_over(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    held = RunLock(run / ".lock")
    held.acquire()
    with pytest.raises(RunDirError, match=rf"in use by process {os.getpid()} on host"):
        RunLock(run / ".lock").acquire()  # another open file description: refused like a process
    held.release()
    assert not (run / ".lock").exists()

    pid = os.fork()  # a process that takes the lock and is killed with -9
    if pid == 0:
        RunLock(run / ".lock").acquire()
        os.kill(os.getpid(), signal.SIGKILL)
    os.waitpid(pid, 0)
    assert json.loads((run / ".lock").read_text())["pid"] == pid  # the stale lock is still there
    lock = RunLock(run / ".lock")
    lock.acquire()
    assert lock.took_over is not None and lock.took_over["pid"] == pid
    assert json.loads((run / ".lock").read_text())["pid"] == os.getpid()
    lock.release()


def test_cli_refuses_a_run_in_use(tmp_path: Path) -> None:
    recipe = tiny_recipe()
    recipe["train"]["epochs"] = 1
    run = train(validate_recipe(recipe), out=tmp_path / "run", progress=False)
    with RunDir(run).locked():
        _one_line_error(runner.invoke(app, ["train", "--resume", str(run)]), "in use by process")
        result = runner.invoke(app, ["eval", str(run), "--threats", "linf:0.1"])
        _one_line_error(result, "in use by process")
    # a fresh run into a directory that only holds a (stale) lock file is fine
    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh" / ".lock").write_text('{"pid": 1, "host": "elsewhere"}')
    train(validate_recipe(recipe), out=tmp_path / "fresh", progress=False)
    assert not (tmp_path / "fresh" / ".lock").exists()


# ------------------------------------------------------------------ full disk, unwritable output


def test_disk_full_at_a_checkpoint_keeps_the_previous_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import unirobust.io as uio

    original = uio.atomic_write
    writes = {"state": 0}

    def full_disk(path, write):
        if Path(path).name == "train_state.pt":
            writes["state"] += 1
            if writes["state"] == 2:  # the second epoch's train state finds the disk full

                def partial(tmp: Path) -> None:
                    tmp.write_bytes(b"half a checkpoint")
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

                return original(path, partial)
        return original(path, write)

    monkeypatch.setattr(uio, "atomic_write", full_disk)
    config = validate_recipe(tiny_recipe())
    with pytest.raises(OutputError, match=r"train_state.pt': No space left on device"):
        train(config, out=tmp_path / "run", progress=False)
    state = load_train_state(tmp_path / "run" / "checkpoints" / "train_state.pt")
    assert state["epoch"] == 1
    assert not list((tmp_path / "run").rglob("*.tmp"))
    monkeypatch.setattr(uio, "atomic_write", original)
    train(config, resume=tmp_path / "run", progress=False)  # and the run goes on from epoch 1
    assert load_train_state(tmp_path / "run" / "checkpoints" / "train_state.pt")["epoch"] == 3


def test_unwritable_output_is_refused_before_training(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe()))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    before = _files(tmp_path)
    result = runner.invoke(app, ["train", str(path), "--out", str(blocker / "run")])
    _one_line_error(result, "is not a directory")
    assert _files(tmp_path) == before and blocker.read_text() == "not a directory"


# ------------------------------------------------------------------ non-finite losses


class NanEverySecond(Objective):
    """Loss NaN on every second call: four batches an epoch, two of them skipped."""

    name = "toy_nan_every_second"
    calls = 0

    def __call__(self, model, x, y):
        self.calls += 1
        logits = model(x)
        scale = float("nan") if self.calls % 2 == 0 else 1.0
        return scored(F.cross_entropy(logits, y) * scale, logits, y)


class NanSpec(Spec):
    name: Literal["toy_nan_every_second"] = "toy_nan_every_second"


@pytest.fixture
def nan_objective():
    OBJECTIVES.register("toy_nan_every_second", NanSpec)(lambda spec, ctx: NanEverySecond())
    yield
    OBJECTIVES.unregister("toy_nan_every_second")


def test_skip_non_finite_batches(tmp_path: Path, nan_objective) -> None:
    data = tiny_recipe()
    data["train"]["experts"][0]["objective"] = {"name": "toy_nan_every_second"}
    data["train"].update(epochs=2, check_finite="skip", log_every=3)
    run = train(validate_recipe(data), out=tmp_path / "r", progress=False)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r.get("event") == "epoch"]
    assert [r["train"]["natural"]["skipped"] for r in epochs] == [2, 2]
    assert all(torch.isfinite(torch.tensor(r["train"]["natural"]["loss"])) for r in epochs)
    state = load_train_state(run / "checkpoints" / "train_state.pt")
    assert state["step"] == 8
    assert all(torch.isfinite(v).all() for v in state["experts"]["natural"]["model"].values())
    # without the option, the same objective stops the run at its first NaN, naming it
    data["train"]["check_finite"] = "every_step"
    result = runner.invoke(
        app, ["train", _write(tmp_path, data), "--out", str(tmp_path / "stop"), "--quiet"]
    )
    _one_line_error(result, "at step 1", "toy_nan_every_second", "last checkpoint kept")


def _write(tmp_path: Path, recipe: dict) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


# ------------------------------------------------------------------ provenance, reproducibility


def test_same_seed_same_metrics_and_provenance_recorded(tmp_path: Path) -> None:
    recipe = tiny_recipe(validation={"threats": ["linf:0.1"], "steps": 2})
    recipe["train"]["epochs"] = 2
    config = validate_recipe(recipe)
    a = train(config, out=tmp_path / "a", progress=False, stop_after_epoch=1)
    train(config, resume=a, progress=False)
    b = train(config, out=tmp_path / "b", progress=False)
    stable = kill_resume._epoch_records
    assert stable(a) == stable(b) and len(stable(a)) == 2

    sessions = json.loads((a / "provenance.json").read_text())["sessions"]
    assert [s["event"] for s in sessions] == ["start", "resume"]
    first = sessions[0]
    for package in ("torch", "numpy", "pyautoattack", "unirobust"):
        assert package in first["versions"]
    assert first["versions"]["torch"] == torch.__version__
    assert first["device"] == "cpu" and first["host"] and first["python"]
    assert first["config"]["sha256"] == hashlib.sha256((a / "config.yaml").read_bytes()).hexdigest()
    source = Path(__file__).resolve().parents[1]
    if (source / ".git").exists():
        assert len(first["git"]["commit"]) == 40
    assert validate_recipe(yaml.safe_load((a / "config.yaml").read_text())) == config


# ------------------------------------------------------------------ evaluation edge cases


def _digits_model():
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data[:200] / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(data.target[:200], dtype=torch.long)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), x[:13], y[:13]


class _Wrapped(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, kind: str) -> None:
        super().__init__()
        self.model, self.kind = model, kind

    def forward(self, x):
        out = self.model(x)
        if self.kind == "softmax":
            return out.softmax(-1)
        return F.dropout(out, 0.5, training=True)  # dropout left on in eval mode


def test_evaluation_edge_cases() -> None:
    """Batch size 1 and 13 points in batches of 5 give the numbers of one batch; a model that
    outputs probabilities or is random in eval mode gets a warning naming the problem."""
    from unirobust.evaluation.checks import EvaluationWarning
    from unirobust.evaluation.runner import evaluate

    model, x, y = _digits_model()
    tables = {
        bs: evaluate(model, x, y, None, threats="linf:0.1", suite="fast", batch_size=bs, seed=0)
        for bs in (1, 5, 13)
    }
    for table in tables.values():
        assert table.n_points == 13
        assert table.clean_acc() == tables[13].clean_acc()
        assert table.robust_acc("linf:0.1") == tables[1].robust_acc("linf:0.1")
    for kind, needle in (("softmax", "probabilities"), ("dropout", "stochastic")):
        for bs in (1, 4):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                wrapped = _Wrapped(model, kind)
                evaluate(wrapped, x, y, None, threats="linf:0.1", suite="fast", batch_size=bs)
            messages = [str(w.message) for w in caught if w.category is EvaluationWarning]
            assert any(needle in m for m in messages), (kind, bs, messages)
