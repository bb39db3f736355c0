"""Fit another library's state dict to a library model (``import-weights``, ``init_from``).

The weights of multinorm.md §6's fine-tuning recipes are supplied by the user in their original
layouts (``module.`` prefixes are already stripped by the reader):

* **plain**: the names are the model's own (timm's XCiT, torchvision's ResNet-50, official
  Generalist files).
* **wrapped**: the model's tensors sit under one top-level prefix, beside other modules. The
  robustness library (RobustBench ``Engstrom2019Robustness``) stores ``model.*``, a copy of it
  under ``attacker.model.*`` and its input normalisers ``normalizer.new_mean``/``new_std`` and
  ``attacker.normalize.new_mean``/``new_std``; RobustBench's ``normalize_model`` stores
  ``normalize.mean``/``std`` beside ``model.*``.

:func:`fit_foreign_state` picks the sub-dict: the whole file if every name fits the model,
otherwise the one top-level prefix under which every name fits (an explicit ``prefix`` overrides
the search; two different fitting sub-dicts are an error asking for one). Input normalisation is
part of the model's configuration, not of its training, so the model's own ``normalize.*``
buffers are kept; but statistics stored in the file are compared with them: weights trained on
inputs normalised otherwise would silently see the wrong inputs, so a mismatch (or statistics in
the file for a model without a ``Normalize`` layer) is a one-line :class:`CheckpointError`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from unirobust.errors import CheckpointError
from unirobust.experts.tensors import unwrap

__all__ = ["fit_foreign_state", "normaliser_stats"]

_NORM_PREFIX = "normalize."
_STAT_NAMES = {"mean": "mean", "std": "std", "new_mean": "mean", "new_std": "std"}
_TOL = 1e-5


def normaliser_stats(state: dict[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """Input-normaliser statistics in ``state``: ``{module path: {"mean": t, "std": t}}``.

    A normaliser is a module holding exactly a mean and a std (``mean``/``std`` as in
    RobustBench, or ``new_mean``/``new_std`` as in the robustness library); BatchNorm's
    ``running_mean``/``running_var`` are not matched.
    """
    groups: dict[str, dict[str, Tensor]] = {}
    for key, tensor in state.items():
        parent, _, leaf = key.rpartition(".")
        if leaf in _STAT_NAMES:
            groups.setdefault(parent, {})[_STAT_NAMES[leaf]] = tensor
    return {p: g for p, g in groups.items() if set(g) == {"mean", "std"}}


def _fits(sub: dict[str, Tensor], own: dict[str, Tensor]) -> bool:
    return bool(sub) and all(
        k in own and tuple(v.shape) == tuple(own[k].shape) for k, v in sub.items()
    )


def _under(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _choose_prefix(state: dict[str, Tensor], own: dict[str, Tensor], source: str) -> str | None:
    """The prefix whose sub-dict fits the model ("" first), or None if none does."""
    body = {k: v for k, v in own.items() if not k.startswith(_NORM_PREFIX)}
    if _fits({k: v for k, v in state.items() if not k.startswith(_NORM_PREFIX)}, body):
        return ""
    tops = sorted({k.split(".", 1)[0] + "." for k in state if "." in k})
    fitting = [p for p in tops if _fits(_under(state, p), own)]
    if not fitting:
        return None
    best = max(len(_under(state, p)) for p in fitting)
    fitting = [p for p in fitting if len(_under(state, p)) == best]
    first = _under(state, fitting[0])
    for other in fitting[1:]:
        if any(not torch.equal(first[k], v) for k, v in _under(state, other).items()):
            raise CheckpointError(
                f"'{source}' holds several models that fit ({', '.join(fitting)}); choose one "
                "with init_from.prefix / --prefix"
            )
    return fitting[0]


def _check_normalisers(model: nn.Module, groups: dict[str, dict[str, Tensor]], source: str) -> None:
    """Every normaliser in the file must equal the model's ``Normalize`` layer."""
    layer = getattr(model, "normalize", None)
    mine = None
    if layer is not None and hasattr(layer, "mean") and hasattr(layer, "std"):
        mine = {
            "mean": layer.mean.detach().flatten().cpu(),
            "std": layer.std.detach().flatten().cpu(),
        }
    for path, stats in groups.items():
        theirs = {k: v.detach().flatten().to("cpu", torch.float32) for k, v in stats.items()}
        shown = ", ".join(f"{k} {[round(x, 4) for x in v.tolist()]}" for k, v in theirs.items())
        if mine is None:
            identity = bool((theirs["mean"] == 0).all() and (theirs["std"] == 1).all())
            if not identity:
                raise CheckpointError(
                    f"'{source}' normalises its inputs ('{path}': {shown}) but the model has no "
                    "Normalize layer; set model options normalize: true with that mean and std"
                )
            continue
        for name in ("mean", "std"):
            same = theirs[name].shape == mine[name].shape and torch.allclose(
                theirs[name], mine[name], rtol=0.0, atol=_TOL
            )
            if not same:
                raise CheckpointError(
                    f"'{source}' normalises its inputs with {shown} ('{path}'), the model with "
                    f"mean {[round(x, 4) for x in mine['mean'].tolist()]}, std "
                    f"{[round(x, 4) for x in mine['std'].tolist()]}; set the model's mean/std "
                    "options to the file's"
                )


def fit_foreign_state(
    model: nn.Module, state: dict[str, Tensor], source: str, prefix: str | None = None
) -> dict[str, Tensor]:
    """The tensors of ``state`` that belong to ``model``, named as the model names them.

    ``prefix``: the sub-dict to take (``""`` for the whole file); ``None`` searches (see the
    module docstring). When nothing fits, ``state`` is returned unchanged so the caller's loader
    names the first tensor that does not fit. The model's ``normalize.*`` buffers come from the
    model; the file's normalisers are checked against them.
    """
    own = unwrap(model).state_dict()
    if prefix is None:
        prefix = _choose_prefix(state, own, source)
        if prefix is None:
            return state
    elif not any(k.startswith(prefix) for k in state):
        raise CheckpointError(f"'{source}' has no tensor under the prefix '{prefix}'")
    sub = _under(state, prefix)
    outside = {k: v for k, v in state.items() if not k.startswith(prefix)}
    groups = normaliser_stats(outside)
    inner = normaliser_stats({k: v for k, v in sub.items() if k.startswith(_NORM_PREFIX)})
    groups.update({f"{prefix}{p}": g for p, g in inner.items()})
    _check_normalisers(unwrap(model), groups, source)
    fitted = {k: v for k, v in sub.items() if not k.startswith(_NORM_PREFIX)}
    fitted.update({k: v for k, v in own.items() if k.startswith(_NORM_PREFIX)})
    return fitted
