"""CIFAR-style ResNet-18 (as in Generalist / pytorch-cifar).

3x3 stem (stride 1, no max-pool), BasicBlock stages [2, 2, 2, 2] of widths 64-128-256-512,
global average pooling (the 4x4 average pool for 32x32 inputs) and a linear head. Parameter names
follow the common CIFAR code (``conv1``, ``bn1``, ``layerK.i.{conv1,bn1,conv2,bn2,shortcut.0/1}``,
``linear``) so its checkpoints load directly.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from unirobust.models.normalize import ImageClassifier, Normalize

__all__ = ["BasicBlock", "ResNet18"]


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act = nn.ReLU()
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))


class ResNet18(ImageClassifier):
    head_name = "linear"

    def __init__(
        self,
        *,
        num_classes: int,
        input_shape: tuple[int, int, int],
        normalize: Normalize | None = None,
    ) -> None:
        super().__init__(num_classes, input_shape, normalize)
        self.conv1 = nn.Conv2d(self.input_shape[0], 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.act = nn.ReLU()
        in_planes = 64
        for k, planes in enumerate((64, 128, 256, 512), start=1):
            stride = 1 if k == 1 else 2
            blocks = [BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes, 1)]
            self.add_module(f"layer{k}", nn.Sequential(*blocks))
            in_planes = planes
        self.linear = nn.Linear(512, self.num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)
