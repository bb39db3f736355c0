"""Behaviour tests for unirobust.models: shapes, sizes, architecture details, normalisation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unirobust.errors import ConfigError
from unirobust.models import Normalize, build_model, list_models, model_options
from unirobust.models.preact_resnet import PreActBlock


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


LIGHT = ["lenet", "mlp", "preact_resnet18", "resnet18"]


def test_registry_names():
    assert set(list_models()) == {
        "lenet",
        "mlp",
        "preact_resnet18",
        "resnet18",
        "resnet50",
        "wide_resnet",
        "wrn_28_10",
        "wrn_34_10",
        "xcit_s12",
        "hf_sequence_classifier",  # the text extra's model (tests/test_text_models.py)
    }


@pytest.mark.parametrize("name", LIGHT)
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 8, 8), (3, 12, 20)])
def test_output_shapes_light_models(name, shape):
    torch.manual_seed(0)
    model = build_model(name, num_classes=7, input_shape=shape)
    out = model(torch.rand(3, *shape))
    assert out.shape == (3, 7) and torch.isfinite(out).all()
    feats = model.features(torch.rand(3, *shape))
    assert feats.shape == (3, model.head.in_features)
    assert model.head.out_features == 7


def test_wide_resnet_forward_small():
    model = build_model("wide_resnet", num_classes=5, input_shape=(3, 16, 16), depth=10, widen=2)
    assert len(model.block1.layer) == 1
    out = model(torch.rand(2, 3, 16, 16))
    assert out.shape == (2, 5)
    model.eval()
    assert model(torch.rand(1, 1 * 3, 8, 8)).shape == (1, 5)


@pytest.mark.parametrize(("name", "blocks"), [("wrn_28_10", 4), ("wrn_34_10", 5)])
def test_wrn_structure_and_one_sample_forward(name, blocks):
    model = build_model(name, num_classes=10, input_shape=(3, 32, 32)).eval()
    assert all(len(getattr(model, f"block{k}").layer) == blocks for k in (1, 2, 3))
    assert model.fc.in_features == 640
    if name == "wrn_34_10":
        assert 46.1e6 <= n_params(model) <= 46.3e6
    else:
        assert 36.4e6 <= n_params(model) <= 36.6e6
    with torch.no_grad():
        assert model(torch.rand(1, 3, 8, 8)).shape == (1, 10)


def test_param_counts():
    lenet = build_model("lenet", num_classes=10, input_shape=(1, 28, 28))
    assert 0.1e6 <= n_params(lenet) <= 0.3e6
    assert n_params(build_model("resnet18", num_classes=10, input_shape=(3, 32, 32))) == 11_173_962
    preact = build_model("preact_resnet18", num_classes=10, input_shape=(3, 32, 32))
    assert abs(n_params(preact) - 11.17e6) < 0.01e6
    assert not any(m.bias is not None for m in preact.modules() if isinstance(m, nn.Conv2d))


def test_lenet_structure_batchnorm_and_training_step():
    model = build_model("lenet", num_classes=10, input_shape=(1, 28, 28))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(convs) == 2 and len(linears) == 2
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    bn = build_model("lenet", num_classes=10, input_shape=(1, 28, 28), batchnorm=True)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in bn.modules()) == 2
    small = build_model("lenet", num_classes=10, input_shape=(1, 16, 16))
    x, y = torch.rand(8, 1, 16, 16), torch.randint(0, 10, (8,))
    opt = torch.optim.SGD(small.parameters(), lr=0.1)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(small(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_mlp_hidden_sizes():
    model = build_model("mlp", num_classes=3, input_shape=(1, 8, 8), hidden_sizes=[32, 16, 8])
    widths = [m.out_features for m in model.modules() if isinstance(m, nn.Linear)]
    assert widths == [32, 16, 8, 3]
    linear = build_model("mlp", num_classes=3, input_shape=(1, 8, 8), hidden_sizes=[])
    assert n_params(linear) == 64 * 3 + 3


def test_preact_softplus_variant():
    soft = build_model(
        "preact_resnet18", num_classes=10, input_shape=(3, 32, 32), activation="softplus"
    )
    relu = build_model("preact_resnet18", num_classes=10, input_shape=(3, 32, 32))
    for block in (m for m in soft.modules() if isinstance(m, PreActBlock)):
        assert isinstance(block.act, nn.Softplus) and block.act.beta == 1.0
    assert isinstance(soft.final_act, nn.ReLU)  # ReLU after the final BN either way
    assert not any(isinstance(m, nn.Softplus) for m in relu.modules())
    relu.load_state_dict(soft.state_dict())  # same parameters, different non-linearity
    x = torch.rand(2, 3, 32, 32)
    assert not torch.allclose(soft(x), relu(x))


def test_preact_shortcut_takes_activated_input():
    model = build_model("preact_resnet18", num_classes=10, input_shape=(3, 16, 16))
    model.eval()
    block = model.layer2[0]
    assert block.shortcut is not None and model.layer1[0].shortcut is None
    seen: dict[str, torch.Tensor] = {}

    def record(key):
        def hook(module, inputs, output):
            seen[key] = inputs[0]  # returns None: the output is left alone

        return hook

    block.register_forward_hook(record("block_in"))
    block.shortcut.register_forward_hook(record("sc_in"))
    with torch.no_grad():
        model(torch.rand(2, 3, 16, 16))
        expected = torch.relu(block.bn1(seen["block_in"]))
    assert torch.allclose(seen["sc_in"], expected)


def test_resnet18_is_cifar_style():
    model = build_model("resnet18", num_classes=10, input_shape=(3, 32, 32))
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert [len(getattr(model, f"layer{k}")) for k in range(1, 5)] == [2, 2, 2, 2]


def test_normalisation_is_a_layer_inside_the_model():
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    torch.manual_seed(0)
    plain = build_model("resnet18", num_classes=4, input_shape=(3, 8, 8)).eval()
    normed = build_model(
        "resnet18", num_classes=4, input_shape=(3, 8, 8), normalize=True, mean=mean, std=std
    ).eval()
    assert isinstance(normed.normalize, Normalize)
    assert not any(isinstance(m, Normalize) for m in plain.modules())
    sd = normed.state_dict()
    assert torch.allclose(sd["normalize.mean"].flatten(), torch.tensor(mean))
    missing = normed.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["normalize.mean", "normalize.std"]
    x = torch.rand(2, 3, 8, 8)
    manual = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(normed(x), plain(manual), atol=1e-6)
    # one value broadcasts over channels; stats are ignored unless normalize is on
    gray = build_model(
        "lenet", num_classes=2, input_shape=(3, 16, 16), normalize=True, mean=[0.5], std=[0.5]
    )
    assert gray.normalize.mean.shape == (1, 3, 1, 1)
    off = build_model("lenet", num_classes=2, input_shape=(1, 16, 16), mean=[0.5], std=[0.5])
    assert isinstance(off.normalize, nn.Identity)


def test_errors_name_the_problem():
    with pytest.raises(ConfigError, match=r"unknown model 'vgg'.*lenet.*wrn_34_10"):
        build_model("vgg", num_classes=10, input_shape=(3, 32, 32))
    with pytest.raises(ConfigError, match="'widht'"):
        build_model("lenet", num_classes=10, input_shape=(1, 28, 28), widht=3)
    with pytest.raises(ConfigError, match="'depth'"):
        build_model("wrn_34_10", num_classes=10, input_shape=(3, 32, 32), depth=28)
    with pytest.raises(ConfigError, match="tanh"):
        build_model("preact_resnet18", num_classes=10, input_shape=(3, 32, 32), activation="tanh")
    with pytest.raises(ConfigError, match="6n\\+4"):
        build_model("wide_resnet", num_classes=10, input_shape=(3, 32, 32), depth=30)
    with pytest.raises(ConfigError, match="input_shape"):
        build_model("lenet", num_classes=10, input_shape=(1, 4, 4))
    with pytest.raises(ConfigError, match="mean and std"):
        build_model("lenet", num_classes=10, input_shape=(1, 28, 28), normalize=True)
    with pytest.raises(ConfigError, match="channel"):
        build_model(
            "lenet",
            num_classes=10,
            input_shape=(3, 28, 28),
            normalize=True,
            mean=[0.1, 0.2],
            std=[1.0, 1.0],
        )
    assert "activation" in model_options("preact_resnet18")
    assert "depth" not in model_options("wrn_28_10")
