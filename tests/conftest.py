"""Shared fixtures: tiny recipes on sklearn digits that train in a second on CPU."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

torch.set_num_threads(1)


BN_LENET: dict[str, Any] = {
    "name": "lenet",
    "options": {"channels": [4, 8], "hidden": 16, "batchnorm": True},
}
"""A small lenet with BatchNorm (mixing, freezing and resuming BN buffers get exercised)."""

ADAMW_NO_DECAY = {"name": "adamw", "weight_decay": 0.0}


def expert_spec(
    name: str,
    objective: dict[str, Any] | None = None,
    lr: float = 0.05,
    optimizer: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One expert of a recipe: clean CE and SGD with momentum unless told otherwise."""
    return {
        "name": name,
        "objective": objective or {"name": "natural"},
        "optimizer": optimizer or {"name": "sgd", "momentum": 0.9},
        "lr_schedule": {"kind": "constant", "value": lr},
    }


def tiny_recipe(**sections: Any) -> dict[str, Any]:
    """A digits/mlp recipe; keyword arguments replace whole top-level sections."""
    recipe: dict[str, Any] = {
        "name": "tiny",
        "seed": 3,
        "data": {"name": "digits", "n_train": 256, "val_size": 100, "batch_size": 64},
        "model": {"name": "mlp", "options": {"hidden_sizes": [32]}},
        "train": {
            "epochs": 3,
            "experts": [
                {
                    "name": "natural",
                    "objective": {"name": "natural"},
                    "optimizer": {"name": "sgd", "momentum": 0.9, "weight_decay": 5e-4},
                    "lr_schedule": {"kind": "constant", "value": 0.05},
                }
            ],
        },
        "validation": {"threats": []},
        "eval": {"enabled": False},
    }
    recipe.update(copy.deepcopy(sections))
    return recipe


def generalist_tiny(**train: Any) -> dict[str, Any]:
    """Two experts (natural + linf PGD-AT) mixed by EMA-mix, syncing from epoch 2."""
    spec = {
        "epochs": 3,
        "generalist": {
            "preset": "nat_linf",
            "linf": "linf:0.1",
            "attack_steps": 2,
            "lr_values": [0.05, 0.05, 0.01, 0.001],
        },
        "merge": {"name": "ema_mix", "sync_start": 2, "sync_interval": 1},
    }
    spec.update(train)
    # BatchNorm, so sync, mixing and resume of running stats and num_batches_tracked are exercised
    return tiny_recipe(
        model=BN_LENET,
        train=spec,
        validation={"threats": ["linf:0.1"], "steps": 2},
    )


@pytest.fixture
def recipe() -> dict[str, Any]:
    return tiny_recipe()
