"""Input normalisation as a layer, and the base class every registry model derives from.

Models take images in [0, 1] (threat radii live in that space); a ``Normalize`` layer, when
enabled, is the model's first operation, so attacks, experts and checkpoints never see a
normalised tensor.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from unirobust.errors import ConfigError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ImageClassifier", "Normalize", "make_normalize"]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
"""Per-channel mean of the ImageNet training images in [0, 1], which the published ResNet-50 and
XCiT weights (robustness library, RobustBench, timm) expect to have been subtracted."""
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
"""Per-channel std matching :data:`IMAGENET_MEAN`."""


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; mean and std are persistent (1, C, 1, 1) buffers."""

    def __init__(self, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor) -> None:
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std_t = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean_t.numel() == 0 or mean_t.numel() != std_t.numel():
            raise ConfigError(
                f"normalisation mean {mean_t.tolist()} and std {std_t.tolist()} must be non-empty "
                "and of equal length"
            )
        if not bool((std_t > 0).all()) or not bool(torch.isfinite(mean_t).all()):
            raise ConfigError(
                f"normalisation std must be > 0 and mean finite, got {std_t.tolist()}"
            )
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1))
        self.register_buffer("std", std_t.view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        fmt = lambda t: ", ".join(f"{v:.4f}" for v in t.flatten().tolist())  # noqa: E731
        return f"mean=({fmt(self.mean)}), std=({fmt(self.std)})"


def make_normalize(
    normalize: bool,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    channels: int,
) -> Normalize | None:
    """Build the optional input layer; one-value mean/std are broadcast over ``channels``."""
    if not isinstance(normalize, bool):
        raise ConfigError(f"normalize must be true or false, got {normalize!r}")
    if not normalize:
        return None
    if mean is None or std is None:
        raise ConfigError(
            "normalize=True needs mean and std (e.g. unirobust.data.normalization_stats(dataset))"
        )
    try:
        mean_l = torch.as_tensor(mean, dtype=torch.float64).flatten().tolist()
        std_l = torch.as_tensor(std, dtype=torch.float64).flatten().tolist()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"mean/std must be numbers, got mean={mean!r}, std={std!r}") from exc
    for label, values in (("mean", mean_l), ("std", std_l)):
        if len(values) not in (1, channels):
            raise ConfigError(
                f"normalisation {label} has {len(values)} values; the input has {channels} "
                "channel(s): give 1 or one per channel"
            )
    if len(mean_l) == 1:
        mean_l = mean_l * channels
    if len(std_l) == 1:
        std_l = std_l * channels
    return Normalize(mean_l, std_l)


class ImageClassifier(nn.Module, ABC):
    """Base: ``forward(x) = head(features(x))`` and ``features(x) = body(normalize(x))``.

    Subclasses implement :meth:`forward_features` (normalised image -> flat feature vector) and
    name their final ``nn.Linear`` in ``head_name``; :attr:`head` returns it (used by linear
    probing and feature analysis). ``normalize`` is ``nn.Identity`` when normalisation is off.
    """

    head_name = "linear"

    def __init__(
        self,
        num_classes: int,
        input_shape: tuple[int, int, int],
        normalize: Normalize | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.input_shape = tuple(int(v) for v in input_shape)
        self.normalize: nn.Module = normalize if normalize is not None else nn.Identity()

    @property
    def head(self) -> nn.Linear:
        # looked up among the submodules, not with getattr: a head registered under the name
        # "head" itself (XCiT, timm's name) would otherwise resolve to this property again
        return self._modules[self.head_name]  # type: ignore[return-value]

    @property
    def num_features(self) -> int:
        return self.head.in_features

    @abstractmethod
    def forward_features(self, x: Tensor) -> Tensor:
        """Penultimate features of an already normalised batch (each architecture's body)."""

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features (input to :attr:`head`) for images in [0, 1]."""
        return self.forward_features(self.normalize(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))
