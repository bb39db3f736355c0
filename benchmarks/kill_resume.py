"""Kill-and-resume harness (issue 9): SIGKILL training and evaluation, resume, compare bit for bit.

A *round* trains and evaluates one tiny digits run (``SCENARIOS``: Generalist with EMA-mix and
BatchNorm, a staged run with a frozen-BN linear-probe stage, E-AT over three norms) the way an
operator would: ``unirobust train RECIPE --out RUN`` (or ``train --resume RUN`` once the run
exists), then ``unirobust eval RUN``. Each such *session* is a forked child process running the
real CLI; the harness kills it with SIGKILL and starts the next session, until the run is
complete. The result must equal an uninterrupted reference run bit for bit: every tensor of the
train state (experts, optimizers, objective and merge state, RNG), both exported models, the
per-sample evaluation tables, the epoch metrics (times aside).

Where the kills land: the reference session records its sequence of events (each expert's
training step, each validation, each attack chunk of the evaluation, each atomic file write,
classified as checkpoint / evaluation / other), with markers at the start of every epoch and of
the evaluation. For each kill the harness picks a kind of event, then one such event still ahead
of the session (resumes are deterministic, so the event recurs at the same place after the last
marker). The child kills itself with SIGKILL at that event: after a training step (mid-batch
for several experts, before the merge), after validation, after an attack chunk, and *inside* a
write, after the temporary file was written and cut to half its size but before it replaces the
target. A ``timer`` kill is the parent's ``kill -9`` after a random delay instead.

After every kill the run directory is checked: every checkpoint, model, evaluation table and
state, JSON, YAML and PNG must parse completely ("half-written" counts those that do not);
temporary files left by the kill are counted (the next session removes them); a second process
must be refused by the run's lock while a session runs (``--check-lock``).

Run: ``.venv/bin/python benchmarks/kill_resume.py --kills 20 [--seed 0] [--out DIR]``; results
go to ``benchmarks/results/kill_resume.json`` (docs/reliability.md quotes them). The test suite
runs :func:`run_harness` with 3 kills per scenario (tests/test_reliability.py).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
KILLED = -signal.SIGKILL
PHASES = ("batch", "validation", "attack", "checkpoint", "eval_write", "other_write", "timer")

# ------------------------------------------------------------------------------ scenarios

_EVAL = {
    "enabled": False,  # the harness runs `unirobust eval RUN` as its own command
    "suite": "fast",
    "threats": ["linf:0.1", "l2:1.0"],
    "n": 32,
    "batch_size": 16,
    "calibration": True,
}
_BASE: dict[str, Any] = {
    "seed": 5,
    "data": {"name": "digits", "n_train": 128, "val_size": 32, "batch_size": 64},
    "validation": {"threats": ["linf:0.1"], "steps": 2},
    "eval": _EVAL,
}
_BN_LENET = {"name": "lenet", "options": {"channels": [4, 8], "hidden": 16, "batchnorm": True}}
_SGD = {"name": "sgd", "momentum": 0.9, "weight_decay": 5e-4}
_PRESET = {"preset": "nat_linf", "linf": "linf:0.1", "attack_steps": 2}


def _expert(name: str, objective: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "objective": objective,
        "optimizer": dict(_SGD),
        "lr_schedule": {"kind": "constant", "value": 0.05},
    }


SCENARIOS: dict[str, dict[str, Any]] = {
    # two experts (natural + l_inf PGD-AT) mixed by EMA-mix with BatchNorm statistics
    "generalist": {
        "name": "kill-generalist",
        "model": _BN_LENET,
        "train": {
            "epochs": 3,
            "merge": {"name": "ema_mix", "sync_start": 2, "sync_interval": 1},
            "generalist": {**_PRESET, "lr_values": [0.05, 0.05, 0.01, 0.001]},
        },
    },
    # a linear probe with frozen BatchNorm, then full fine-tuning
    "staged": {
        "name": "kill-staged",
        "model": _BN_LENET,
        "train": {
            "stages": [
                {
                    "name": "lp",
                    "epochs": 1,
                    "experts": [_expert("e", {"name": "natural"})],
                    "trainable": "head",
                    "bn_mode": "frozen",
                },
                {"name": "ft", "epochs": 2, "experts": [_expert("e", {"name": "natural"})]},
            ]
        },
    },
    # an objective with state: E-AT's per-norm accumulators
    "eat": {
        "name": "kill-eat",
        "model": {"name": "mlp", "options": {"hidden_sizes": [32]}},
        "train": {
            "epochs": 3,
            "experts": [
                _expert(
                    "e",
                    {"name": "eat", "threats": ["linf:0.1", "l2:1.0", "l1:4"], "steps": 2},
                )
            ],
        },
    },
}


def scenario_recipe(name: str) -> dict[str, Any]:
    return {**copy.deepcopy(_BASE), **copy.deepcopy(SCENARIOS[name])}


# ------------------------------------------------------------------------------ the child side


@dataclass
class Plan:
    """Kill at the ``index``-th (1-based) ``phase`` event after ``marker`` in this session."""

    marker: str
    phase: str
    index: int


class _Hooks:
    """Installed in a session's child process: records events, kills itself at the plan."""

    def __init__(self, events_path: Path | None, plan: Plan | None, reports: bool = True) -> None:
        self.reports = reports
        self.events_path = events_path
        self.plan = plan
        self.armed = plan is not None and plan.marker == "session"
        self.count = 0

    def record(self, name: str) -> None:
        if self.events_path is not None:
            with open(self.events_path, "a") as handle:
                handle.write(name + "\n")

    def marker(self, name: str) -> None:
        self.record("@" + name)
        if self.plan is not None and name == self.plan.marker:
            self.armed, self.count = True, 0

    def event(self, phase: str, before_kill: Any = None) -> None:
        self.record(phase)
        if not self.armed or self.plan is None or phase != self.plan.phase:
            return
        self.count += 1
        if self.count == self.plan.index:
            if before_kill is not None:
                before_kill()
            os.kill(os.getpid(), signal.SIGKILL)


def _write_phase(path: Path) -> str:
    parts = Path(path).parts
    if "checkpoints" in parts:
        return "checkpoint"
    return "eval_write" if "eval" in parts or Path(path).suffix == ".state" else "other_write"


def _install(hooks: _Hooks) -> None:
    """Wrap the engine's seams (patched in this child process only)."""
    import unirobust.cli as cli
    import unirobust.engine.trainer as trainer_mod
    import unirobust.io as uio
    import unirobust.pipeline as pipeline
    from unirobust.engine.trainer import Trainer
    from unirobust.evaluation.suites import Suite
    from unirobust.experts.expert import Expert

    original_write = uio.atomic_write

    def atomic_write(path, write):
        def cut(tmp: Path) -> None:  # a torn temporary file: the kill lands mid-write
            with open(tmp, "r+b") as handle:
                handle.truncate(max(0, Path(tmp).stat().st_size // 2))

        def wrapped(tmp: Path) -> None:
            write(tmp)
            hooks.event(_write_phase(Path(path)), lambda: cut(tmp))

        return original_write(path, wrapped)

    for module in list(sys.modules.values()):
        name = getattr(module, "__name__", "")
        if name.startswith("unirobust") and getattr(module, "atomic_write", None) is original_write:
            module.atomic_write = atomic_write

    step, epoch, validate = Expert.train_step, Trainer._train_epoch, trainer_mod.validate
    suite_run, finish, evaluate = Suite.run, cli._finish, pipeline.evaluate_run

    def train_step(self, *args, **kwargs):
        out = step(self, *args, **kwargs)
        hooks.event("batch")
        return out

    def train_epoch(self, epoch_number, local_epoch):
        hooks.marker(f"epoch{epoch_number}")
        return epoch(self, epoch_number, local_epoch)

    def validated(*args, **kwargs):
        out = validate(*args, **kwargs)
        hooks.event("validation")
        return out

    def attacked(self, *args, **kwargs):
        out = suite_run(self, *args, **kwargs)
        hooks.event("attack")
        return out

    def finished(*args, **kwargs):
        hooks.marker("finish")
        return finish(*args, **kwargs)

    def evaluated(*args, **kwargs):
        hooks.marker("eval")
        return evaluate(*args, **kwargs)

    Expert.train_step, Trainer._train_epoch, trainer_mod.validate = (
        train_step,
        train_epoch,
        validated,
    )
    Suite.run, cli._finish, pipeline.evaluate_run = attacked, finished, evaluated
    if not hooks.reports:  # the test suite's short cut: figures take most of a tiny session
        import unirobust.report as report

        report.write_report = lambda run_dir: Path(run_dir) / "report" / "report.md"


def _cli(args: list[str]) -> int:
    from unirobust.cli import app

    try:  # click returns typer.Exit's code; anything raised is a bug
        return int(app(args, prog_name="unirobust", standalone_mode=False) or 0)
    except SystemExit as stop:
        return int(stop.code or 0)
    except Exception as err:
        import traceback

        traceback.print_exc()
        print(f"session failed: {err}", file=sys.stderr)
        return 1


def session_commands(recipe_path: Path, run: Path) -> list[list[str]]:
    """What the operator types: start (or resume) training, then evaluate."""
    if (run / "config.yaml").is_file():
        train = ["train", "--resume", str(run), "--quiet"]
    else:
        train = ["train", str(recipe_path), "--out", str(run), "--quiet"]
    return [train, ["eval", str(run)]]


def run_session(
    recipe_path: Path,
    run: Path,
    plan: Plan | None = None,
    events_path: Path | None = None,
    timer_s: float | None = None,
    log_path: Path | None = None,
    reports: bool = True,
) -> int:
    """One session in a forked child; returns its exit code, or ``KILLED``."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 1
        try:
            if log_path is not None:
                fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
            torch.set_num_threads(1)
            _install(_Hooks(events_path, plan, reports))
            code = 0
            for args in session_commands(recipe_path, run):
                code = _cli(args)
                if code != 0:
                    break
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    if timer_s is not None:
        deadline = time.monotonic() + timer_s
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.01)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


# ------------------------------------------------------------------------------ checks


def _load_any(path: Path) -> Any:
    """Parse ``path`` completely by its kind (raises when it is torn)."""
    from safetensors.torch import load_file

    from unirobust.engine.checkpoint import load_train_state, read_model_file

    suffix = path.suffix
    if suffix == ".pt":
        return load_train_state(path)
    if suffix == ".safetensors":
        read_model_file(path)
        return load_file(str(path))
    if suffix in (".npz", ".state"):
        with np.load(path, allow_pickle=False) as arrays:
            return {k: arrays[k] for k in arrays.files}
    if suffix == ".json":
        return json.loads(path.read_text())
    if suffix == ".yaml":
        return yaml.safe_load(path.read_text())
    if suffix == ".png":
        data = path.read_bytes()
        if not (data.startswith(b"\x89PNG") and data[-12:-4] == b"\x00\x00\x00\x00IEND"):
            raise ValueError("torn PNG")
        return None
    if suffix in (".md", ".jsonl"):
        return path.read_text(encoding="utf-8")
    return None


def inspect_files(run: Path) -> dict[str, list[str]]:
    """Files of a run: ``torn`` (do not parse), ``temps`` (left by a killed writer), ``ok``."""
    out: dict[str, list[str]] = {"torn": [], "temps": [], "ok": []}
    if not run.is_dir():
        return out
    for path in sorted(p for p in run.rglob("*") if p.is_file()):
        rel = str(path.relative_to(run))
        if path.name == ".lock":
            continue
        if path.name.startswith(".") and path.name.endswith(".tmp"):
            out["temps"].append(rel)
            continue
        try:
            _load_any(path)
        except Exception:
            out["torn"].append(rel)
        else:
            out["ok"].append(rel)
    return out


def _torn_log_lines(run: Path) -> int:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return 0
    bad = 0
    for line in path.read_text().splitlines():
        try:
            json.loads(line)
        except ValueError:
            bad += 1
    return bad


_VOLATILE = ("time", "per_s", "session", "model_path", "path")


def _stable(value: Any) -> Any:
    """``value`` without wall-clock and path fields (they differ between runs by design)."""
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if not any(t in k for t in _VOLATILE)}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def _same(a: Any, b: Any, where: str, diffs: list[str]) -> None:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        ok = (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(a, b)
        )
        if not ok:
            diffs.append(where)
    elif isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        if not np.array_equal(np.asarray(a), np.asarray(b), equal_nan=a.dtype.kind == "f"):
            diffs.append(where)
    elif isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            diffs.append(f"{where}: keys {sorted(set(a) ^ set(b), key=str)}")
        for key in set(a) & set(b):
            _same(a[key], b[key], f"{where}.{key}", diffs)
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            diffs.append(f"{where}: length {len(a)} != {len(b)}")
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            _same(x, y, f"{where}[{i}]", diffs)
    elif a != b and not (isinstance(a, float) and isinstance(b, float) and a != a and b != b):
        diffs.append(f"{where}: {a!r} != {b!r}")


def _epoch_records(run: Path) -> list[dict[str, Any]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    return [_stable(r) for r in records if r.get("event") == "epoch"]


def compare_runs(reference: Path, run: Path) -> list[str]:
    """Differences between a killed-and-resumed run and the reference ([] when bit-exact)."""
    diffs: list[str] = []
    for rel in ("checkpoints/train_state.pt",):
        _same(_load_any(reference / rel), _load_any(run / rel), rel, diffs)
    for which in ("best", "last"):
        rel = f"checkpoints/model_{which}.safetensors"
        _same(_load_any(reference / rel), _load_any(run / rel), rel, diffs)
    for ref_file in sorted((reference / "eval").glob("*.npz")):
        rel = str(ref_file.relative_to(reference))
        _same(_load_any(ref_file), _load_any(run / rel), rel, diffs)
    for ref_file in sorted((reference / "eval").glob("*.json")):
        rel = str(ref_file.relative_to(reference))
        _same(_stable(_load_any(ref_file)), _stable(_load_any(run / rel)), rel, diffs)
    ref_epochs, epochs = _epoch_records(reference), _epoch_records(run)
    if [r["epoch"] for r in epochs] != [r["epoch"] for r in ref_epochs]:
        diffs.append(f"epoch records {[r['epoch'] for r in epochs]} (each epoch exactly once)")
    else:
        _same(ref_epochs, epochs, "metrics.jsonl", diffs)
    leftovers = [p.name for p in (run / "eval").glob(".*") if p.suffix in (".state", ".tmp")]
    if leftovers:
        diffs.append(f"evaluation left {leftovers}")
    return diffs


# ------------------------------------------------------------------------------ the harness


def _events(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.is_file() else []


def _remaining(reference: list[str], run: Path, epochs: int) -> tuple[str, list[str]]:
    """The marker the next session passes first and the reference events after it."""
    from unirobust.engine.checkpoint import load_train_state

    if not (run / "config.yaml").is_file():
        return "session", reference
    state = run / "checkpoints" / "train_state.pt"
    epoch = int(load_train_state(state)["epoch"]) if state.is_file() else 0
    marker = f"@epoch{epoch + 1}" if epoch < epochs else "@finish"
    return marker[1:], reference[reference.index(marker) :]


def _choose(
    rng: random.Random, marker: str, remaining: list[str], share: float, timer_s: float | None
) -> tuple[Plan | None, float | None, str]:
    """A kill still ahead of the session: (plan, None, phase) or (None, delay, 'timer').

    ``share``: the remaining part of the reference run; ``timer_s``: its duration (None: no
    timer kills)."""
    present = sorted({e for e in remaining if not e.startswith("@")})
    phases = [*present, "timer"] if timer_s is not None else present
    phase = rng.choice(phases)
    if phase == "timer" and timer_s is not None:  # kill -9 at a random time in what remains
        return None, rng.uniform(0.05, 0.9) * timer_s * max(share, 0.05), "timer"
    positions = [i for i, e in enumerate(remaining) if e == phase]
    pos = rng.choice(positions)
    last_marker, start = marker, 0
    for i in range(pos, -1, -1):
        if remaining[i].startswith("@"):
            last_marker, start = remaining[i][1:], i
            break
    index = sum(1 for e in remaining[start : pos + 1] if e == phase)
    return Plan(last_marker, phase, index), None, phase


@dataclass
class Tally:
    kills: int = 0
    by_phase: Counter = field(default_factory=Counter)
    sessions: int = 0
    rounds: int = 0
    half_written: int = 0
    torn_log_lines: int = 0
    temps_left_by_kills: int = 0
    temps_after_resume: int = 0
    mismatches: list[str] = field(default_factory=list)
    files_checked: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "kills": self.kills,
            "kills_by_phase": dict(sorted(self.by_phase.items())),
            "sessions": self.sessions,
            "rounds": self.rounds,
            "files_checked_after_kills": self.files_checked,
            "half_written_files": self.half_written,
            "torn_metric_lines": self.torn_log_lines,
            "temp_files_left_by_kills": self.temps_left_by_kills,
            "temp_files_left_after_completion": self.temps_after_resume,
            "mismatches": self.mismatches,
        }


def warm_up(recipe: dict[str, Any]) -> None:
    """Import what a session needs and read the dataset once, before forking: every child
    inherits it instead of paying for it again (sessions are then mostly training)."""
    import unirobust.cli
    import unirobust.evaluation
    import unirobust.pipeline  # noqa: F401
    from unirobust.data import load_dataset

    data = recipe["data"]
    load_dataset(data["name"], n_train=data["n_train"], val_size=data["val_size"], seed=0)
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)  # imports torch._dynamo


def run_harness(
    scenario: str,
    kills: int,
    work: Path,
    *,
    seed: int = 0,
    timers: bool = True,
    reports: bool = True,
    log: Any = None,
) -> dict[str, Any]:
    """Kill the scenario's run ``kills`` times (over as many rounds as needed); see the module
    docstring. Returns the tallies (``mismatches`` empty when every round was bit-exact)."""
    say = log or (lambda *_: None)
    rng = random.Random(f"{scenario}-{seed}")
    recipe = scenario_recipe(scenario)
    work.mkdir(parents=True, exist_ok=True)
    recipe_path = work / f"{scenario}.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe))
    epochs = (
        sum(s["epochs"] for s in recipe["train"].get("stages", [])) or recipe["train"]["epochs"]
    )
    warm_up(recipe)
    reference, events = work / "reference", work / "reference.events"
    start = time.perf_counter()
    log_path = work / "log.txt"
    code = run_session(recipe_path, reference, None, events, log_path=log_path, reports=reports)
    ref_s = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"reference run failed ({code}); see {work / 'log.txt'}")
    ref_events = _events(events)
    tally = Tally()
    while tally.kills < kills:
        tally.rounds += 1
        run = work / f"round{tally.rounds}"
        while True:
            marker, remaining = _remaining(ref_events, run, epochs)
            plan = timer = None
            phase = ""
            if tally.kills < kills:
                share = len(remaining) / len(ref_events)
                plan, timer, phase = _choose(
                    rng, marker, remaining, share, ref_s if timers else None
                )
            tally.sessions += 1
            code = run_session(recipe_path, run, plan, None, timer, log_path, reports)
            if code == 0:
                break
            if code != KILLED:
                raise RuntimeError(f"session failed with exit code {code}; see {work / 'log.txt'}")
            tally.kills += 1
            tally.by_phase[phase] += 1
            files = inspect_files(run)
            tally.files_checked += len(files["ok"]) + len(files["torn"])
            tally.half_written += len(files["torn"])
            tally.temps_left_by_kills += len(files["temps"])
            tally.torn_log_lines += _torn_log_lines(run)
            say(f"{scenario}: kill {tally.kills} ({phase}) torn={files['torn']}")
        tally.temps_after_resume += len(inspect_files(run)["temps"])
        tally.mismatches += [f"round {tally.rounds}: {d}" for d in compare_runs(reference, run)]
    return {"scenario": scenario, "reference_s": round(ref_s, 2), **tally.as_dict()}


def _lock_check(work: Path) -> dict[str, Any]:
    """A second process on a run that a session is training is refused (exit 2)."""
    recipe_path = work / "generalist.yaml"
    run = work / "lock-run"
    pid = os.fork()
    if pid == 0:
        torch.set_num_threads(1)
        os._exit(_cli(["train", str(recipe_path), "--out", str(run), "--quiet"]))
    deadline = time.monotonic() + 60
    while not (run / "config.yaml").is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    second = run_session(recipe_path, run, log_path=work / "lock.txt")
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    stale_ok = run_session(recipe_path, run, log_path=work / "lock.txt")  # takes the lock over
    return {"second_process_exit": second, "after_kill_resume_exit": stale_ok}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="kills in all (split over scenarios)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/kill_resume.json")
    parser.add_argument("--work", type=Path, default=None, help="keep the runs here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = [s for s in args.scenarios.split(",") if s]
    shares = [args.kills // len(names) + (i < args.kills % len(names)) for i in range(len(names))]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        results = [
            run_harness(n, k, work / n, seed=args.seed, log=print)
            for n, k in zip(names, shares, strict=True)
        ]
        lock = _lock_check(work / names[0]) if "generalist" in names else None
    total = {
        "kills": sum(r["kills"] for r in results),
        "half_written_files": sum(r["half_written_files"] for r in results),
        "mismatches": sum(len(r["mismatches"]) for r in results),
        "wall_s": round(time.perf_counter() - start, 1),
    }
    payload = {
        "command": f"python benchmarks/kill_resume.py --kills {args.kills} --seed {args.seed}",
        "torch": torch.__version__,
        "total": total,
        "lock": lock,
        "scenarios": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps(total))
    sys.exit(1 if total["mismatches"] or total["half_written_files"] else 0)


if __name__ == "__main__":
    main()
