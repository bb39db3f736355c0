"""unirobust.models: image classifiers taking [0, 1] inputs, normalisation inside the model.

>>> from unirobust.models import build_model
>>> model = build_model("lenet", num_classes=10, input_shape=(1, 28, 28))
"""

from unirobust.models.lenet import LeNet
from unirobust.models.mlp import MLP
from unirobust.models.normalize import ImageClassifier, Normalize, make_normalize
from unirobust.models.preact_resnet import PreActResNet18
from unirobust.models.registry import (
    batched_logits,
    build_model,
    list_models,
    model_device,
    model_options,
)
from unirobust.models.resnet import ResNet18
from unirobust.models.wide_resnet import WideResNet

__all__ = [
    "MLP",
    "ImageClassifier",
    "LeNet",
    "Normalize",
    "PreActResNet18",
    "ResNet18",
    "WideResNet",
    "batched_logits",
    "build_model",
    "list_models",
    "make_normalize",
    "model_device",
    "model_options",
]
