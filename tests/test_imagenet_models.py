"""The ImageNet fine-tuning models of multinorm.md §6: ResNet-50 and XCiT-S12/16.

Their tensor names must be those of the published weights (torchvision/robustness library for
ResNet-50, timm for XCiT), their sizes the published ones, and XCiT must compute what timm's
implementation computes: ``tests/data/xcit_tiny_timm.safetensors`` holds a tiny timm XCiT's
tensors, an input and timm's logits (made by ``tests/data/make_xcit_timm_fixture.py``; timm is
not a dependency). Inputs are kept small (the architectures accept any size; XCiT any multiple
of 16) so every test runs in about a second on CPU.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from unirobust.analysis.features import extract_features
from unirobust.errors import ConfigError
from unirobust.finetune.head import head_of
from unirobust.models import IMAGENET_MEAN, IMAGENET_STD, Normalize, XCiT, build_model

FIXTURE = Path(__file__).parent / "data" / "xcit_tiny_timm.safetensors"
TINY = dict(embed_dim=16, depth=2, num_heads=2, cls_attn_layers=2)  # the fixture's config


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def xcit_param_formula(dim: int, depth: int, heads: int, ca: int, classes: int) -> int:
    """XCiT/16's parameter count written out per component (timm's layer list, MLP ratio 4)."""
    widths = [3, dim // 8, dim // 4, dim // 2, dim]
    stem = sum(9 * a * b + 2 * b for a, b in itertools.pairwise(widths))  # conv + BN
    linear = dim * dim + dim
    mlp = (dim * 4 * dim + 4 * dim) + (4 * dim * dim + dim)
    xca = heads + 3 * linear + linear  # temperature, qkv, proj
    lpi = 2 * (9 * dim + dim) + 2 * dim  # two depthwise convs with bias, BN
    block = 3 * 2 * dim + xca + lpi + mlp + 3 * dim  # three LayerNorms, three layer scales
    ca_block = 2 * 2 * dim + 4 * linear + mlp + 2 * dim  # q, k, v, proj
    positions = 64 * dim + dim
    return (
        stem + dim + positions + depth * block + ca * ca_block + 2 * dim + dim * classes + classes
    )


def test_published_parameter_counts() -> None:
    rn50 = build_model("resnet50", num_classes=1000, input_shape=(3, 224, 224))
    assert n_params(rn50) == 25_557_032  # torchvision's resnet50
    xcit = build_model("xcit_s12", num_classes=1000, input_shape=(3, 224, 224))
    # timm's xcit_small_12_p16_224 is published as 26.3M; the formula gives the exact count
    assert n_params(xcit) == xcit_param_formula(384, 12, 8, 2, 1000) == 26_253_304
    tiny = XCiT(num_classes=7, input_shape=(3, 32, 32), **TINY)
    assert n_params(tiny) == xcit_param_formula(16, 2, 2, 2, 7)


def test_resnet50_has_torchvision_names() -> None:
    model = build_model("resnet50", num_classes=1000, input_shape=(3, 224, 224))
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("normalize.")}
    assert len(state) == 320  # torchvision resnet50().state_dict()
    expected = {
        "conv1.weight": (64, 3, 7, 7),
        "bn1.running_var": (64,),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "layer1.0.conv2.weight": (64, 64, 3, 3),
        "layer2.0.conv2.weight": (128, 128, 3, 3),
        "layer2.3.bn3.weight": (512,),
        "layer3.5.conv3.weight": (1024, 256, 1, 1),
        "layer4.0.downsample.1.num_batches_tracked": (),
        "layer4.2.conv1.weight": (512, 2048, 1, 1),
        "fc.weight": (1000, 2048),
        "fc.bias": (1000,),
    }
    assert {k: tuple(state[k].shape) for k in expected} == expected
    assert not any(k.startswith("layer1.1.downsample") for k in state)
    # v1.5: the stride sits on the 3x3 convolution of a stage's first block
    assert model.layer2[0].conv2.stride == (2, 2) and model.layer2[0].conv1.stride == (1, 1)


def test_xcit_s12_has_timm_names() -> None:
    model = build_model("xcit_s12", num_classes=1000, input_shape=(3, 224, 224))
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("normalize.")}
    assert len(state) == 391  # timm xcit_small_12_p16_224().state_dict()
    expected = {
        "cls_token": (1, 1, 384),
        "patch_embed.proj.0.0.weight": (48, 3, 3, 3),
        "patch_embed.proj.6.1.running_mean": (384,),
        "pos_embed.token_projection.weight": (384, 64, 1, 1),
        "blocks.11.attn.temperature": (8, 1, 1),
        "blocks.0.attn.qkv.weight": (1152, 384),
        "blocks.0.local_mp.conv1.weight": (384, 1, 3, 3),
        "blocks.0.local_mp.bn.weight": (384,),
        "blocks.0.gamma3": (384,),
        "cls_attn_blocks.1.attn.q.weight": (384, 384),
        "cls_attn_blocks.1.gamma2": (384,),
        "norm.bias": (384,),
        "head.weight": (1000, 384),
    }
    assert {k: tuple(state[k].shape) for k in expected} == expected


def test_xcit_matches_timm() -> None:
    tensors = load_file(FIXTURE)
    state = {k.removeprefix("state."): v for k, v in tensors.items() if k.startswith("state.")}
    x = tensors["input.x"]
    model = XCiT(num_classes=5, input_shape=tuple(x.shape[1:]), **TINY)
    model.load_state_dict(state)  # strict: exactly timm's names and shapes
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), tensors["output.eval"], atol=1e-5)
        assert torch.allclose(model.train()(x), tensors["output.train"], atol=1e-5)


def test_imagenet_normalisation_is_inside_by_default() -> None:
    torch.manual_seed(0)
    normed = build_model("resnet50", num_classes=3, input_shape=(3, 32, 32)).eval()
    assert isinstance(normed.normalize, Normalize)
    assert torch.allclose(normed.normalize.mean.flatten(), torch.tensor(IMAGENET_MEAN))
    assert torch.allclose(normed.normalize.std.flatten(), torch.tensor(IMAGENET_STD))
    plain = build_model("resnet50", num_classes=3, input_shape=(3, 32, 32), normalize=False)
    assert isinstance(plain.normalize, nn.Identity)
    plain.load_state_dict(normed.state_dict(), strict=False)
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(normed(x), plain.eval()((x - mean) / std), atol=1e-5)


@pytest.mark.parametrize(
    ("name", "shape", "width"), [("resnet50", (3, 40, 56), 2048), ("xcit_s12", (3, 32, 48), 384)]
)
def test_forward_features_and_head(name: str, shape: tuple[int, int, int], width: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, input_shape=shape)
    x = torch.rand(2, *shape, requires_grad=True)
    logits = model(x)
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    # what attacks need: a finite, non-zero input gradient
    (grad,) = torch.autograd.grad(logits[:, 0].sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    head = head_of(model)
    assert head is model.head and head.in_features == width == model.num_features
    model.eval()
    with torch.no_grad():
        feats = model.features(x)
        assert torch.allclose(head(feats), model(x), atol=1e-5)
    phi = extract_features(model, x.detach(), batch_size=1, dtype=torch.float32)
    assert phi.shape == (2, width) and torch.allclose(phi, feats, atol=1e-4)


def test_xcit_options_and_errors() -> None:
    with pytest.raises(ConfigError, match="divisible by 16"):
        build_model("xcit_s12", num_classes=10, input_shape=(3, 40, 40))
    with pytest.raises(ConfigError, match="'depth'"):  # fixed by the name
        build_model("xcit_s12", num_classes=10, input_shape=(3, 32, 32), depth=6)
    with pytest.raises(ConfigError, match="num_heads"):
        XCiT(num_classes=3, input_shape=(3, 32, 32), embed_dim=24, num_heads=5)
