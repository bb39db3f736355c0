"""Checkpoint files: the resumable train state and the exported model weights.

DESIGN.md contracts: a train state holds everything needed to resume bit-exactly on CPU (every
expert's model and optimizer, the merge rule's EMA/global weights, all RNG states, epoch, step,
best metric). It is written atomically (temporary file, fsync, ``os.replace``) and read with
``torch.load(weights_only=True)``, so a checkpoint can never execute code; RNG states are
converted to tensors and plain lists for that reason.

Exported models are safetensors files whose metadata carries the model recipe, so
:func:`load_model` rebuilds the network without the run's config. State dicts never carry a
``module.`` (DDP) or ``_orig_mod.`` (torch.compile) prefix; loaders strip them (generalist.md §3.5).
"""

from __future__ import annotations

import io
import json
import random
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from unirobust.engine.foreign import fit_foreign_state
from unirobust.errors import CheckpointError, UserError
from unirobust.experts.tensors import unwrap
from unirobust.finetune.lora import plain_model
from unirobust.io import atomic_write as atomic_write  # re-exported
from unirobust.io import atomic_write_bytes, check_writable_dir

TRAIN_STATE_FORMAT = "unirobust-train-state"
MODEL_FORMAT = "unirobust-model"
FORMAT_VERSION = 1
_PREFIXES = ("module.", "_orig_mod.")


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove ``module.``/``_orig_mod.`` prefixes so DDP, compiled and official weights load."""
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        out[key] = value
    return out


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers, detached and contiguous, without wrapper prefixes."""
    return {k: v.detach().contiguous() for k, v in unwrap(model).state_dict().items()}


# ---------------------------------------------------------------------------------------------
# RNG states as weights-only data


def capture_rng() -> dict[str, Any]:
    """Global torch, numpy and python RNG states as tensors/lists (weights_only-loadable)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
        "numpy_meta": [str(np_state[0]), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [int(py_state[0]), [int(v) for v in py_state[1]]],
    }


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, pos, has_gauss, cached = state["numpy_meta"]
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state((name, keys, int(pos), int(has_gauss), float(cached)))
    version, internal = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), None))


# ---------------------------------------------------------------------------------------------
# Train state


def save_train_state(path: Path, state: dict[str, Any]) -> None:
    """Write a train state dict atomically, tagged with its format and version.

    Serialised in memory first, so a full disk is an ``OSError`` of the plain write (an
    :class:`~unirobust.errors.OutputError`), never a half-written file."""
    payload = {"format": TRAIN_STATE_FORMAT, "version": FORMAT_VERSION, **state}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _torch_load(path: Path, map_location: str | torch.device) -> Any:
    """``torch.load(weights_only=True)``: plain data and tensors only, never code; torch's
    warnings about unusual pickle protocols are silenced (the error, if any, is ours)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location=map_location, weights_only=True)


def load_train_state(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a train state safely; a missing, corrupted or foreign file is a CheckpointError."""
    if not path.is_file():
        raise CheckpointError(f"no train state at '{path}' (a run saves one after each epoch)")
    try:
        state = _torch_load(path, map_location)
    except (RuntimeError, zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"'{path}' is corrupted or not a torch checkpoint ({first[:160]})"
        ) from None
    except Exception as err:  # weights_only refuses pickled objects with UnpicklingError
        raise CheckpointError(
            f"'{path}' is corrupted or holds objects other than tensors and plain data; refusing "
            f"to unpickle it ({type(err).__name__})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != TRAIN_STATE_FORMAT:
        raise CheckpointError(f"'{path}' is not a unirobust train state (format tag missing)")
    if state.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"'{path}' has train-state version {state.get('version')}; this unirobust reads "
            f"version {FORMAT_VERSION}"
        )
    return state


# ---------------------------------------------------------------------------------------------
# Exported model weights


def export_model(path: Path, model: nn.Module, metadata: dict[str, Any]) -> None:
    """Save weights as safetensors with the model recipe in the metadata (for load_model).

    ``metadata`` must hold ``model`` ({name, options}), ``num_classes`` and ``input_shape``.
    """
    for key in ("model", "num_classes", "input_shape"):
        if key not in metadata:
            raise ValueError(f"export metadata needs '{key}'")
    meta = {"format": MODEL_FORMAT, "version": str(FORMAT_VERSION)}
    meta.update({k: json.dumps(v) for k, v in metadata.items()})
    tensors = {k: v.cpu() for k, v in model_state(plain_model(model)).items()}
    atomic_write_bytes(path, save(tensors, metadata=meta))


def read_model_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights and decoded metadata of an exported model; CheckpointError when not ours."""
    if not path.is_file():
        raise CheckpointError(f"no model file at '{path}'")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            raw_meta = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"'{path}' is not a readable safetensors file ({err})") from None
    if raw_meta.get("format") != MODEL_FORMAT:
        raise CheckpointError(
            f"'{path}' is a safetensors file without unirobust metadata; rebuild the model in "
            "Python and load_state_dict it instead"
        )
    try:
        meta = {k: json.loads(v) for k, v in raw_meta.items() if k not in ("format", "version")}
    except json.JSONDecodeError as err:
        raise CheckpointError(f"'{path}' has corrupted unirobust metadata ({err.msg})") from None
    return strip_prefixes(tensors), meta


def resolve_model_path(target: Path, checkpoint: str = "best") -> Path:
    """A run directory -> its ``checkpoints/model_{checkpoint}.safetensors``; a file -> itself."""
    if target.is_dir():
        path = target / "checkpoints" / f"model_{checkpoint}.safetensors"
        if not path.is_file():
            raise CheckpointError(
                f"'{target}' has no {path.name} (is it a unirobust run directory that finished "
                "at least one epoch?)"
            )
        return path
    if not target.exists():
        raise CheckpointError(f"'{target}' does not exist (give a run directory or a model file)")
    return target


def load_model(
    target: str | Path, checkpoint: str = "best", device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild an exported model in eval mode from a run directory or a model file."""
    from unirobust.models import build_model

    path = resolve_model_path(Path(target), checkpoint)
    tensors, meta = read_model_file(path)
    try:
        spec = meta["model"]
        model = build_model(
            spec["name"],
            num_classes=int(meta["num_classes"]),
            input_shape=tuple(meta["input_shape"]),
            **spec.get("options", {}),
        )
    except (KeyError, TypeError, ValueError, AttributeError, UserError) as err:
        raise CheckpointError(
            f"'{path}' has unirobust metadata that does not describe a model "
            f"({type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''})"
        ) from None
    try:
        model.load_state_dict(tensors)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise CheckpointError(f"'{path}' does not fit model '{spec['name']}': {first}") from None
    meta["path"] = str(path)
    return model.to(device).eval(), meta


def import_weights(
    source: Path,
    out: Path,
    *,
    model: str,
    num_classes: int,
    input_shape: tuple[int, int, int],
    dataset: str,
    data_dir: str | None = None,
    options: dict[str, Any] | None = None,
    prefix: str | None = None,
    data_options: dict[str, Any] | None = None,
) -> Path:
    """Convert a plain PyTorch state dict (e.g. an official Generalist checkpoint) to our format.

    The file is read with ``weights_only=True``; a ``state_dict``/``model`` wrapper key and
    ``module.`` prefixes are removed (generalist.md §3.5, pitfall 17); a wrapped layout (the
    robustness library's ``model.``/``attacker.``/``normalizer.``, RobustBench's ``normalize.``/
    ``model.``) is reduced to the model's sub-dict, ``prefix`` if given
    (:func:`~unirobust.engine.foreign.fit_foreign_state`); every weight must fit the named model
    exactly. The result loads with :func:`load_model` and ``unirobust eval``; ``data_options``
    (e.g. ``imagefolder``'s ``image_size``) are recorded so evaluation preprocesses the same way.
    """
    from unirobust.models import build_model

    if out.exists():
        raise CheckpointError(f"'{out}' exists already; choose another --out")
    check_writable_dir(out.parent)
    state = read_foreign_state(source)
    net = build_model(model, num_classes=num_classes, input_shape=input_shape, **(options or {}))
    state = fit_foreign_state(net, state, str(source), prefix)
    load_weights_into(net, state, str(source), what=f"model '{model}'")
    meta = {
        "model": {"name": model, "options": options or {}},
        "num_classes": num_classes,
        "input_shape": list(input_shape),
        "dataset": dataset,
        "data_dir": data_dir,
        "data_options": data_options or {},
        "imported_from": str(source),
    }
    export_model(out, net, meta)
    return out


def read_foreign_state(source: Path) -> dict[str, torch.Tensor]:
    """A plain PyTorch state dict read with ``weights_only=True`` (no code runs), its
    ``state_dict``/``model`` wrapper key and ``module.``-style prefixes removed."""
    try:
        state = _torch_load(source, "cpu")
    except FileNotFoundError:
        raise CheckpointError(f"'{source}' does not exist") from None
    except Exception as err:
        raise CheckpointError(
            f"'{source}' is not a weights-only torch file ({type(err).__name__}); refusing to "
            "unpickle it"
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"'{source}' does not hold a state dict of tensors")
    return strip_prefixes(state)


def load_weights_into(
    model: nn.Module,
    tensors: dict[str, torch.Tensor],
    source: str,
    strict: bool = True,
    what: str = "the model",
) -> None:
    """Copy ``tensors`` into ``model``, naming the first tensor whose name or shape does not fit.

    ``strict=False`` leaves the model's tensors that ``tensors`` lacks at their current values
    (a new head, say); a tensor the model lacks, or of another shape, is always an error.
    """
    own = unwrap(model).state_dict()
    for name, tensor in tensors.items():
        if name not in own:
            raise CheckpointError(
                f"'{source}' does not fit {what}: it has tensor '{name}', which the model lacks "
                f"(first of {len(set(tensors) - set(own))} unexpected)"
            )
        if tuple(tensor.shape) != tuple(own[name].shape):
            raise CheckpointError(
                f"'{source}' does not fit {what}: tensor '{name}' has shape "
                f"{tuple(tensor.shape)}, the model's is {tuple(own[name].shape)}"
            )
    missing = [n for n in own if n not in tensors]
    if missing and strict:
        raise CheckpointError(
            f"'{source}' does not fit {what}: it lacks tensor '{missing[0]}' ({len(missing)} "
            "missing; init_from.strict: false keeps them at their initial values)"
        )
    unwrap(model).load_state_dict(tensors, strict=False)


def initial_weights(
    path: str,
    checkpoint: str = "best",
    *,
    model: nn.Module | None = None,
    prefix: str | None = None,
) -> tuple[dict[str, torch.Tensor], str]:
    """The tensors ``init_from`` names: a run directory's exported model, an exported
    ``.safetensors`` file, or a foreign weights-only state dict; and the file they came from.

    A foreign file is fitted to ``model`` when given (its sub-dict, ``prefix`` if given, and a
    check of its input normalisation: :func:`~unirobust.engine.foreign.fit_foreign_state`)."""
    target = Path(path)
    if target.is_dir() or target.suffix == ".safetensors":
        model_path = resolve_model_path(target, checkpoint)
        tensors, _ = read_model_file(model_path)
        return tensors, str(model_path)
    state = read_foreign_state(target)
    if model is not None:
        state = fit_foreign_state(model, state, str(target), prefix)
    return state, str(target)
