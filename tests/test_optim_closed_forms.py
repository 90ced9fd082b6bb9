"""Closed forms of every decay form × scale when the optimizer's own direction is zero.

With zero gradients Adam's ``m`` and ``v`` stay 0, so ``u_t = m̂_t / (ε + sqrt(v̂_t)) = 0`` and
``D_t = ε``; SGD's buffer stays 0 too. Each step is then pure decay and the iterate is a product
over the learning rates the scheduler actually set (``reference/methods.md`` §1–§3)::

    decoupled, cautious   w_T = w_0 · Π (1 − s_t·λ)            (cautious: u = 0, so the mask is all ones)
    prox                  w_T = w_0 / Π (1 + s_t·λ)
    prox_euclid (Adam)    w_T = w_0 / Π (1 + s_t·λ/ε)          (D_t = ε; SGD: D_t = 1, i.e. prox)
    stable (SGD)          w_T = w_0 · Π (1 − s_t·λ·(1 − δ)/(1 − μ))

with ``s_t = lr_t`` (lr), ``lr_t/α`` (schedule), ``lr_t²/α`` (corrected), ``1`` (constant).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR

from decaylab.optim import FORMS, SGD, Adam
from decaylab.schedules import CosineDecay, EarlyDecay, LateDecay

ALPHA = 0.1
T = 50
BACKENDS = ("reference", "foreach")
SCALES = ("lr", "schedule", "corrected", "constant")
# λ per scale so that every product is large but stays positive: max_t s_t·λ is 0.03, 0.3, 0.03, 0.01.
LAM = {"lr": 0.3, "schedule": 0.3, "corrected": 0.3, "constant": 0.01}
ADAM_EUCLID_EPS = 0.5  # D_t = ε with v = 0: a large ε keeps s_t·λ/ε well inside (0, 1)


pytestmark = pytest.mark.usefixtures("one_thread_per_module")


DIRECTIONS = {
    "adam": (Adam, {}),
    "sgd": (SGD, {}),
    "sgd_momentum": (SGD, {"momentum": 0.9, "dampening": 0.1}),
    "sgd_nesterov": (SGD, {"momentum": 0.9, "nesterov": True}),
}


def initial_weights() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    # Two tensors of different ndim so that the foreach path runs on a real multi-tensor list;
    # signs of both kinds so that a sign-dependent mask would show.
    return [torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)]


def scale_of(scale: str, lr: float) -> float:
    return {"lr": lr, "schedule": lr / ALPHA, "corrected": lr * lr / ALPHA, "constant": 1.0}[scale]


def cosine_lr(t: int) -> float:
    return ALPHA * 0.5 * (1 + math.cos(math.pi * t / T))


def run_zero_grads(cls, steps: int = T, scheduler: bool = True, grads=None, **kwargs):
    """Run ``steps`` steps; return the params, the optimizer and the lr each step used.

    ``grads(t)`` gives the gradient list of step ``t`` (zeros when ``grads`` is None).
    """
    params = [torch.nn.Parameter(w.clone()) for w in initial_weights()]
    opt = cls(params, lr=ALPHA, **kwargs)
    sched = CosineAnnealingLR(opt, T_max=steps) if scheduler else None
    lrs = []
    for t in range(steps):
        for i, p in enumerate(params):
            p.grad = torch.zeros_like(p) if grads is None else grads(t)[i].clone()
        lrs.append(float(opt.param_groups[0]["lr"]))
        opt.step()
        if sched is not None:
            sched.step()
    return params, opt, lrs


def assert_weights(params, expected_factor, rtol=1e-12):
    """Every parameter equals its initial value times ``expected_factor`` (a number or per-param tensors)."""
    for i, (p, w0) in enumerate(zip(params, initial_weights(), strict=True)):
        factor = expected_factor[i] if isinstance(expected_factor, list) else expected_factor
        torch.testing.assert_close(p.detach(), w0 * factor, rtol=rtol, atol=0)


def test_scheduler_moves_the_lr():
    """The products below are over a real cosine schedule, not a constant lr."""
    _, _, lrs = run_zero_grads(Adam, weight_decay=0.0)
    assert lrs == pytest.approx([cosine_lr(t) for t in range(T)], rel=1e-12)
    assert lrs[0] == pytest.approx(ALPHA) and lrs[-1] < 0.01 * ALPHA


# --------------------------------------------------------------------------- form × scale × direction


def expected_factor(form: str, scale: str, lam: float, lrs: list[float], direction: str, kwargs: dict) -> float:
    factor = 1.0
    for lr in lrs:
        x = scale_of(scale, lr) * lam
        if form in ("decoupled", "cautious"):
            factor *= 1 - x
        elif form == "prox":
            factor /= 1 + x
        elif form == "prox_euclid":
            factor /= 1 + (x / ADAM_EUCLID_EPS if direction == "adam" else x)
        elif form == "stable":  # SGD only here (SGDS)
            factor *= 1 - x * (1 - kwargs.get("dampening", 0.0)) / (1 - kwargs.get("momentum", 0.0))
        else:  # pragma: no cover - not parameterized
            raise AssertionError(form)
    return factor


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("form", ["decoupled", "cautious", "prox", "prox_euclid"])
@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_pure_decay_product(direction, form, scale, backend):
    cls, kwargs = DIRECTIONS[direction]
    extra = {"eps": ADAM_EUCLID_EPS} if direction == "adam" and form == "prox_euclid" else {}
    lam = LAM[scale]
    params, opt, lrs = run_zero_grads(
        cls, weight_decay=lam, decay=form, decay_scale=scale, backend=backend, **kwargs, **extra
    )
    factor = expected_factor(form, scale, lam, lrs, direction, kwargs)
    assert 1e-8 < factor < 0.9  # the decay did something large, and the product stayed positive
    assert_weights(params, factor)
    # The direction's state stayed zero: the decay never leaked into the moments / the buffer.
    for p in params:
        st = opt.state[p]
        for key in ("exp_avg", "exp_avg_sq", "momentum_buffer"):
            if key in st:
                assert torch.count_nonzero(st[key]) == 0, key
        if direction == "adam":
            assert float(st["step"]) == T


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("direction", ["sgd", "sgd_momentum", "sgd_nesterov"])
def test_sgd_stable_multiplies_decay_by_momentum_factor(direction, scale, backend):
    """SGDS: the decay is s_t·λ·(1 − δ)/(1 − μ); with μ = 0.9, δ = 0.1 that is 9·s_t·λ."""
    cls, kwargs = DIRECTIONS[direction]
    boost = (1 - kwargs.get("dampening", 0.0)) / (1 - kwargs.get("momentum", 0.0))
    lam = LAM[scale] / boost
    params, _, lrs = run_zero_grads(cls, weight_decay=lam, decay="stable", decay_scale=scale, backend=backend, **kwargs)
    factor = expected_factor("stable", scale, lam, lrs, direction, kwargs)
    assert 1e-8 < factor < 0.9
    assert_weights(params, factor)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sgd_l2_without_momentum_is_the_decoupled_product(backend):
    """Plain SGD with g = 0 + λ·w: w_T = w_0·Π(1 − lr_t·λ)."""
    params, _, lrs = run_zero_grads(SGD, weight_decay=0.3, decay="l2", backend=backend)
    factor = math.prod(1 - lr * 0.3 for lr in lrs)
    assert_weights(params, factor)


@pytest.mark.parametrize("backend", BACKENDS)
def test_adam_stable_with_zero_gradients_stays_finite(backend):
    """AdamS with v̂ = 0 everywhere (no gradient signal yet) must not produce inf/nan.

    The stable form divides the decay by sqrt(mean v̂); with zero gradients that mean is 0.
    Whatever the guard (skip the decay, ε in the denominator, a clamp), with ε = 1 the weights
    must stay finite, keep their sign and not grow. Decaying toward the initial weights,
    w − w_ref = 0 must stay 0 (not 0·inf = nan).
    """
    for decay_to in ("zero", "init"):
        params, _, _ = run_zero_grads(
            Adam, steps=5, weight_decay=0.3, eps=1.0, decay="stable", decay_to=decay_to, backend=backend
        )
        for p, w0 in zip(params, initial_weights(), strict=True):
            w = p.detach()
            assert torch.isfinite(w).all(), (decay_to, w)
            assert (w.abs() <= w0.abs()).all() and (w * w0 >= 0).all(), decay_to
            if decay_to == "init":
                assert torch.equal(w, w0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale", ["lr", "schedule"])
def test_adam_stable_after_one_gradient(scale, backend):
    """AdamS with one gradient g at step 1 and zeros afterwards, β1 = 0.5, β2 = 0.9.

    Then m_n = β1^(n−1)(1−β1)g and v_n = β2^(n−1)(1−β2)g², independent of w, so
    u_n = m̂_n/(ε + sqrt(v̂_n)) is known and the iterate follows the linear recursion
    w ← w·(1 − s_n·λ/(sqrt(mean v̂_n) + ε)) − lr_n·u_n, with the mean over *all* parameters.
    """
    beta1, beta2, eps, lam = 0.5, 0.9, 1e-8, 0.05
    gen = torch.Generator().manual_seed(1)
    g1 = [torch.randn(w.shape, generator=gen, dtype=torch.float64) for w in initial_weights()]

    def grads(t):
        return g1 if t == 0 else [torch.zeros_like(g) for g in g1]

    params, _, lrs = run_zero_grads(
        Adam,
        steps=20,
        grads=grads,
        betas=(beta1, beta2),
        eps=eps,
        weight_decay=lam,
        decay="stable",
        decay_scale=scale,
        backend=backend,
    )
    numel = sum(g.numel() for g in g1)
    mean_g2 = sum(float((g * g).sum()) for g in g1) / numel
    ws = initial_weights()
    for n, lr in enumerate(lrs, start=1):
        bc1, bc2 = 1 - beta1**n, 1 - beta2**n
        mean_vhat = beta2 ** (n - 1) * (1 - beta2) * mean_g2 / bc2
        shrink = 1 - scale_of(scale, lr) * lam / (math.sqrt(mean_vhat) + eps)
        new = []
        for w, g in zip(ws, g1, strict=True):
            m_hat = beta1 ** (n - 1) * (1 - beta1) * g / bc1
            v_hat = beta2 ** (n - 1) * (1 - beta2) * g * g / bc2
            new.append(w * shrink - lr * m_hat / (eps + v_hat.sqrt()))
        ws = new
    for p, w in zip(params, ws, strict=True):
        torch.testing.assert_close(p.detach(), w, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- decay toward the initial weights


STAY_CASES = [
    (d, f)
    for d in DIRECTIONS
    for f in FORMS
    if not (d == "adam" and f == "stable")  # Adam's stable form with v̂ = 0: see test_adam_stable_with_zero_gradients...
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("direction,form", STAY_CASES)
def test_decay_to_init_with_zero_gradients_stays_put(direction, form, backend):
    cls, kwargs = DIRECTIONS[direction]
    params, opt, _ = run_zero_grads(
        cls, steps=10, weight_decay=0.3, decay=form, decay_to="init", backend=backend, **kwargs
    )
    for p, w0 in zip(params, initial_weights(), strict=True):
        assert torch.equal(p.detach(), w0)
        assert torch.equal(opt.state[p]["init_param"], w0)


RELAX_K = 5  # steps with a constant gradient before the gradient is switched off
RELAX_BETAS = (0.0, 0.9)  # β1 = 0: m_n = g_n, so u_n = 0 exactly once the gradient is 0


def _relax_grads():
    gen = torch.Generator().manual_seed(2)
    g = [torch.randn(w.shape, generator=gen, dtype=torch.float64) for w in initial_weights()]
    return g, (lambda t: g if t < RELAX_K else [torch.zeros_like(x) for x in g])


RELAX_CASES = [("adam", f) for f in ("decoupled", "cautious", "prox", "prox_euclid", "stable")] + [
    ("sgd", f) for f in ("decoupled", "cautious", "prox", "prox_euclid", "stable", "l2")
]  # Adam + l2 puts λ·d into the moments: no product form there.


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("direction,form", RELAX_CASES)
def test_decay_to_init_relaxes_by_the_product(direction, form, backend):
    """A constant gradient for K steps moves w away from w_0; then with g = 0, u = 0 and
    d = w − w_0 follows the pure-decay product: d_T = d_K·Π_{n>K} f_n."""
    lam, eps = 0.3, 1e-3
    g, grads = _relax_grads()
    cls = Adam if direction == "adam" else SGD
    extra = {"betas": RELAX_BETAS, "eps": eps} if direction == "adam" else {}
    common = dict(weight_decay=lam, decay=form, decay_to="init", backend=backend, **extra)
    # The same run stopped after K steps gives d_K (the scheduler is the same for both runs).
    params_k, _, _ = run_zero_grads(cls, steps=T, grads=grads, **common)
    head = [torch.nn.Parameter(w.clone()) for w in initial_weights()]
    opt = cls(head, lr=ALPHA, **common)
    sched = CosineAnnealingLR(opt, T_max=T)
    lrs = []
    for t in range(T):
        lrs.append(float(opt.param_groups[0]["lr"]))
        if t < RELAX_K:
            for p, gi in zip(head, g, strict=True):
                p.grad = gi.clone()
            opt.step()
        sched.step()
    d_k = [p.detach() - w0 for p, w0 in zip(head, initial_weights(), strict=True)]
    assert all(d.abs().min() > 1e-3 for d in d_k)  # the gradient phase moved every coordinate

    beta2 = RELAX_BETAS[1]
    numel = sum(x.numel() for x in g)
    mean_g2 = sum(float((x * x).sum()) for x in g) / numel
    factors = [torch.ones_like(x) for x in g]
    for n in range(RELAX_K + 1, T + 1):
        s = lrs[n - 1]  # scale "lr"
        decay = s * lam
        if form in ("decoupled", "cautious", "l2"):
            f = [torch.full_like(x, 1 - decay) for x in g]
        elif form == "prox":
            f = [torch.full_like(x, 1 / (1 + decay)) for x in g]
        elif form == "prox_euclid":
            if direction == "adam":
                # v_n = β2^(n−K)·(1 − β2^K)·g², v̂_n = v_n/(1 − β2^n), D_n = ε + sqrt(v̂_n)
                ratio = beta2 ** (n - RELAX_K) * (1 - beta2**RELAX_K) / (1 - beta2**n)
                f = [1 / (1 + decay / (eps + (ratio * x * x).sqrt())) for x in g]
            else:
                f = [torch.full_like(x, 1 / (1 + decay)) for x in g]
        else:  # stable
            if direction == "adam":
                ratio = beta2 ** (n - RELAX_K) * (1 - beta2**RELAX_K) / (1 - beta2**n)
                f = [torch.full_like(x, 1 - decay / (math.sqrt(ratio * mean_g2) + eps)) for x in g]
            else:
                f = [torch.full_like(x, 1 - decay) for x in g]
        factors = [a * b for a, b in zip(factors, f, strict=True)]
    for p, w0, d, f in zip(params_k, initial_weights(), d_k, factors, strict=True):
        d_T = p.detach() - w0
        torch.testing.assert_close(d_T, d * f, rtol=1e-9, atol=1e-14)
        assert (d_T.abs() < d.abs()).all()  # relaxed toward w_0 ...
        assert (d_T * d > 0).all()  # ... without crossing it


# --------------------------------------------------------------------------- weight-decay schedules


def _lambda_schedule(step: int) -> float:
    return 0.3 * (step < 5)


SCHEDULES = {
    "early": (EarlyDecay(0.3, until=7), lambda t: 0.3 * (t < 7)),
    "late": (LateDecay(0.3, after=30), lambda t: 0.3 * (t >= 30)),
    "cosine": (CosineDecay(0.3, total_steps=20), lambda t: 0.3 * 0.5 * (1 + math.cos(math.pi * min(t, 20) / 20))),
    "callable": (_lambda_schedule, _lambda_schedule),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale", ["lr", "schedule"])
@pytest.mark.parametrize("form", ["decoupled", "prox"])
@pytest.mark.parametrize("direction", ["adam", "sgd_momentum"])
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_weight_decay_schedule_product(name, direction, form, scale, backend):
    """λ_t = schedule(t) with t the 0-based step index: the product runs over the decayed steps only."""
    schedule, lam_of = SCHEDULES[name]
    cls, kwargs = DIRECTIONS[direction]
    params, _, lrs = run_zero_grads(
        cls, weight_decay=schedule, decay=form, decay_scale=scale, backend=backend, **kwargs
    )
    factor = 1.0
    for t, lr in enumerate(lrs):
        x = scale_of(scale, lr) * lam_of(t)
        factor = factor * (1 - x) if form == "decoupled" else factor / (1 + x)
    assert factor < 0.95
    assert_weights(params, factor)


# --------------------------------------------------------------------------- stacked models, tensor lr


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("form", ["decoupled", "prox"])
def test_stacked_per_model_products(form, scale, backend):
    """K models along dim 0 with lr[k] and λ[k]: model k follows its own product (lr set by hand)."""
    K = 3
    alpha = torch.tensor([0.1, 0.05, 0.2], dtype=torch.float64)
    lam = torch.tensor([0.3, 0.0, 0.1], dtype=torch.float64) * (0.03 if scale == "constant" else 1.0)
    gen = torch.Generator().manual_seed(3)
    w0 = [
        torch.randn(K, 4, generator=gen, dtype=torch.float64),
        torch.randn(K, 2, 3, generator=gen, dtype=torch.float64),
    ]
    params = [torch.nn.Parameter(w.clone()) for w in w0]
    opt = Adam(params, lr=alpha.clone(), weight_decay=lam, decay=form, decay_scale=scale, backend=backend)
    factor = torch.ones(K, dtype=torch.float64)
    for t in range(T):
        eta = 0.5 * (1 + math.cos(math.pi * t / T))
        lr = alpha * eta
        opt.param_groups[0]["lr"] = lr.clone()
        for p in params:
            p.grad = torch.zeros_like(p)
        opt.step()
        s = {"lr": lr, "schedule": lr / alpha, "corrected": lr * lr / alpha, "constant": torch.ones(K)}[scale]
        factor = factor * (1 - s * lam) if form == "decoupled" else factor / (1 + s * lam)
    assert factor[1] == 1 and (factor[[0, 2]] < 0.95).all()
    for p, w in zip(params, w0, strict=True):
        torch.testing.assert_close(p.detach(), w * factor.view(-1, *[1] * (w.dim() - 1)), rtol=1e-12, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tensor_lr_with_torch_scheduler_keeps_max_lr(backend):
    """A 0-dim tensor lr driven by a torch scheduler: s_t = lr_t/α must follow the schedule.

    torch's schedulers write a tensor lr in place (``fill_``); max_lr must not move with it.
    """
    w = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = Adam(
        [w],
        lr=torch.tensor(ALPHA, dtype=torch.float64),
        weight_decay=0.3,
        decay="decoupled",
        decay_scale="schedule",
        backend=backend,
    )
    sched = CosineAnnealingLR(opt, T_max=10)
    factor = 1.0
    for _ in range(10):
        w.grad = torch.zeros_like(w)
        factor *= 1 - float(opt.param_groups[0]["lr"]) / ALPHA * 0.3
        opt.step()
        sched.step()
    assert float(opt.param_groups[0]["decay_max_lr"]) == pytest.approx(ALPHA)
    torch.testing.assert_close(w.detach(), torch.full_like(w, factor), rtol=1e-12, atol=0)
