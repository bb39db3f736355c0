"""NTK decomposition (spec lpft.md §4 and oracles §8.2-5, §8.13) on tiny float64 models."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from unirobust.analysis.ntk import (
    entry_accuracy,
    flatten_kernel,
    ft_ratio,
    kernel_entry_accuracy,
    kernel_f,
    kernel_p,
    kernel_report,
    kernel_ridge_accuracy,
    ntk_decomposition,
    select_samples,
    selected_parameters,
)
from unirobust.models import build_model

C = 3

# forward-mode AD loads torch's jvp decompositions through the deprecated torch.jit.script
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")


def _lenet() -> nn.Module:
    torch.manual_seed(0)
    model = build_model(
        "lenet",
        num_classes=C,
        input_shape=(1, 8, 8),
        channels=[2, 3],
        hidden=4,
        batchnorm=True,
    ).double()
    with torch.no_grad():  # non-trivial BN statistics, so eval mode is visible
        for bn in (model.bn1, model.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    return model


def _mlp(hidden: tuple[int, ...] = (5, 4)) -> nn.Module:
    torch.manual_seed(1)
    return build_model(
        "mlp", num_classes=C, input_shape=(1, 8, 8), hidden_sizes=list(hidden)
    ).double()


def _x(n: int, side: int, seed: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, side, side, generator=gen, dtype=torch.float64)


def _naive_grads(model: nn.Module, x: torch.Tensor, fn, names: set[str]) -> torch.Tensor:
    """[n, C, p]: one backward per (sample, class) of ``fn(model, x_i)`` in eval mode."""
    params = [p for name, p in model.named_parameters() if name in names]
    rows = []
    for i in range(len(x)):
        out = fn(model, x[i : i + 1])[0]
        for c in range(out.shape[0]):
            grads = torch.autograd.grad(out[c], params, retain_graph=True, allow_unused=True)
            flat = [
                g.reshape(-1) if g is not None else torch.zeros(p.numel(), dtype=p.dtype)
                for g, p in zip(grads, params, strict=True)
            ]
            rows.append(torch.cat(flat))
    return torch.stack(rows).reshape(len(x), len(rows) // len(x), -1)


def _naive_f(model: nn.Module, x_a: torch.Tensor, x_b: torch.Tensor) -> torch.Tensor:
    model.eval()
    names = set(selected_parameters(model))
    v0 = model.head.weight.detach()

    def g(m: nn.Module, xi: torch.Tensor) -> torch.Tensor:
        return m.features(xi) @ v0.T

    ja, jb = _naive_grads(model, x_a, g, names), _naive_grads(model, x_b, g, names)
    return torch.einsum("ncp,mdp->ncmd", ja, jb)


@pytest.mark.parametrize("mode", ["jacobian", "vjp_jvp"])
def test_f_matches_a_naive_backward_loop(mode: str) -> None:
    model = _lenet()
    model.train()  # kernel_f must switch to eval mode (BN running stats) and restore it
    x = _x(5, 8)
    f = kernel_f(model, x, mode=mode)
    assert model.training
    naive = _naive_f(model, x, x)
    assert f.shape == (5, C, 5, C)
    assert naive.abs().max() > 1e-3
    torch.testing.assert_close(f, naive, rtol=0, atol=1e-10)


@pytest.mark.parametrize("mode", ["jacobian", "vjp_jvp"])
def test_test_rows_and_blocked_jacobians(mode: str) -> None:
    # train rows first, then test rows; a tiny budget forces 1-row blocks, the block reuse and
    # the mirrored symmetric blocks; tiny param chunks split the backbone
    model = _lenet()
    x = _x(6, 8, seed=3)
    f = kernel_f(
        model,
        x,
        4,
        mode=mode,
        max_jacobian_bytes=1,
        param_chunk=50,
        sample_chunk=3,
        tangent_chunk=2,
    )
    torch.testing.assert_close(f, _naive_f(model, x, x[:4]), rtol=0, atol=1e-10)
    separate = kernel_f(model, x[4:], x[:4], mode=mode)
    torch.testing.assert_close(separate, f[4:], rtol=0, atol=1e-10)


def test_full_ntk_is_p_plus_f() -> None:
    # NTK of f = Vφ + b over every parameter (head included) = P + F (Prop. 4.1)
    model = _mlp()
    model.eval()
    x = _x(4, 8)
    names = {name for name, _ in model.named_parameters()}
    jac = _naive_grads(model, x, lambda m, xi: m(xi), names)
    full = torch.einsum("ncp,mdp->ncmd", jac, jac)
    with torch.no_grad():
        phi = model.features(x)
    decomposed = kernel_p(phi, phi, C) + kernel_f(model, x, mode="jacobian")
    torch.testing.assert_close(full, decomposed, rtol=0, atol=1e-10)


def test_p_block_form() -> None:
    gen = torch.Generator().manual_seed(0)
    phi = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    p = kernel_p(phi, phi, C)
    gram = phi @ phi.T + 1
    for a in range(C):
        for b in range(C):
            block = p[:, a, :, b]
            if a == b:
                torch.testing.assert_close(block, gram, rtol=0, atol=0)
            else:
                assert torch.count_nonzero(block) == 0
    flat = flatten_kernel(p)
    torch.testing.assert_close(flat, flat.T, rtol=0, atol=0)
    assert torch.linalg.eigvalsh(flat).min() > -1e-10
    # sample-major: row i*C + c is sample i, class c
    assert flat[1 * C + 2, 4 * C + 2] == gram[1, 4]


def test_f_scales_quadratically_with_the_head() -> None:
    model = _mlp()
    x = _x(4, 8)
    v0 = model.head.weight.detach()
    base = kernel_f(model, x, mode="vjp_jvp", v0=v0)
    scaled = kernel_f(model, x, mode="vjp_jvp", v0=3.0 * v0)
    torch.testing.assert_close(scaled, 9.0 * base, rtol=1e-12, atol=1e-12)


class _LoRALinear(nn.Module):
    """W x + B A x with B = 0 at init (peft's default)."""

    def __init__(self, d_in: int, d_out: int, r: int = 2) -> None:
        super().__init__()
        self.base = nn.Linear(d_in, d_out)
        self.lora_A = nn.Parameter(torch.randn(r, d_in) / math.sqrt(d_in))
        self.lora_B = nn.Parameter(torch.zeros(d_out, r))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + x @ self.lora_A.T @ self.lora_B.T


class _TanhNet(nn.Module):
    """features = tanh(layer(x)) (full rank, unlike a ReLU net with dead units), linear head."""

    def __init__(self, h: int = 5, lora: bool = True) -> None:
        super().__init__()
        self.layer = _LoRALinear(4, h) if lora else nn.Linear(4, h)
        self.head = nn.Linear(h, C)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.layer(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def test_lora_a_kernel_is_zero_at_init_and_b_is_not() -> None:
    torch.manual_seed(0)
    model = _TanhNet().double()
    x = torch.randn(5, 4, dtype=torch.float64)
    assert set(selected_parameters(model, param_filter="lora_")) == {
        "layer.lora_A",
        "layer.lora_B",
    }
    for mode in ("jacobian", "vjp_jvp"):
        f_a = kernel_f(model, x, mode=mode, param_filter="lora_A")
        f_b = kernel_f(model, x, mode=mode, param_filter=lambda name: name.endswith("lora_B"))
        assert torch.count_nonzero(f_a) == 0
        assert f_b.abs().max() > 1e-3
    with pytest.raises(ValueError, match="no backbone parameter"):
        selected_parameters(model, param_filter="head")  # the head is never part of θ_φ


def test_rank_bounds_hold_and_are_reached() -> None:
    # h = 2 features: rank P = C(rank Φ + 1) = 9 < N·C; a head whose rows sum to 0 (a
    # multinomial LP head) has rank C - 1 = 2, so rank F <= 2N < N·C
    torch.manual_seed(3)
    model = _TanhNet(h=2, lora=False).double()
    with torch.no_grad():
        model.head.weight -= model.head.weight.mean(dim=0, keepdim=True)
    n = 8
    x = torch.randn(20, 4, dtype=torch.float64)
    res = ntk_decomposition(model, x, torch.arange(20) % C, n_max=n, mode="jacobian")
    rep = res.report
    assert rep["rank_bounds"] == {"rank_phi": 2, "rank_v0": 2, "p_max": 9, "f_max": 2 * n}
    assert rep["P"]["rank"] == 9
    assert rep["F"]["rank"] <= 2 * n < n * C
    ones = torch.ones(C, dtype=torch.float64)  # the class-sum direction is in F's null space
    assert torch.einsum("ncmd,d->ncm", res.f_train, ones).abs().max() < 1e-12
    assert rep["P"]["rank_dtype"] == "float64" and rep["P"]["rank_atol"] > 0
    spectrum = rep["F"]["spectrum"]
    assert spectrum[0] == 1.0 and spectrum == sorted(spectrum, reverse=True)
    fro = float(torch.linalg.norm(flatten_kernel(res.p_train)))
    assert rep["P"]["fn"] == pytest.approx(fro)


def test_ft_ratio_by_hand() -> None:
    # one sample, C = 2: P = 2 I, F = diag(1, 3), logits0 = 0, y = 0 -> δ = (1/2, -1/2)
    p = (2.0 * torch.eye(2, dtype=torch.float64)).reshape(1, 2, 1, 2)
    f = torch.diag(torch.tensor([1.0, 3.0], dtype=torch.float64)).reshape(1, 2, 1, 2)
    logits0 = torch.zeros(1, 2, dtype=torch.float64)
    # u_P = (1, -1), u_F = (0.5, -1.5): ratio = |u_F| / |u_P + u_F| = sqrt(2.5 / 8.5)
    value = ft_ratio(p, f, logits0, torch.tensor([0]))
    assert value == pytest.approx(math.sqrt(2.5 / 8.5), rel=1e-12)
    assert ft_ratio(p, 0 * f, logits0, torch.tensor([0])) == 0.0
    assert ft_ratio(0 * p, f, logits0, torch.tensor([1])) == pytest.approx(1.0)


def test_entry_accuracy_all_zeros_is_not_accuracy() -> None:
    y = torch.tensor([0, 1, 2, 2])
    assert entry_accuracy(torch.zeros(4, C), y) == pytest.approx((C - 1) / C)
    perfect = torch.nn.functional.one_hot(y, C).double() - 0.5
    assert entry_accuracy(perfect, y) == 1.0


def _blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % C
    centres = torch.eye(C, 4, dtype=torch.float64) * 4.0
    return centres[y] + 0.3 * torch.randn(n, 4, generator=gen, dtype=torch.float64), y


def test_kernel_accuracies_on_separable_features() -> None:
    phi_tr, y_tr = _blobs(30, 0)
    phi_te, y_te = _blobs(15, 1)
    out = kernel_ridge_accuracy(
        kernel_p(phi_tr, phi_tr, C), y_tr, kernel_p(phi_te, phi_tr, C), y_te
    )
    assert out["acc"] == 1.0
    assert out["rho"] in (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1) and out["folds"] == 5
    # a kernel that carries no information predicts one class: chance on balanced labels
    zeros = torch.zeros(30, 1, dtype=torch.float64)
    flat, test = kernel_p(zeros, zeros, C), kernel_p(zeros[:15], zeros, C)
    assert kernel_ridge_accuracy(flat, y_tr, test, y_te)["acc"] == pytest.approx(1 / 3)
    small, y_small = phi_tr[:12], y_tr[:12]
    entry = kernel_entry_accuracy(
        kernel_p(small, small, C), y_small, kernel_p(phi_te, small, C), y_te
    )
    assert entry > (C - 1) / C


def test_select_samples_is_seeded() -> None:
    a = select_samples(1000, 250, seed=4)
    assert len(a) == 250 and torch.equal(a, a.unique()) and a.max() < 1000
    assert torch.equal(a, select_samples(1000, 250, seed=4))
    assert not torch.equal(a, select_samples(1000, 250, seed=5))
    assert torch.equal(select_samples(7, 250), torch.arange(7))


def test_ntk_decomposition_modes_agree_and_restore_state() -> None:
    model = _lenet()
    model.train()
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        x, y = _x(12, 8, seed=5), torch.arange(12) % C
        runs = {
            mode: ntk_decomposition(
                model, x, y, x[:9], y[:9], mode=mode, n_max=6, seed=1, entry_acc=False
            )
            for mode in ("jacobian", "vjp_jvp")
        }
        assert torch.backends.cuda.matmul.allow_tf32 is True
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False
    assert model.training
    jac, vj = runs["jacobian"], runs["vjp_jvp"]
    assert torch.equal(jac.train_idx, select_samples(12, 6, seed=1))
    assert torch.equal(jac.test_idx, select_samples(9, 6, seed=2))
    torch.testing.assert_close(jac.f_train, vj.f_train, rtol=0, atol=1e-10)
    torch.testing.assert_close(jac.f_test, vj.f_test, rtol=0, atol=1e-10)
    xs = x[jac.train_idx]
    torch.testing.assert_close(jac.f_train, _naive_f(model, xs, xs), rtol=0, atol=1e-10)
    rep = jac.report
    assert rep["ft_ratio"] == pytest.approx(vj.report["ft_ratio"], rel=1e-9)
    assert rep["ft_ratio"] > 0  # it may exceed 1 (spec §4)
    assert set(rep["multiclass_acc"]) == {"P", "F", "NTK"} and "entry_acc" not in rep
    assert rep["n_train"] == 6 and rep["n_test"] == 6 and rep["num_classes"] == C


def test_kernel_report_rank_tolerance_is_logged() -> None:
    k = torch.diag(torch.tensor([1.0, 1e-3, 1e-9], dtype=torch.float64))
    assert kernel_report(k)["rank"] == 3
    loose = kernel_report(k, rtol=1e-6)
    assert loose["rank"] == 2 and loose["rank_rtol"] == 1e-6
    assert loose["spectrum"] == pytest.approx([1.0, 1e-3, 1e-9])
