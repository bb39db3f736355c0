"""NTK decomposition of a feature-head model at the start of FT (spec lpft.md §4).

For f(x) = Vφ(x) + b, the NTK over all parameters splits (Prop. 4.1 of Tomihari & Sato 2024)
into P, from the head, and F, from the backbone:

* P(x, x') = (⟨φ0(x), φ0(x')⟩ + 1) I_C, in closed form;
* F(x, x') = V0 J(x) J(x')ᵀ V0ᵀ with J = ∂φ0/∂θ_φ, via ``torch.func`` on g(θ, x) = V0 φ(θ, x).

Kernels are [N, C, M, C] tensors; :func:`flatten_kernel` makes them NC × MC, sample-major.
F is computed in one of two modes (spec §4):

* ``"jacobian"``: vmap(jacrev(g)) per parameter chunk, contracted with einsum
  ``"ncp,mdp->ncmd"``; memory ∝ samples × C × chunk size (bounded by ``max_jacobian_bytes``,
  with a block recomputation when a chunk's Jacobian does not fit).
* ``"vjp_jvp"``: per training sample x_j, the vjp of g(·, x_j) against the C unit cotangents gives
  C tangents; a batched jvp of each over all x gives the columns F[:, :, j, d]. Memory is
  O(#params), so this is the mode for large backbones.

:func:`ntk_decomposition` runs the whole §4 recipe: seeded sample selection (indices kept), eval
mode with TF32 off, P, F, FN / rank / spectrum, the FT ratio, and kernel accuracies
(``multiclass_acc`` by kernel ridge regression; ``entry_acc``, the official script's entry-wise
score, which is not an accuracy: pitfall 16).
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap

__all__ = [
    "RHOS",
    "NTKResult",
    "entry_accuracy",
    "flatten_kernel",
    "ft_ratio",
    "kernel_entry_accuracy",
    "kernel_f",
    "kernel_p",
    "kernel_report",
    "kernel_ridge_accuracy",
    "ntk_decomposition",
    "rank_bounds",
    "select_samples",
    "selected_parameters",
]

NTKMode = Literal["jacobian", "vjp_jvp"]
ParamFilter = str | Callable[[str], bool] | None

#: Ridge factors ρ of ``multiclass_acc`` (λ = ρ·σ_max), chosen by 5-fold CV (spec §4).
RHOS: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


# --------------------------------------------------------------------------- samples and P


def select_samples(n_total: int, n_max: int = 250, *, seed: int = 0) -> Tensor:
    """At most ``n_max`` of ``range(n_total)``, drawn with ``seed``, sorted (spec §4: save them)."""
    if n_total < 1 or n_max < 1:
        raise ValueError(f"need n_total >= 1 and n_max >= 1, got {n_total}, {n_max}")
    if n_total <= n_max:
        return torch.arange(n_total)
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n_total, generator=gen)[:n_max].sort().values


def kernel_p(phi_a: Tensor, phi_b: Tensor, num_classes: int) -> Tensor:
    """P = (⟨φ0(x_a), φ0(x_b)⟩ + 1) I_C as an [N, C, M, C] tensor (the head's NTK)."""
    gram = phi_a @ phi_b.T + 1.0
    eye = torch.eye(num_classes, dtype=gram.dtype, device=gram.device)
    return gram[:, None, :, None] * eye[None, :, None, :]


def flatten_kernel(kernel: Tensor) -> Tensor:
    """[N, C, M, C] -> [N·C, M·C], sample-major (row i·C + c is sample i, class c)."""
    if kernel.ndim == 2:
        return kernel
    n, c, m, d = kernel.shape
    return kernel.reshape(n * c, m * d)


# --------------------------------------------------------------------------- F via torch.func


class _Features(nn.Module):
    """Wraps ``model.features`` as a forward so :func:`functional_call` can substitute θ_φ."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.features(x).flatten(1)


def selected_parameters(
    model: nn.Module, head: nn.Module | None = None, param_filter: ParamFilter = None
) -> dict[str, Tensor]:
    """θ_φ: the backbone parameters (all but the head's), optionally narrowed by name.

    ``param_filter`` is a regex searched in each name (e.g. ``"lora_"`` for the LoRA variants)
    or a predicate on the name. Returns detached tensors keyed by parameter name.
    """
    head = head if head is not None else getattr(model, "head", None)
    head_ids = {id(p) for p in head.parameters()} if head is not None else set()
    keep: Callable[[str], bool]
    if param_filter is None:
        keep = lambda name: True  # noqa: E731
    elif isinstance(param_filter, str):
        pattern = re.compile(param_filter)
        keep = lambda name: pattern.search(name) is not None  # noqa: E731
    else:
        keep = param_filter
    params = {
        name: p.detach()
        for name, p in model.named_parameters()
        if id(p) not in head_ids and keep(name)
    }
    if not params:
        raise ValueError(f"no backbone parameter matches {param_filter!r}")
    return params


def _chunks(params: dict[str, Tensor], max_numel: int) -> list[dict[str, Tensor]]:
    """Consecutive parameter groups of at most ``max_numel`` entries (a bigger tensor alone)."""
    out: list[dict[str, Tensor]] = [{}]
    size = 0
    for name, p in params.items():
        if out[-1] and size + p.numel() > max_numel:
            out.append({})
            size = 0
        out[-1][name] = p
        size += p.numel()
    return out


def _blocks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


class _BackboneKernel:
    """g(θ, x) = V0 φ(θ, x) with θ = the selected parameters, and F from it in either mode."""

    def __init__(self, model: nn.Module, params: dict[str, Tensor], v0: Tensor) -> None:
        self.module = _Features(model)
        self.params = params
        self.v0 = v0.detach()
        self.num_classes = int(v0.shape[0])

    def g(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        named = {f"model.{k}": v for k, v in params.items()}
        return functional_call(self.module, named, (x,)) @ self.v0.T

    def g1(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        return self.g(params, x.unsqueeze(0)).squeeze(0)

    def jacobian(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        """[n, C, p]: ∂g/∂θ for the parameters in ``params``, flattened in dict order."""
        jac = vmap(jacrev(self.g1), in_dims=(None, 0))(params, x)
        return torch.cat([j.reshape(x.shape[0], self.num_classes, -1) for j in jac.values()], 2)

    def f_jacobian(
        self, x_a: Tensor, x_b: Tensor | int, param_chunk: int, max_bytes: int
    ) -> Tensor:
        """F[a, :, b, :] by explicit Jacobians; an int ``x_b`` means x_b = x_a[:x_b] (then
        blocks already computed on the a side are reused and symmetric blocks mirrored)."""
        prefix = isinstance(x_b, int)
        n_b = x_b if isinstance(x_b, int) else x_b.shape[0]
        xb = x_a[:n_b] if isinstance(x_b, int) else x_b
        n_a, c = x_a.shape[0], self.num_classes
        out = torch.zeros(n_a, c, n_b, c, dtype=self.v0.dtype, device=self.v0.device)
        for chunk in _chunks(self.params, param_chunk):
            numel = sum(p.numel() for p in chunk.values())
            rows = max(1, max_bytes // (2 * c * numel * self.v0.element_size()))
            for ia, sa in enumerate(_blocks(n_a, rows)):
                j_a = self.jacobian(chunk, x_a[sa])
                a_in_b = prefix and sa.stop <= n_b
                for ib, sb in enumerate(_blocks(n_b, rows)):
                    if a_in_b and ib < ia:
                        continue  # mirrored from block (ib, ia)
                    if prefix and sa.start <= sb.start and sb.stop <= sa.stop:
                        j_b = j_a[sb.start - sa.start : sb.stop - sa.start]
                    else:
                        j_b = self.jacobian(chunk, xb[sb])
                    block = torch.einsum("ncp,mdp->ncmd", j_a, j_b)
                    out[sa, :, sb, :] += block
                    if a_in_b and ib > ia:
                        out[sb, :, sa, :] += block.permute(2, 3, 0, 1)
        return out

    def f_vjp_jvp(
        self, x_a: Tensor, x_b: Tensor, sample_chunk: int, tangent_chunk: int | None
    ) -> Tensor:
        """F[a, :, b, :] column by column: vjp tangents of each x_b, batched jvp over x_a."""
        c = self.num_classes
        eye = torch.eye(c, dtype=self.v0.dtype, device=self.v0.device)
        params = self.params

        def tangents(xj: Tensor) -> dict[str, Tensor]:
            _, pullback = vjp(lambda p: self.g1(p, xj), params)
            return vmap(pullback)(eye)[0]

        def column(tangent: dict[str, Tensor]) -> Tensor:
            return jvp(lambda p: self.g(p, x_a), (params,), (tangent,))[1]

        out = torch.empty(x_a.shape[0], c, x_b.shape[0], c, dtype=eye.dtype, device=eye.device)
        for sb in _blocks(x_b.shape[0], sample_chunk):
            tans = vmap(tangents)(x_b[sb])
            flat = {k: v.reshape(-1, *v.shape[2:]) for k, v in tans.items()}
            cols = vmap(column, chunk_size=tangent_chunk)(flat)  # [s·C, N, C]
            out[:, :, sb, :] = cols.reshape(-1, c, x_a.shape[0], c).permute(2, 3, 0, 1)
        return out


@contextmanager
def _eval_without_tf32(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout, BN running stats) and TF32 off; both restored (pitfall 15).

    A model with a ``functorch_mode()`` context (text models: eager attention, since SDPA has no
    forward-mode AD rule) runs inside it."""
    was_training = model.training
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    model.eval()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    mode = getattr(model, "functorch_mode", None)
    try:
        with mode() if callable(mode) else nullcontext():
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
        model.train(was_training)


def kernel_f(
    model: nn.Module,
    x_a: Tensor,
    x_b: Tensor | int | None = None,
    *,
    head: nn.Linear | None = None,
    v0: Tensor | None = None,
    mode: NTKMode = "vjp_jvp",
    param_filter: ParamFilter = None,
    param_chunk: int = 1 << 20,
    max_jacobian_bytes: int = 1 << 30,
    sample_chunk: int = 1,
    tangent_chunk: int | None = None,
) -> Tensor:
    """F(x_a, x_b) = V0 J(x_a) J(x_b)ᵀ V0ᵀ as [N, C, M, C] (x_b defaults to x_a).

    An int ``x_b`` = m means the first m rows of ``x_a`` (train rows first, then test rows): the
    ``jacobian`` mode then computes each training Jacobian block once and mirrors symmetric ones.

    ``v0`` defaults to ``head.weight`` (``model.head``). θ_φ = :func:`selected_parameters`
    (``param_filter``). ``param_chunk`` and ``max_jacobian_bytes`` bound the ``jacobian`` mode,
    ``sample_chunk`` (training samples per vmap) and ``tangent_chunk`` (tangents per batched jvp,
    each a forward pass over all of ``x_a``; default all C·sample_chunk) the ``vjp_jvp`` mode.
    Runs in eval mode with TF32 off, in the model's dtype.
    """
    head = head if head is not None else model.head
    weight = (v0 if v0 is not None else head.weight).detach()
    params = selected_parameters(model, head, param_filter)
    kern = _BackboneKernel(model, params, weight)
    with _eval_without_tf32(model), torch.no_grad():
        target = x_a.shape[0] if x_b is None else x_b
        if mode == "jacobian":
            return kern.f_jacobian(x_a, target, param_chunk, max_jacobian_bytes)
        if mode == "vjp_jvp":
            xb = x_a[:target] if isinstance(target, int) else target
            return kern.f_vjp_jvp(x_a, xb, sample_chunk, tangent_chunk)
    raise ValueError(f"unknown NTK mode {mode!r}; use 'jacobian' or 'vjp_jvp'")


# --------------------------------------------------------------------------- report


def kernel_report(kernel: Tensor, *, rtol: float | None = None) -> dict[str, Any]:
    """FN, rank, σ_max and the spectrum σ/σ_max of a (train × train) kernel (spec §4).

    The rank is :func:`torch.linalg.matrix_rank` (hermitian) with relative tolerance ``rtol``
    (default eps(dtype)·NC, torch's own); the dtype and both tolerances are returned with it,
    since P's rank in particular depends on them (pitfall 15).
    """
    k = flatten_kernel(kernel)
    spectrum = torch.linalg.svdvals(k)
    sigma_max = float(spectrum[0]) if spectrum.numel() else 0.0
    rel = rtol if rtol is not None else torch.finfo(k.dtype).eps * max(k.shape)
    rank = int(torch.linalg.matrix_rank(k, rtol=rel, hermitian=True))
    return {
        "fn": float(torch.linalg.norm(k)),
        "rank": rank,
        "rank_dtype": str(k.dtype).replace("torch.", ""),
        "rank_rtol": rel,
        "rank_atol": rel * sigma_max,
        "sigma_max": sigma_max,
        "spectrum": (spectrum / sigma_max).tolist() if sigma_max > 0 else spectrum.tolist(),
    }


def rank_bounds(phi0: Tensor, v0: Tensor, n: int) -> dict[str, int]:
    """Upper bounds: rank P ≤ C(rank Φ + 1), rank F ≤ rank(V0)·N (spec §4)."""
    c = int(v0.shape[0])
    rank_phi = int(torch.linalg.matrix_rank(phi0.to(torch.float64)))
    rank_v0 = int(torch.linalg.matrix_rank(v0.detach().to(torch.float64)))
    return {
        "rank_phi": rank_phi,
        "rank_v0": rank_v0,
        "p_max": c * (rank_phi + 1),
        "f_max": min(rank_v0 * n, n * c),
    }


def _delta(logits0: Tensor, y: Tensor) -> Tensor:
    onehot = torch.nn.functional.one_hot(y.long(), logits0.shape[1]).to(logits0.dtype)
    return onehot - torch.softmax(logits0, dim=1)


def ft_ratio(p: Tensor, f: Tensor, logits0: Tensor, y: Tensor) -> float:
    """mean_x ‖u_F(x)‖ / ‖u_P(x) + u_F(x)‖ over the sampled training x (spec §4; may exceed 1).

    u_K(x) = Σ_i K(x, x_i) δ_i with δ_i = e_{y_i} − softmax(V0φ0(x_i) + b0) = ``logits0``.
    """
    delta = _delta(logits0, y)
    u_p = torch.einsum("ncmd,md->nc", p, delta)
    u_f = torch.einsum("ncmd,md->nc", f, delta)
    return float((u_f.norm(dim=1) / (u_p + u_f).norm(dim=1)).mean())


def _class_entries(idx: Tensor, c: int) -> Tensor:
    return (idx[:, None] * c + torch.arange(c)).reshape(-1)


def _ridge_predict(k: Tensor, target: Tensor, k_eval: Tensor, rhos: Sequence[float]) -> Tensor:
    """Predictions [len(rhos), M·C] of kernel ridge with λ = ρ·σ_max, one eigh for all ρ."""
    evals, evecs = torch.linalg.eigh(k)
    sigma_max = evals.abs().max()
    proj = evecs.T @ target
    preds = []
    for rho in rhos:
        alpha = evecs @ (proj / (evals + rho * sigma_max))
        preds.append(k_eval @ alpha)
    return torch.stack(preds)


def kernel_ridge_accuracy(
    k_train: Tensor,
    y_train: Tensor,
    k_test: Tensor,
    y_test: Tensor,
    *,
    rhos: Sequence[float] = RHOS,
    folds: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """``multiclass_acc``: kernel ridge regression on vec(onehot − 1/C), argmax over classes.

    α = (K + λI)⁻¹ vec(onehot − 1/C), f(x) = K(x, X)α, λ = ρ·σ_max with ρ chosen by ``folds``-fold
    CV over training samples (σ_max of each fold's kernel). ``k_train`` is [N, C, N, C],
    ``k_test`` [M, C, N, C]. Returns the test accuracy, the chosen ρ and λ, and CV accuracies.
    """
    n, c = k_train.shape[0], k_train.shape[1]
    kt = flatten_kernel(k_train).to(torch.float64)
    ke = flatten_kernel(k_test).to(torch.float64)
    y_train, y_test = y_train.long().cpu(), y_test.long().cpu()
    onehot = torch.nn.functional.one_hot(y_train, c).to(torch.float64)
    target = (onehot - 1.0 / c).reshape(-1)
    folds = max(2, min(folds, n))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    cv_correct = torch.zeros(len(rhos), dtype=torch.float64)
    for part in torch.tensor_split(order, folds):
        mask = torch.ones(n, dtype=torch.bool)
        mask[part] = False
        tr, va = _class_entries(mask.nonzero().reshape(-1), c), _class_entries(part, c)
        preds = _ridge_predict(kt[tr][:, tr], target[tr], kt[va][:, tr], rhos)
        cv_correct += (preds.reshape(len(rhos), -1, c).argmax(2) == y_train[part]).sum(1)
    cv_acc = cv_correct / n
    best = int(cv_acc.argmax())  # ties: the smallest ρ
    pred = _ridge_predict(kt, target, ke, [rhos[best]])[0].reshape(-1, c).argmax(1)
    return {
        "acc": float((pred == y_test).to(torch.float64).mean()),
        "rho": float(rhos[best]),
        "lambda": float(rhos[best] * torch.linalg.eigvalsh(kt).abs().max()),
        "cv_acc": dict(zip(map(str, rhos), cv_acc.tolist(), strict=True)),
        "folds": folds,
    }


def entry_accuracy(scores: Tensor, y: Tensor) -> float:
    """The official script's entry-wise score: mean over N·C entries of [s_ic > 0] = 1[y_i = c].

    Not an accuracy (pitfall 16): predicting all zeros already gets (C − 1)/C.
    """
    target = torch.nn.functional.one_hot(y.long(), scores.shape[1]).bool()
    return float(((scores > 0) == target).to(torch.float64).mean())


def kernel_entry_accuracy(
    k_train: Tensor, y_train: Tensor, k_test: Tensor, y_test: Tensor, *, seed: int = 0
) -> float:
    """``entry_acc`` as the official ``utils/kernel_solvers.py`` computes it: L2 logistic
    regression (``LogisticRegressionCV``) on kernel rows, one binary target per (sample, class)."""
    from sklearn.linear_model import LogisticRegressionCV

    c = k_train.shape[1]
    target = torch.nn.functional.one_hot(y_train.long().cpu(), c).reshape(-1).numpy()
    clf = LogisticRegressionCV(max_iter=10_000, random_state=seed, scoring="accuracy")
    with warnings.catch_warnings():  # newer releases announce changed defaults
        warnings.simplefilter("ignore", FutureWarning)
        clf.fit(flatten_kernel(k_train).to(torch.float64).cpu().numpy(), target)
    scores = clf.decision_function(flatten_kernel(k_test).to(torch.float64).cpu().numpy())
    return entry_accuracy(torch.as_tensor(scores).reshape(-1, c), y_test.cpu())


# --------------------------------------------------------------------------- the recipe


@dataclass
class NTKResult:
    """Kernels ([N, C, N, C] train × train, [M, C, N, C] test × train), indices and report."""

    train_idx: Tensor
    p_train: Tensor
    f_train: Tensor
    test_idx: Tensor | None = None
    p_test: Tensor | None = None
    f_test: Tensor | None = None
    report: dict[str, Any] = field(default_factory=dict)


def _accuracies(
    kernels: dict[str, tuple[Tensor, Tensor]],
    y_tr: Tensor,
    y_te: Tensor,
    *,
    seed: int,
    entry_acc: bool,
) -> dict[str, Any]:
    out: dict[str, Any] = {"multiclass_acc": {}, "entry_acc": {}}
    for name, (k_tr, k_te) in kernels.items():
        out["multiclass_acc"][name] = kernel_ridge_accuracy(k_tr, y_tr, k_te, y_te, seed=seed)
        if entry_acc:
            out["entry_acc"][name] = kernel_entry_accuracy(k_tr, y_tr, k_te, y_te, seed=seed)
    if entry_acc:
        out["entry_acc_note"] = (
            "official kernel_solvers.py score over N*C binary (sample, class) entries; "
            "all-zeros scores (C-1)/C: not an accuracy"
        )
    else:
        del out["entry_acc"]
    return out


def ntk_decomposition(
    model: nn.Module,
    x_train: Tensor,
    y_train: Tensor,
    x_test: Tensor | None = None,
    y_test: Tensor | None = None,
    *,
    head: nn.Linear | None = None,
    mode: NTKMode = "vjp_jvp",
    param_filter: ParamFilter = None,
    n_max: int = 250,
    seed: int = 0,
    entry_acc: bool = True,
    **f_options: Any,
) -> NTKResult:
    """The spec §4 NTK decomposition of ``model`` at the start of FT.

    Draws at most ``n_max`` training (and test) samples with ``seed``, computes P and F on them
    in eval mode with TF32 off and in the model's dtype (use a float64 model for exact ranks),
    and reports FN / rank / spectrum of P, F and P + F, the rank bounds, the FT ratio and, with a
    test split, ``multiclass_acc`` (and ``entry_acc``) of each kernel. ``f_options`` go to
    :func:`kernel_f` (``param_chunk``, ``max_jacobian_bytes``, ``sample_chunk``,
    ``tangent_chunk``).
    """
    head = head if head is not None else model.head
    dtype = head.weight.dtype
    timings: dict[str, float] = {}
    train_idx = select_samples(len(x_train), n_max, seed=seed)
    test_idx = None if x_test is None else select_samples(len(x_test), n_max, seed=seed + 1)
    device = head.weight.device

    def rows(x: Tensor, idx: Tensor) -> Tensor:  # images in the model's dtype; token ids as is
        part = x[idx]
        return part.to(device, dtype) if part.is_floating_point() else part.to(device)

    x_tr = rows(x_train, train_idx)
    y_tr = torch.as_tensor(y_train)[train_idx].long().cpu()
    x_all = x_tr if test_idx is None else torch.cat([x_tr, rows(x_test, test_idx)])
    n = len(train_idx)
    start = time.perf_counter()
    with _eval_without_tf32(model), torch.no_grad():
        phi = torch.cat(
            [model.features(x_all[i : i + 256]).flatten(1) for i in range(0, len(x_all), 256)]
        )
        logits0 = head(phi[:n])
    p_all = kernel_p(phi, phi[:n], int(head.out_features))
    timings["p_s"] = time.perf_counter() - start
    start = time.perf_counter()
    # x_b = the first n rows of x_all: the jacobian mode reuses and mirrors the training blocks
    f_all = kernel_f(model, x_all, n, head=head, mode=mode, param_filter=param_filter, **f_options)
    timings["f_s"] = time.perf_counter() - start
    result = NTKResult(train_idx, p_all[:n], f_all[:n], test_idx)
    if test_idx is not None:
        result.p_test, result.f_test = p_all[n:], f_all[n:]
    start = time.perf_counter()
    params = selected_parameters(model, head, param_filter)
    report: dict[str, Any] = {
        "mode": mode,
        "dtype": str(dtype).replace("torch.", ""),
        "n_train": n,
        "n_test": 0 if test_idx is None else len(test_idx),
        "num_classes": int(head.out_features),
        "num_params": int(sum(p.numel() for p in params.values())),
        "param_filter": None if param_filter is None else str(param_filter),
        "seed": seed,
        "P": kernel_report(result.p_train),
        "F": kernel_report(result.f_train),
        "NTK": kernel_report(result.p_train + result.f_train),
        "rank_bounds": rank_bounds(phi[:n], head.weight, n),
        "ft_ratio": ft_ratio(result.p_train, result.f_train, logits0, y_tr),
    }
    timings["report_s"] = time.perf_counter() - start
    if test_idx is not None and result.p_test is not None and result.f_test is not None:
        if y_test is None:
            raise ValueError("x_test needs y_test")
        start = time.perf_counter()
        y_te = torch.as_tensor(y_test)[test_idx].long().cpu()
        kernels = {
            "P": (result.p_train, result.p_test),
            "F": (result.f_train, result.f_test),
            "NTK": (result.p_train + result.f_train, result.p_test + result.f_test),
        }
        report.update(_accuracies(kernels, y_tr, y_te, seed=seed, entry_acc=entry_acc))
        timings["accuracy_s"] = time.perf_counter() - start
    report["seconds"] = timings
    result.report = report
    return result
