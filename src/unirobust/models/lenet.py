"""LeNet-style CNN: the fast CPU proxy model (2 conv + 2 fc, ~0.15M parameters on 1x28x28).

Default widths (16, 32) conv channels and a 256-unit hidden layer: the convolutions dominate the
cost on CPU, and this width trains Fashion-MNIST to ~90% while keeping PGD-10 training cheap.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from unirobust.errors import ConfigError
from unirobust.models.normalize import ImageClassifier, Normalize

__all__ = ["LeNet"]


class LeNet(ImageClassifier):
    """(conv5 -> [BN] -> ReLU -> maxpool2) x 2 -> fc -> ReLU -> linear.

    ``padding=None`` picks 0 (classic, valid convolutions) for inputs of at least 16x16 and 2
    ('same') for smaller ones, so 8x8 inputs work. The flatten size follows from ``input_shape``.
    With ``batchnorm=True`` the convolutions lose their bias.
    """

    head_name = "linear"

    def __init__(
        self,
        *,
        num_classes: int,
        input_shape: tuple[int, int, int],
        channels: Sequence[int] = (16, 32),
        hidden: int = 256,
        batchnorm: bool = False,
        padding: int | None = None,
        normalize: Normalize | None = None,
    ) -> None:
        super().__init__(num_classes, input_shape, normalize)
        c, h, w = self.input_shape
        if len(channels) != 2 or any(int(v) < 1 for v in channels):
            raise ConfigError(f"lenet channels must be two positive ints, got {channels!r}")
        if int(hidden) < 1:
            raise ConfigError(f"lenet hidden must be a positive int, got {hidden!r}")
        if not isinstance(batchnorm, bool):
            raise ConfigError(f"lenet batchnorm must be true or false, got {batchnorm!r}")
        if padding is None:
            padding = 0 if min(h, w) >= 16 else 2
        if int(padding) < 0:
            raise ConfigError(f"lenet padding must be >= 0, got {padding!r}")
        c1, c2 = (int(v) for v in channels)

        def out_size(s: int) -> int:
            s = (s + 2 * padding - 4) // 2
            return (s + 2 * padding - 4) // 2

        fh, fw = out_size(h), out_size(w)
        if fh < 1 or fw < 1:
            raise ConfigError(
                f"lenet with padding={padding} cannot take {h}x{w} inputs; use padding=2"
            )
        self.conv1 = nn.Conv2d(c, c1, 5, padding=padding, bias=not batchnorm)
        self.bn1: nn.Module = nn.BatchNorm2d(c1) if batchnorm else nn.Identity()
        self.conv2 = nn.Conv2d(c1, c2, 5, padding=padding, bias=not batchnorm)
        self.bn2: nn.Module = nn.BatchNorm2d(c2) if batchnorm else nn.Identity()
        self.pool = nn.MaxPool2d(2)
        self.act = nn.ReLU()
        self.fc = nn.Linear(c2 * fh * fw, int(hidden))
        self.linear = nn.Linear(int(hidden), self.num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.pool(self.act(self.bn1(self.conv1(x))))
        x = self.pool(self.act(self.bn2(self.conv2(x))))
        return self.act(self.fc(x.flatten(1)))
