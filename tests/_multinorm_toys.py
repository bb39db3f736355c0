"""Tiny models, data and a forward recorder shared by the tests/test_multinorm_*.py files."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

D = 12
CLASSES = 3


def toy_batch(n: int = 24, seed: int = 0) -> tuple[Tensor, Tensor]:
    """n points in [0,1]^D, three loosely separated classes (some rows misclassified)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % CLASSES
    x = 0.3 + 0.25 * torch.rand(n, D, generator=g)
    block = D // CLASSES
    for c in range(CLASSES):
        x[y == c, c * block : (c + 1) * block] += 0.15
    return x.clamp(0, 1), y


def toy_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(D, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, CLASSES))


class Recorder(nn.Module):
    """Wraps a model and records (training flag, input, output) of every forward."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.calls: list[tuple[bool, Tensor, Tensor]] = []

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x)
        self.calls.append((self.training, x.detach().clone(), out.detach().clone()))
        return out

    def train_calls(self) -> list[tuple[Tensor, Tensor]]:
        return [(x, out) for training, x, out in self.calls if training]


@dataclass
class StandIn:
    """The three attributes a merge rule may see on an expert (the Expert class is in flux)."""

    model: nn.Module
    name: str = "expert"
    optimizer: object = None
