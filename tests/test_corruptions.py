"""Common corruptions via imagecorruptions on a handful of small images."""

from __future__ import annotations

import builtins

import numpy as np
import pytest
import torch

from unirobust.errors import ConfigError
from unirobust.evaluation import corruptions as corr_mod
from unirobust.evaluation.corruptions import CORRUPTIONS, corrupt_images, evaluate_corruptions

pytest.importorskip("imagecorruptions")

# glass_blur is left out of the loops: its numba JIT compile alone takes seconds (documented).
FAST = [c for c in CORRUPTIONS if c != "glass_blur"]


def _gray(n: int = 3, size: int = 28) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(n, 1, size, size)
    x[:, :, 6:22, 8:20] = torch.rand(n, 1, 16, 12, generator=g)  # an object on a black background
    return x


def test_fifteen_corruptions():
    assert len(CORRUPTIONS) == 15 and len(set(CORRUPTIONS)) == 15


@pytest.mark.parametrize("corruption", FAST)
def test_grayscale_28px_shape_range_determinism(corruption):
    x = _gray()
    a = corrupt_images(x, corruption, 3, seed=1)
    b = corrupt_images(x, corruption, 3, seed=1)
    assert a.shape == x.shape and a.dtype == torch.float32
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, b)  # seeded, including impulse_noise (seed passed explicitly)
    assert torch.allclose(torch.round(a * 255), a * 255, atol=1e-3)  # on the uint8 grid
    assert not torch.equal(a, torch.round(x * 255) / 255)  # something happened


def test_per_image_seed_independent_of_batch():
    x = _gray(4)
    full = corrupt_images(x, "gaussian_noise", 2, seed=0)
    first = corrupt_images(x[:2], "gaussian_noise", 2, seed=0)
    assert torch.equal(full[:2], first)
    other_seed = corrupt_images(x[:2], "gaussian_noise", 2, seed=1)
    assert not torch.equal(first, other_seed)


def test_rgb_and_rng_untouched():
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    np.random.seed(11)
    state = np.random.get_state()[1].copy()
    torch_state = torch.get_rng_state()
    out = corrupt_images(x, "shot_noise", 5)
    assert out.shape == x.shape
    assert np.array_equal(np.random.get_state()[1], state)
    assert torch.equal(torch.get_rng_state(), torch_state)


def test_severity_increases_damage():
    x = _gray(4)
    base = torch.round(x * 255) / 255
    d1 = (corrupt_images(x, "gaussian_noise", 1) - base).abs().mean()
    d5 = (corrupt_images(x, "gaussian_noise", 5) - base).abs().mean()
    assert d5 > d1


def test_bad_arguments():
    x = _gray(1)
    with pytest.raises(ConfigError, match="gaussian_noise"):
        corrupt_images(x, "rain", 1)
    with pytest.raises(ConfigError):
        corrupt_images(x, "fog", 6)
    with pytest.raises(ConfigError):
        corrupt_images(torch.rand(1, 2, 28, 28), "fog", 1)
    with pytest.raises(ConfigError):
        corrupt_images(x, "fog", 1, pad_mode="reflect")


def test_missing_backend_message(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "imagecorruptions":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ConfigError, match=r"unirobust\[corruptions\]"):
        corr_mod._backend()


def test_evaluate_corruptions_and_cache(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))
    model.train()
    x = _gray(6)
    with torch.no_grad():
        y = model(x).argmax(1)
    out = evaluate_corruptions(
        model,
        x,
        y,
        corruptions=["contrast", "gaussian_noise"],
        severities=(1, 5),
        cache_dir=tmp_path,
        dataset="toy",
    )
    assert model.training  # mode restored
    assert out["clean_acc"] == 1.0
    assert set(out["accuracy"]) == {"contrast", "gaussian_noise"}
    assert set(out["accuracy"]["contrast"]) == {"1", "5"}
    values = [a for v in out["accuracy"].values() for a in v.values()]
    assert out["mean_acc"] == pytest.approx(np.mean(values))
    assert out["mean_per_corruption"]["contrast"] == pytest.approx(
        np.mean(list(out["accuracy"]["contrast"].values()))
    )
    files = sorted(p.name for p in tmp_path.glob("*.npy"))
    assert len(files) == 4 and all(f.startswith("toy-") for f in files)
    cached = np.load(tmp_path / files[0], allow_pickle=False)
    assert cached.dtype == np.uint8 and cached.shape == (6, 1, 28, 28)

    # second call reads the cache: the backend is not called again
    def no_backend(*args, **kwargs):
        raise AssertionError("cache miss")

    monkeypatch.setattr(corr_mod, "_corrupt_uint8", no_backend)
    again = evaluate_corruptions(
        model,
        x,
        y,
        corruptions=["contrast", "gaussian_noise"],
        severities=(1, 5),
        cache_dir=tmp_path,
        dataset="toy",
    )
    assert again["accuracy"] == out["accuracy"]
    # different points -> different fingerprint -> no stale cache hit
    with pytest.raises(AssertionError, match="cache miss"):
        evaluate_corruptions(
            model,
            x[:3],
            y[:3],
            corruptions=["contrast"],
            severities=(1,),
            cache_dir=tmp_path,
            dataset="toy",
        )
