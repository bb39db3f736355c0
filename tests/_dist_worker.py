"""Worker for the torchrun tests: train a JSON recipe into a directory (called per rank)."""

from __future__ import annotations

import json
import sys

import torch

from unirobust.config import validate_recipe
from unirobust.pipeline import train

if __name__ == "__main__":
    torch.set_num_threads(1)
    recipe, out = json.loads(sys.argv[1]), sys.argv[2]
    train(validate_recipe(recipe), out=out, progress=False)
