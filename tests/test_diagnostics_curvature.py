"""decaylab.diagnostics.curvature against brute force: full Jacobians and exact Hessians in float64."""
import copy
import doctest
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from decaylab.diagnostics import curvature
from decaylab.diagnostics.base import Context
from decaylab.diagnostics.curvature import (
    HessianTrace,
    JacobianNorm,
    ScaleInvariantSharpness,
    StackedFunctional,
    hessian_trace,
    hutchinson_samples,
    jacobian_norm,
    jacobian_norms,
    scale_invariant_sharpness,
)

F = nn.functional


def test_doctests() -> None:
    result = doctest.testmod(curvature)
    assert result.attempted >= 6
    assert result.failed == 0


# --- tiny models and brute-force references ------------------------------------------------------


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()


def cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)
    ).double()
    # Non-trivial running statistics, so that eval mode differs visibly from train mode.
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    return model


class NormNet(nn.Module):
    """``head(h/‖h‖)`` with ``h = hidden(x)``: the loss is invariant to ``hidden.weight → c·hidden.weight``."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.hidden = nn.Linear(4, 6, bias=False)
        self.head = nn.Linear(6, 3)
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.hidden(x)
        return self.head(h / h.norm(dim=1, keepdim=True))


def classification_data(n: int, shape: tuple[int, ...], seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def brute_force_jacobian_norms(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    fixed = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    fixed.update((n, b) for n, b in model.named_buffers())
    params = tuple(dict(model.named_parameters())[n].detach() for n in names)
    was_training = model.training
    model.eval()
    norms = []
    for x in inputs:
        def logits(*ps, x=x):
            return functional_call(model, {**dict(zip(names, ps, strict=True)), **fixed}, (x[None],))[0]

        jac = torch.autograd.functional.jacobian(logits, params)
        norms.append(torch.sqrt(sum(j.square().sum() for j in jac)))
    model.train(was_training)
    return torch.stack(norms)


def exact_hessian(model: nn.Module, loss_fn, batches, names=None, train: bool = False) -> torch.Tensor:
    """The full-batch Hessian over the ``names`` block (default: all parameters), flattened."""
    named = dict(model.named_parameters())
    names = list(named) if names is None else list(names)
    shapes = [named[n].shape for n in names]
    sizes = [named[n].numel() for n in names]
    others = {n: p.detach() for n, p in named.items() if n not in names}
    total = sum(len(x) for x, _ in batches)
    saved = [(m, m.training) for m in model.modules()]
    model.train(train)

    def loss(flat):
        chunks = [c.view(s) for c, s in zip(flat.split(sizes), shapes, strict=True)]
        tensors = {**dict(zip(names, chunks, strict=True)), **others}
        # Cloned buffers: BatchNorm in train mode updates them.
        tensors.update((n, b.clone()) for n, b in model.named_buffers())
        return sum(loss_fn(functional_call(model, tensors, (x,)), y) * len(x) / total for x, y in batches)

    flat = torch.cat([named[n].detach().reshape(-1) for n in names])
    hessian = torch.autograd.functional.hessian(loss, flat, vectorize=True)
    for m, training in saved:
        m.training = training
    return hessian


def snapshot(model: nn.Module):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        {n: (None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()},
        [m.training for m in model.modules()],
    )


def assert_untouched(model: nn.Module, before) -> None:
    state, grads, modes = before
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    for n, p in model.named_parameters():
        if grads[n] is None:
            assert p.grad is None, n
        else:
            assert torch.equal(p.grad, grads[n]), n
    assert [m.training for m in model.modules()] == modes


# --- Jacobian norm -------------------------------------------------------------------------------


@pytest.mark.parametrize("make,shape", [(mlp, (5,)), (cnn, (1, 6, 6))], ids=["mlp", "cnn"])
@pytest.mark.parametrize("chunk_size", [None, 1, 3])
def test_jacobian_norms_match_full_jacobian(make, shape, chunk_size) -> None:
    model = make()
    inputs, _ = classification_data(7, shape)
    expected = brute_force_jacobian_norms(model, inputs)
    got = jacobian_norms(model, inputs, chunk_size=chunk_size)
    assert got.shape == (7,)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)
    mean = jacobian_norm(model, inputs, chunk_size=chunk_size)
    assert isinstance(mean, float)
    assert mean == pytest.approx(expected.mean().item(), rel=1e-6)


def test_default_chunk_size_bounds_the_jacobian_entries(monkeypatch) -> None:
    model = mlp()
    inputs, _ = classification_data(7, (5,))
    n_params = sum(p.numel() for p in model.parameters())
    assert curvature._jacobian_chunk_size(curvature._functional(model), inputs) == 2**22 // (3 * n_params)
    monkeypatch.setattr(curvature, "JACOBIAN_CHUNK_NUMBERS", 2 * 3 * n_params)  # two inputs per chunk
    assert curvature._jacobian_chunk_size(curvature._functional(model), inputs) == 2
    torch.testing.assert_close(jacobian_norms(model, inputs), brute_force_jacobian_norms(model, inputs), rtol=1e-6,
                               atol=0)
    monkeypatch.setattr(curvature, "JACOBIAN_CHUNK_NUMBERS", 1)  # never fewer than one input
    assert curvature._jacobian_chunk_size(curvature._functional(model), inputs) == 1


def test_jacobian_uses_eval_mode_and_restores_it() -> None:
    model = cnn().train()
    model[2].eval()  # a mixed mode must come back as it was
    inputs, _ = classification_data(4, (1, 6, 6))
    before = snapshot(model)
    got = jacobian_norms(model, inputs)
    assert_untouched(model, before)
    # The reference evaluates in eval mode (running statistics); train mode would fail on one example.
    torch.testing.assert_close(got, brute_force_jacobian_norms(model, inputs), rtol=1e-6, atol=0)


def test_jacobian_counts_only_trainable_parameters() -> None:
    model = mlp()
    model[0].weight.requires_grad_(False)
    inputs, _ = classification_data(5, (5,))
    expected = brute_force_jacobian_norms(model, inputs)
    torch.testing.assert_close(jacobian_norms(model, inputs), expected, rtol=1e-6, atol=0)
    assert jacobian_norm(model, inputs) < jacobian_norm(mlp(), inputs)


@pytest.mark.parametrize("make,shape", [(mlp, (5,)), (cnn, (1, 6, 6))], ids=["mlp", "cnn"])
def test_jacobian_stacked_equals_separate(make, shape) -> None:
    models = [make(seed) for seed in range(3)]
    stacked = StackedFunctional.from_modules(models)
    inputs, _ = classification_data(6, shape)
    got = jacobian_norms(stacked, inputs, chunk_size=4)
    assert got.shape == (3, 6)
    for k, model in enumerate(models):
        torch.testing.assert_close(got[k], jacobian_norms(model, inputs), rtol=1e-10, atol=0)
    means = jacobian_norm(stacked, inputs)
    assert isinstance(means, torch.Tensor) and means.shape == (3,)
    torch.testing.assert_close(means, got.mean(1))


# --- Hessian trace -------------------------------------------------------------------------------


def regression_batches():
    # 200 examples keep the Hessian's off-diagonal mass small enough (sqrt(2·Σ_{i≠j} H_ij²) ≈ 0.55·Tr H)
    # for 2000 Hutchinson vectors to land within 5%; unequal sizes make the weighting n_b/N matter.
    x, y = classification_data(200, (5,))
    return [(x[:80], y[:80]), (x[80:], y[80:])]


def test_hutchinson_matches_exact_trace() -> None:
    """n = 2000 Rademacher vectors: within 3 standard errors and within 5% of the exact trace, and
    the standard error itself matches its theoretical value sqrt(2·Σ_{i≠j} H_ij² / n)."""
    model, batches = mlp(), regression_batches()
    hessian = exact_hessian(model, F.cross_entropy, batches)
    exact = hessian.trace().item()
    theory_sd = math.sqrt(2 * (hessian.square().sum() - hessian.diagonal().square().sum()).item())
    n = 2000
    g = torch.Generator().manual_seed(0)
    estimate, se = hessian_trace(model, F.cross_entropy, batches, n_samples=n, generator=g, chunk_size=500)
    assert abs(estimate - exact) < 3 * se
    assert estimate == pytest.approx(exact, rel=0.05)
    assert se == pytest.approx(theory_sd / math.sqrt(n), rel=0.15)


def test_standard_error_shrinks_like_one_over_sqrt_n() -> None:
    model, batches = mlp(), regression_batches()
    hessian = exact_hessian(model, F.cross_entropy, batches)
    theory_sd = math.sqrt(2 * (hessian.square().sum() - hessian.diagonal().square().sum()).item())
    ses = {}
    for n in (64, 256, 1024):
        g = torch.Generator().manual_seed(n)
        _, ses[n] = hessian_trace(model, F.cross_entropy, batches, n_samples=n, generator=g, chunk_size=None)
        assert ses[n] == pytest.approx(theory_sd / math.sqrt(n), rel=0.25)
    # Each quadrupling of n halves the standard error (up to the noise in the sample std).
    assert 1.5 < ses[64] / ses[256] < 2.7
    assert 1.5 < ses[256] / ses[1024] < 2.7


def test_hutchinson_is_exact_for_a_diagonal_hessian() -> None:
    model = nn.Linear(3, 1, bias=False).double()
    x, y = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)), torch.zeros(3, 1, dtype=torch.float64)
    trace, se = hessian_trace(model, F.mse_loss, [(x, y)], n_samples=4)
    assert trace == pytest.approx(2 / 3 * 14, rel=1e-12)
    assert se == 0.0
    _, se_one = hessian_trace(model, F.mse_loss, [(x, y)], n_samples=1)
    assert math.isnan(se_one)


def test_zero_hessian_and_unused_parameters() -> None:
    """A loss linear in the parameters has H = 0; a parameter the forward never uses has zero rows."""
    layer = nn.Linear(3, 2).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    trace, se = hessian_trace(layer, lambda out, y: out.mean(), [(x, None)], n_samples=3)
    assert trace == 0.0 and se == 0.0

    class WithUnused(nn.Module):
        def __init__(self):
            super().__init__()
            self.net, self.unused = mlp(), nn.Parameter(torch.ones(4, dtype=torch.float64))

        def forward(self, x):
            return self.net(x)

    model, batches = WithUnused(), regression_batches()
    g = torch.Generator().manual_seed(0)
    with_unused = hessian_trace(model, F.cross_entropy, batches, n_samples=5, generator=g)
    names = [n for n, _ in model.named_parameters() if n != "unused"]
    without = hessian_trace(model, F.cross_entropy, batches, n_samples=5, params=names,
                            generator=torch.Generator().manual_seed(0))
    assert with_unused[0] != 0.0
    # Different draws (the unused vector consumes random bits), so compare with the exact trace instead.
    exact = exact_hessian(model, F.cross_entropy, batches, names).trace().item()
    assert abs(with_unused[0] - exact) < 5 * with_unused[1] and abs(without[0] - exact) < 5 * without[1]


def test_batches_are_weighted_by_size_and_chunking_does_not_change_draws() -> None:
    model, batches = mlp(), regression_batches()
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])

    def samples(batches, chunk_size):
        return hutchinson_samples(model, F.cross_entropy, batches, n_samples=10, chunk_size=chunk_size,
                                  generator=torch.Generator().manual_seed(3))

    reference = samples([(x, y)], None)
    for chunk_size in (1, 3, 32, None):
        torch.testing.assert_close(samples(batches, chunk_size), reference, rtol=1e-10, atol=1e-12)


def test_hessian_block_selection() -> None:
    model, batches = mlp(), regression_batches()
    names = ["2.weight", "2.bias"]
    exact = exact_hessian(model, F.cross_entropy, batches, names).trace().item()
    g = torch.Generator().manual_seed(0)
    estimate, se = hessian_trace(model, F.cross_entropy, batches, n_samples=1000, params=names, generator=g,
                                 chunk_size=None)
    assert abs(estimate - exact) < 4 * se
    by_tensor, _ = hessian_trace(model, F.cross_entropy, batches, n_samples=1000, chunk_size=None,
                                 params=[model[2].weight, model[2].bias], generator=torch.Generator().manual_seed(0))
    assert by_tensor == estimate
    with pytest.raises(ValueError, match="not a parameter"):
        hessian_trace(model, F.cross_entropy, batches, params=["nope"])
    with pytest.raises(ValueError, match="not a parameter"):
        hessian_trace(model, F.cross_entropy, batches, params=[torch.zeros(3)])


def test_train_mode_hessian_uses_batch_statistics_and_leaves_buffers() -> None:
    model = cnn().eval()
    x, y = classification_data(8, (1, 6, 6))
    batches = [(x, y)]
    before = snapshot(model)
    exact_train = exact_hessian(model, F.cross_entropy, batches, train=True).trace().item()
    exact_eval = exact_hessian(model, F.cross_entropy, batches, train=False).trace().item()
    assert abs(exact_train - exact_eval) > 0.05 * abs(exact_eval)  # the two modes are different functions
    for train, exact in ((True, exact_train), (False, exact_eval)):
        estimate, se = hessian_trace(model, F.cross_entropy, batches, n_samples=400, train=train, chunk_size=None,
                                     generator=torch.Generator().manual_seed(1))
        assert abs(estimate - exact) < 4 * se
    assert_untouched(model, before)


def test_stacked_hessian_and_sharpness_equal_separate() -> None:
    models = [mlp(seed) for seed in range(3)]
    stacked = StackedFunctional.from_modules(models)
    batches = regression_batches()
    for fn, kwargs in ((hessian_trace, {}), (scale_invariant_sharpness, {"params": ["0.weight"]})):
        g = torch.Generator().manual_seed(5)
        est, se = fn(stacked, F.cross_entropy, batches, n_samples=20, generator=g, **kwargs)
        assert est.shape == se.shape == (3,)
        for k, model in enumerate(models):
            est_k, se_k = fn(model, F.cross_entropy, batches, n_samples=20, generator=torch.Generator().manual_seed(5),
                             **kwargs)
            assert est[k].item() == pytest.approx(est_k, rel=1e-10)
            assert se[k].item() == pytest.approx(se_k, rel=1e-8)


def test_functions_leave_model_untouched_even_under_no_grad() -> None:
    model = cnn().train()
    model[2].eval()
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    model[4].bias.grad = None
    x, y = classification_data(6, (1, 6, 6))
    batches = [(x[:3], y[:3]), (x[3:], y[3:])]
    before = snapshot(model)
    with torch.no_grad():
        jacobian_norm(model, x)
        for train in (False, True):
            hessian_trace(model, F.cross_entropy, batches, n_samples=3, train=train)
            scale_invariant_sharpness(model, F.cross_entropy, batches, n_samples=3, train=train, params=["0.weight"])
    assert_untouched(model, before)


# --- scale-invariant sharpness -------------------------------------------------------------------


def scaled(model: NormNet, c: float) -> NormNet:
    out = copy.deepcopy(model)
    with torch.no_grad():
        out.hidden.weight.mul_(c)
    return out


def test_norm_net_is_scale_invariant() -> None:
    model, (x, y) = NormNet(), classification_data(10, (4,))
    torch.testing.assert_close(F.cross_entropy(scaled(model, 3.0)(x), y), F.cross_entropy(model(x), y))


def test_sharpness_is_invariant_exact_hessian() -> None:
    model, batches = NormNet(), [classification_data(10, (4,))]
    c = 3.0
    names = ["hidden.weight"]
    trace = exact_hessian(model, F.cross_entropy, batches, names).trace().item()
    trace_c = exact_hessian(scaled(model, c), F.cross_entropy, batches, names).trace().item()
    norm_sq = model.hidden.weight.square().sum().item()
    assert trace_c == pytest.approx(trace / c**2, rel=1e-10)  # Tr(H) alone falls as 1/c²
    assert trace_c * c**2 * norm_sq == pytest.approx(trace * norm_sq, rel=1e-10)


def test_sharpness_is_invariant_hutchinson() -> None:
    """With the same vectors zᵢ, zᵢᵀH(cw)zᵢ·‖cw‖² = zᵢᵀH(w)zᵢ·‖w‖² for every i: equal to rounding."""
    model, batches = NormNet(), [classification_data(10, (4,))]
    c, n = 3.0, 200

    def run(fn, m, **kw):
        return fn(m, F.cross_entropy, batches, n_samples=n, generator=torch.Generator().manual_seed(0), **kw)

    value, se = run(scale_invariant_sharpness, model, params=["hidden.weight"])
    value_c, se_c = run(scale_invariant_sharpness, scaled(model, c), params=["hidden.weight"])
    assert value_c == pytest.approx(value, rel=1e-10)
    assert se_c == pytest.approx(se, rel=1e-8)
    trace, _ = run(hessian_trace, model, params=["hidden.weight"])
    trace_c, _ = run(hessian_trace, scaled(model, c), params=["hidden.weight"])
    assert trace_c == pytest.approx(trace / c**2, rel=1e-10)
    # And the estimate is of the right thing: Tr(H_ww)·‖w‖² from the exact Hessian.
    exact = exact_hessian(model, F.cross_entropy, batches, ["hidden.weight"]).trace().item()
    assert abs(value - exact * model.hidden.weight.square().sum().item()) < 4 * se


def test_sharpness_over_all_parameters_is_not_invariant() -> None:
    """The default selection includes the head, which is not scale-invariant: the docstring's caveat."""
    model, batches = NormNet(), [classification_data(10, (4,))]

    def run(m):
        return scale_invariant_sharpness(m, F.cross_entropy, batches, n_samples=50,
                                         generator=torch.Generator().manual_seed(0))[0]

    assert abs(run(scaled(model, 3.0)) / run(model) - 1) > 0.05


# --- instruments ---------------------------------------------------------------------------------


def test_instruments_report_the_functions() -> None:
    model, batches = mlp(), regression_batches()
    x = batches[0][0]
    ctx = Context(model=model, optimizer=None, step=10)
    jac = JacobianNorm(x, interval=10)
    assert jac.cheap is False and jac.due(10) and not jac.due(5)
    assert jac.measure(ctx) == {"jacobian_norm": jacobian_norm(model, x)}

    hess = HessianTrace(F.cross_entropy, iter(batches), 8, 10, seed=4)
    expected = hessian_trace(model, F.cross_entropy, batches, n_samples=8, generator=torch.Generator().manual_seed(4))
    assert hess.measure(ctx) == {"hessian_trace": expected[0], "hessian_trace_se": expected[1]}
    assert hess.measure(ctx) != {"hessian_trace": expected[0], "hessian_trace_se": expected[1]}  # fresh vectors

    sharp = ScaleInvariantSharpness(F.cross_entropy, batches, 8, params=["0.weight"], seed=4)
    expected = scale_invariant_sharpness(model, F.cross_entropy, batches, n_samples=8, params=["0.weight"],
                                         generator=torch.Generator().manual_seed(4))
    assert sharp.measure(ctx) == {"scale_invariant_sharpness": expected[0], "scale_invariant_sharpness_se": expected[1]}


def test_instruments_on_stacked_models() -> None:
    models = [mlp(seed) for seed in range(2)]
    stacked = StackedFunctional.from_modules(models)
    batches = regression_batches()
    ctx = Context(model=None, optimizer=None, step=1, stacked=2)
    out = JacobianNorm(batches[0][0], 1, model=stacked).measure(ctx)["jacobian_norm"]
    assert out.shape == (2,)
    out = HessianTrace(F.cross_entropy, batches, 4, 1, model=stacked).measure(ctx)
    assert out["hessian_trace"].shape == out["hessian_trace_se"].shape == (2,)
    with pytest.raises(ValueError, match="StackedFunctional"):
        JacobianNorm(batches[0][0], 1).measure(Context(model=models[0], optimizer=None, step=1, stacked=2))
    with pytest.raises(ValueError, match="3"):
        JacobianNorm(batches[0][0], 1, model=stacked).measure(Context(model=None, optimizer=None, step=1, stacked=3))


def test_argument_checks() -> None:
    model, batches = mlp(), regression_batches()
    with pytest.raises(ValueError, match="n_samples"):
        hessian_trace(model, F.cross_entropy, batches, n_samples=0)
    with pytest.raises(ValueError, match="empty"):
        hessian_trace(model, F.cross_entropy, [])
    with pytest.raises(ValueError, match="chunk_size"):
        jacobian_norms(model, batches[0][0], chunk_size=0)
    with pytest.raises(ValueError, match="interval"):
        JacobianNorm(batches[0][0], interval=0)
    with pytest.raises(TypeError, match="StackedFunctional"):
        jacobian_norm(object(), batches[0][0])
