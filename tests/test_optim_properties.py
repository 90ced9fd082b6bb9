"""Properties of the decay forms that hold for any data: identities, invariances, expansions.

References: ``reference/methods.md`` §1 (forms), §6 (Zhuang et al.'s scale-freeness test).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from decaylab.optim import FORMS, RULES, SCALES, SGD, Adam

SETTINGS = settings(max_examples=25, deadline=None, database=None)
BACKENDS = ("reference", "foreach")


pytestmark = pytest.mark.usefixtures("one_thread_per_module")


def logistic_problem(seed: int, n: int = 24, d: int = 5):
    """A small logistic regression in float64: data and initial weights (a matrix and a bias)."""
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 2, (n, 2), generator=gen).to(torch.float64) * 2 - 1
    w0 = [torch.randn(d, 2, generator=gen, dtype=torch.float64), torch.randn(2, generator=gen, dtype=torch.float64)]
    return X, y, w0


def train(make_opt, problem, steps: int = 15, loss_scale: float = 1.0):
    """Run ``steps`` steps of autograd training on ``loss_scale · loss``; return every iterate."""
    X, y, w0 = problem
    params = [torch.nn.Parameter(w.clone()) for w in w0]
    opt = make_opt(params)
    iterates = []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.softplus(-y * (X @ params[0] + params[1])).mean()
        (loss_scale * loss).backward()
        opt.step()
        iterates.append(torch.cat([p.detach().flatten() for p in params]))
    return torch.stack(iterates)


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# --------------------------------------------------------------------------- λ = 0


def _every_form(scale: str):
    """Each form once, with ``scale`` (l2 takes only the lr scale)."""
    return [(f, "lr" if f == "l2" else scale) for f in FORMS]


@SETTINGS
@given(
    seed=st.integers(0, 2**16),
    lr=st.floats(1e-3, 0.3),
    beta1=st.floats(0.0, 0.99),
    beta2=st.floats(0.5, 0.999),
    amsgrad=st.booleans(),
    scale=st.sampled_from(SCALES),
    decay_to=st.sampled_from(["zero", "init"]),
    backend=st.sampled_from(BACKENDS),
)
def test_zero_weight_decay_makes_every_adam_rule_plain_adam(seed, lr, beta1, beta2, amsgrad, scale, decay_to, backend):
    problem = logistic_problem(seed)

    def run(make):
        return train(make, problem, steps=5)

    def ours(form, scale):
        return lambda ps: Adam(
            ps,
            lr=lr,
            betas=(beta1, beta2),
            amsgrad=amsgrad,
            weight_decay=0.0,
            decay=form,
            decay_scale=scale,
            decay_to=decay_to,
            backend=backend,
        )

    base = run(lambda ps: torch.optim.Adam(ps, lr=lr, betas=(beta1, beta2), amsgrad=amsgrad))
    assert relative_difference(base[-1], base[0]) > 1e-6  # it trained
    for form, s in _every_form(scale):
        torch.testing.assert_close(run(ours(form, s)), base, rtol=1e-13, atol=1e-15, msg=f"{form}/{s}")


@SETTINGS
@given(
    seed=st.integers(0, 2**16),
    lr=st.floats(1e-3, 0.5),
    momentum=st.sampled_from([0.0, 0.5, 0.9]),
    dampening=st.sampled_from([0.0, 0.3]),
    nesterov=st.booleans(),
    scale=st.sampled_from(SCALES),
    decay_to=st.sampled_from(["zero", "init"]),
    backend=st.sampled_from(BACKENDS),
)
def test_zero_weight_decay_makes_every_sgd_rule_plain_sgd(
    seed, lr, momentum, dampening, nesterov, scale, decay_to, backend
):
    nesterov = nesterov and momentum > 0
    dampening = 0.0 if nesterov else dampening
    problem = logistic_problem(seed)

    def run(make):
        return train(make, problem, steps=5)

    base = run(lambda ps: torch.optim.SGD(ps, lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov))
    for form, s in _every_form(scale):
        ours = run(
            lambda ps, form=form, s=s: SGD(
                ps,
                lr=lr,
                momentum=momentum,
                dampening=dampening,
                nesterov=nesterov,
                weight_decay=0.0,
                decay=form,
                decay_scale=s,
                decay_to=decay_to,
                backend=backend,
            )
        )
        torch.testing.assert_close(ours, base, rtol=1e-13, atol=1e-15, msg=f"{form}/{s}")


# --------------------------------------------------------------------------- scale-freeness (Zhuang et al.)

SCALE_FREE = {
    "adam": dict(weight_decay=0.0, decay="l2"),
    "adamw": dict(weight_decay=0.1, decay="decoupled"),
    "proxadam": dict(weight_decay=0.1, decay="prox"),
    "cautious": dict(weight_decay=0.1, decay="cautious"),
    "adamc": dict(weight_decay=0.1, decay="decoupled", decay_scale="corrected"),
}
NOT_SCALE_FREE = {
    "adam_l2": dict(weight_decay=0.1, decay="l2", eps=0.0),
    "prox_euclid": dict(weight_decay=0.1, decay="prox_euclid", eps=1e-3),  # ε = 0 would divide by D = 0
    "stable": dict(weight_decay=0.1, decay="stable", eps=0.0),  # the decay is divided by sqrt(mean v̂) ∝ c
}


@SETTINGS
@given(
    seed=st.integers(0, 2**16),
    lr=st.floats(1e-3, 0.1),
    c=st.sampled_from([10.0, 100.0]),
    name=st.sampled_from(sorted(SCALE_FREE)),
    backend=st.sampled_from(BACKENDS),
)
def test_scale_free_forms_ignore_the_loss_scale(seed, lr, c, name, backend):
    """With ε = 0, u_t = m̂/sqrt(v̂) is invariant to g → c·g, and so are these decays."""
    problem = logistic_problem(seed)

    def make(ps):
        return Adam(ps, lr=lr, eps=0.0, backend=backend, **SCALE_FREE[name])

    base = train(make, problem, steps=10)
    torch.testing.assert_close(train(make, problem, steps=10, loss_scale=c), base, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("c", [10.0, 100.0])
@pytest.mark.parametrize("name", sorted(NOT_SCALE_FREE))
def test_coupled_and_euclidean_forms_depend_on_the_loss_scale(name, c, backend):
    problem = logistic_problem(7)

    def make(ps):
        return Adam(ps, lr=0.05, backend=backend, **NOT_SCALE_FREE[name])

    base = train(make, problem)
    assert relative_difference(train(make, problem, loss_scale=c), base) > 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("c", [10.0, 100.0])
def test_stable_is_invariant_when_the_whole_objective_scales(c, backend):
    """AdamS divides λ by sqrt(mean v̂) ∝ c: scaling the loss *and* λ by c leaves its iterates unchanged."""
    problem = logistic_problem(8)

    def make(lam):
        return lambda ps: Adam(ps, lr=0.05, eps=0.0, weight_decay=lam, decay="stable", backend=backend)

    base = train(make(0.1), problem)
    torch.testing.assert_close(train(make(0.1 * c), problem, loss_scale=c), base, rtol=1e-10, atol=1e-13)


# --------------------------------------------------------------------------- SGD: l2 vs decoupled


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("decay_to", ["zero", "init"])
def test_sgd_without_momentum_l2_equals_decoupled(decay_to, backend):
    problem = logistic_problem(3)

    def make(form, momentum):
        return lambda ps: SGD(
            ps, lr=0.2, momentum=momentum, weight_decay=0.3, decay=form, decay_to=decay_to, backend=backend
        )

    l2 = train(make("l2", 0.0), problem, steps=30)
    decoupled = train(make("decoupled", 0.0), problem, steps=30)
    torch.testing.assert_close(decoupled, l2, rtol=1e-12, atol=1e-14)
    # with momentum the λw term is carried in the buffer for l2 only: the two differ
    l2_m = train(make("l2", 0.9), problem, steps=30)
    decoupled_m = train(make("decoupled", 0.9), problem, steps=30)
    assert relative_difference(decoupled_m, l2_m) > 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
def test_sgd_l2_matches_torch_weight_decay(backend):
    problem = logistic_problem(4)
    ours = train(lambda ps: SGD(ps, lr=0.2, momentum=0.9, weight_decay=0.3, backend=backend), problem, steps=20)
    ref = train(lambda ps: torch.optim.SGD(ps, lr=0.2, momentum=0.9, weight_decay=0.3), problem, steps=20)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------- AdamW ≈ ProxAdam to first order


def one_step(form: str, lr: float, lam: float, grad_scale: float, backend: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(5)
    w = torch.nn.Parameter(torch.randn(6, generator=gen, dtype=torch.float64))
    g = torch.randn(6, generator=gen, dtype=torch.float64) * grad_scale
    opt = Adam([w], lr=lr, weight_decay=lam, decay=form, backend=backend)
    w.grad = g
    opt.step()
    return w.detach().clone()


@pytest.mark.parametrize("backend", BACKENDS)
def test_adamw_is_first_order_proxadam_pure_decay(backend):
    """u = 0: prox − decoupled = w·(1/(1+x) − 1 + x) = w·x² + O(x³) with x = lr·λ; halving x quarters it."""
    diffs = []
    for lam in (0.4, 0.2, 0.1, 0.05):
        diffs.append((one_step("prox", 0.1, lam, 0.0, backend) - one_step("decoupled", 0.1, lam, 0.0, backend)).norm())
    ratios = [float(b / a) for a, b in zip(diffs[:-1], diffs[1:], strict=True)]
    assert ratios == pytest.approx([0.25] * 3, abs=0.01)
    assert float(diffs[-1]) > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_adamw_is_first_order_proxadam_in_the_step_size(backend):
    """With a gradient, prox − decoupled = lr·λ·(lr·u) − (lr·λ)²·(w − lr·u) + …: every term is O(lr²)
    at fixed λ, so halving lr quarters the one-step difference (while each step itself only halves)."""
    lam = 0.5
    diffs, steps = [], []
    w0 = one_step("decoupled", 0.0, lam, 1.0, backend)
    for lr in (0.08, 0.04, 0.02, 0.01):
        prox, adamw = one_step("prox", lr, lam, 1.0, backend), one_step("decoupled", lr, lam, 1.0, backend)
        diffs.append((prox - adamw).norm())
        steps.append((adamw - w0).norm())
    ratios = [float(b / a) for a, b in zip(diffs[:-1], diffs[1:], strict=True)]
    assert ratios == pytest.approx([0.25] * 3, abs=0.02)
    assert [float(b / a) for a, b in zip(steps[:-1], steps[1:], strict=True)] == pytest.approx([0.5] * 3, abs=0.01)


# --------------------------------------------------------------------------- stacked models


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("form", [f for f in FORMS if RULES[f].acts != "gradient" and not RULES[f].needs - {"u", "D"}])
def test_stacked_bigger_lambda_smaller_norm(form, backend):
    """Pure decay on K stacked copies of the same weights: the norm decreases strictly with λ[k] and lr[k]."""
    K = 5
    w0 = torch.randn(1, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(6)).expand(K, 3, 4)
    for lr, lam in [
        (torch.full((K,), 0.1, dtype=torch.float64), torch.tensor([0.0, 0.05, 0.1, 0.2, 0.4])),
        (torch.tensor([0.0, 0.02, 0.05, 0.1, 0.2]), torch.full((K,), 0.3, dtype=torch.float64)),
    ]:
        w = torch.nn.Parameter(w0.clone())
        opt = Adam(
            [w], lr=lr.to(torch.float64), weight_decay=lam.to(torch.float64), decay=form, eps=0.1, backend=backend
        )
        for _ in range(20):
            w.grad = torch.zeros_like(w)
            opt.step()
        norms = w.detach().flatten(1).norm(dim=1)
        assert norms[0] == pytest.approx(float(w0[0].norm()), rel=1e-14)  # λ = 0 or lr = 0: untouched
        assert (norms[1:] < norms[:-1]).all(), norms


def _separate_vs_stacked(make, K, steps, seed, backend):
    gen = torch.Generator().manual_seed(seed)
    w0 = [
        torch.randn(K, 3, generator=gen, dtype=torch.float64),
        torch.randn(K, 2, 2, generator=gen, dtype=torch.float64),
    ]
    grads = [[torch.randn(w.shape, generator=gen, dtype=torch.float64) for w in w0] for _ in range(steps)]
    stacked = [torch.nn.Parameter(w.clone()) for w in w0]
    opt = make(stacked, None)
    for gs in grads:
        for p, g in zip(stacked, gs, strict=True):
            p.grad = g.clone()
        opt.step()
    for k in range(K):
        single = [torch.nn.Parameter(w[k].clone()) for w in w0]
        opt = make(single, k)
        for gs in grads:
            for p, g in zip(single, gs, strict=True):
                p.grad = g[k].clone()
            opt.step()
        for p, q in zip(single, stacked, strict=True):
            torch.testing.assert_close(p.detach(), q.detach()[k], rtol=1e-12, atol=1e-14)


STACKED_CASES = [
    (f, s, to) for f in FORMS for s in ("lr", "schedule") for to in ("zero", "init") if f != "l2" or s == "lr"
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("form,scale,decay_to", STACKED_CASES)
def test_stacked_models_train_like_separate_models(form, scale, decay_to, backend):
    """K models along dim 0 with lr[k], λ[k], max_lr[k] give model k's own run (stable: its own mean v̂)."""
    K = 3
    lr = torch.tensor([0.05, 0.1, 0.02], dtype=torch.float64)
    lam = torch.tensor([0.2, 0.0, 0.5], dtype=torch.float64)
    max_lr = torch.tensor([0.1, 0.2, 0.02], dtype=torch.float64)

    def make(ps, k):
        pick = (lambda t: t) if k is None else (lambda t: float(t[k]))
        return Adam(
            ps,
            lr=pick(lr),
            weight_decay=pick(lam),
            max_lr=pick(max_lr),
            decay=form,
            decay_scale=scale,
            decay_to=decay_to,
            backend=backend,
        )

    _separate_vs_stacked(make, K, steps=6, seed=9, backend=backend)
