r"""Gradient noise: the "simple" noise scale of McCandlish et al. (2018) and the minibatch variance.

Notation: probe ``batches`` ``(x_i, y_i)``, ``i = 1..m`` (``m ≥ 2``), of ``b_i`` examples,
``N = Σ b_i``; ``g_i`` the gradient of batch ``i``'s mean loss; ``G = Σ_i (b_i/N)·g_i`` the
full-batch gradient (of the mean loss over all ``N`` examples); ``Σ`` the covariance of
per-example gradients. McCandlish et al., "An Empirical Model of Large-Batch Training"
(arXiv 1812.06162), define the simple noise scale ``B_simple = tr(Σ)/‖G‖²``: roughly the batch size
above which larger batches stop paying off.

The module takes the same models as :mod:`decaylab.diagnostics.curvature`: an ``nn.Module`` or a
:class:`~decaylab.diagnostics.curvature.StackedFunctional` (then every value is a ``(K,)`` tensor).
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from decaylab.diagnostics.base import Context, Instrument
from decaylab.diagnostics.curvature import (
    Batch,
    LossFn,
    Model,
    ParamSelection,
    _as_result,
    _check_batches,
    _functional,
    _mode,
    _model_for,
)

__all__ = ["GradientNoiseScale", "gradient_noise_scale"]

METRICS = (
    "gradient_noise_scale",
    "gradient_covariance_trace",
    "full_gradient_sq_norm",
    "minibatch_gradient_variance",
    "relative_minibatch_gradient_variance",
)


def gradient_noise_scale(
    model: Model,
    loss_fn: LossFn,
    batches: Iterable[Batch],
    *,
    params: ParamSelection = None,
    train: bool = False,
) -> dict[str, float | Tensor]:
    r"""The simple gradient noise scale and the variance of minibatch gradients, from one pass.

    Returns, with ``S = Σ_i b_i·‖g_i − G‖²`` (the size-weighted scatter of the batch gradients):

    ========================================  ===========================================================
    key                                       value
    ========================================  ===========================================================
    ``minibatch_gradient_variance``           ``S/N = Σ_i (b_i/N)·‖g_i − G‖²`` — for equal batches of size
                                              ``b``, the mean over batches of ``‖g_i − G‖²``
    ``relative_minibatch_gradient_variance``  ``(S/N) / ‖G‖²`` — the variance of minibatch gradients
                                              relative to the full-batch gradient
    ``gradient_covariance_trace``             ``tr(Σ) ≈ S/(m − 1)``
    ``full_gradient_sq_norm``                 ``‖G‖²``
    ``gradient_noise_scale``                  ``B_simple = tr(Σ)/‖G‖²``
    ========================================  ===========================================================

    Why ``S/(m − 1)``: if each batch were ``b_i`` examples drawn without replacement from the ``N``,
    ``E‖g_i − G‖² = tr(Σ)·(1/b_i − 1/N)`` with ``Σ`` the per-example covariance normalized by
    ``N − 1``; weighting by ``b_i`` and summing gives ``E[S] = tr(Σ)·(m − 1)``. So the estimate is
    unbiased for batches drawn that way (a random partition of the data, say), and for ``b_i = 1``
    it *is* the sample covariance's trace. For ``m`` equal batches of size ``b`` it equals
    ``b·(m/(m−1))·mean_i‖g_i − G‖²`` — McCandlish et al.'s unbiased two-batch-size estimator
    ``(‖g_i‖² − ‖G‖²)/(1/b − 1/N)`` averaged over ``i`` — and ``≈ b·mean_i‖g_i − G‖²`` for many
    batches. ``‖G‖²`` is taken as exact: the probe set is the population here. Identical batches
    give exactly zero noise.

    ``loss_fn(output, target)`` must return the batch *mean*. ``params`` (names or tensors) restricts
    the gradients to those parameters (default: all trainable). The model is evaluated in eval mode
    unless ``train=True`` (BatchNorm then uses batch statistics but its running statistics are not
    updated). Gradients are taken on detached leaves, so the model's ``.grad`` is never touched;
    the batch gradients are folded in one at a time (a weighted Welford update), so memory is two
    copies of the parameters whatever ``m``.

    Floats, or ``(K,)`` tensors for a :class:`~decaylab.diagnostics.curvature.StackedFunctional`.

    With ``w = 0`` and squared error, the two one-example batches have gradients ``−2`` and ``−6``:

    >>> from torch import nn
    >>> model = nn.Linear(1, 1, bias=False)
    >>> _ = nn.init.zeros_(model.weight)
    >>> batches = [(torch.tensor([[1.0]]), torch.tensor([[1.0]])), (torch.tensor([[1.0]]), torch.tensor([[3.0]]))]
    >>> out = gradient_noise_scale(model, nn.functional.mse_loss, batches)
    >>> {k: round(v, 4) for k, v in out.items()}  # doctest: +NORMALIZE_WHITESPACE
    {'gradient_noise_scale': 0.5, 'gradient_covariance_trace': 8.0, 'full_gradient_sq_norm': 16.0,
     'minibatch_gradient_variance': 4.0, 'relative_minibatch_gradient_variance': 0.25}
    """
    batches = _check_batches(batches)
    if len(batches) < 2:
        raise ValueError("gradient_noise_scale needs at least two batches: the spread of their gradients is the signal")
    f = _functional(model, params)
    names = list(f.selected)
    seen = 0
    mean: dict[str, Tensor] | None = None  # running size-weighted mean of the g_i; G at the end
    scatter: Tensor | float = 0.0  # running Σ b_i·‖g_i − mean‖² (West's weighted update)
    with _mode(f.base, train), torch.enable_grad():
        for x, y in batches:
            leaves, loss = f.loss_on_leaves(loss_fn, x, y)
            grads = torch.autograd.grad(loss.sum(), [leaves[n] for n in names], materialize_grads=True)
            b = len(x)
            seen += b
            if mean is None:
                mean = {n: torch.zeros_like(g) for n, g in zip(names, grads, strict=True)}
            step = 0
            for n, g in zip(names, grads, strict=True):
                delta = g - mean[n]
                mean[n] = mean[n] + delta * (b / seen)
                step = step + f.per_model_sum(delta * (g - mean[n]))
            scatter = scatter + b * step
    full_sq = sum(f.per_model_sum(g.square()) for g in mean.values())
    trace = scatter / (len(batches) - 1)
    variance = scatter / seen
    values = {
        "gradient_noise_scale": trace / full_sq,
        "gradient_covariance_trace": trace,
        "full_gradient_sq_norm": full_sq,
        "minibatch_gradient_variance": variance,
        "relative_minibatch_gradient_variance": variance / full_sq,
    }
    return {k: _as_result(torch.as_tensor(v).detach(), f.stacked) for k, v in values.items()}


class GradientNoiseScale(Instrument):
    """Records the five values of :func:`gradient_noise_scale` on fixed probe ``batches``.

    ``batches`` are listed once at construction (at least two). ``model``: measure this model (or
    :class:`~decaylab.diagnostics.curvature.StackedFunctional`) instead of ``ctx.model``.
    """

    name = "gradient_noise_scale"
    cheap = False

    def __init__(
        self,
        loss_fn: LossFn,
        batches: Iterable[Batch],
        interval: int = 100,
        *,
        params: ParamSelection = None,
        model: Model | None = None,
        train: bool = False,
    ):
        super().__init__(interval)
        self.loss_fn, self.batches = loss_fn, _check_batches(batches)
        if len(self.batches) < 2:
            raise ValueError("GradientNoiseScale needs at least two batches")
        self.params = list(params) if params is not None else None
        self.model, self.train = model, train

    def measure(self, ctx: Context) -> dict[str, float | Tensor]:
        model = _model_for(self, ctx)
        return gradient_noise_scale(model, self.loss_fn, self.batches, params=self.params, train=self.train)
