"""Weight instruments (norms, effective lr, angular update, equilibrium, EMA timescale, decay
underflow) and Adam buffer mixing, each against a brute-force computation on tiny models.

References: ``reference/methods.md`` §4 (definitions), Kosson et al. 2024 (rotational
equilibrium), Bjorck et al. (buffer mixing), Wang & Aitchison 2024 (EMA timescale).
"""
from __future__ import annotations

import doctest
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from decaylab.diagnostics import mixing, weights
from decaylab.diagnostics.base import Context, step_hparams
from decaylab.diagnostics.mixing import AdamBufferMixing
from decaylab.diagnostics.monitor import Monitor
from decaylab.diagnostics.weights import (
    AngularUpdate,
    DecayUnderflow,
    EffectiveLR,
    EMATimescale,
    WeightNorm,
    ema_timescale,
    equilibrium_angular_update,
    group_equilibrium,
    per_step_decay,
    rotation_angle,
    rounded_away,
)
from decaylab.optim import SGD, SGDW, Adam, AdamW
from decaylab.schedules import EarlyDecay

pytestmark = pytest.mark.usefixtures("one_thread")


def mlp(dtype=torch.float64, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).to(dtype)


def two_groups(model: nn.Module) -> list[dict]:
    """Weights decayed (group 0), biases not (group 1), with different learning rates."""
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    return [{"params": decay, "lr": 0.05}, {"params": no_decay, "lr": 0.02, "weight_decay": 0.0}]


def train(model: nn.Module, opt, steps: int, seed: int = 1, monitor: Monitor | None = None, loss_scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    for _ in range(steps):
        x = torch.randn(8, 5, generator=gen).to(dtype)
        y = torch.randn(8, 3, generator=gen).to(dtype)
        loss = loss_scale * F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        if monitor is not None:
            monitor.log(loss=loss)
        opt.step()


def last(monitor: Monitor, metric: str, model: int | None = None) -> float:
    return monitor.history(metric, model)[-1][1]


def test_doctests() -> None:
    for module in (weights, mixing):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0, module.__name__


# --------------------------------------------------------------------------- norms


def test_weight_norm_matches_vector_norm_total_group_tensor() -> None:
    model = mlp()
    opt = AdamW(two_groups(model), weight_decay=0.1)
    with Monitor(model, opt, [WeightNorm()]) as mon:
        train(model, opt, 3)
    params = dict(model.named_parameters())
    for name, p in params.items():
        assert last(mon, f"weight_norm/tensor/{name}") == pytest.approx(torch.linalg.vector_norm(p).item(), rel=1e-12)
    flat = lambda ps: torch.cat([p.detach().flatten() for p in ps])
    assert last(mon, "weight_norm/total") == pytest.approx(flat(params.values()).norm().item(), rel=1e-12)
    for gi, group in enumerate(opt.param_groups):
        assert last(mon, f"weight_norm/group_{gi}") == pytest.approx(flat(group["params"]).norm().item(), rel=1e-12)


def test_weight_norm_of_bf16_weights_accumulates_in_fp32() -> None:
    w = nn.Parameter(torch.full((4096,), 1.0 + 2**-7, dtype=torch.bfloat16))
    ctx = Context(None, torch.optim.SGD([w], lr=0.1), step=0)
    value = WeightNorm().measure(ctx)["weight_norm/total"].item()
    assert value == pytest.approx(64 * (1 + 2**-7), rel=1e-6)


# --------------------------------------------------------------------------- effective learning rates


def test_effective_lr_formulas_per_group_and_tensor() -> None:
    model = mlp()
    opt = torch.optim.Adam(two_groups(model), weight_decay=0.0, eps=1e-6)
    with Monitor(model, opt, [EffectiveLR()]) as mon:
        train(model, opt, 4)
    names = {id(p): n for n, p in model.named_parameters()}
    all_terms = []
    for gi, group in enumerate(opt.param_groups):
        lr, eps = group["lr"], group["eps"]
        sq = sum(p.detach().square().sum() for p in group["params"]).item()
        assert last(mon, f"effective_lr/sgd_scale_invariant/group_{gi}") == pytest.approx(lr / sq, rel=1e-12)
        assert last(mon, f"effective_lr/adam_norm/group_{gi}") == pytest.approx(lr / math.sqrt(sq), rel=1e-12)
        terms = torch.cat([(lr / (opt.state[p]["exp_avg_sq"].sqrt() + eps)).flatten() for p in group["params"]])
        all_terms.append(terms)
        assert last(mon, f"effective_lr/adam_mean_inverse_sqrt_v/group_{gi}") == pytest.approx(terms.mean().item())
        for p in group["params"]:
            n = names[id(p)]
            nsq = p.detach().square().sum().item()
            assert last(mon, f"effective_lr/sgd_scale_invariant/tensor/{n}") == pytest.approx(lr / nsq, rel=1e-12)
            assert last(mon, f"effective_lr/adam_norm/tensor/{n}") == pytest.approx(lr / math.sqrt(nsq), rel=1e-12)
            v = opt.state[p]["exp_avg_sq"]
            want = (lr / (v.sqrt() + eps)).mean().item()
            assert last(mon, f"effective_lr/adam_mean_inverse_sqrt_v/tensor/{n}") == pytest.approx(want, rel=1e-12)
    # The "Why WD" code: sum over every entry of lr/(sqrt(v)+eps), divided by the number of entries.
    assert last(mon, "effective_lr/adam_mean_inverse_sqrt_v/total") == pytest.approx(torch.cat(all_terms).mean().item())


def test_effective_lr_without_adam_state_and_kind_validation() -> None:
    model = mlp()
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    with Monitor(model, opt, [EffectiveLR()]) as mon:
        train(model, opt, 1)
    assert not [m for m in mon.metrics if "adam_mean" in m]
    with pytest.raises(ValueError, match="kinds"):
        EffectiveLR(kinds=("adam",))
    with pytest.raises(ValueError, match="not an Adam"):
        Monitor(model, opt, [EffectiveLR(kinds=("adam_mean_inverse_sqrt_v",))])


# --------------------------------------------------------------------------- angular update


def brute_angle(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return math.acos(max(-1.0, min(1.0, (a @ b / (a.norm() * b.norm())).item())))


def test_angular_update_matches_acos_of_cosine() -> None:
    model = mlp()
    opt = SGD(two_groups(model), lr=0.1, momentum=0.9, weight_decay=0.01)
    before: list[dict[str, torch.Tensor]] = []
    with Monitor(model, opt, [AngularUpdate(interval=2)]) as mon:
        for step in range(6):
            before.append({n: p.detach().clone() for n, p in model.named_parameters()})
            train(model, opt, 1, seed=step)
            if step == 3:
                after_4 = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert [s for s, _ in mon.history("angular_update/total")] == [2, 4, 6]
    prev = before[3]  # weights before step 4
    for name, p in after_4.items():
        assert mon.history(f"angular_update/tensor/{name}")[1][1] == pytest.approx(brute_angle(prev[name], p), rel=1e-9)
    cat = lambda d, ns: torch.cat([d[n].flatten() for n in ns])
    names = list(prev)
    assert mon.history("angular_update/total")[1][1] == pytest.approx(
        brute_angle(cat(prev, names), cat(after_4, names)), rel=1e-9)
    weights_ = [n for n in names if n.endswith("weight")]
    assert mon.history("angular_update/group_0")[1][1] == pytest.approx(
        brute_angle(cat(prev, weights_), cat(after_4, weights_)), rel=1e-9)


def test_rotation_angle_is_accurate_for_tiny_angles() -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(1000, generator=gen, dtype=torch.float64)
    u = torch.randn(1000, generator=gen, dtype=torch.float64)
    u = u - (u @ w) / (w @ w) * w  # orthogonal to w
    for theta in (1e-2, 1e-5, 1e-8):
        b = math.cos(theta) * w + math.sin(theta) * w.norm() * u / u.norm()
        d = b - w
        got = rotation_angle(w @ w, w @ d, d @ d).item()
        assert got == pytest.approx(theta, rel=1e-6), theta
    # acos of the cosine cannot resolve 1e-8 in float64; this is why rotation_angle exists
    assert abs(brute_angle(w, math.cos(1e-8) * w + math.sin(1e-8) * w.norm() * u / u.norm()) - 1e-8) > 1e-9


def test_angular_update_of_bf16_weights() -> None:
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(64, 32).to(torch.bfloat16))
    opt = AdamW([w], lr=1e-2, weight_decay=0.1)
    with Monitor(None, opt, [AngularUpdate(per_tensor=False)]) as mon:
        prev = w.detach().clone()
        w.grad = torch.randn(64, 32).to(torch.bfloat16)
        opt.step()
    assert last(mon, "angular_update/total") == pytest.approx(brute_angle(prev.float(), w.float()), rel=1e-4)


def test_angular_update_needs_previous() -> None:
    model = mlp()
    ctx = Context(model, SGD(model.parameters(), lr=0.1), step=1)
    with pytest.raises(ValueError, match="before the step"):
        AngularUpdate().measure(ctx)


# --------------------------------------------------------------------------- rotational equilibrium


def test_equilibrium_formulas() -> None:
    w = [nn.Parameter(torch.ones(3))]
    lr, lam = 1e-2, 0.1
    adamw = math.sqrt(2 * lr * lam * (1 - 0.9) / (1 + 0.9))
    opt = AdamW(w, lr=lr, weight_decay=lam)
    assert group_equilibrium(opt, opt.param_groups[0]) == pytest.approx(adamw)
    opt = torch.optim.AdamW(w, lr=lr, weight_decay=lam)
    assert group_equilibrium(opt, opt.param_groups[0]) == pytest.approx(adamw)
    opt = torch.optim.SGD(w, lr=lr, momentum=0.9, weight_decay=lam)  # L2 through the momentum buffer
    assert group_equilibrium(opt, opt.param_groups[0]) == pytest.approx(math.sqrt(2 * lr * lam / 1.9))
    opt = SGDW(w, lr=lr, momentum=0.9, weight_decay=lam)  # decoupled: the decay skips the buffer
    assert group_equilibrium(opt, opt.param_groups[0]) == pytest.approx(math.sqrt(2 * lr * lam * 0.1 / 1.9))
    # AdamW-paper convention: the per-step decay is (lr/max_lr)·λ, not lr·λ
    opt = AdamW(w, lr=lr, weight_decay=1e-3, decay_scale="schedule")
    opt.param_groups[0]["lr"] = lr / 2
    assert per_step_decay(opt, opt.param_groups[0]) == pytest.approx(0.5 * 1e-3)
    assert group_equilibrium(opt, opt.param_groups[0]) == pytest.approx(equilibrium_angular_update(5e-4, 0.9))
    for no_prediction in (torch.optim.Adam(w, lr=lr, weight_decay=lam), Adam(w, lr=lr, weight_decay=lam),
                          SGD(w, lr=lr, momentum=0.9, nesterov=True, weight_decay=lam),
                          AdamW(w, lr=lr, weight_decay=lam, amsgrad=True)):
        assert group_equilibrium(no_prediction, no_prediction.param_groups[0]) is None


class NormalizedLinear(nn.Module):
    """A linear layer followed by weight normalization: the loss ignores ‖W‖, so ∇L ⊥ W."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.weight = nn.Linear(d_in, d_out, bias=False).weight  # torch's default init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight / self.weight.norm()) * 8.0


@pytest.mark.parametrize(
    "make, steps",
    [
        (lambda p: AdamW(p, lr=1e-2, weight_decay=0.1), 3000),  # d = lr·λ = 1e-3: ~3 relaxation times of ‖w‖²
        (lambda p: SGD(p, lr=1e-2, momentum=0.9, weight_decay=0.1, decay="l2"), 800),  # d = lr·λ/(1−μ) = 1e-2
        (lambda p: SGD(p, lr=1e-1, momentum=0.9, weight_decay=0.1, decay="decoupled"), 800),  # d = 1e-2
    ],
    ids=["adamw", "sgd-momentum-l2", "sgdw-momentum-decoupled"],
)
def test_rotational_equilibrium_is_reached_on_a_scale_invariant_layer(make, steps) -> None:
    """Kosson et al.'s conditions: scale-invariant weights (∇L ⊥ w), random-walk gradients (fresh
    random inputs and labels every step, so batch noise dominates), many coordinates (2048),
    constant lr, and several 1/d steps. The mean measured angle over the last 300 steps is within
    10% of the prediction."""
    torch.manual_seed(0)
    layer = NormalizedLinear(64, 32)
    opt = make(layer.parameters())
    gen = torch.Generator().manual_seed(1)

    def train_steps(n: int) -> None:
        for _ in range(n):
            x = torch.randn(32, 64, generator=gen)
            y = torch.randint(0, 32, (32,), generator=gen)
            loss = F.cross_entropy(layer(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

    train_steps(steps - 300)
    with Monitor(layer, opt, [AngularUpdate(per_tensor=False, per_group=False)]) as mon:  # the last 300 steps
        train_steps(300)
    measured = [v for _, v in mon.history("angular_update/total")]
    assert len(measured) == 300 and mon.history("angular_update/total")[-1][0] == steps
    predicted = last(mon, "angular_update/equilibrium/group_0")
    assert sum(measured) / len(measured) == pytest.approx(predicted, rel=0.10)


# --------------------------------------------------------------------------- EMA timescale


def test_ema_timescale_function() -> None:
    assert ema_timescale(1e-3, 0.1) == (pytest.approx(1e4), None)
    tau = ema_timescale(1e-3, 0.1, batch_size=128, n_train=50_000)
    assert tau.iterations == pytest.approx(1e4) and tau.epochs == pytest.approx(1e4 * 128 / 50_000)
    assert ema_timescale(1e-3, 0.0).iterations == math.inf
    k = ema_timescale(torch.tensor([1e-3, 1e-2]), torch.tensor([0.1, 0.0]))
    assert k.iterations.tolist() == [pytest.approx(1e4), math.inf]
    with pytest.raises(ValueError, match="batch_size and n_train"):
        ema_timescale(1e-3, 0.1, batch_size=128)


def test_ema_timescale_instrument_follows_schedules_and_conventions() -> None:
    model = mlp()
    groups = two_groups(model)
    groups[0]["weight_decay"] = EarlyDecay(0.1, until=2)
    opt = AdamW(groups, lr=0.05)
    with Monitor(model, opt, [EMATimescale(batch_size=8, n_train=80)]) as mon:
        train(model, opt, 3)
    lr = opt.param_groups[0]["lr"]
    assert [v for _, v in mon.history("ema_timescale/iterations/group_0")] == [
        pytest.approx(1 / (lr * 0.1)), pytest.approx(1 / (lr * 0.1)), math.inf]
    assert mon.history("ema_timescale/epochs/group_0")[0][1] == pytest.approx(1 / (lr * 0.1) * 8 / 80)
    assert last(mon, "ema_timescale/iterations/group_1") == math.inf  # no decay on biases

    model = mlp()
    opt = AdamW(model.parameters(), lr=0.05, weight_decay=1e-3, decay_scale="schedule", max_lr=0.1)
    with Monitor(model, opt, [EMATimescale()]) as mon:
        train(model, opt, 1)
    assert last(mon, "ema_timescale/iterations/group_0") == pytest.approx(1 / (0.5 * 1e-3))
    with pytest.raises(ValueError, match="L2"):
        Monitor(model, Adam(model.parameters(), weight_decay=0.1), [EMATimescale()])


# --------------------------------------------------------------------------- decay underflow


def brute_rounded_away(w: torch.Tensor, decay: float) -> list[bool]:
    """|decay·w| < ulp(w)/2 element by element, ulp the spacing below |w| (math.frexp, torch.finfo)."""
    info = torch.finfo(w.dtype)
    p = round(1 - math.log2(info.eps))  # significand bits
    e_tiny = math.frexp(info.tiny)[1]
    out = []
    for v in w.double().flatten().tolist():
        if v == 0:
            out.append(False)
            continue
        m, e = math.frexp(v)
        spacing = 2.0 ** (max(e, e_tiny) - p)
        if abs(m) == 0.5 and e > e_tiny:  # an exact power of two: the spacing below is half
            spacing /= 2
        out.append(abs(decay * v) < spacing / 2)
    return out


def sample_weights(dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(2000, generator=gen) * torch.logspace(-3, 3, 2000)
    w[:5] = 0.0
    w[5:10] = torch.finfo(dtype).tiny * torch.tensor([0.5, 0.25, 2**-6, 1.0, 3.0])  # subnormals, the smallest normal
    return w.to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("regime", ["all", "none", "mixed", "edge"])
def test_rounded_away_matches_brute_force(dtype, regime) -> None:
    p = round(1 - math.log2(torch.finfo(dtype).eps))
    decay = {"all": 2.0 ** -(p + 1) * 0.9, "none": 2.0**-p, "mixed": 2.0 ** -(p + 0.5), "edge": 2.0 ** -(p + 1)}[regime]
    w = sample_weights(dtype)
    want = brute_rounded_away(w, decay)
    assert rounded_away(w, decay).tolist() == want
    opt = SGDW([nn.Parameter(w.clone())], lr=decay, weight_decay=1.0, low_precision="none")
    instrument = DecayUnderflow()
    got = instrument.measure(Context(None, opt, step=1))["decay_underflow/rounded_fraction/total"].item()
    assert got == pytest.approx(sum(want) / len(want), abs=1e-12)


def test_rounded_away_means_the_decay_does_not_change_the_weight() -> None:
    w = sample_weights(torch.bfloat16)[10:]  # normal numbers
    for decay in (1e-4, 3e-3, 1e-2):
        decayed = (w.float() * (1 - decay)).to(torch.bfloat16)
        mask = rounded_away(w, decay)
        assert torch.equal(decayed[mask], w[mask])  # counted as rounded away: unchanged
        assert not (decayed[~mask] == w[~mask]).any()  # the others do change


@pytest.mark.filterwarnings("ignore::decaylab.optim.DecayUnderflowWarning")  # what this test measures
def test_underflow_bf16_vs_fp32_and_compensation() -> None:
    gen = torch.Generator().manual_seed(0)
    signs = torch.randint(0, 2, (4096,), generator=gen) * 2 - 1
    values = torch.empty(4096).uniform_(0.5, 2.0, generator=gen) * signs  # |w| ≈ 1

    def fractions(opt):
        opt.param_groups[0]["params"][0].grad = torch.zeros_like(opt.param_groups[0]["params"][0])
        with Monitor(None, opt, [DecayUnderflow()]) as mon:
            opt.step()
        return last(mon, "decay_underflow/rounded_fraction/total"), last(mon, "decay_underflow/lost_fraction/total")

    bf16 = lambda: [nn.Parameter(values.to(torch.bfloat16))]
    assert fractions(AdamW(bf16(), lr=1e-3, weight_decay=0.1, low_precision="none")) == (1.0, 1.0)  # lr·λ = 1e-4
    assert fractions(torch.optim.AdamW(bf16(), lr=1e-3, weight_decay=0.1)) == (1.0, 1.0)
    assert fractions(AdamW(bf16(), lr=1e-3, weight_decay=0.1, low_precision="kahan")) == (1.0, 0.0)
    assert fractions(AdamW(bf16(), lr=1e-3, weight_decay=0.1, low_precision="stochastic")) == (1.0, 0.0)
    assert fractions(AdamW([nn.Parameter(values.clone())], lr=1e-3, weight_decay=0.1)) == (0.0, 0.0)  # fp32
    # decay_scale="schedule": s_t·λ = (lr/max_lr)·λ = 0.5 · 1e-3 in bf16 → rounds away too
    opt = AdamW(bf16(), lr=1e-3, weight_decay=1e-3, decay_scale="schedule", max_lr=2e-3, low_precision="none")
    assert fractions(opt) == (1.0, 1.0)


def test_underflow_per_group_skips_l2_and_zero_decay() -> None:
    gen = torch.Generator().manual_seed(0)
    a = nn.Parameter(torch.randn(100, generator=gen).to(torch.bfloat16))
    b = nn.Parameter(torch.randn(300, generator=gen))
    c = nn.Parameter(torch.randn(50, generator=gen))
    opt = AdamW([{"params": [a]}, {"params": [b]}, {"params": [c], "weight_decay": 0.0}], lr=1e-3, weight_decay=0.1,
                low_precision="none")
    out = DecayUnderflow().measure(Context(None, opt, step=1))
    assert sorted(out) == sorted(f"decay_underflow/{k}/{s}" for k in ("rounded_fraction", "lost_fraction")
                                 for s in ("group_0", "group_1", "total"))
    frac_a = sum(brute_rounded_away(a.detach(), 1e-4)) / 100
    assert out["decay_underflow/rounded_fraction/group_0"].item() == pytest.approx(frac_a)
    assert out["decay_underflow/rounded_fraction/total"].item() == pytest.approx(frac_a * 100 / 400)
    opt = torch.optim.Adam([a], lr=1e-3, weight_decay=0.1)  # L2: the decay enters the gradient
    assert DecayUnderflow().measure(Context(None, opt, step=1)) == {}


def test_underflow_stacked_per_model() -> None:
    w = sample_weights(torch.bfloat16)[:1500].reshape(3, 500)
    lr = torch.tensor([1e-3, 2.0**-8.5, 1e-1])  # rounded-away regimes: all, mixed, none (with λ = 1)
    opt = SGDW([nn.Parameter(w.clone())], lr=lr, weight_decay=1.0, low_precision="none")
    out = DecayUnderflow().measure(Context(None, opt, step=1, stacked=3))
    got = out["decay_underflow/rounded_fraction/total"]
    assert got.shape == (3,)
    for k in range(3):
        want = brute_rounded_away(w[k], float(lr[k]))
        assert got[k].item() == pytest.approx(sum(want) / 500)


# --------------------------------------------------------------------------- stacked models


def stacked_problem(k: int = 3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    W = nn.Parameter(torch.randn(k, 4, 6, generator=gen, dtype=torch.float64))
    b = nn.Parameter(torch.randn(k, 4, generator=gen, dtype=torch.float64))
    x = torch.randn(10, 6, generator=gen, dtype=torch.float64)
    y = torch.randn(k, 10, 4, generator=gen, dtype=torch.float64)

    def loss():
        return ((torch.einsum("kij,nj->kni", W, x) + b[:, None] - y) ** 2).mean(dim=(1, 2)).sum()

    return W, b, loss


def test_stacked_weight_instruments_give_one_value_per_model() -> None:
    k = 3
    W, b, loss = stacked_problem(k)
    lr, lam = torch.tensor([0.1, 0.05, 0.02], dtype=torch.float64), torch.tensor([0.0, 0.1, 0.3], dtype=torch.float64)
    opt = AdamW([W, b], lr=lr, weight_decay=lam)
    model = nn.Module()
    model.W, model.b = W, b
    instruments = [WeightNorm(), EffectiveLR(), AngularUpdate(), EMATimescale()]
    with Monitor(model, opt, instruments) as mon:
        assert mon.stacked == k  # inferred from the (K,) hyperparameters
        for _ in range(3):
            prev = [W.detach().clone(), b.detach().clone()]
            opt.zero_grad()
            loss().backward()
            opt.step()
    for m in range(k):
        wk, bk = W[m].detach(), b[m].detach()
        both = torch.cat([wk.flatten(), bk])
        assert last(mon, "weight_norm/total", m) == pytest.approx(both.norm().item(), rel=1e-12)
        assert last(mon, "weight_norm/tensor/W", m) == pytest.approx(wk.norm().item(), rel=1e-12)
        assert last(mon, "effective_lr/sgd_scale_invariant/group_0", m) == pytest.approx(
            lr[m].item() / both.square().sum().item(), rel=1e-12)
        assert last(mon, "effective_lr/adam_norm/tensor/b", m) == pytest.approx(lr[m].item() / bk.norm().item())
        v = torch.cat([opt.state[W]["exp_avg_sq"][m].flatten(), opt.state[b]["exp_avg_sq"][m]])
        assert last(mon, "effective_lr/adam_mean_inverse_sqrt_v/total", m) == pytest.approx(
            (lr[m] / (v.sqrt() + 1e-8)).mean().item())
        prev_both = torch.cat([prev[0][m].flatten(), prev[1][m]])
        assert last(mon, "angular_update/total", m) == pytest.approx(brute_angle(prev_both, both), rel=1e-9)
        assert last(mon, "angular_update/equilibrium/group_0", m) == pytest.approx(
            math.sqrt(2 * lr[m].item() * lam[m].item() * 0.1 / 1.9))
        want_tau = 1 / (lr[m].item() * lam[m].item()) if lam[m] > 0 else math.inf
        assert last(mon, "ema_timescale/iterations/group_0", m) == pytest.approx(want_tau)
    assert len({r["model"] for r in mon.records}) == k


# --------------------------------------------------------------------------- Adam buffer mixing


def mixing_run(make_opt, steps=6, dtype=torch.float64, interval=1):
    model = mlp(dtype)
    opt = make_opt(model.parameters())
    instrument = AdamBufferMixing(interval=interval)
    with Monitor(model, opt, [instrument]) as mon:
        train(model, opt, steps)
        shadows = {n: (instrument.m_grad[id(p)].clone(), instrument.m_decay[id(p)].clone())
                   for n, p in model.named_parameters()}
    return model, opt, mon, shadows


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda ps: Adam(ps, lr=1e-2, weight_decay=0.3, decay="l2"),
        lambda ps: Adam(ps, lr=1e-2, weight_decay=0.3, decay="l2", decay_to="init"),
        lambda ps: Adam(ps, lr=1e-2, weight_decay=EarlyDecay(0.3, until=3), decay="l2", maximize=True),
        lambda ps: Adam(ps, lr=1e-2, weight_decay=0.3, decay="l2", amsgrad=True, backend="reference"),
        lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=0.3),
        lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=0.3, maximize=True, foreach=False),
    ],
    ids=["decaylab", "decaylab-to-init", "decaylab-schedule-maximize", "decaylab-amsgrad", "torch", "torch-maximize"],
)
def test_shadow_buffers_add_up_to_exp_avg(make_opt) -> None:
    model, opt, _, shadows = mixing_run(make_opt)
    for name, p in model.named_parameters():
        m_grad, m_decay = shadows[name]
        torch.testing.assert_close(m_grad + m_decay, opt.state[p]["exp_avg"], rtol=1e-12, atol=1e-15)
        assert m_decay.abs().sum() > 0 and m_grad.abs().sum() > 0


def test_mixing_ratios_against_a_hand_built_adam_run() -> None:
    torch.manual_seed(0)
    model = mlp()
    lam, beta1 = 0.3, 0.8
    opt = Adam(model.parameters(), lr=1e-2, betas=(beta1, 0.999), weight_decay=lam, decay="l2")
    gen = torch.Generator().manual_seed(3)
    m_grad = [torch.zeros_like(p) for p in model.parameters()]
    m_decay = [torch.zeros_like(p) for p in model.parameters()]
    with Monitor(model, opt, [AdamBufferMixing(interval=2)]) as mon:
        for step in range(1, 5):
            x = torch.randn(8, 5, generator=gen, dtype=torch.float64)
            y = torch.randn(8, 3, generator=gen, dtype=torch.float64)
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            grads = [p.grad.clone() for p in model.parameters()]
            decays = [lam * p.detach().clone() for p in model.parameters()]
            for mg, md, g, d in zip(m_grad, m_decay, grads, decays, strict=True):
                mg.mul_(beta1).add_(g, alpha=1 - beta1)
                md.mul_(beta1).add_(d, alpha=1 - beta1)
            opt.step()
            if step % 2 == 0:
                flat = lambda ts: torch.cat([t.flatten() for t in ts])
                g, d, mg, md = flat(grads), flat(decays), flat(m_grad), flat(m_decay)
                m = mg + md
                assert last(mon, "adam_mixing/decay_grad_ratio/total") == pytest.approx((d.norm() / g.norm()).item())
                assert last(mon, "adam_mixing/buffer_ratio/total") == pytest.approx((md.norm() / mg.norm()).item())
                assert last(mon, "adam_mixing/decay_share/total") == pytest.approx((md @ m / (m @ m)).item())
                assert last(mon, "adam_mixing/decay_share/group_0") == pytest.approx((md @ m / (m @ m)).item())
    assert [s for s, _ in mon.history("adam_mixing/decay_share/total")] == [2, 4]


def test_mixing_stacked_per_model() -> None:
    k = 2
    W, b, loss = stacked_problem(k)
    lam = torch.tensor([0.1, 1.0], dtype=torch.float64)
    opt = Adam([W, b], lr=torch.tensor([0.01, 0.02], dtype=torch.float64), weight_decay=lam, decay="l2")
    instrument = AdamBufferMixing()
    with Monitor(None, opt, [instrument]) as mon:
        for _ in range(3):
            opt.zero_grad()
            loss().backward()
            opt.step()
    for p in (W, b):
        torch.testing.assert_close(instrument.m_grad[id(p)] + instrument.m_decay[id(p)], opt.state[p]["exp_avg"])
    for m in range(k):
        md = torch.cat([instrument.m_decay[id(p)][m].flatten() for p in (W, b)])
        mg = torch.cat([instrument.m_grad[id(p)][m].flatten() for p in (W, b)])
        assert last(mon, "adam_mixing/buffer_ratio/total", m) == pytest.approx((md.norm() / mg.norm()).item())
        share = md @ (md + mg) / (md + mg).square().sum()
        assert last(mon, "adam_mixing/decay_share/total", m) == pytest.approx(share.item())
    # a larger λ puts more of the buffer along the decay term
    assert last(mon, "adam_mixing/decay_share/total", 1) > last(mon, "adam_mixing/decay_share/total", 0)


def test_mixing_needs_coupled_l2_adam() -> None:
    model = mlp()
    for opt in (AdamW(model.parameters()), torch.optim.AdamW(model.parameters()), SGD(model.parameters(), lr=0.1),
                Adam(model.parameters(), weight_decay=0.0)):
        with pytest.raises(ValueError, match="coupled L2"):
            Monitor(model, opt, [AdamBufferMixing()])


# --------------------------------------------------------------------------- hyperparameters


def test_step_hparams_reads_the_step_just_taken() -> None:
    w = nn.Parameter(torch.ones(2))
    opt = AdamW([w], lr=0.1, weight_decay=EarlyDecay(0.5, until=1), decay_scale="schedule", max_lr=0.2)
    group = opt.param_groups[0]
    assert step_hparams(group, taken=False) == {"lr": 0.1, "lam": 0.5, "s": 0.5}
    w.grad = torch.zeros(2)
    opt.step()
    assert step_hparams(group, taken=True)["lam"] == 0.5  # the step just taken (index 0)
    assert step_hparams(group, taken=False)["lam"] == 0.0  # the next one (index 1)
    torch_group = torch.optim.SGD([w], lr=0.3, weight_decay=0.2).param_groups[0]
    assert step_hparams(torch_group) == {"lr": 0.3, "lam": 0.2, "s": 0.3}
