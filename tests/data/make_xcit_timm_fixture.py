"""Regenerate ``xcit_tiny_timm.safetensors``: a tiny XCiT built by timm, with its outputs.

Not run by the test suite (timm is not a dependency of unirobust). The fixture lets
``tests/test_imagenet_models.py`` check the library's own XCiT against timm's implementation:
the same tensor names load, and the logits agree. Needs ``timm`` (and ``torchvision``, which timm
imports) in the environment:

    python tests/data/make_xcit_timm_fixture.py

Tensors stored: every tensor of timm's state dict (weights randomly perturbed so layer scales,
temperatures and BN statistics are not at their trivial initial values), ``input.x`` (two
32x48 images in [0, 1]) and ``output.eval`` / ``output.train`` (timm's logits in eval and train
mode; no normalisation inside timm's model).
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from safetensors.torch import save_file

CONFIG = dict(
    img_size=32,
    patch_size=16,
    embed_dim=16,
    depth=2,
    num_heads=2,
    cls_attn_layers=2,
    eta=1.0,
    tokens_norm=True,
    num_classes=5,
)


def main() -> None:
    torch.manual_seed(0)
    model = timm.models.xcit.Xcit(**CONFIG)
    gen = torch.Generator().manual_seed(1)
    state = {}
    for name, tensor in model.state_dict().items():
        if not tensor.dtype.is_floating_point:
            state[name] = tensor
        elif name.endswith("running_var"):
            state[name] = 0.5 + torch.rand(tensor.shape, generator=gen)
        else:
            state[name] = tensor + 0.2 * torch.randn(tensor.shape, generator=gen)
    model.load_state_dict(state)
    x = torch.rand(2, 3, 32, 48, generator=gen)
    with torch.no_grad():
        out_eval = model.eval()(x)
        out_train = model.train()(x)
    tensors = {f"state.{k}": v.contiguous() for k, v in state.items()}
    tensors.update({"input.x": x, "output.eval": out_eval, "output.train": out_train})
    save_file(tensors, Path(__file__).with_name("xcit_tiny_timm.safetensors"))


if __name__ == "__main__":
    main()
