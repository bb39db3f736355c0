"""unirobust.models: image classifiers taking [0, 1] inputs, normalisation inside the model.

>>> from unirobust.models import build_model
>>> model = build_model("lenet", num_classes=10, input_shape=(1, 28, 28))
"""

from unirobust.models.lenet import LeNet
from unirobust.models.mlp import MLP
from unirobust.models.normalize import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageClassifier,
    Normalize,
    make_normalize,
)
from unirobust.models.preact_resnet import PreActResNet18
from unirobust.models.registry import (
    batched_logits,
    build_model,
    list_models,
    model_device,
    model_options,
)
from unirobust.models.resnet import ResNet18
from unirobust.models.resnet50 import ResNet50
from unirobust.models.wide_resnet import WideResNet
from unirobust.models.xcit import XCiT

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MLP",
    "ImageClassifier",
    "LeNet",
    "Normalize",
    "PreActResNet18",
    "ResNet18",
    "ResNet50",
    "WideResNet",
    "XCiT",
    "batched_logits",
    "build_model",
    "list_models",
    "make_normalize",
    "model_device",
    "model_options",
]
