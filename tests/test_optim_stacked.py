"""K models stacked along dim 0 train exactly like K separate models.

A group whose parameters all have size K along dim 0 may take ``lr`` and ``weight_decay`` (and
``max_lr``) as tensors of shape (K,): model k then trains with ``lr[k]`` and ``λ[k]``. Every test
here runs one stacked optimizer and K separate optimizers (each on its slice, with float
hyperparameters) on the same float64 gradients and compares parameters and every state entry.
"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from decaylab.optim import FORMS, RULES, SGD, Adam

K = 4
SHAPES = ((K, 5, 3), (K, 3), (K,))
STEPS = 8
LR = torch.tensor([0.01, 0.03, 0.05, 0.02], dtype=torch.float64)
LAM = torch.tensor([0.0, 0.2, 0.5, 1.0], dtype=torch.float64)  # model 0 does not decay
LR_FACTOR = (1.0, 0.9, 0.7, 1.2, 0.5, 0.8, 0.3, 0.6)  # the lr schedule, one factor per step
TOL = dict(rtol=1e-13, atol=1e-15)


def initial(shapes=SHAPES):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]


def gradients(shapes=SHAPES):
    gen = torch.Generator().manual_seed(1)
    return [[torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes] for _ in range(STEPS)]


def run_stacked(make, shapes=SHAPES, lr=LR, in_place_lr=False):
    """One optimizer over the stacked params; ``make(params, lr)`` builds it."""
    params = [torch.nn.Parameter(w.clone()) for w in initial(shapes)]
    opt = make(params, lr.clone())
    for t, grads in enumerate(gradients(shapes)):
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        group = opt.param_groups[0]
        if in_place_lr:  # what torch's LR schedulers do with a tensor lr: write into it
            group["lr"].copy_(lr * LR_FACTOR[t])
        else:
            group["lr"] = lr * LR_FACTOR[t]
        opt.step()
    return opt, params


def run_separate(make, k, shapes=SHAPES, lr=LR):
    """Model k alone: its slices as params, float hyperparameters."""
    params = [torch.nn.Parameter(w[k].clone()) for w in initial(shapes)]
    opt = make(params, float(lr[k]))
    for t, grads in enumerate(gradients(shapes)):
        for p, g in zip(params, grads, strict=True):
            p.grad = g[k].clone()
        opt.param_groups[0]["lr"] = float(lr[k]) * LR_FACTOR[t]
        opt.step()
    return opt, params


def check_stacked_equals_separate(make_stacked, make_separate, shapes=SHAPES, lr=LR, in_place_lr=False):
    opt, params = run_stacked(make_stacked, shapes, lr, in_place_lr)
    for k in range(K):
        opt_k, params_k = run_separate(lambda ps, lr_k, k=k: make_separate(ps, lr_k, k), k, shapes, lr)
        for i, (p, pk) in enumerate(zip(params, params_k, strict=True)):
            assert_close(p[k], pk, **TOL, msg=lambda m, i=i, k=k: f"model {k}, param {i}: {m}")
            st, st_k = opt.state[p], opt_k.state[pk]
            assert set(st) == set(st_k), (sorted(st), sorted(st_k))
            for key, value in st_k.items():
                stacked_value = st[key] if key == "step" else st[key][k]
                assert_close(
                    stacked_value, value, **TOL, msg=lambda m, i=i, k=k, key=key: f"model {k}, param {i}, {key}: {m}"
                )
    return opt, params


def adam(backend, form, decay_to="zero", **kw):
    def stacked(params, lr):
        return Adam(params, lr=lr, betas=(0.9, 0.99), weight_decay=LAM.clone(), decay=form, decay_to=decay_to,
                    backend=backend, **kw)

    def separate(params, lr, k):
        return Adam(params, lr=lr, betas=(0.9, 0.99), weight_decay=float(LAM[k]), decay=form, decay_to=decay_to,
                    backend="reference", **kw)

    return stacked, separate


def sgd(backend, form, decay_to="zero", nesterov=False):
    def stacked(params, lr):
        return SGD(params, lr=lr, momentum=0.9, nesterov=nesterov, weight_decay=LAM.clone(), decay=form,
                   decay_to=decay_to, backend=backend)

    def separate(params, lr, k):
        return SGD(params, lr=lr, momentum=0.9, nesterov=nesterov, weight_decay=float(LAM[k]), decay=form,
                   decay_to=decay_to, backend="reference")

    return stacked, separate


# --------------------------------------------------------------------------- reference and foreach


@pytest.mark.parametrize("backend", ["reference", "foreach"])
@pytest.mark.parametrize("decay_to", ["zero", "init"])
@pytest.mark.parametrize("form", FORMS)
def test_adam_stacked_equals_separate(form, decay_to, backend, executors):
    check_stacked_equals_separate(*adam(backend, form, decay_to))
    assert {name for name, _ in executors} == {backend, "reference"}


@pytest.mark.parametrize("backend", ["reference", "foreach"])
@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("form", FORMS)
def test_sgd_momentum_stacked_equals_separate(form, nesterov, backend):
    check_stacked_equals_separate(*sgd(backend, form, "init" if nesterov else "zero", nesterov))


@pytest.mark.parametrize("backend", ["reference", "foreach"])
@pytest.mark.parametrize("form", ["decoupled", "stable", "cautious"])
def test_adam_flags_stacked_equals_separate(form, backend):
    check_stacked_equals_separate(*adam(backend, form, "init", amsgrad=True, maximize=True))


@pytest.mark.parametrize("backend", ["reference", "foreach"])
def test_stable_without_a_1d_parameter(backend):
    """The stable form's mean(v̂) is per model: stacked = separate (params of 2+ dims only).

    ``test_adam_stacked_equals_separate[stable-*]`` also stacks a (K,) parameter.
    """
    check_stacked_equals_separate(*adam(backend, "stable"), shapes=SHAPES[:2])


def test_stable_mean_is_per_model():
    """Scaling model 3's gradients by 100 changes only model 3's stable decay (mean v̂ per model)."""
    def final(scale3):
        params = [torch.nn.Parameter(w.clone()) for w in initial(SHAPES[:2])]
        opt = Adam(params, lr=LR.clone(), weight_decay=LAM.clone(), decay="stable", backend="foreach")
        for grads in gradients(SHAPES[:2]):
            for p, g in zip(params, grads, strict=True):
                g = g.clone()
                g[3] *= scale3
                p.grad = g
            opt.step()
        return params

    a, b = final(1.0), final(100.0)
    for pa, pb in zip(a, b, strict=True):
        # Adam's direction is scale-free, so only the stable decay can see the scale of v̂.
        assert_close(pa[:3], pb[:3], rtol=1e-12, atol=1e-14)
        assert (pa[3] - pb[3]).abs().max() > 1e-4


# --------------------------------------------------------------------------- decay_scale="schedule"


@pytest.mark.parametrize("backend", ["reference", "foreach"])
@pytest.mark.parametrize("max_lr", ["default", "tensor"])
@pytest.mark.parametrize("form", ["decoupled", "prox"])
def test_schedule_scale_stacked_equals_separate(form, max_lr, backend):
    peak = torch.tensor([0.02, 0.05, 0.1, 0.04], dtype=torch.float64)

    def stacked(params, lr):
        extra = {"max_lr": peak.clone()} if max_lr == "tensor" else {}
        return Adam(params, lr=lr, weight_decay=LAM * 0.1, decay=form, decay_scale="schedule", backend=backend, **extra)

    def separate(params, lr, k):
        extra = {"max_lr": float(peak[k])} if max_lr == "tensor" else {}
        return Adam(params, lr=lr, weight_decay=float(LAM[k] * 0.1), decay=form, decay_scale="schedule",
                    backend="reference", **extra)

    opt, _ = check_stacked_equals_separate(stacked, separate)
    expected_max = peak if max_lr == "tensor" else LR
    assert_close(opt.param_groups[0]["decay_max_lr"], expected_max, rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["reference", "foreach"])
def test_schedule_scale_with_lr_tensor_written_in_place(backend):
    """torch's LR schedulers write a tensor lr in place (``group['lr'].fill_``); the default
    ``max_lr`` must keep the peak lr from construction, not follow the scheduled one."""

    def stacked(params, lr):
        return Adam(params, lr=lr, weight_decay=LAM * 0.1, decay="decoupled", decay_scale="schedule", backend=backend)

    def separate(params, lr, k):
        return Adam(params, lr=lr, weight_decay=float(LAM[k] * 0.1), decay="decoupled", decay_scale="schedule",
                    backend="reference")

    opt, _ = check_stacked_equals_separate(stacked, separate, in_place_lr=True)
    assert_close(opt.param_groups[0]["decay_max_lr"], LR, rtol=0, atol=0)


# --------------------------------------------------------------------------- weight_decay schedules


def wd_factor(step: int) -> float:
    return 1.0 if step < 3 else 0.25 * (step - 1)


@pytest.mark.parametrize("backend", ["reference", "foreach"])
@pytest.mark.parametrize("form", ["decoupled", "l2", "stable"])
def test_weight_decay_schedule_returning_per_model_tensor(form, backend):
    seen: list[int] = []

    def stacked(params, lr):
        def schedule(step):
            seen.append(step)
            return LAM * wd_factor(step)

        return Adam(params, lr=lr, weight_decay=schedule, decay=form, backend=backend)

    def separate(params, lr, k):
        return Adam(params, lr=lr, weight_decay=lambda step: float(LAM[k]) * wd_factor(step), decay=form,
                    backend="reference")

    check_stacked_equals_separate(stacked, separate, shapes=SHAPES[:2] if form == "stable" else SHAPES)
    assert seen == list(range(STEPS))


# --------------------------------------------------------------------------- compiled

COMPILED_CASES = [
    ("adam", "decoupled", dict(decay_to="init", amsgrad=True)),
    ("adam", "stable", dict(maximize=True)),
    ("adam", "prox_euclid", dict(decay_to="init")),
    ("adam", "cautious", dict()),
    ("sgd", "stable", dict(decay_to="init", nesterov=True)),
    ("sgd", "l2", dict()),
]


@pytest.mark.parametrize("direction,form,flags", COMPILED_CASES, ids=[f"{d}-{f}" for d, f, _ in COMPILED_CASES])
def test_compiled_stacked_equals_separate(direction, form, flags, executors):
    check_stacked_equals_separate(*(adam if direction == "adam" else sgd)("compiled", form, **flags))
    assert {name for name, _ in executors} >= {"compiled"} and all(name != "foreach" for name, _ in executors)


def test_compiled_schedule_scale_and_wd_schedule():
    """decay_scale='schedule' with a (K,) max_lr and a λ schedule returning a (K,) tensor, compiled."""
    peak = torch.tensor([0.02, 0.05, 0.1, 0.04], dtype=torch.float64)

    def stacked(params, lr):
        return Adam(params, lr=lr, weight_decay=lambda t: LAM * (0.1 * wd_factor(t)), decay="prox",
                    decay_scale="schedule", max_lr=peak.clone(), backend="compiled")

    def separate(params, lr, k):
        return Adam(params, lr=lr, weight_decay=lambda t: float(LAM[k]) * (0.1 * wd_factor(t)), decay="prox",
                    decay_scale="schedule", max_lr=float(peak[k]), backend="reference")

    check_stacked_equals_separate(stacked, separate)


# --------------------------------------------------------------------------- validation


def test_mismatched_stack_is_rejected():
    with pytest.raises(ValueError, match="params"):
        Adam([torch.nn.Parameter(torch.zeros(3, 2))], lr=LR.clone(), weight_decay=0.1)
    with pytest.raises(ValueError, match="same length"):
        Adam([torch.nn.Parameter(torch.zeros(K, 2))], lr=LR.clone(), weight_decay=torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="params"):
        Adam([torch.nn.Parameter(torch.zeros(()))], lr=LR.clone())


# --------------------------------------------------------------------------- fused: one torch call per model


@pytest.mark.parametrize("flags", [{}, dict(amsgrad=True, maximize=True)], ids=["plain", "amsgrad-maximize"])
@pytest.mark.parametrize("form", [f for f in FORMS if RULES[f].fused(1.0, 1.0, 0.0, 0.0) and not RULES[f].needs])
def test_adam_fused_stacked_equals_separate(form, flags, executors):
    """The fused path runs each stacked model's slices with its own lr and λ (model 0 has λ = 0)."""
    check_stacked_equals_separate(*adam("fused", form, **flags))
    assert {name for name, _ in executors} == {"fused", "reference"}


def test_adam_fused_stacked_zero_lr_of_one_model():
    """A model whose lr_t is 0 while its decay is not (decay_scale='constant') runs its rule as written."""
    lr = torch.tensor([0.01, 0.0, 0.05, 0.02], dtype=torch.float64)

    def stacked(params, lr_):
        return Adam(params, lr=lr_, weight_decay=LAM.clone(), decay="decoupled", decay_scale="constant",
                    backend="fused")

    def separate(params, lr_, k):
        return Adam(params, lr=lr_, weight_decay=float(LAM[k]), decay="decoupled", decay_scale="constant",
                    backend="reference")

    _, params = check_stacked_equals_separate(stacked, separate, lr=lr)
    assert not torch.equal(params[0][1], initial()[0][1])  # model 1 decayed with lr 0
