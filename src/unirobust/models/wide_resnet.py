"""Pre-activation Wide ResNet (Zagoruyko & Komodakis), as used by TRADES, RobustBench, Generalist.

``depth = 6n + 4``: three stages of ``n`` blocks with widths 16k, 32k, 64k (k = ``widen``),
strides 1, 2, 2, after a 3x3 stem with 16 channels; final BN, ReLU, global average pooling,
linear head. A block whose width changes feeds ``relu(bn1(x))`` to both its first conv and its
1x1 projection shortcut; otherwise the shortcut is the identity. WRN-34-10 has 46.16M parameters
(10 classes). Parameter names follow the common code (``block1.layer.0.convShortcut``, ``bn1``,
``fc``) so its checkpoints load (drop the unused ``sub_block1.*`` that TRADES's code carries).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from unirobust.errors import ConfigError
from unirobust.models.normalize import ImageClassifier, Normalize

__all__ = ["WideBasicBlock", "WideResNet"]


class WideBasicBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.dropout = dropout
        self.equal_in_out = in_planes == out_planes and stride == 1
        self.convShortcut: nn.Conv2d | None = None
        if not self.equal_in_out:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        a = self.relu1(self.bn1(x))
        skip = x if self.convShortcut is None else self.convShortcut(a)
        out = self.relu2(self.bn2(self.conv1(a)))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        return self.conv2(out) + skip


class _Stage(nn.Module):
    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, dropout: float):
        super().__init__()
        self.layer = nn.Sequential(
            *[
                WideBasicBlock(
                    in_planes if i == 0 else out_planes,
                    out_planes,
                    stride if i == 0 else 1,
                    dropout,
                )
                for i in range(n)
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(ImageClassifier):
    head_name = "fc"

    def __init__(
        self,
        *,
        num_classes: int,
        input_shape: tuple[int, int, int],
        depth: int = 28,
        widen: int = 10,
        dropout: float = 0.0,
        normalize: Normalize | None = None,
    ) -> None:
        super().__init__(num_classes, input_shape, normalize)
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
            raise ConfigError(
                f"wide_resnet depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 34, "
                f"...), got {depth!r}"
            )
        if isinstance(widen, bool) or not isinstance(widen, int) or widen < 1:
            raise ConfigError(f"wide_resnet widen must be a positive int, got {widen!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ConfigError(f"wide_resnet dropout must be in [0, 1), got {dropout!r}")
        n = (depth - 4) // 6
        self.depth, self.widen = depth, widen
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(self.input_shape[0], widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = _Stage(n, widths[0], widths[1], 1, float(dropout))
        self.block2 = _Stage(n, widths[1], widths[2], 2, float(dropout))
        self.block3 = _Stage(n, widths[2], widths[3], 2, float(dropout))
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU()
        self.fc = nn.Linear(widths[3], self.num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)
