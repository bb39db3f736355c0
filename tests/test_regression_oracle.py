"""Regression oracle for the engine refactor (issue 7): seeded proxy runs, bit-identical weights.

Tiny versions of the three proxy recipes (800 Fashion-MNIST images, 2 epochs, CPU, one thread)
are trained and the exported ``best`` and ``last`` weights are hashed tensor by tensor. The hashes
below were recorded from main *before* the engine seams changed (commit 1426d2b); any change to
the numerics of data order, attacks, objectives, optimizers, schedules, the EMA-mix or selection
breaks them. Re-record only for an intended numerical change, and say so in the commit:

    .venv/bin/python tests/test_regression_oracle.py
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unirobust.config import load_recipe
from unirobust.pipeline import train

ROOT = Path(__file__).resolve().parents[1]
FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
OVERRIDES = [
    "data.n_train=800",
    "data.val_size=100",
    "train.epochs=2",
    "validation.steps=3",
    "eval.enabled=false",
]

EXPECTED: dict[str, dict[str, str]] = {
    "fmnist-pgd-at": {
        "best": "28aca6d28a36df078b49b2ab209217f35d51b2117ca0db3f7cbeafedca5a1f3c",
        "last": "ac38884da44447aae7425206d3beed1b22901d1d91997989a314e95fc6f9dd8b",
    },
    "fmnist-trades": {
        "best": "f97798157d3cfc9a3c493d779778afa59dc5bab51265fb60d295e468b674597b",
        "last": "35518d896f4c929d362470adcad9f7b9c145148b5752eac7797ad915c6c177fd",
    },
    "fmnist-generalist": {
        "best": "9282e457b885a40328ff18be3371150c37741be47bcfdd6731450c89049563b4",
        "last": "b59af9162f6686cf1a30b0558ae569dc9d49af749c3907dc0ccdbd1781aaec38",
    },
}


def weights_hash(path: Path) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(load_file(str(path)).items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def run_hashes(recipe: str, out: Path) -> dict[str, str]:
    torch.set_num_threads(1)
    config = load_recipe(ROOT / "recipes" / "proxy" / f"{recipe}.yaml", OVERRIDES)
    run_dir = train(config, out=out, progress=False)
    return {
        which: weights_hash(run_dir / "checkpoints" / f"model_{which}.safetensors")
        for which in ("best", "last")
    }


@pytest.mark.skipif(not FMNIST.exists(), reason="needs dataset-fashion-mnist (make setup)")
@pytest.mark.parametrize("recipe", ["fmnist-pgd-at", "fmnist-trades", "fmnist-generalist"])
def test_seeded_proxy_weights_are_bit_identical(recipe: str, tmp_path: Path) -> None:
    assert run_hashes(recipe, tmp_path / recipe) == EXPECTED[recipe]


if __name__ == "__main__":  # print the table to paste into EXPECTED
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for name in ("fmnist-pgd-at", "fmnist-trades", "fmnist-generalist"):
            print(f'    "{name}": {run_hashes(name, Path(tmp) / name)!r},', file=sys.stdout)
