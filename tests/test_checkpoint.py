"""Checkpoint files: atomic, weights-only, foreign/corrupted files refused, prefixes stripped."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from unirobust.engine.checkpoint import (
    atomic_write,
    capture_rng,
    export_model,
    load_model,
    load_train_state,
    read_model_file,
    restore_rng,
    save_train_state,
    strip_prefixes,
)
from unirobust.errors import CheckpointError


def test_train_state_round_trip_with_optimizer(tmp_path: Path) -> None:
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    path = tmp_path / "s.pt"
    save_train_state(path, {"epoch": 2, "model": model.state_dict(), "opt": opt.state_dict()})
    state = load_train_state(path)
    assert state["epoch"] == 2
    assert torch.equal(state["model"]["weight"], model.weight)
    assert torch.equal(
        state["opt"]["state"][0]["momentum_buffer"], opt.state[model.weight]["momentum_buffer"]
    )


def test_rng_capture_restore_is_exact() -> None:
    state = capture_rng()
    a = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_rng_state_survives_weights_only_file(tmp_path: Path) -> None:
    path = tmp_path / "rng.pt"
    save_train_state(path, {"rng": capture_rng()})
    first = torch.rand(2)
    restore_rng(load_train_state(path)["rng"])
    assert torch.equal(torch.rand(2), first)


def test_corrupted_foreign_and_pickled_files_are_refused(tmp_path: Path) -> None:
    corrupted = tmp_path / "c.pt"
    corrupted.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointError, match="corrupted"):
        load_train_state(corrupted)
    foreign = tmp_path / "f.pt"
    torch.save({"weight": torch.zeros(1)}, foreign)
    with pytest.raises(CheckpointError, match="not a unirobust train state"):
        load_train_state(foreign)

    class Evil:
        def __reduce__(self):  # would run code if unpickled
            return (print, ("pwned",))

    evil = tmp_path / "e.pt"
    torch.save(
        {"format": "unirobust-train-state", "version": 1, "x": Evil()}, evil, pickle_module=pickle
    )
    with pytest.raises(CheckpointError, match=r"refusing|corrupted"):
        load_train_state(evil)
    with pytest.raises(CheckpointError, match="no train state"):
        load_train_state(tmp_path / "missing.pt")


def test_atomic_write_keeps_old_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    path.write_text("old")

    def boom(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(path, boom)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_strip_prefixes() -> None:
    state = {"module.a": 1, "_orig_mod.module.b": 2, "c": 3}
    assert strip_prefixes(state) == {"a": 1, "b": 2, "c": 3}


def test_export_and_load_model(tmp_path: Path) -> None:
    from unirobust.models import build_model

    torch.manual_seed(0)
    model = build_model("mlp", num_classes=10, input_shape=(1, 8, 8))
    path = tmp_path / "m.safetensors"
    meta = {"model": {"name": "mlp", "options": {}}, "num_classes": 10, "input_shape": [1, 8, 8]}
    export_model(path, model, meta)
    loaded, info = load_model(path)
    x = torch.rand(4, 1, 8, 8)
    model.eval()
    assert torch.equal(loaded(x), model(x))
    assert not loaded.training and info["num_classes"] == 10
    tensors, _ = read_model_file(path)
    assert not any(k.startswith("module.") for k in tensors)


def test_load_model_refuses_foreign_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "x.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="without unirobust metadata"):
        load_model(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "none.safetensors")
    (tmp_path / "run").mkdir()
    with pytest.raises(CheckpointError, match="no model_best"):
        load_model(tmp_path / "run")


def test_import_weights_strips_module_prefix(tmp_path: Path) -> None:
    """generalist.md oracle 11: a ``module.``-prefixed (DDP, official) state dict loads."""
    from unirobust.engine.checkpoint import import_weights
    from unirobust.models import build_model

    torch.manual_seed(1)
    model = build_model("lenet", num_classes=10, input_shape=(1, 8, 8), batchnorm=True)
    source = tmp_path / "official.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, source)
    out = import_weights(
        source,
        tmp_path / "m.safetensors",
        model="lenet",
        num_classes=10,
        input_shape=(1, 8, 8),
        dataset="digits",
        options={"batchnorm": True},
    )
    loaded, meta = load_model(out)
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(loaded(x), model.eval()(x)) and meta["dataset"] == "digits"
    with pytest.raises(CheckpointError, match="does not fit model 'mlp'"):
        import_weights(
            source,
            tmp_path / "x.safetensors",
            model="mlp",
            num_classes=10,
            input_shape=(1, 8, 8),
            dataset="digits",
        )
    with pytest.raises(CheckpointError, match="exists already"):
        import_weights(
            source,
            out,
            model="lenet",
            num_classes=10,
            input_shape=(1, 8, 8),
            dataset="digits",
            options={"batchnorm": True},
        )
