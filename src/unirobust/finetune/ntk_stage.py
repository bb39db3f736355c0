"""The NTK decomposition of the model a stage starts from, written into the run (lpft.md §4).

A stage with ``ntk: {...}`` computes, once when it starts, P and F of
:func:`unirobust.analysis.ntk.ntk_decomposition` for the model it is about to train: the
start-of-FT model (pretrained backbone plus the stage's initial head, random for FT, the probe for
LP-FT). θ_φ are the stage's *trainable* backbone parameters, which is what the spec asks for:
the whole backbone for FT and LP-FT, only the LoRA weights for the LoRA variants. A head-only
stage has no F and is refused.

Samples: at most ``n_max`` training points (the kernel's train side, and the FT ratio's δ) and at
most ``n_max`` validation points as the held-out side of ``multiclass_acc``. The spec scores the
kernels on test points; inside a training run the test split is never touched, so the validation
split stands in (the official script also used validation). Indices are saved with the report.

The result goes to ``RUN/ntk/<stage>.json``; an existing file is kept (a resumed run does not
recompute it), and the report draws its spectra.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from torch import Tensor, nn

from unirobust.analysis.ntk import ntk_decomposition
from unirobust.errors import ConfigError
from unirobust.experts.tensors import unwrap
from unirobust.finetune.head import head_of
from unirobust.finetune.lora import is_peft_model
from unirobust.io import atomic_write_text
from unirobust.schema import Strict

__all__ = ["NtkSpec", "ntk_path", "stage_ntk", "write_stage_ntk"]


class NtkSpec(Strict):
    """lpft.md §4 options: sample cap, F's mode (``jacobian`` is faster on small backbones,
    ``vjp_jvp`` needs O(#params) memory), the sample seed, and whether to add the official
    entry-wise kernel score (``entry_acc``, not an accuracy: pitfall 16; off by default)."""

    n_max: int = Field(250, ge=2)
    mode: Literal["jacobian", "vjp_jvp"] = "vjp_jvp"
    seed: int = 0
    entry_acc: bool = False


def ntk_path(run_root: Path, stage_name: str) -> Path:
    return Path(run_root) / "ntk" / f"{stage_name}.json"


def _base_model(model: nn.Module) -> nn.Module:
    inner = unwrap(model)
    return inner.get_base_model() if is_peft_model(inner) else inner


def stage_ntk(
    model: nn.Module,
    spec: NtkSpec,
    train: tuple[Tensor, Tensor],
    held_out: tuple[Tensor, Tensor] | None,
    stage_name: str,
) -> dict[str, Any]:
    """The §4 report of ``model`` with θ_φ = its trainable non-head parameters."""
    base = _base_model(model)
    head = head_of(model)
    head_ids = {id(p) for p in head.parameters()}
    names = {n for n, p in base.named_parameters() if p.requires_grad and id(p) not in head_ids}
    if not names:
        raise ConfigError(
            f"stage '{stage_name}': ntk needs a stage that trains backbone parameters "
            "(F is taken over them); this stage trains only the head"
        )
    x_te, y_te = held_out if held_out is not None else (None, None)
    result = ntk_decomposition(
        base,
        train[0],
        train[1],
        x_te,
        y_te,
        head=head,
        mode=spec.mode,
        param_filter=lambda name: name in names,
        n_max=spec.n_max,
        seed=spec.seed,
        entry_acc=spec.entry_acc,
    )
    report = dict(result.report)
    report["param_filter"] = "the stage's trainable backbone parameters"
    report["held_out_split"] = "validation" if held_out is not None else None
    report["train_idx"] = result.train_idx.tolist()
    report["held_out_idx"] = None if result.test_idx is None else result.test_idx.tolist()
    return report


def write_stage_ntk(
    run_root: Path,
    stage_name: str,
    model: nn.Module,
    spec: NtkSpec,
    train: tuple[Tensor, Tensor],
    held_out: tuple[Tensor, Tensor] | None,
) -> Path:
    """Compute and write ``RUN/ntk/<stage>.json`` unless it is already there."""
    path = ntk_path(run_root, stage_name)
    if path.is_file():
        return path
    report = stage_ntk(model, spec, train, held_out, stage_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"stage": stage_name, **report}, indent=1))
    return path
