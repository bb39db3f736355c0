"""Multi-layer perceptron on flattened images."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from unirobust.errors import ConfigError
from unirobust.models.normalize import ImageClassifier, Normalize

__all__ = ["MLP"]


class MLP(ImageClassifier):
    """Flatten, (Linear -> ReLU) per hidden size -> linear; ``hidden_sizes=()``: a linear model."""

    head_name = "linear"

    def __init__(
        self,
        *,
        num_classes: int,
        input_shape: tuple[int, int, int],
        hidden_sizes: Sequence[int] = (256, 256),
        normalize: Normalize | None = None,
    ) -> None:
        super().__init__(num_classes, input_shape, normalize)
        if isinstance(hidden_sizes, int | str) or any(int(v) < 1 for v in hidden_sizes):
            raise ConfigError(
                f"mlp hidden_sizes must be a list of positive ints, got {hidden_sizes!r}"
            )
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(self.input_shape)
        for size in hidden_sizes:
            layers += [nn.Linear(width, int(size)), nn.ReLU()]
            width = int(size)
        self.body = nn.Sequential(*layers)
        self.linear = nn.Linear(width, self.num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.body(x)
