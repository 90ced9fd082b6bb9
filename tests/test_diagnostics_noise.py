"""decaylab.diagnostics.noise against linear regression, where every per-example gradient is analytic."""
import copy
import doctest

import pytest
import torch
from torch import nn

from decaylab.diagnostics import noise
from decaylab.diagnostics.base import Context
from decaylab.diagnostics.curvature import StackedFunctional
from decaylab.diagnostics.noise import METRICS, GradientNoiseScale, gradient_noise_scale

F = nn.functional
N, D = 24, 4


def test_doctests() -> None:
    result = doctest.testmod(noise)
    assert result.attempted >= 4
    assert result.failed == 0


def regression(seed: int = 0, bias: bool = False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=g, dtype=torch.float64)
    y = torch.randn(N, 1, generator=g, dtype=torch.float64)
    model = nn.Linear(D, 1, bias=bias).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, D, generator=g, dtype=torch.float64))
    return model, x, y


def per_example_gradients(model: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``∇_w (xᵀw + c − y)² = 2·(xᵀw + c − y)·x`` for every example: shape (N, D)."""
    residual = x @ model.weight.detach().T - y
    if model.bias is not None:
        residual = residual + model.bias.detach()
    return 2 * residual * x


def split(x, y, sizes):
    out, start = [], 0
    for size in sizes:
        out.append((x[start:start + size], y[start:start + size]))
        start += size
    return out


def brute_force(per_example: torch.Tensor, sizes) -> dict[str, float]:
    """The documented formulas, from the per-example gradients."""
    parts = per_example.split(list(sizes))
    g = torch.stack([p.mean(0) for p in parts])
    b = torch.tensor(sizes, dtype=per_example.dtype)
    full = per_example.mean(0)
    scatter = (b * (g - full).square().sum(1)).sum()
    trace = scatter / (len(sizes) - 1)
    full_sq = full.square().sum()
    return {
        "gradient_noise_scale": (trace / full_sq).item(),
        "gradient_covariance_trace": trace.item(),
        "full_gradient_sq_norm": full_sq.item(),
        "minibatch_gradient_variance": (scatter / N).item(),
        "relative_minibatch_gradient_variance": (scatter / N / full_sq).item(),
    }


def assert_close_dict(got, expected, rel=1e-10) -> None:
    assert list(got) == list(METRICS)
    for k in METRICS:
        assert got[k] == pytest.approx(expected[k], rel=rel), k


@pytest.mark.parametrize("sizes", [(4,) * 6, (8,) * 3, (5, 7, 12), (1,) * N], ids=["4x6", "8x3", "5-7-12", "1xN"])
def test_matches_brute_force(sizes) -> None:
    model, x, y = regression()
    got = gradient_noise_scale(model, F.mse_loss, split(x, y, sizes))
    assert_close_dict(got, brute_force(per_example_gradients(model, x, y), sizes))


def test_one_example_batches_give_the_sample_covariance_trace() -> None:
    model, x, y = regression()
    per_example = per_example_gradients(model, x, y)
    sample_cov = torch.cov(per_example.T)  # normalized by N − 1
    got = gradient_noise_scale(model, F.mse_loss, split(x, y, (1,) * N))
    assert got["gradient_covariance_trace"] == pytest.approx(sample_cov.trace().item(), rel=1e-10)
    assert got["full_gradient_sq_norm"] == pytest.approx(per_example.mean(0).square().sum().item(), rel=1e-10)


def test_equal_batches_match_mccandlish_two_batch_size_estimator() -> None:
    """``tr(Σ) = mean_i (‖g_i‖² − ‖G‖²)/(1/b − 1/N) = b·m/(m − 1)·mean_i ‖g_i − G‖²`` for equal batches."""
    model, x, y = regression()
    b, m = 4, N // 4
    batches = split(x, y, (b,) * m)
    g = torch.stack([per_example_gradients(model, xb, yb).mean(0) for xb, yb in batches])
    full = g.mean(0)
    mccandlish = ((g.square().sum(1) - full.square().sum()) / (1 / b - 1 / N)).mean()
    got = gradient_noise_scale(model, F.mse_loss, batches)
    assert got["gradient_covariance_trace"] == pytest.approx(mccandlish.item(), rel=1e-10)
    mean_dev = (g - full).square().sum(1).mean().item()
    assert got["gradient_covariance_trace"] == pytest.approx(b * m / (m - 1) * mean_dev, rel=1e-10)
    assert got["minibatch_gradient_variance"] == pytest.approx(mean_dev, rel=1e-10)


def test_estimator_is_unbiased_over_random_partitions() -> None:
    """Averaged over random partitions into batches of 4, S/(m − 1) is the per-example covariance trace."""
    model, x, y = regression()
    per_example = per_example_gradients(model, x, y)
    truth = torch.cov(per_example.T).trace()
    gen = torch.Generator().manual_seed(0)
    perms = torch.stack([torch.randperm(N, generator=gen) for _ in range(20000)])
    g = per_example[perms].view(20000, N // 4, 4, D).mean(2)  # (partitions, m, D)
    scatter = 4 * (g - per_example.mean(0)).square().sum((1, 2))
    assert (scatter / (N // 4 - 1)).mean().item() == pytest.approx(truth.item(), rel=0.02)
    # ... and the library computes exactly that statistic for one partition.
    batches = split(x[perms[0]], y[perms[0]], (4,) * (N // 4))
    got = gradient_noise_scale(model, F.mse_loss, batches)["gradient_covariance_trace"]
    assert got == pytest.approx((scatter[0] / (N // 4 - 1)).item(), rel=1e-10)


def test_identical_batches_have_zero_noise() -> None:
    model, x, y = regression()
    got = gradient_noise_scale(model, F.mse_loss, [(x[:6], y[:6])] * 4)
    assert got["full_gradient_sq_norm"] > 0
    for k in ("gradient_noise_scale", "gradient_covariance_trace", "minibatch_gradient_variance",
              "relative_minibatch_gradient_variance"):
        assert got[k] == 0.0, k


def test_parameter_selection() -> None:
    model, x, y = regression(bias=True)
    sizes = (6,) * 4
    got = gradient_noise_scale(model, F.mse_loss, split(x, y, sizes), params=["weight"])
    assert_close_dict(got, brute_force(per_example_gradients(model, x, y), sizes))
    everything = gradient_noise_scale(model, F.mse_loss, split(x, y, sizes))
    assert everything["full_gradient_sq_norm"] > got["full_gradient_sq_norm"]
    same = gradient_noise_scale(model, F.mse_loss, split(x, y, sizes), params=[model.weight])
    assert same == got


def mlp_with_batchnorm(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(D, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 1)).double()
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.5, 0.5)
    return model


def test_stacked_equals_separate() -> None:
    models = [mlp_with_batchnorm(seed) for seed in range(3)]
    _, x, y = regression()
    batches = split(x, y, (6,) * 4)
    for train in (False, True):
        got = gradient_noise_scale(StackedFunctional.from_modules(models), F.mse_loss, batches, train=train)
        for k, model in enumerate(models):
            separate = gradient_noise_scale(model, F.mse_loss, batches, train=train)
            for name in METRICS:
                assert got[name].shape == (3,)
                assert got[name][k].item() == pytest.approx(separate[name], rel=1e-10), name


def test_train_mode_uses_batch_statistics() -> None:
    """``train=True`` is the gradient of the training-mode loss (BatchNorm on batch statistics)."""
    model = mlp_with_batchnorm(0)
    _, x, y = regression()
    batches = split(x, y, (6,) * 4)
    reference = copy.deepcopy(model).train()  # its running statistics may change; the outputs do not care
    grads = []
    for xb, yb in batches:
        reference.zero_grad()
        F.mse_loss(reference(xb), yb).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in reference.parameters()]))
    g = torch.stack(grads)
    full = g.mean(0)
    trace = 6 * (g - full).square().sum() / 3
    got = gradient_noise_scale(model, F.mse_loss, batches, train=True)
    assert got["gradient_covariance_trace"] == pytest.approx(trace.item(), rel=1e-10)
    assert got["full_gradient_sq_norm"] == pytest.approx(full.square().sum().item(), rel=1e-10)
    assert gradient_noise_scale(model, F.mse_loss, batches)["full_gradient_sq_norm"] != got["full_gradient_sq_norm"]


def test_model_untouched_even_under_no_grad() -> None:
    model = mlp_with_batchnorm(0).train()
    model[2].eval()
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    model[3].bias.grad = None
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    modes = [m.training for m in model.modules()]
    _, x, y = regression()
    with torch.no_grad():
        for train in (False, True):
            gradient_noise_scale(model, F.mse_loss, split(x, y, (6,) * 4), train=train)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    for n, p in model.named_parameters():
        assert (p.grad is None) if grads[n] is None else torch.equal(p.grad, grads[n]), n
    assert [m.training for m in model.modules()] == modes


def test_instrument() -> None:
    model, x, y = regression()
    batches = split(x, y, (6,) * 4)
    instrument = GradientNoiseScale(F.mse_loss, iter(batches), interval=50)
    assert instrument.cheap is False and instrument.due(100) and not instrument.due(10)
    got = instrument.measure(Context(model=model, optimizer=None, step=50))
    assert got == gradient_noise_scale(model, F.mse_loss, batches)
    models = [mlp_with_batchnorm(seed) for seed in range(2)]
    stacked = GradientNoiseScale(F.mse_loss, batches, 1, model=StackedFunctional.from_modules(models))
    out = stacked.measure(Context(model=None, optimizer=None, step=1, stacked=2))
    assert all(v.shape == (2,) for v in out.values())
    with pytest.raises(ValueError, match="StackedFunctional"):
        GradientNoiseScale(F.mse_loss, batches).measure(Context(model=models[0], optimizer=None, step=1, stacked=2))


def test_needs_two_batches() -> None:
    model, x, y = regression()
    with pytest.raises(ValueError, match="two batches"):
        gradient_noise_scale(model, F.mse_loss, [(x, y)])
    with pytest.raises(ValueError, match="two batches"):
        GradientNoiseScale(F.mse_loss, [(x, y)])
