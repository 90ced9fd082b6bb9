"""Hand-computed values for each small function of ``rules`` and ``directions``, on tensors and on
TensorLists (the foreach path runs the same functions on TensorLists: both must agree)."""

from __future__ import annotations

import math

import pytest
import torch

from decaylab.optim import directions, rules
from decaylab.optim.executors.base import expand as _expand
from decaylab.optim.tensorlist import TensorList


def t(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def close(actual, expected):
    torch.testing.assert_close(
        actual, expected if isinstance(expected, torch.Tensor) else t(*expected), rtol=1e-14, atol=1e-15
    )


# --------------------------------------------------------------------------- scales


@pytest.mark.parametrize("scale,expected", [("lr", 0.05), ("schedule", 0.5), ("corrected", 0.025), ("constant", 1.0)])
def test_decay_scale_floats(scale, expected):
    value = rules.decay_scale(scale, 0.05, 0.1)
    assert value == pytest.approx(expected, rel=1e-15)
    assert isinstance(value, float)


@pytest.mark.parametrize(
    "scale,expected",
    [
        ("lr", (0.05, 0.2, 0.0)),
        ("schedule", (0.5, 0.5, 0.0)),
        ("corrected", (0.025, 0.1, 0.0)),
        ("constant", (1, 1, 1)),
    ],
)
def test_decay_scale_tensors(scale, expected):
    lr, max_lr = t(0.05, 0.2, 0.0), t(0.1, 0.4, 0.3)
    value = rules.decay_scale(scale, lr, max_lr)
    assert value.dtype == torch.float64 and value.shape == (3,)
    close(value, expected)
    # a 0-dim tensor stays a 0-dim tensor
    assert rules.decay_scale(scale, torch.tensor(0.05), torch.tensor(0.1)).shape == ()


def test_decay_scale_schedule_is_one_at_the_peak_and_corrected_is_lr_there():
    assert rules.decay_scale("schedule", 0.3, 0.3) == 1.0
    assert rules.decay_scale("corrected", 0.3, 0.3) == pytest.approx(0.3)


def test_decay_scale_unknown_name():
    with pytest.raises(ValueError, match=r"^decay_scale must be one of \('lr', 'schedule', 'corrected', 'constant'\)"):
        rules.decay_scale("cosine", 0.1, 0.1)


# --------------------------------------------------------------------------- forms


def test_offset():
    w = t(2.0, -4.0)
    assert rules.offset(w, None) is w
    close(rules.offset(w, t(1.0, 1.0)), (1.0, -5.0))


def test_l2_gradient():
    g, w = t(1.0, -2.0), t(2.0, 4.0)
    close(rules.l2_gradient(g, w, None, 0.5), (2.0, 0.0))
    close(rules.l2_gradient(g, w, t(1.0, 1.0), 0.5), (1.5, -0.5))
    close(rules.l2_gradient(g, w, None, 0.0), g)


def test_decoupled():
    w = t(2.0, -4.0)
    close(rules.decoupled(w, None, 0.1, 0.5), (1.9, -3.8))  # w·(1 − 0.05)
    close(rules.decoupled(w, t(1.0, 1.0), 0.1, 0.5), (1.95, -3.75))  # w − 0.05·(w − 1)
    close(rules.decoupled(w, w.clone(), 0.1, 0.5), w)  # at the target: no pull


def test_cautious():
    w = t(2.0, -4.0, 3.0, -1.0, 5.0)
    u = t(1.0, 1.0, -1.0, -2.0, 0.0)  # u·w = 2, −4, −3, 2, 0 → mask 1, 0, 0, 1, 1
    close(rules.cautious(w, None, u, 0.1, 0.5), (1.9, -4.0, 3.0, -0.95, 4.75))
    w_ref = t(3.0, -5.0, 3.0, 0.0, 5.0)  # d = −1, 1, 0, −1, 0; u·d = −1, 1, 0, 2, 0 → mask 0, 1, 1, 1, 1
    close(rules.cautious(w, w_ref, u, 0.1, 0.5), (2.0, -4.05, 3.0, -0.95, 5.0))
    # u = 0 everywhere: the mask is all ones, cautious = decoupled
    close(rules.cautious(w, None, torch.zeros(5, dtype=torch.float64), 0.1, 0.5), rules.decoupled(w, None, 0.1, 0.5))


def test_stable():
    w = t(2.0, -4.0)
    close(rules.stable(w, None, 0.1, 0.5, torch.tensor(4.0, dtype=torch.float64)), (1.95, -3.9))  # 0.05/sqrt(4)
    close(rules.stable(w, t(1.0, 1.0), 0.1, 0.5, torch.tensor(4.0, dtype=torch.float64)), (1.975, -3.875))
    # SGDS: mean_vhat = ((1 − μ)/(1 − δ))² makes the factor (1 − δ)/(1 − μ)
    mu, delta = 0.9, 0.1
    factor = torch.tensor(((1 - mu) / (1 - delta)) ** 2, dtype=torch.float64)
    close(rules.stable(w, None, 0.01, 0.5, factor), w * (1 - 0.01 * 0.5 * 9))


def test_prox():
    z = t(2.5, -5.0)  # s·λ = 0.25
    close(rules.prox(z, None, 0.5, 0.5), (2.0, -4.0))
    close(rules.prox(z, t(0.5, -1.0), 0.5, 0.5), (0.5 + 2.0 / 1.25, -1.0 - 4.0 / 1.25))


def test_prox_is_the_proximal_map():
    """prox(z) = argmin_w λ/2·‖w − w_ref‖² + 1/(2s)·‖w − z‖²: the gradient vanishes there."""
    z, w_ref, s, lam = t(2.5, -5.0, 0.3), t(0.5, -1.0, 2.0), 0.3, 0.7
    w = rules.prox(z, w_ref, s, lam)
    torch.testing.assert_close(lam * (w - w_ref) + (w - z) / s, torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-13)


def test_prox_euclid():
    z, D = t(3.0, -4.5), t(0.5, 2.0)  # s·λ = 0.25 → factors 1 + 0.25/D = 1.5, 1.125
    close(rules.prox_euclid(z, None, 0.5, 0.5, D), (2.0, -4.0))
    close(rules.prox_euclid(z, t(1.0, 0.5), 0.5, 0.5, D), (1.0 + 2.0 / 1.5, 0.5 - 5.0 / 1.125))
    # D = 1 (SGD): the Euclidean prox is the plain prox
    close(rules.prox_euclid(z, t(1.0, 0.5), 0.5, 0.5, 1.0), rules.prox(z, t(1.0, 0.5), 0.5, 0.5))


def test_forms_with_zero_decay_are_the_identity():
    w, u, z = t(2.0, -4.0), t(-1.0, -1.0), t(1.5, 0.5)
    zero = torch.tensor(0.0, dtype=torch.float64)
    for w_ref in (None, t(1.0, 1.0)):
        assert torch.equal(rules.decoupled(w, w_ref, 0.1, zero), w)
        assert torch.equal(rules.cautious(w, w_ref, u, 0.1, zero), w)
        assert torch.equal(rules.stable(w, w_ref, 0.1, zero, torch.tensor(2.0, dtype=torch.float64)), w)
        assert torch.equal(rules.prox(z, w_ref, 0.1, zero), z)
        assert torch.equal(rules.prox_euclid(z, w_ref, 0.1, zero, t(0.5, 2.0)), z)


# --------------------------------------------------------------------------- directions


def test_adam_moments():
    g, m, v = t(1.0, -2.0), t(0.5, 0.5), t(0.0, 1.0)
    m1, v1, vmax = directions.adam_moments(g, m, v, None, 0.9, 0.99)
    close(m1, (0.55, 0.25))  # 0.9·0.5 + 0.1·g
    close(v1, (0.01, 1.03))  # 0.99·v + 0.01·g²
    assert vmax is None
    _, _, vmax = directions.adam_moments(g, m, v, t(0.5, 0.5), 0.9, 0.99)
    close(vmax, (0.5, 1.03))


def test_adam_direction():
    m, v = t(0.1, -0.2), t(0.04, 0.01)
    step = torch.tensor(1.0, dtype=torch.float64)  # bias corrections 1 − β^1 = 0.1, 0.01
    u, D = directions.adam_direction(m, v, 0.9, 0.99, 0.0, step)
    close(D, (2.0, 1.0))  # sqrt(v)/sqrt(0.01)
    close(u, (0.5, -2.0))  # (m/0.1)/D
    u, D = directions.adam_direction(m, v, 0.9, 0.99, 0.5, step)
    close(D, (2.5, 1.5))
    close(u, (0.4, -2.0 / 1.5))
    step = torch.tensor(2.0, dtype=torch.float64)  # 1 − 0.9² = 0.19, 1 − 0.99² = 0.0199
    u, D = directions.adam_direction(m, v, 0.9, 0.99, 0.0, step)
    close(D, t(0.2, 0.1) / math.sqrt(0.0199))
    close(u, t(0.1, -0.2) / 0.19 / D)


def test_adam_first_step_is_the_sign_of_the_gradient():
    """From zero moments with ε = 0, m̂_1 = g and v̂_1 = g²: u_1 = g/|g|."""
    g = t(3.0, -0.001, 1e5)
    zeros = torch.zeros(3, dtype=torch.float64)
    m, v, _ = directions.adam_moments(g, zeros, zeros, None, 0.9, 0.999)
    u, _ = directions.adam_direction(m, v, 0.9, 0.999, 0.0, torch.tensor(1.0, dtype=torch.float64))
    close(u, (1.0, -1.0, 1.0))


def test_adam_vhat():
    close(directions.adam_vhat(t(0.01, 0.03), 0.9, torch.tensor(2.0, dtype=torch.float64)), (0.01 / 0.19, 0.03 / 0.19))


def test_sgd_momentum():
    g, buf = t(2.0, 4.0), t(1.0, -1.0)
    close(directions.sgd_momentum(g, buf, 0.9, 0.5), (2.9 - 1.0, 2.0 - 0.9))  # 0.9·b + 0.5·g
    close(directions.sgd_momentum(g, buf, 0.0, 1.0), g)  # first step: b_1 = g_1


def test_sgd_direction():
    g, buf = t(2.0, 4.0), t(1.9, 1.1)
    assert directions.sgd_direction(g, None, 0.0, False) is g
    assert directions.sgd_direction(g, buf, 0.9, False) is buf
    close(directions.sgd_direction(g, buf, 0.9, True), (3.71, 4.99))  # g + μ·b


# --------------------------------------------------------------------------- the same functions on TensorLists

K = 3


@pytest.fixture
def tensors():
    gen = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    # Items of different ndim, all stacking K models along dim 0; signs of both kinds.
    return {name: [rnd(K, 4), rnd(K, 2, 3), rnd(K)] for name in ("w", "w_ref", "u", "z", "g", "m", "buf")} | {
        "v": [rnd(K, 4).abs(), rnd(K, 2, 3).abs(), rnd(K).abs()],
        "D": [rnd(K, 4).abs() + 0.1, rnd(K, 2, 3).abs() + 0.1, rnd(K).abs() + 0.1],
    }


HPARAMS = {
    "float": (0.1, 0.5, torch.tensor(4.0, dtype=torch.float64)),  # mean_vhat is always a tensor
    "0-dim": (
        torch.tensor(0.1, dtype=torch.float64),
        torch.tensor(0.5, dtype=torch.float64),
        torch.tensor(4.0, dtype=torch.float64),
    ),
    "stacked": (t(0.1, 0.2, 0.05), t(0.5, 0.0, 1.5), t(4.0, 0.25, 1.0)),  # (K,), broadcast per item by _expand
}


def test_expand_shapes():
    h = t(1.0, 2.0, 3.0)
    assert _expand(h, torch.zeros(K, 2, 3)).shape == (K, 1, 1)
    assert _expand(h, torch.zeros(K)).shape == (K,)
    expanded = _expand(h, TensorList([torch.zeros(K, 4), torch.zeros(K, 2, 3), torch.zeros(K)]))
    assert [x.shape for x in expanded.items] == [(K, 1), (K, 1, 1), (K,)]
    assert _expand(0.5, torch.zeros(K, 2)) == 0.5
    scalar = torch.tensor(0.5)
    assert _expand(scalar, torch.zeros(K, 2)) is scalar
    # model k of a stacked tensor is scaled by h[k]
    x = torch.ones(K, 2, 3, dtype=torch.float64)
    close((x * _expand(h, x))[:, 0, 0], h)


def _per_item(fn, data, names, hp_values, i):
    """fn on item i of each tensor list, with the hyperparameters broadcast against that item."""
    args = [data[n][i] for n in names]
    hps = [_expand(h, args[0]) for h in hp_values]
    return fn(*args, *hps)


def _on_list(fn, data, names, hp_values):
    args = [TensorList(data[n]) for n in names]
    hps = [_expand(h, args[0]) for h in hp_values]
    return fn(*args, *hps)


CASES = {
    "l2_gradient": (lambda g, w, lam: rules.l2_gradient(g, w, None, lam), ["g", "w"], ("lam",)),
    "l2_gradient_ref": (lambda g, w, r, lam: rules.l2_gradient(g, w, r, lam), ["g", "w", "w_ref"], ("lam",)),
    "decoupled": (lambda w, s, lam: rules.decoupled(w, None, s, lam), ["w"], ("s", "lam")),
    "decoupled_ref": (lambda w, r, s, lam: rules.decoupled(w, r, s, lam), ["w", "w_ref"], ("s", "lam")),
    "cautious": (lambda w, u, s, lam: rules.cautious(w, None, u, s, lam), ["w", "u"], ("s", "lam")),
    "cautious_ref": (lambda w, r, u, s, lam: rules.cautious(w, r, u, s, lam), ["w", "w_ref", "u"], ("s", "lam")),
    "stable": (lambda w, s, lam, mv: rules.stable(w, None, s, lam, mv), ["w"], ("s", "lam", "mean_vhat")),
    "stable_ref": (lambda w, r, s, lam, mv: rules.stable(w, r, s, lam, mv), ["w", "w_ref"], ("s", "lam", "mean_vhat")),
    "prox": (lambda z, s, lam: rules.prox(z, None, s, lam), ["z"], ("s", "lam")),
    "prox_ref": (lambda z, r, s, lam: rules.prox(z, r, s, lam), ["z", "w_ref"], ("s", "lam")),
    "prox_euclid": (lambda z, D, s, lam: rules.prox_euclid(z, None, s, lam, D), ["z", "D"], ("s", "lam")),
    "prox_euclid_ref": (lambda z, r, D, s, lam: rules.prox_euclid(z, r, s, lam, D), ["z", "w_ref", "D"], ("s", "lam")),
    "sgd_momentum": (lambda g, b, keep, gain: directions.sgd_momentum(g, b, keep, gain), ["g", "buf"], ("s", "lam")),
    "sgd_nesterov": (lambda g, b: directions.sgd_direction(g, b, 0.9, True), ["g", "buf"], ()),
}


@pytest.mark.parametrize("hp_kind", list(HPARAMS))
@pytest.mark.parametrize("case", list(CASES))
def test_tensorlist_matches_per_tensor(case, hp_kind, tensors):
    fn, names, hp_names = CASES[case]
    s, lam, mean_vhat = HPARAMS[hp_kind]
    hp_values = [{"s": s, "lam": lam, "mean_vhat": mean_vhat}[n] for n in hp_names]
    on_list = _on_list(fn, tensors, names, hp_values)
    assert isinstance(on_list, TensorList) and len(on_list) == 3
    for i, item in enumerate(on_list.items):
        expected = _per_item(fn, tensors, names, hp_values, i)
        assert item.shape == expected.shape and item.dtype == expected.dtype
        torch.testing.assert_close(item, expected, rtol=1e-14, atol=1e-15)
    if hp_kind == "stacked" and "lam" in hp_names and case not in ("sgd_momentum",):
        # model 1 has λ = 0: its slices are the λ = 0 result, model 0's are not
        zero = [0.0 if n == "lam" else {"s": s, "mean_vhat": mean_vhat}[n] for n in hp_names]
        for i, item in enumerate(on_list.items):
            no_decay = _per_item(fn, tensors, names, zero, i)
            torch.testing.assert_close(item[1], no_decay[1], rtol=1e-14, atol=1e-15)
            assert not torch.allclose(item[0], no_decay[0])


@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_on_tensorlist_matches_per_tensor(amsgrad, tensors):
    beta1, beta2, eps = 0.9, 0.99, 1e-3
    steps = [
        torch.tensor(n, dtype=torch.float64) for n in (1.0, 3.0, 10.0)
    ]  # one count per tensor, as in the optimizer
    v_max = TensorList([x * 0.5 for x in tensors["v"]]) if amsgrad else None
    m, v, vm = directions.adam_moments(
        TensorList(tensors["g"]), TensorList(tensors["m"]), TensorList(tensors["v"]), v_max, beta1, beta2
    )
    u, D = directions.adam_direction(m, vm if amsgrad else v, beta1, beta2, eps, TensorList(steps))
    vhat = directions.adam_vhat(vm if amsgrad else v, beta2, TensorList(steps))
    for i in range(3):
        mi, vi, vmi = directions.adam_moments(
            tensors["g"][i], tensors["m"][i], tensors["v"][i], tensors["v"][i] * 0.5 if amsgrad else None, beta1, beta2
        )
        ui, Di = directions.adam_direction(mi, vmi if amsgrad else vi, beta1, beta2, eps, steps[i])
        for got, want in [
            (m.items[i], mi),
            (v.items[i], vi),
            (u.items[i], ui),
            (D.items[i], Di),
            (vhat.items[i], directions.adam_vhat(vmi if amsgrad else vi, beta2, steps[i])),
        ]:
            torch.testing.assert_close(got, want, rtol=1e-14, atol=1e-15)
        if amsgrad:
            torch.testing.assert_close(vm.items[i], vmi, rtol=0, atol=0)


def test_sgd_direction_on_tensorlist():
    g, b = TensorList([t(1.0, 2.0), t(3.0)]), TensorList([t(0.5, 0.5), t(-1.0)])
    assert directions.sgd_direction(g, None, 0.0, False) is g
    assert directions.sgd_direction(g, b, 0.9, False) is b
    out = directions.sgd_direction(g, b, 0.9, True)
    close(out.items[0], (1.45, 2.45))
    close(out.items[1], (2.1,))


def test_tensorlist_ge_matches_tensor_ge():
    """The cautious mask on TensorLists is built from sign(); it must equal tensor.ge, zeros included."""
    x = [t(-2.0, -0.0, 0.0, 1e-300, -1e-300, 3.0), t(0.0)]
    got = TensorList(x).ge(0)
    for a, b in zip(got.items, x, strict=True):
        assert torch.equal(a, b.ge(0).to(b.dtype))
    got = TensorList(x).ge(1.0)
    for a, b in zip(got.items, x, strict=True):
        assert torch.equal(a, b.ge(1.0).to(b.dtype))


def test_tensorlist_reflected_operators():
    x = TensorList([t(2.0, 4.0), t(0.5)])
    close((1 - x).items[0], (-1.0, -3.0))
    close((1 + x).items[1], (1.5,))
    close((3 * x).items[0], (6.0, 12.0))
    close((1 / x).items[0], (0.5, 0.25))
    close((0.5**x).items[0], (0.25, 0.0625))
    close((-x).items[1], (-0.5,))
    close(x.sqrt().items[0], (math.sqrt(2.0), 2.0))
    close(x.maximum(TensorList([t(3.0, 3.0), t(0.0)])).items[0], (3.0, 4.0))
    close(x.lerp(TensorList([t(0.0, 0.0), t(1.5)]), 0.25).items[1], (0.75,))
    zero_dim = torch.tensor(0.5, dtype=torch.float64)
    close((x - zero_dim).items[0], (1.5, 3.5))
    close((x + zero_dim).items[1], (1.0,))
