"""Weight EMA, BatchNorm recomputation, snapshot ensembles and TVD against brute-force definitions.

The EMA is checked against ``ema_t = beta*ema_{t-1} + (1-beta)*w_t`` (and its bias-corrected sum)
written out in float64; BatchNorm statistics against the mean/variance of the inputs the layer
actually received during the pass (captured with a hook); TVD against hand-computed values and its
"largest difference over sets of classes" characterization.
"""

from __future__ import annotations

import copy
import doctest
import io
import itertools

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from decaylab.diagnostics import ema as ema_module
from decaylab.diagnostics.base import Context
from decaylab.diagnostics.ema import (
    EMADistance,
    SnapshotEnsemble,
    WeightEMA,
    ensemble_ema_tvd,
    ensemble_predict,
    recompute_batchnorm,
    snapshot,
    total_variation_distance,
)

TOL = dict(rtol=1e-12, atol=1e-14)


def small_model(dtype=torch.float64, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 4)).to(dtype)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 3, generator=g, dtype=next(model.parameters()).dtype)
    optimizer.zero_grad()
    model(x).square().mean().backward()
    optimizer.step()


def randomize_(model: nn.Module, seed: int) -> list[torch.Tensor]:
    """Set every parameter to fresh random values; return them (the w_t of a brute-force check)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return [p.detach().clone() for p in model.parameters()]


def test_doctests():
    result = doctest.testmod(ema_module)
    assert result.failed == 0 and result.attempted > 0


# --------------------------------------------------------------------------- WeightEMA


@pytest.mark.parametrize("bias_correction", [False, True])
@pytest.mark.parametrize("every", [1, 3])
def test_ema_matches_brute_force(bias_correction, every):
    model = small_model()
    beta = 0.8
    w0 = [p.detach().clone() for p in model.parameters()]
    ema = WeightEMA(model, beta, bias_correction=bias_correction, every=every)
    seen = []  # weights at the steps where an EMA update applies
    for step in range(1, 10):
        w = randomize_(model, seed=step)
        applied = ema.update()
        assert applied == (step % every == 0)
        if applied:
            seen.append(w)
    t = len(seen)
    assert ema.num_updates == t == 9 // every and ema.num_calls == 9
    for i in range(len(w0)):
        if bias_correction:  # sum_s beta^(t-s) (1-beta) w_s / (1 - beta^t): w0 gets no weight
            expected = sum(beta ** (t - s) * (1 - beta) * seen[s - 1][i] for s in range(1, t + 1)) / (1 - beta**t)
        else:  # the recursion from ema_0 = w_0
            expected = w0[i].clone()
            for w in seen:
                expected = beta * expected + (1 - beta) * w[i]
        assert_close(ema.params[i], expected, **TOL)


def test_bias_correction_first_update_copies():
    model = small_model()
    ema = WeightEMA(model, 0.999, bias_correction=True)
    w1 = randomize_(model, seed=1)
    ema.update()
    for a, w in zip(ema.params, w1, strict=True):
        assert torch.equal(a, w)


def test_matches_torch_averaged_model():
    """AveragedModel's first update copies; a WeightEMA created at that point then agrees with it."""
    model = small_model()
    averaged = torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.9)
    )
    randomize_(model, seed=1)
    averaged.update_parameters(model)
    ema = WeightEMA(model, 0.9)
    for step in range(2, 7):
        randomize_(model, seed=step)
        averaged.update_parameters(model)
        ema.update()
    for a, b in zip(ema.params, averaged.module.parameters(), strict=True):
        assert_close(a, b.detach(), **TOL)


def test_stacked_parameters_equal_per_model_ema():
    k, beta = 3, 0.7
    stacked = nn.ParameterDict({"w": nn.Parameter(torch.zeros(k, 4, 2, dtype=torch.float64)),
                                "b": nn.Parameter(torch.zeros(k, 4, dtype=torch.float64))})
    singles = [nn.ParameterDict({"w": nn.Parameter(torch.zeros(4, 2, dtype=torch.float64)),
                                 "b": nn.Parameter(torch.zeros(4, dtype=torch.float64))}) for _ in range(k)]
    randomize_(stacked, seed=0)
    for i, single in enumerate(singles):
        with torch.no_grad():
            for name in ("w", "b"):
                single[name].copy_(stacked[name][i])
    ema_stacked = WeightEMA(stacked, beta, bias_correction=True)
    ema_singles = [WeightEMA(s, beta, bias_correction=True) for s in singles]
    for step in range(1, 6):
        randomize_(stacked, seed=step)
        ema_stacked.update()
        for i, (single, e) in enumerate(zip(singles, ema_singles, strict=True)):
            with torch.no_grad():
                for name in ("w", "b"):
                    single[name].copy_(stacked[name][i])
            e.update()
    stacked_avg = dict(zip(ema_stacked.param_names, ema_stacked.params, strict=True))
    for i, e in enumerate(ema_singles):
        for name, avg in zip(e.param_names, e.params, strict=True):
            assert_close(stacked_avg[name][i], avg, **TOL)


def test_attach_updates_once_per_step_and_detach():
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    beta = 0.5
    ema = WeightEMA(model, beta)
    expected = [p.detach().clone() for p in model.parameters()]
    handle = ema.attach(optimizer)
    with pytest.raises(RuntimeError, match="already attached"):
        ema.attach(optimizer)
    for step in range(3):
        train_step(model, optimizer, seed=step)
        expected = [beta * e + (1 - beta) * p.detach() for e, p in zip(expected, model.parameters(), strict=True)]
    assert ema.num_updates == 3 and ema.num_calls == 3
    for a, e in zip(ema.params, expected, strict=True):
        assert_close(a, e, **TOL)
    ema.detach()
    frozen = [a.clone() for a in ema.params]
    train_step(model, optimizer, seed=9)
    assert ema.num_calls == 3
    assert all(torch.equal(a, f) for a, f in zip(ema.params, frozen, strict=True))
    assert handle is not None
    ema.attach(optimizer)  # can attach again after detach
    train_step(model, optimizer, seed=10)
    assert ema.num_updates == 4


def test_state_dict_round_trip_continues_identically():
    def make():
        model = small_model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        ema = WeightEMA(model, 0.9, bias_correction=True, every=2, average_buffers=True)
        ema.attach(optimizer)
        return model, optimizer, ema

    model, optimizer, ema = make()
    for step in range(5):  # odd: the next update() must know it is not due
        train_step(model, optimizer, seed=step)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": optimizer.state_dict(), "ema": ema.state_dict()}, buffer)
    for step in range(5, 11):
        train_step(model, optimizer, seed=step)

    model2, optimizer2, ema2 = make()
    randomize_(model2, seed=123)  # the resumed EMA must not depend on the fresh model's weights
    ema2.beta = 0.1
    buffer.seek(0)
    saved = torch.load(buffer)
    model2.load_state_dict(saved["model"])
    optimizer2.load_state_dict(saved["opt"])
    ema2.load_state_dict(saved["ema"])
    assert ema2.beta == 0.9 and ema2.num_calls == 5 and ema2.num_updates == 2
    for step in range(5, 11):
        train_step(model2, optimizer2, seed=step)
    assert ema2.num_updates == ema.num_updates == 5
    for a, b in zip(ema.params + ema.buffers, ema2.params + ema2.buffers, strict=True):
        assert torch.equal(a, b)


def test_load_state_dict_rejects_other_model():
    ema = WeightEMA(small_model(), 0.9)
    other = WeightEMA(nn.Linear(3, 5).double(), 0.9)
    with pytest.raises(ValueError, match="names"):
        ema.load_state_dict(other.state_dict())


def test_buffers_copied_by_default_or_averaged():
    beta = 0.5
    model = small_model()
    bn = model[1]
    copied = WeightEMA(model, beta)
    averaged = WeightEMA(model, beta, average_buffers=True)
    start_mean = bn.running_mean.clone()
    with torch.no_grad():
        bn.running_mean.fill_(2.0)
        bn.num_batches_tracked.fill_(7)
    copied.update()
    averaged.update()
    names = copied.buffer_names
    c = dict(zip(names, copied.buffers, strict=True))
    a = dict(zip(names, averaged.buffers, strict=True))
    assert torch.equal(c["1.running_mean"], bn.running_mean)
    assert_close(a["1.running_mean"], beta * start_mean + (1 - beta) * 2.0, **TOL)
    assert int(c["1.num_batches_tracked"]) == int(a["1.num_batches_tracked"]) == 7  # integers always copied


def test_ema_model_and_copy_to():
    model = small_model()
    model.eval()
    ema = WeightEMA(model, 0.5)
    w0 = [p.detach().clone() for p in model.parameters()]
    w1 = randomize_(model, seed=1)
    ema.update()
    averaged = ema.ema_model()
    assert averaged is not model and not averaged.training
    for p, a, x0, x1 in zip(averaged.parameters(), ema.params, w0, w1, strict=True):
        assert torch.equal(p, a)
        assert_close(p.detach(), 0.5 * x0 + 0.5 * x1, **TOL)
    for p, x1 in zip(model.parameters(), w1, strict=True):  # the live model is untouched
        assert torch.equal(p, x1)
    target = small_model(seed=5)
    assert ema.copy_to(target) is target
    for p, a in zip(target.parameters(), ema.params, strict=True):
        assert torch.equal(p, a)
    with pytest.raises(ValueError, match="names"):
        ema.copy_to(nn.Linear(3, 5))


def test_tied_parameters_averaged_once():
    emb = nn.Embedding(6, 4)
    head = nn.Linear(4, 6, bias=False)
    head.weight = emb.weight
    model = nn.Sequential(emb, head).double()
    ema = WeightEMA(model, 0.9)
    assert ema.param_names == ["0.weight"]
    averaged = ema.ema_model()
    assert averaged[0].weight is averaged[1].weight


def test_float32_average_of_bfloat16_model():
    """A bf16 average cannot move by (1-beta)*step below its ulp; a float32 one follows the formula."""
    beta = 0.999
    model = nn.Linear(4, 4, bias=False).to(torch.bfloat16)
    with torch.no_grad():
        model.weight.fill_(1.0)
    in_bf16 = WeightEMA(model, beta)
    in_fp32 = WeightEMA(model, beta, dtype=torch.float32)
    assert in_fp32.params[0].dtype == torch.float32
    expected = torch.ones(4, 4, dtype=torch.float64)
    for step in range(20):
        with torch.no_grad():
            model.weight.fill_(1.5 if step % 2 else 1.25)
        in_bf16.update()
        in_fp32.update()
        expected = beta * expected + (1 - beta) * model.weight.detach().double()
    assert torch.equal(in_bf16.params[0], torch.ones(4, 4, dtype=torch.bfloat16))  # stuck at the start value
    assert_close(in_fp32.params[0].double(), expected, rtol=1e-6, atol=0)
    assert in_fp32.ema_model().weight.dtype == torch.bfloat16


@pytest.mark.parametrize("kwargs", [dict(beta=1.0), dict(beta=-0.1), dict(every=0), dict(every=1.5)])
def test_invalid_settings(kwargs):
    with pytest.raises(ValueError):
        WeightEMA(small_model(), **kwargs)


# --------------------------------------------------------------------------- BatchNorm recomputation


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.bn2d = nn.BatchNorm2d(3, momentum=0.3)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5), nn.BatchNorm1d(5), nn.ReLU(),
                                  nn.Dropout(0.5), nn.Linear(5, 2))

    def forward(self, x):
        return self.head(torch.relu(self.bn2d(self.conv(x))))


def bn_loader(seed=0):
    """Unequal batch sizes and shifted batch means (so the per-batch average would be wrong)."""
    g = torch.Generator().manual_seed(seed)
    sizes, shifts = (7, 3, 10, 5), (0.0, 2.0, -1.0, 0.5)
    return [(torch.randn(n, 2, 4, 4, generator=g, dtype=torch.float64) + s, torch.zeros(n))
            for n, s in zip(sizes, shifts, strict=True)]


def captured_inputs(model, bns):
    """Register hooks that record each BN layer's inputs; returns (store, handles)."""
    store = {m: [] for m in bns}
    handles = [m.register_forward_pre_hook(lambda mod, args: store[mod].append(args[0].detach().clone()))
               for m in bns]
    return store, handles


def test_recompute_batchnorm_equals_exact_input_statistics():
    torch.manual_seed(0)
    model = BNNet().double()
    model.eval()
    model.head.train()  # mixed modes must come back as they were
    bns = [model.bn2d, model.head[2]]
    for bn in bns:  # stale statistics that must be discarded
        bn.running_mean.fill_(9.0)
        bn.running_var.fill_(9.0)
    loader = bn_loader()
    store, handles = captured_inputs(model, bns)
    recompute_batchnorm(model, loader)
    for h in handles:
        h.remove()
    assert not model.training and not model.conv.training and model.head.training and model.head[4].training
    assert model.bn2d.momentum == 0.3 and model.head[2].momentum == 0.1
    assert all(len(bn._forward_pre_hooks) == 0 for bn in bns)
    for bn in bns:
        x = torch.cat(store[bn])  # what the layer saw, in train mode, over the whole pass
        x = x.transpose(0, 1).reshape(x.shape[1], -1)
        assert_close(bn.running_mean, x.mean(1), **TOL)
        assert_close(bn.running_var, x.var(1, unbiased=True), **TOL)
        assert int(bn.num_batches_tracked) == len(loader)


def test_recompute_batchnorm_cumulative_matches_update_bn_and_underestimates_variance():
    torch.manual_seed(0)
    model = BNNet().double()
    model.head[4].p = 0.0  # deterministic forward: compare two passes
    reference = copy.deepcopy(model)
    model.eval()
    recompute_batchnorm(model, bn_loader(), exact=False)
    assert not model.training and not model.head.training
    torch.optim.swa_utils.update_bn(bn_loader(), reference)
    assert_close(model.bn2d.running_var, reference.bn2d.running_var, **TOL)
    assert_close(model.bn2d.running_mean, reference.bn2d.running_mean, **TOL)
    exact = copy.deepcopy(model)
    recompute_batchnorm(exact, bn_loader())
    assert (model.bn2d.running_var < exact.bn2d.running_var).all()  # misses the spread of batch means


def test_recompute_batchnorm_edge_cases():
    recompute_batchnorm(nn.Linear(2, 2), [torch.randn(3, 2)])  # no BatchNorm: nothing to do
    model = BNNet().double()
    with pytest.raises(ValueError, match="no batches"):
        recompute_batchnorm(model, [])
    assert model.training
    with pytest.raises(TypeError):
        recompute_batchnorm(model, [{"x": torch.randn(2, 2, 4, 4)}])
    assert all(len(m._forward_pre_hooks) == 0 for m in model.modules())


# --------------------------------------------------------------------------- TVD


def random_probs(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(3 * torch.randn(shape, generator=g, dtype=torch.float64), -1)


def test_tvd_hand_computed():
    p = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    q = torch.tensor([[0.0, 1.0, 0.0], [0.25, 0.25, 0.5], [0.2, 0.3, 0.5]])
    per_point = total_variation_distance(p, q, reduction="none")
    assert_close(per_point, torch.tensor([1.0, 0.5, 0.0]))
    assert_close(total_variation_distance(p, q), torch.tensor(0.5))
    assert_close(ensemble_ema_tvd(p, q), torch.tensor(0.5))


def test_tvd_properties():
    p, q = random_probs((50, 4), 0), random_probs((50, 4), 1)
    assert total_variation_distance(p, p) == 0
    assert_close(total_variation_distance(p, q), total_variation_distance(q, p), **TOL)
    per_point = total_variation_distance(p, q, reduction="none")
    assert ((per_point >= 0) & (per_point <= 1)).all()
    # TVD is the largest difference in probability over sets of classes
    subsets = [list(s) for r in range(1, 4) for s in itertools.combinations(range(4), r)]
    brute = torch.stack([(p[:, s].sum(1) - q[:, s].sum(1)).abs() for s in subsets]).amax(0)
    assert_close(per_point, brute, **TOL)
    stacked = total_variation_distance(p.reshape(5, 10, 4), q.reshape(5, 10, 4), reduction="none")
    assert stacked.shape == (5, 10)


def test_tvd_rejects_bad_input():
    p = random_probs((3, 4), 0)
    with pytest.raises(ValueError, match="shape"):
        total_variation_distance(p, p[:, :3])
    with pytest.raises(ValueError, match="logits"):
        total_variation_distance(torch.randn(3, 4), p)
    with pytest.raises(ValueError, match="reduction"):
        total_variation_distance(p, p, reduction="sum")


# --------------------------------------------------------------------------- snapshot ensembles


def test_ensemble_predict_equals_manual_softmax_average():
    model = small_model()
    states, modules = [], []
    for seed in range(3):
        randomize_(model, seed)
        states.append(snapshot(model))
        modules.append(copy.deepcopy(model))
    live_before = copy.deepcopy(model.state_dict())
    x = torch.randn(6, 3, dtype=torch.float64)
    manual = torch.zeros(6, 4, dtype=torch.float64)
    for state in states:
        m = small_model(seed=99)
        m.load_state_dict(state)
        m.eval()
        with torch.no_grad():
            manual += torch.softmax(m(x), -1) / len(states)
    model.train()
    assert_close(ensemble_predict(states, model, x), manual, **TOL)
    assert_close(ensemble_predict(modules, None, x), manual, **TOL)
    assert_close(ensemble_predict([modules[0], states[1], states[2]], model, x), manual, **TOL)
    assert model.training and all(m.training for m in modules)
    for k, v in model.state_dict().items():  # base model untouched
        assert torch.equal(v, live_before[k])
    with pytest.raises(ValueError):
        ensemble_predict([], model, x)
    with pytest.raises(ValueError, match="base_model"):
        ensemble_predict(states, None, x)


def test_snapshot_ensemble_collects_at_steps():
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ensemble = SnapshotEnsemble(every=3, at=[1])
    ensemble.attach(optimizer, model)
    expected = {}
    for step in range(1, 8):
        train_step(model, optimizer, seed=step)
        expected[step] = copy.deepcopy(model.state_dict())
    assert ensemble.collected_steps == [1, 3, 6] and len(ensemble) == 3
    for step, state in zip(ensemble.collected_steps, ensemble.snapshots, strict=True):
        for k, v in state.items():
            assert torch.equal(v, expected[step][k])
    ensemble.detach()
    train_step(model, optimizer, seed=8)
    train_step(model, optimizer, seed=9)
    assert ensemble.collected_steps == [1, 3, 6]
    x = torch.randn(5, 3, dtype=torch.float64)
    assert_close(ensemble.predict(model, x), ensemble_predict(ensemble.snapshots, model, x), **TOL)
    restored = SnapshotEnsemble(every=3)
    restored.load_state_dict(ensemble.state_dict())
    assert restored.collected_steps == [1, 3, 6] and restored.num_steps == 7
    assert not SnapshotEnsemble(at=[4]).maybe_collect(model, 3)
    with pytest.raises(ValueError):
        SnapshotEnsemble()


# --------------------------------------------------------------------------- EMADistance


def test_ema_distance_relative_distance_and_tvd():
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    ema = WeightEMA(model, 0.5)
    ema.attach(optimizer)
    for step in range(4):
        train_step(model, optimizer, seed=step)
    x = torch.randn(10, 3, dtype=torch.float64)
    loader = [torch.randn(8, 3, dtype=torch.float64) for _ in range(3)]
    before = copy.deepcopy(model.state_dict())
    model.train()
    ctx = Context(model=model, optimizer=optimizer, step=4)

    cheap = EMADistance(ema, interval=2)
    assert cheap.cheap and cheap.due(4) and not cheap.due(3)
    out = cheap.measure(ctx)
    assert set(out) == {"ema_rel_distance"}
    w = torch.cat([p.detach().flatten() for p in model.parameters()])
    a = torch.cat([t.flatten() for t in ema.params])
    assert out["ema_rel_distance"] == pytest.approx(float((w - a).norm() / w.norm()), rel=1e-12)

    full = EMADistance(ema, inputs=x, bn_loader=loader)
    assert not full.cheap
    out = full.measure(ctx)
    averaged = ema.ema_model()
    recompute_batchnorm(averaged, loader)
    expected = total_variation_distance(ensemble_predict([model], None, x), ensemble_predict([averaged], None, x))
    assert out["ema_tvd"] == pytest.approx(float(expected), rel=1e-12)
    assert 0 < out["ema_tvd"] <= 1
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


class StackedLinear(nn.Module):
    """K linear classifiers along dim 0: (N, D) -> (K, N, C)."""

    def __init__(self, k, d, c):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(k, c, d, dtype=torch.float64))

    def forward(self, x):
        return torch.einsum("kcd,nd->knc", self.weight, x)


def test_ema_distance_stacked_gives_one_value_per_model():
    torch.manual_seed(0)
    k = 3
    model = StackedLinear(k, 4, 5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    ema = WeightEMA(model, 0.5)
    ema.attach(optimizer)
    x = torch.randn(7, 4, dtype=torch.float64)
    for _ in range(3):
        optimizer.zero_grad()
        model(x).logsumexp(-1).mean().backward()
        optimizer.step()
    out = EMADistance(ema, inputs=x).measure(Context(model=model, optimizer=optimizer, step=3, stacked=k))
    assert out["ema_rel_distance"].shape == (k,) and out["ema_tvd"].shape == (k,)
    for i in range(k):
        w, a = model.weight.detach()[i], ema.params[0][i]
        assert_close(out["ema_rel_distance"][i], (w - a).norm() / w.norm(), **TOL)
        p = torch.softmax(x @ w.T, -1)
        q = torch.softmax(x @ a.T, -1)
        assert_close(out["ema_tvd"][i], total_variation_distance(p, q), **TOL)


def test_ema_distance_rejects_foreign_parameters():
    ema = WeightEMA(small_model(), 0.9)
    other = small_model()
    with pytest.raises(ValueError, match="another model"):
        EMADistance(ema).measure(Context(model=other, optimizer=None, step=1))
