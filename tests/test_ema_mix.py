"""EmaMix (Generalist merge): generalist.md §6 oracles 1, 3-7, N=1, distributed packing, resume."""

from __future__ import annotations

import copy
import io
import threading
from collections.abc import Callable, Sequence

import pytest
import torch
from torch import Tensor, nn

from unirobust.errors import CheckpointError, ConfigError
from unirobust.experts.ema_mix import (
    EmaMix,
    check_mix_weights,
    ema_decay,
    is_sync_epoch,
    sync_schedule,
)
from unirobust.experts.expert import Expert
from unirobust.experts.merge import NoMerge
from unirobust.experts.schedules import Constant, build_schedule
from unirobust.objectives.natural import NaturalObjective

EPOCHS = 6  # knots 0/2/4/6; default sync epochs 4, 5, 6
N_ITERS = 3


# ---------------------------------------------------------------------------------------------
# helpers


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def _experts(seed: int = 0, lrs: Sequence[float] = (0.05, 0.05)) -> list[Expert]:
    """Two experts from ONE initialisation (pitfall 8), different weight decay and lr."""
    base = _model(seed)
    out = []
    for k, (name, wd) in enumerate((("robust", 3.5e-3), ("natural", 5e-4))[: len(lrs)]):
        m = copy.deepcopy(base)
        opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=wd)
        lr = lrs[k]
        out.append(Expert(name, m, NaturalObjective(), opt, lr_schedule=Constant(lr)))
    return out


def _batch(epoch: int, it: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1000 * epoch + it)
    return torch.randn(16, 4, generator=g), torch.randint(0, 3, (16,), generator=g)


def _train_batch(experts: list[Expert], epoch: int, it: int) -> None:
    x, y = _batch(epoch, it)
    for ex in experts:  # every expert sees the identical batch (pitfall 21)
        ex.set_lr(epoch, it, N_ITERS)
        ex.train_step(x, y)


def _run(experts: list[Expert], merge, epochs: range, hook: Callable | None = None) -> None:
    for e in epochs:
        for i in range(N_ITERS):
            _train_batch(experts, e, i)
            if hook is not None:
                hook(e, i)
            merge.after_step(experts, e, i, N_ITERS)
        merge.after_epoch(experts, e)


def _beta_weights(epochs: int = EPOCHS, last: float = 0.4) -> list:
    beta = build_schedule({"kind": "generalist", "values": [1, 1, 1, last], "epochs": epochs})
    rest = build_schedule({"kind": "generalist", "values": [0, 0, 0, 1 - last], "epochs": epochs})
    return [beta, rest]


def _state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_states_equal(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ---------------------------------------------------------------------------------------------
# oracles 1, 3, 5


def test_oracle1_decay() -> None:
    assert ema_decay(0) == pytest.approx(0.1, abs=1e-15)
    assert ema_decay(1) == pytest.approx(0.18181818181818, abs=1e-12)
    assert ema_decay(8989) == pytest.approx(0.99899989, abs=1e-8)
    assert ema_decay(8989) < 0.999
    assert ema_decay(8990) == 0.999
    assert ema_decay(10**6) == 0.999


def test_oracle3_sync_epochs() -> None:
    assert sync_schedule(120) == (75, 5)
    assert sync_schedule(100) == (63, 4)
    assert sync_schedule(24) == (15, 1)
    assert sync_schedule(10) == (6, 1)
    assert sync_schedule(120, 10, 3) == (10, 3)
    start, interval = sync_schedule(120)
    assert [e for e in range(1, 121) if is_sync_epoch(e, start, interval)] == list(
        range(75, 121, 5)
    )
    with pytest.raises(ConfigError):
        sync_schedule(120, sync_interval=0)


@pytest.mark.parametrize("epochs", [1, 2, 10, 24, 100, 120])
def test_oracle5_presets_sum_to_one(epochs: int) -> None:
    weights = _beta_weights(epochs)  # generalist_nat_linf and generalist_linf_l2 share these
    check_mix_weights(weights, epochs)
    for e in range(1, epochs + 1):
        for i in (0, 7):
            for gran in ("epoch", "iteration"):
                ws = [
                    build_schedule(
                        {"kind": "generalist", "values": v, "epochs": epochs, "granularity": gran}
                    ).at(e, i, 8)
                    for v in ([1, 1, 1, 0.4], [0, 0, 0, 0.6])
                ]
                assert abs(sum(ws) - 1.0) <= 1e-12


def test_oracle5_bad_weights_rejected() -> None:
    bad = [_beta_weights(120)[0], build_schedule({"kind": "generalist", "values": [0, 0, 0, 0.5],
                                                  "epochs": 120})]  # fmt: skip
    with pytest.raises(ConfigError, match=r"sum to 0\.9975 at epoch 81\b") as info:
        check_mix_weights(bad, 120)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="sum to"):
        EmaMix(mix_weights=bad, epochs=120)
    with pytest.raises(ConfigError, match=r"sum to 0\.9 at epoch 1\b"):
        check_mix_weights([Constant(0.4), Constant(0.5)], 10)
    with pytest.raises(ConfigError, match=r"expert 0 is 1\.5"):
        check_mix_weights([Constant(1.5), Constant(-0.5)], 10)
    with pytest.raises(ConfigError, match=r"sum to 0\.5 at epoch 3"):  # step function: every epoch
        check_mix_weights([lambda t: 0.5 if 2.5 < t < 3.5 else 1.0], 10)


# ---------------------------------------------------------------------------------------------
# oracle 4: mix arithmetic on one-element models


class _Scalar(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.w


def test_oracle4_mix_arithmetic() -> None:
    experts = []
    for name in ("robust", "natural"):
        m = _Scalar()
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        experts.append(Expert(name, m, NaturalObjective(), opt, lr_schedule=Constant(0.1)))
    merge = EmaMix(mix_weights=[Constant(0.5), Constant(0.5)], epochs=10, sync_mode="off")
    merge.setup(experts)
    with torch.no_grad():
        experts[0].model.w.fill_(1.0)
        experts[1].model.w.fill_(3.0)
    merge.after_step(experts, 1, 0, 1)
    assert merge.ema_model(0).w.item() == pytest.approx(0.9, abs=1e-6)
    assert merge.ema_model(1).w.item() == pytest.approx(2.7, abs=1e-6)
    assert merge.global_model().w.item() == pytest.approx(1.62, abs=1e-6)
    assert merge.s == 1
    assert experts[0].model.w.item() == 1.0  # sync off: experts untouched


# ---------------------------------------------------------------------------------------------
# oracle 6 and N=1: double EMA


def _double_ema_reference(run_steps: Callable[[Callable], None]) -> dict[str, Tensor]:
    """Run training, computing E and G of expert 0 by hand (float64, plain arithmetic)."""
    state: dict[str, dict[str, Tensor]] = {}
    step = [0]

    def hook(theta: dict[str, Tensor]) -> None:
        d = min(0.999, (step[0] + 1) / (step[0] + 10))
        if not state:
            state["E"] = {k: v.double() for k, v in theta["init"].items()}
            state["G"] = {k: v.double() for k, v in theta["init"].items()}
        for k, v in theta["now"].items():
            state["E"][k] = d * state["E"][k] + (1 - d) * v.double()
            state["G"][k] = d * state["G"][k] + (1 - d) * state["E"][k]
        step[0] += 1

    run_steps(hook)
    return state["G"]


def _check_double_ema(experts: list[Expert], weights: list) -> EmaMix:
    init = {k: v for k, v in _state(experts[0].model).items() if v.is_floating_point()}
    merge = EmaMix(mix_weights=weights, epochs=EPOCHS, sync_mode="off")
    merge.setup(experts)

    def run_steps(hook: Callable) -> None:
        def after_train(e: int, i: int) -> None:
            now = {k: v for k, v in _state(experts[0].model).items() if v.is_floating_point()}
            hook({"init": init, "now": now})

        _run(experts, merge, range(1, EPOCHS + 1), after_train)

    g_ref = _double_ema_reference(run_steps)
    g = merge.global_model().state_dict()
    for k, v in g_ref.items():
        torch.testing.assert_close(g[k].double(), v, rtol=0, atol=1e-6)
    nbt = "1.num_batches_tracked"
    assert g[nbt].item() == experts[0].model.state_dict()[nbt].item() == EPOCHS * N_ITERS
    return merge


def test_oracle6_beta_one_double_ema_and_natural_lr_irrelevant() -> None:
    weights = [Constant(1.0), Constant(0.0)]
    a = _experts(lrs=(0.05, 0.05))
    g_a = _state(_check_double_ema(a, weights).global_model())
    b = _experts(lrs=(0.05, 0.5))
    g_b = _state(_check_double_ema(b, weights).global_model())
    _assert_states_equal(g_a, g_b)  # bitwise, although the natural experts differ:
    assert not torch.equal(a[1].model[0].weight, b[1].model[0].weight)


def test_n1_sync_off_double_ema_and_trajectory_untouched() -> None:
    plain = _experts(lrs=(0.05,))
    no_merge = NoMerge()
    no_merge.setup(plain)
    _run(plain, no_merge, range(1, EPOCHS + 1))
    merged = _experts(lrs=(0.05,))
    _check_double_ema(merged, [Constant(1.0)])
    _assert_states_equal(_state(plain[0].model), _state(merged[0].model))


# ---------------------------------------------------------------------------------------------
# oracle 7: sync


def _system(mode: str) -> tuple[list[Expert], EmaMix]:
    experts = _experts()
    merge = EmaMix(mix_weights=_beta_weights(), epochs=EPOCHS, sync_mode=mode)
    merge.setup(experts)
    return experts, merge


def _momenta(ex: Expert) -> list[Tensor]:
    return [ex.optimizer.state[p]["momentum_buffer"].clone() for p in ex.model.parameters()]


def test_oracle7_after_sync_iteration_experts_equal_g() -> None:
    (sync_x, sync_m), (off_x, off_m) = _system("every_iteration"), _system("off")
    assert sync_m.sync_start == 4 and sync_m.sync_interval == 1
    for experts, merge in ((sync_x, sync_m), (off_x, off_m)):
        _run(experts, merge, range(1, 4))  # epochs 1-3: no sync yet
    g = _state(sync_m.global_model())
    assert not torch.equal(sync_x[0].model[0].weight, g["0.weight"])
    params_before = [list(ex.model.parameters()) for ex in sync_x]
    for experts in (sync_x, off_x):
        _train_batch(experts, 4, 0)
    momenta_before = [_momenta(ex) for ex in sync_x]
    sync_m.after_step(sync_x, 4, 0, N_ITERS)
    off_m.after_step(off_x, 4, 0, N_ITERS)

    g = _state(sync_m.global_model())
    _assert_states_equal(g, _state(off_m.global_model()))
    assert g["1.num_batches_tracked"].item() == 10
    for k, ex in enumerate(sync_x):
        _assert_states_equal(_state(ex.model), g)  # params, running stats, num_batches_tracked
        for before, after in zip(momenta_before[k], _momenta(ex), strict=True):
            assert torch.equal(before, after)
        _assert_states_equal(_state(sync_m.ema_model(k)), _state(off_m.ema_model(k)))
        # in place: the optimizer still holds the model's own parameter objects
        assert all(
            a is b
            for a, b in zip(params_before[k], ex.optimizer.param_groups[0]["params"], strict=True)
        )
    assert not torch.equal(off_x[0].model[0].weight, g["0.weight"])


def test_once_per_epoch_syncs_after_the_epoch_only() -> None:
    experts, merge = _system("once_per_epoch")
    _run(experts, merge, range(1, 4))
    for i in range(N_ITERS):
        _train_batch(experts, 4, i)
        merge.after_step(experts, 4, i, N_ITERS)
    assert not torch.equal(experts[0].model[0].weight, merge.global_model()[0].weight)
    merge.after_epoch(experts, 4)
    for ex in experts:
        _assert_states_equal(_state(ex.model), _state(merge.global_model()))


# ---------------------------------------------------------------------------------------------
# distributed packing, simulated with two threads and a fake all-reduce


class _FakeMixGroup:
    """SUM all-reduce across ``n`` threads, summing in rank order."""

    def __init__(self, n: int) -> None:
        self.barrier = threading.Barrier(n)
        self.slots: list[Tensor | None] = [None] * n
        self.calls = [0] * n

    def all_reduce_for(self, rank: int) -> Callable[[Tensor], None]:
        def all_reduce(flat: Tensor) -> None:
            self.calls[rank] += 1
            self.slots[rank] = flat.clone()
            self.barrier.wait()
            total = self.slots[0].clone()
            for other in self.slots[1:]:
                total += other
            self.barrier.wait()
            flat.copy_(total)

        return all_reduce


def test_distributed_packing_matches_sequential() -> None:
    seq_x, seq_m = _system("every_iteration")
    group = _FakeMixGroup(2)
    ranks = []
    for rank in range(2):
        ex = _experts()[rank]
        m = EmaMix(
            mix_weights=_beta_weights(),
            epochs=EPOCHS,
            local_experts=[rank],
            n_experts=2,
            all_reduce=group.all_reduce_for(rank),
        )
        m.setup([ex])
        ranks.append(([ex], m))
    x0 = _batch(1, 0)[0]
    for e in range(1, EPOCHS + 1):
        for i in range(N_ITERS):
            _train_batch(seq_x, e, i)
            seq_m.after_step(seq_x, e, i, N_ITERS)
            for experts, _ in ranks:
                _train_batch(experts, e, i)
            threads = [
                threading.Thread(target=m.after_step, args=(ex, e, i, N_ITERS)) for ex, m in ranks
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    # per step and rank: one flat all-reduce of the mix, one of the anchor's integer buffers
    assert group.calls == [2 * EPOCHS * N_ITERS] * 2
    g_seq = _state(seq_m.global_model())
    assert g_seq.keys() == _state(ranks[0][1].global_model()).keys()
    for experts, m in ranks:
        g = _state(m.global_model())
        for k in g_seq:
            torch.testing.assert_close(g[k], g_seq[k], rtol=1e-6, atol=1e-7)
        # sync happened locally: the rank's expert equals its G (epoch 6 is a sync epoch)
        _assert_states_equal(_state(experts[0].model), g)
    with torch.no_grad():
        assert torch.allclose(ranks[0][1].global_model()(x0), seq_m.global_model()(x0), atol=1e-6)

    # integer buffers of G come from the anchor's rank even when another expert's differ
    with torch.no_grad():
        for buf in ranks[1][0][0].model.buffers():
            if not buf.is_floating_point():
                buf.add_(7)
    threads = [
        threading.Thread(target=m.after_step, args=(ex, EPOCHS, 0, N_ITERS)) for ex, m in ranks
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    anchor_ints = {
        k: v for k, v in _state(ranks[0][1].global_model()).items() if not v.is_floating_point()
    }
    assert anchor_ints
    for k, v in anchor_ints.items():
        assert torch.equal(_state(ranks[1][1].global_model())[k], v), k
        assert torch.equal(v, _state(ranks[0][0][0].model)[k]), k  # anchor expert (synced)


def test_local_experts_without_all_reduce_rejected() -> None:
    with pytest.raises(ConfigError, match="all_reduce"):
        EmaMix(mix_weights=_beta_weights(), epochs=EPOCHS, local_experts=[1])


# ---------------------------------------------------------------------------------------------
# checkpoints


def _checkpoint(experts: list[Expert], merge: EmaMix) -> dict:
    buf = io.BytesIO()
    torch.save(
        {
            "models": [ex.model.state_dict() for ex in experts],
            "optims": [ex.optimizer.state_dict() for ex in experts],
            "merge": merge.state_dict(),
        },
        buf,
    )
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_state_dict_round_trip_resumes_bitwise() -> None:
    full_x, full_m = _system("every_iteration")
    _run(full_x, full_m, range(1, EPOCHS + 1))

    part_x, part_m = _system("every_iteration")
    _run(part_x, part_m, range(1, 5))  # through the first sync epoch
    ckpt = _checkpoint(part_x, part_m)
    sd = ckpt["merge"]
    assert sd["s"] == 4 * N_ITERS
    assert {"ema.0.0.weight", "ema.1.1.running_var", "global.1.num_batches_tracked"} <= set(sd)
    assert not any(".module." in k or k.startswith("module.") for k in sd)

    new_x = _experts(seed=123)  # different init: everything must come from the checkpoint
    for ex, ms, os in zip(new_x, ckpt["models"], ckpt["optims"], strict=True):
        ex.model.load_state_dict(ms)
        ex.optimizer.load_state_dict(os)
    new_m = EmaMix(mix_weights=_beta_weights(), epochs=EPOCHS)
    new_m.setup(new_x)
    new_m.load_state_dict(sd)
    assert not new_m.global_model().training
    _run(new_x, new_m, range(5, EPOCHS + 1))

    assert new_m.s == full_m.s == EPOCHS * N_ITERS
    _assert_states_equal(_state(new_m.global_model()), _state(full_m.global_model()))
    for k in range(2):
        _assert_states_equal(_state(new_m.ema_model(k)), _state(full_m.ema_model(k)))
        _assert_states_equal(_state(new_x[k].model), _state(full_x[k].model))


def test_load_state_dict_strips_module_and_rejects_mismatch() -> None:
    experts, merge = _system("off")
    _run(experts, merge, range(1, 2))
    sd = {k: v.clone() if isinstance(v, Tensor) else v for k, v in merge.state_dict().items()}
    prefixed = {}
    for k, v in sd.items():
        if k.startswith("ema."):
            head, idx, rest = k.split(".", 2)
            k = f"{head}.{idx}.module.{rest}"
        elif k.startswith("global."):
            k = "global.module." + k.removeprefix("global.")
        prefixed[k] = v
    _, other = _system("off")
    other.load_state_dict(prefixed)
    _assert_states_equal(_state(other.global_model()), _state(merge.global_model()))
    assert other.s == merge.s

    broken = dict(sd)
    del broken["global.0.weight"]
    with pytest.raises(CheckpointError, match="missing"):
        other.load_state_dict(broken)
    wrong = dict(sd)
    wrong["global.0.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointError, match="shape"):
        other.load_state_dict(wrong)
