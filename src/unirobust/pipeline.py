"""High-level entry points shared by the CLI and the Python API: train, evaluate, report.

``train`` builds everything from a recipe, runs the Trainer in a fresh (or resumed) run
directory and returns its path. ``evaluate_run`` attacks the exported global model on the *test*
split (the only place the test set is touched) and writes per-sample results and a summary.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from unirobust.build import build_model_for, build_stage
from unirobust.config import EvalConfig, RunConfig, config_to_dict, validate_recipe
from unirobust.data.source import LazyImages
from unirobust.engine.checkpoint import (
    atomic_write,
    initial_weights,
    load_model,
    load_weights_into,
)
from unirobust.engine.distributed import (
    init_distributed,
    join_process_group,
    shutdown_distributed,
)
from unirobust.engine.rundir import LOCK_NAME, RunDir, RunLock
from unirobust.engine.trainer import Trainer
from unirobust.errors import CheckpointError, ConfigError
from unirobust.evaluation.keys import Summary
from unirobust.evaluation.sharding import Shard, current_shard, shard_state_path
from unirobust.finetune.head import apply_head_init
from unirobust.finetune.ntk_stage import write_stage_ntk
from unirobust.io import atomic_write_text, check_writable_dir
from unirobust.provenance import session_provenance


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; an unavailable device is a one-line error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"device '{name}' is not a torch device (use cpu, cuda, cuda:1, auto)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' asked for but CUDA is not available here; use cpu")
    return device


def distributed_mode(config: RunConfig, n_experts: int) -> str:
    """Resolve ``distributed.mode: auto``: one process group per expert for a single-stage
    ema_mix run (generalist.md §3.4); data-parallel otherwise. An expert-parallel layout needs
    every stage to have the same number of experts."""
    mode = config.train.distributed.mode
    stages = config.train.resolved_stages()
    if mode == "experts" and len({len(s.experts) for s in stages}) > 1:
        raise ConfigError("distributed.mode 'experts' needs the same number of experts per stage")
    if mode != "auto":
        return mode
    world = int(os.environ.get("WORLD_SIZE", "1"))
    mixed = len(stages) == 1 and stages[0].merge.name == "ema_mix" and n_experts > 1
    return "experts" if mixed and world % n_experts == 0 else "data"


def load_data(config: RunConfig, device: torch.device | str = "cpu"):
    from unirobust.data import load_dataset

    d = config.data
    return load_dataset(
        d.name,
        data_dir=d.data_dir,
        n_train=d.n_train,
        n_test=d.n_test,
        val_size=d.val_size,
        seed=config.seed,
        device=device,
        classes=d.classes,
        stream=d.stream,
        **d.options,
    )


def train(
    config: RunConfig,
    *,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    progress: bool = True,
    stop_after_epoch: int | None = None,
) -> Path:
    """Train a recipe into a new run directory (``runs/<name>`` unless ``out``), or resume one."""
    from unirobust.data import Augment, BatchLoader

    device = resolve_device(config.device)
    stages = config.train.resolved_stages()
    n_experts = len(stages[0].experts)
    ctx = init_distributed(distributed_mode(config, n_experts), n_experts, device)
    lock: RunLock | None = None
    try:
        root = Path(resume if resume is not None else out or Path("runs") / config.name)
        if resume is not None:
            run = RunDir.open_existing(root)
            if ctx.is_main:  # one process per run: a second one is refused here
                lock = run.lock()
                lock.acquire()
                run.remove_stale_temps()
        else:
            RunDir.refuse_existing(root)  # before any work, so a refusal costs nothing
            check_writable_dir(root)
            lock = RunLock(root / LOCK_NAME) if ctx.is_main else None
        bundle = load_data(config, device)  # a missing dataset fails before the run dir exists
        torch.manual_seed(config.seed)  # and the global RNGs, so the train state is reproducible
        random.seed(config.seed)
        np.random.seed(config.seed)
        initial = build_model_for(config, bundle.num_classes, bundle.input_shape)
        # a run killed before its first checkpoint resumes from the start, bit-exactly
        has_state = resume is not None and any(run.checkpoints.glob("train_state*.pt"))
        if config.init_from is not None and not has_state:
            init = config.init_from
            tensors, source = initial_weights(
                init.path, init.checkpoint, model=initial, prefix=init.prefix
            )
            load_weights_into(initial, tensors, source, strict=init.strict)
        if resume is None:
            if ctx.is_main:
                RunDir.create(root, config_to_dict(config), lock=lock)
            ctx.barrier()
            run = RunDir(root)
        if ctx.is_main and (resume is None or not (run.root / "stages.json").is_file()):
            resolved = {"stages": [s.model_dump(mode="json") for s in stages]}
            text = json.dumps(resolved, indent=2)
            atomic_write(run.root / "stages.json", lambda tmp: tmp.write_text(text))

        aug = config.data.augment

        def loader_for(batch_size: int) -> BatchLoader:
            loader = BatchLoader(
                bundle.train,
                batch_size,
                shuffle=True,
                seed=config.seed,
                augment=Augment(crop_padding=aug.crop_padding, hflip=aug.hflip),
                device=device,
            )
            return loader.shard(ctx.replica, ctx.replicas) if ctx.enabled else loader

        def stage_builder(index: int, model: torch.nn.Module, fresh: bool):
            stage = stages[index]
            if fresh and not stage.head_init.is_noop:
                model = copy.deepcopy(model)
                apply_head_init(model, stage.head_init, bundle.train.x, bundle.train.y, config.seed)
            built = build_stage(
                config,
                stage,
                index,
                model,
                device,
                ctx.local_experts,
                ctx.grad_sync(),
                ctx.mix_all_reduce(),
            )
            if fresh and stage.ntk is not None and ctx.is_main:
                write_stage_ntk(
                    root,
                    stage.name,
                    built.merge.global_model(),
                    stage.ntk,
                    (bundle.train.x, bundle.train.y),
                    val_data,
                )
            return built, loader_for(stage.batch_size or config.data.batch_size)

        val_data = None
        if bundle.val is not None and len(bundle.val) > 0:
            n = config.validation.n or len(bundle.val)
            val_data = (bundle.val.x[:n].to(device), bundle.val.y[:n].to(device))
        meta = {
            "model": {"name": config.model.name, "options": config.model.options},
            "num_classes": bundle.num_classes,
            "input_shape": list(bundle.input_shape),
            "dataset": config.data.name,
            "data_dir": config.data.data_dir,
            "data_options": config.data.options,
            "classes": config.data.classes,
            "run": config.name,
        }
        trainer = Trainer(
            config, run, stage_builder, initial, val_data, meta, ctx, progress=progress
        )
        if resume is not None:
            if has_state:
                trainer.resume()
            if ctx.is_main:
                run.truncate_after_epoch(trainer.state.epoch)
                run.log({"event": "resume", "epoch": trainer.state.epoch})
        if ctx.is_main:  # after a resume is known to fit: a refused one changes nothing
            event = "start" if resume is None else "resume"
            run.add_provenance(session_provenance(event, device, run.config_path))
        trainer.fit(stop_after_epoch=stop_after_epoch)
        return run.root
    finally:
        if lock is not None:
            lock.release()
        shutdown_distributed()


def load_run_config(run_dir: Path) -> RunConfig:
    run = RunDir.open_existing(run_dir)
    return validate_recipe(run.read_config(), str(run.config_path))


def eval_spec(base: EvalConfig, overrides: Mapping[str, Any] | None = None) -> EvalConfig:
    """``base`` with only the fields named in ``overrides`` replaced (each one validated).

    The command line passes just the options the user typed, so the recipe's ``eval:`` block
    keeps everything else; a bad value is a one-line :class:`ConfigError` naming the option.
    """
    if not overrides:
        return base
    try:
        checked = EvalConfig.model_validate(dict(overrides))
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "eval"
        msg = first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"bad eval option '{where}': {msg}") from None
    return base.model_copy(update={k: getattr(checked, k) for k in overrides})


def evaluate_run(
    target: str | Path,
    spec: EvalConfig | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    progress: bool = False,
    seed: int | None = None,
    device: str = "cpu",
    share_out: bool = True,
) -> list[dict[str, Any]]:
    """Evaluate a run's exported checkpoints (or one model file) on the test split.

    ``spec`` defaults to the run's recipe ``eval:`` block (``EvalConfig()`` for a model file);
    ``overrides`` replace only the fields they name; ``seed`` (if given) overrides ``spec.seed``.
    Metric groups: clean always, threats and union when there are threats (``spec.threats``, else
    the recipe's validation threats), calibration and corruptions when asked for. Asking for
    robust evaluation (``suite`` set explicitly, or ``union_only``) without any threat is an error.

    Writes ``eval/<checkpoint>-<suite|clean>.{npz,json}`` (the per-sample table, logits
    included, so every group is recomputed from it, never re-run) and logs a ``final_eval`` event.
    Returns the summaries. The test points are streamed (one chunk of images in memory); with
    ``spec.points`` they are the positions of that stored list (``evaluation.points``).

    Under torchrun (``unirobust eval --nproc K``) every rank runs this: the points are shared out
    (:mod:`unirobust.evaluation.sharding`), rank 0 holds the run's lock, merges, computes the
    calibration and corruption groups and writes the files, and is the only rank that returns
    the summaries (the others return ``[]``). ``share_out=False`` evaluates in this process
    alone even under torchrun (rank 0's evaluation after training, when the other ranks have
    left). ``device``: ``cpu``, ``cuda`` (each rank its ``LOCAL_RANK`` GPU) or ``auto``.
    """
    target = Path(target)
    eval_spec(EvalConfig(), overrides)  # a bad option fails before anything is loaded
    if not target.exists():
        raise CheckpointError(f"'{target}' does not exist (give a run directory or a model file)")
    is_run = target.is_dir()
    config = load_run_config(target) if is_run else None
    base = spec or (config.eval if config else EvalConfig())
    # asked for explicitly: by the caller's spec or an override, not by a recipe's config.yaml,
    # which records every field (the default suite included)
    suite_asked = "suite" in (overrides or {}) or (
        spec is not None and "suite" in spec.model_fields_set
    )
    spec = eval_spec(base, overrides)
    threats = list(spec.threats) or (list(config.validation.threats) if config else [])
    if not threats and (suite_asked or spec.union_only):
        raise ConfigError(
            f"robust evaluation asked for (suite {spec.suite}"
            + (", union_only" if spec.union_only else "")
            + ") but there are no threats: pass --threats, e.g. linf:0.1,l2:1.5,l1:10, "
            "or set eval.threats in the recipe"
        )
    if config is not None:
        check_text_eval(config.data.name, threats, spec)
    seed = spec.seed if seed is None else int(seed)
    checkpoints = list(spec.checkpoints) if is_run else ["file"]
    out_dir = (target / "eval") if is_run else target.parent / f"{target.stem}-eval"
    check_writable_dir(out_dir)  # before the attacks, not at their first write
    place, joined = resolve_device(device), False
    if share_out:
        place, joined = join_process_group(place)
    try:
        shard = current_shard() if share_out else Shard()
        main = shard.rank == 0
        with RunDir(target).locked() if is_run and main else contextlib.nullcontext():
            if is_run and main:
                RunDir(target).remove_stale_temps()
            job = _EvalJob(target, is_run, config, spec, threats, seed, out_dir, progress)
            return _evaluate_checkpoints(job, checkpoints, place, shard)
    finally:
        if joined:
            shutdown_distributed()


@dataclass(frozen=True)
class _EvalJob:
    """What :func:`evaluate_run` evaluates and where the results go."""

    target: Path
    is_run: bool
    config: RunConfig | None
    spec: EvalConfig
    threats: list
    seed: int
    out_dir: Path
    progress: bool


def check_text_eval(dataset: str, threats: list, spec: EvalConfig) -> None:
    """A text model is evaluated clean (and calibrated) only: token ids are not attacked."""
    from unirobust.data.registry import is_text_dataset

    if is_text_dataset(dataset) and (threats or spec.corruptions):
        asked = "threats" if threats else "corruptions"
        raise ConfigError(
            f"{asked} asked for, but '{dataset}' is a text dataset (token ids): text models are "
            "evaluated clean and for calibration only"
        )


def _evaluate_checkpoints(
    job: _EvalJob, checkpoints: list[str], device: torch.device, shard: Shard
) -> list[dict[str, Any]]:
    """:func:`evaluate_run`'s loop over checkpoints (with the run's lock held by rank 0)."""
    from unirobust.data import load_dataset
    from unirobust.evaluation.points import read_points

    spec, config = job.spec, job.config
    indices = read_points(spec.points, spec.n) if spec.points else None
    summaries = []
    for which in checkpoints:
        model, meta = load_model(job.target, which if job.is_run else "best", device=device)
        dataset = meta.get("dataset", "fashion_mnist")
        check_text_eval(dataset, job.threats, spec)
        bundle = load_dataset(
            dataset,
            data_dir=meta.get("data_dir"),
            n_test=spec.n if indices is None else None,
            val_size=config.data.val_size if config else 0,
            seed=config.seed if config else 0,
            classes=meta.get("classes"),
            stream=True,
            test_indices=indices,  # multinorm.md §8: a stored list, not the first n
            **(meta.get("data_options") or {}),
        )
        if tuple(bundle.input_shape) != tuple(meta["input_shape"]):
            raise ConfigError(
                f"'{meta['path']}' was built for {tuple(meta['input_shape'])} inputs but dataset "
                f"'{bundle.name}' gives {tuple(bundle.input_shape)} inputs"
            )
        group = spec.suite if job.threats else "clean"
        stem = f"{which}-{group}{'-union_only' if spec.union_only and job.threats else ''}"
        start = time.perf_counter()
        table, state_path = _evaluate_groups(model, bundle, job, stem, indices, shard)
        if shard.rank == 0:
            summaries.append(_save_table(job, table, stem, which, meta, start, shard.world_size))
        shard.barrier()  # the table is on disk before any rank drops its resumable state
        if state_path is not None:
            state_path.unlink(missing_ok=True)
    return summaries


def _save_table(
    job: _EvalJob, table, stem: str, which: str, meta: dict[str, Any], start: float, processes: int
) -> dict[str, Any]:
    """Write the table and its summary (plus the run's ``final_eval`` event); the summary."""
    _, summary_path = table.save(job.out_dir, stem=stem)
    summary = {
        **json.loads(summary_path.read_text()),
        Summary.CHECKPOINT: which,
        Summary.MODEL_PATH: meta["path"],
        # wall_time_s stays the attack time of the runner (summed over resumed sessions)
        Summary.SESSION_S: round(time.perf_counter() - start, 2),
        Summary.PROCESSES: processes,  # wall_time_s is then the slowest rank's
    }
    atomic_write_text(summary_path, json.dumps(summary, indent=2) + "\n")
    if job.is_run:
        RunDir(job.target).log(
            {
                "event": "final_eval",
                "checkpoint": which,
                "summary_path": str(summary_path.relative_to(job.target)),
            }
        )
    return summary


def _evaluate_groups(model, bundle, job: _EvalJob, stem: str, indices, shard: Shard):
    """The per-sample table of one model: clean (+ threats, union), calibration, corruptions;
    and this rank's state file (to delete once the table is saved)."""
    from unirobust.evaluation import add_calibration, add_corruptions, evaluate

    spec, threats, seed = job.spec, job.threats, job.seed
    test = bundle.test
    # a killed evaluation resumes from this file; another evaluation never collides with it
    points = None if indices is None else hashlib.sha1(indices.tobytes()).hexdigest()
    key = [[str(t) for t in threats], spec.n, spec.batch_size, seed, spec.union_only]
    key = json.dumps(key + ([points] if points else []))
    state_path = job.out_dir / f".{stem}-{hashlib.sha1(key.encode()).hexdigest()[:10]}.state"
    table = evaluate(
        model,
        test.x,
        test.y,
        test.indices,
        threats=threats,
        suite=spec.suite,
        batch_size=spec.batch_size,
        union_only=spec.union_only,
        seed=seed,
        state_path=state_path if threats else None,
        progress=job.progress,
        dataset=bundle.name,
        split="test",
        shard=shard,
    )
    own_state = shard_state_path(state_path, shard) if threats else None
    if shard.rank != 0:
        return table, own_state  # rank 0 adds the groups that need no sharding and saves
    if spec.calibration:
        val = bundle.val if bundle.val is not None and len(bundle.val) else None
        add_calibration(table, model, (val.x, val.y) if val else None, spec.batch_size)
    if spec.corruptions:
        # the corrupted copies are made from every evaluated image at once (held in memory)
        images = test.x.materialize() if isinstance(test.x, LazyImages) else test.x
        add_corruptions(
            table,
            model,
            images,
            test.y,
            seed=seed,
            corruptions=spec.corruptions,
            severities=spec.corruption_severities,
            cache_dir=cache_dir() / "corruptions",
            dataset=bundle.name,
            batch_size=spec.batch_size,
            progress=job.progress,
        )
    return table, own_state


def cache_dir() -> Path:
    """Where computed artefacts shared across runs live (``$UNIROBUST_CACHE`` overrides)."""
    return Path(os.environ.get("UNIROBUST_CACHE", Path.home() / ".cache" / "unirobust"))
