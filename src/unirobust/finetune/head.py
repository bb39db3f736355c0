"""The classifier head at the start of a stage: keep it, re-draw it, fit it by logistic regression
(LP ``logreg``), and rescale it (lpft.md §1.1-§1.2, §3 "head-norm sweep").

``mode: logreg`` is the paper's faithful linear probe (lpft.md §1.2): features phi of every
training example in eval mode (no dropout, BN running statistics, no augmentation), float64,
not standardised; scikit-learn's ``LogisticRegressionCV`` (L2, lbfgs, intercept, ``cs`` values of
C on logspace(-4, 4), stratified ``folds``-fold CV on accuracy, refit, ``max_iter``, ``tol``,
``random_state`` = seed; multinomial for C >= 3 without passing ``multi_class``, which recent
releases reject); the result is copied into the head. Binary problems get the symmetric split
V = [-w/2; +w/2], b = [-b/2; +b/2] so that z1 - z0 is sklearn's decision function; the
``paper`` convention first fits on the grid 2*Cs and halves (w, b), as the official multinomial
binary fit did (its head norm is ||w_2C|| / (2 sqrt 2), pitfall 1). scikit-learn is used rather
than a hand-written solver because the point is to reproduce its cross-validated fit exactly.

``mode: random`` is the paper's head init, N(0, 0.02^2) weights and zero bias. ``scale`` then
multiplies the head (and the bias unless ``scale_bias: false``) for the head-norm sweep. Only the
head changes: the backbone stays bit for bit (oracle 10).
"""

from __future__ import annotations

import inspect
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor, nn

from unirobust.analysis.features import extract_features
from unirobust.errors import ConfigError
from unirobust.experts.tensors import unwrap
from unirobust.finetune.lora import is_peft_model
from unirobust.schema import Strict

__all__ = ["HeadInit", "apply_head_init", "fit_logreg", "head_of"]


class HeadInit(Strict):
    """What happens to the classifier head when a stage starts (see the module docstring)."""

    mode: Literal["keep", "random", "logreg"] = "keep"
    scale: float = Field(1.0, gt=0, allow_inf_nan=False)
    scale_bias: bool = True
    cs: int = Field(10, ge=1)
    folds: int = Field(5, ge=2)
    max_iter: int = Field(5000, ge=1)
    tol: float = Field(1e-4, gt=0)
    binary_convention: Literal["sklearn", "paper"] = "sklearn"

    @property
    def is_noop(self) -> bool:
        return self.mode == "keep" and self.scale == 1.0


def head_of(model: nn.Module) -> nn.Linear:
    """The model's linear classifier head (``head_name``), the input of which is phi."""
    inner = unwrap(model)
    if is_peft_model(inner):
        inner = inner.get_base_model()
    head = getattr(inner, "head", None)
    if hasattr(head, "modules_to_save"):  # peft's trainable copy of the head (LoRA stages)
        head = head.modules_to_save["default"]
    if not isinstance(head, nn.Linear) or not hasattr(inner, "features"):
        raise ConfigError(
            f"{type(inner).__name__} exposes no features() and linear head: a head init needs "
            "a model of the library (an ImageClassifier)"
        )
    return head


def fit_logreg(
    features: np.ndarray, labels: np.ndarray, num_classes: int, spec: HeadInit, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(V [C, h], b [C]) of the cross-validated logistic regression (lpft.md §1.2)."""
    from sklearn.linear_model import LogisticRegressionCV

    present = np.unique(labels)
    if len(present) != num_classes:
        raise ConfigError(
            f"logreg head: the training split has classes {present.tolist()}, the head "
            f"{num_classes}; every class needs examples"
        )
    grid = np.logspace(-4, 4, spec.cs)
    paper_binary = num_classes == 2 and spec.binary_convention == "paper"
    # L2 is the default penalty; from scikit-learn 1.8 on it is spelled l1_ratios=(0,), and the
    # legacy fitted attributes are kept explicitly
    new_api = "use_legacy_attributes" in inspect.signature(LogisticRegressionCV).parameters
    fit = LogisticRegressionCV(
        Cs=2 * grid if paper_binary else grid,
        cv=spec.folds,
        solver="lbfgs",
        scoring="accuracy",
        fit_intercept=True,
        refit=True,
        max_iter=spec.max_iter,
        tol=spec.tol,
        random_state=seed,
        **({"use_legacy_attributes": True, "l1_ratios": (0.0,)} if new_api else {}),
    ).fit(features, labels)
    coef, intercept = fit.coef_.astype(np.float64), fit.intercept_.astype(np.float64)
    if num_classes > 2:
        return coef, intercept
    w, b = coef[0], intercept[0]
    if paper_binary:
        w, b = w / 2, b / 2
    return np.stack([-w / 2, w / 2]), np.array([-b / 2, b / 2])


def apply_head_init(model: nn.Module, spec: HeadInit, x: Tensor, y: Tensor, seed: int) -> None:
    """Set the head of ``model`` in place per ``spec``; ``(x, y)`` is the training split."""
    if spec.is_noop:
        return
    head = head_of(model)
    with torch.no_grad():
        if spec.mode == "random":
            generator = torch.Generator().manual_seed(seed)
            weight = torch.randn(head.weight.shape, generator=generator, dtype=torch.float64)
            head.weight.copy_(0.02 * weight)
            if head.bias is not None:
                head.bias.zero_()
        elif spec.mode == "logreg":
            head_of(model)
            phi = extract_features(model, x).numpy()  # float64, eval mode (pitfall 3)
            weight, bias = fit_logreg(phi, y.cpu().numpy(), head.out_features, spec, seed)
            head.weight.copy_(torch.from_numpy(weight))
            if head.bias is not None:
                head.bias.copy_(torch.from_numpy(bias))
        head.weight.mul_(spec.scale)
        if head.bias is not None and spec.scale_bias:
            head.bias.mul_(spec.scale)
