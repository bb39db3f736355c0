"""Pre-activation ResNet-18 as in E-AT / RAMP (``model_zoo/fast_models.py``).

Bias-free convolutions; a block computes ``a = act(bn1(x))``, and a projection shortcut (1x1 conv,
when the shape changes) takes ``a``, not ``x``; ``act`` is ReLU or Softplus(beta=1). After the
last stage: BN, then ReLU (whatever ``activation`` is), global average pooling (the 4x4 average
pool for 32x32 inputs, adaptive for other sizes) and a linear head. Parameter names follow the
reference code (``conv1``, ``layerK.i.{bn1,conv1,bn2,conv2,shortcut.0}``, ``bn``, ``linear``) so
its checkpoints load directly.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from unirobust.errors import ConfigError
from unirobust.models.normalize import ImageClassifier, Normalize

__all__ = ["PreActBlock", "PreActResNet18", "make_activation"]

ACTIVATIONS = ("relu", "softplus")


def make_activation(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU()
    if name == "softplus":
        return nn.Softplus(beta=1.0)
    raise ConfigError(f"unknown activation {name!r}; allowed: {', '.join(ACTIVATIONS)}")


class PreActBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, activation: str) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.act = make_activation(activation)
        self.shortcut: nn.Sequential | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
            )

    def forward(self, x: Tensor) -> Tensor:
        a = self.act(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(a)
        out = self.conv1(a)
        out = self.conv2(self.act(self.bn2(out)))
        return out + skip


class PreActResNet18(ImageClassifier):
    head_name = "linear"

    def __init__(
        self,
        *,
        num_classes: int,
        input_shape: tuple[int, int, int],
        activation: str = "relu",
        normalize: Normalize | None = None,
    ) -> None:
        super().__init__(num_classes, input_shape, normalize)
        make_activation(activation)  # validate early
        self.activation = activation
        self.conv1 = nn.Conv2d(self.input_shape[0], 64, 3, stride=1, padding=1, bias=False)
        widths, in_planes = (64, 128, 256, 512), 64
        for k, planes in enumerate(widths, start=1):
            stride = 1 if k == 1 else 2
            blocks = [
                PreActBlock(in_planes, planes, stride, activation),
                PreActBlock(planes, planes, 1, activation),
            ]
            self.add_module(f"layer{k}", nn.Sequential(*blocks))
            in_planes = planes
        self.bn = nn.BatchNorm2d(512)
        self.final_act = nn.ReLU()
        self.linear = nn.Linear(512, self.num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = self.final_act(self.bn(out))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)
