"""ImageNet ResNet-50 (bottleneck, stride on the 3x3 convolution: "v1.5").

The fine-tuning starting point of multinorm.md §6 ``imagenet/ramp_ft_rn50``: the robustness
library's linf-AT ResNet-50 (RobustBench ``Engstrom2019Robustness``). Its tensor names are those of
torchvision's ``resnet50`` (``conv1``, ``bn1``, ``layerK.i.{conv1..3,bn1..3,downsample.0/1}``,
``fc``), which both the robustness library and RobustBench use, so those weights load once their
wrapper prefixes are removed (:mod:`unirobust.engine.foreign`). 25,557,032 parameters with 1000
classes. 7x7 stride-2 stem, 3x3 stride-2 max-pool, stages of [3, 4, 6, 3] bottlenecks with widths
64-128-256-512 (x4 expansion), global average pooling, linear head.
"""

from __future__ import annotations

from torch import Tensor, nn

from unirobust.models.normalize import ImageClassifier, Normalize

__all__ = ["Bottleneck", "ResNet50"]

EXPANSION = 4
STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))
"""(width, blocks, stride of the first block) per stage."""


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand; projection shortcut when needed."""

    def __init__(self, in_planes: int, width: int, stride: int) -> None:
        super().__init__()
        out_planes = width * EXPANSION
        self.conv1 = nn.Conv2d(in_planes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU()
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_planes != out_planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        skip = x if self.downsample is None else self.downsample(x)
        return self.relu(out + skip)


class ResNet50(ImageClassifier):
    head_name = "fc"

    def __init__(
        self,
        *,
        num_classes: int,
        input_shape: tuple[int, int, int],
        normalize: Normalize | None = None,
    ) -> None:
        super().__init__(num_classes, input_shape, normalize)
        self.conv1 = nn.Conv2d(self.input_shape[0], 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_planes = 64
        for k, (width, blocks, stride) in enumerate(STAGES, start=1):
            layer = [Bottleneck(in_planes, width, stride)]
            layer += [Bottleneck(width * EXPANSION, width, 1) for _ in range(blocks - 1)]
            self.add_module(f"layer{k}", nn.Sequential(*layer))
            in_planes = width * EXPANSION
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, self.num_classes)
        for m in self.modules():  # He init for the convolutions, unit BN (torchvision's choice)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: Tensor) -> Tensor:
        out = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.avgpool(out).flatten(1)
