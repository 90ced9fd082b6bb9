r"""Curvature diagnostics: the Jacobian norm, the Hessian trace, a scale-invariant sharpness.

Notation: ``θ`` the trainable parameters, ``f(x; θ)`` the model's output (logits) for one input,
``L(θ) = Σ_b (n_b/N)·ℓ(f(x_b; θ), y_b)`` the full-batch loss over probe batches ``(x_b, y_b)`` of
``n_b`` examples (``N = Σ n_b``; ``ℓ`` returns the batch *mean*), ``H = ∇²L(θ)`` its Hessian.

=================================  ==============================================  ==========================
quantity                           definition                                      source
=================================  ==============================================  ==========================
:func:`jacobian_norm`              ``mean_x ‖∂f(x; θ)/∂θ‖_F`` (not squared)         "Why WD" (tml-epfl/why-weight-decay)
:func:`hessian_trace`              ``Tr(H) ≈ mean_i zᵢᵀ H zᵢ``, ``zᵢ`` Rademacher    Hutchinson 1989; PyHessian
:func:`scale_invariant_sharpness`  ``Tr(H_ww)·‖w‖²`` over scale-invariant ``w``     invariant to ``w → c·w``
=================================  ==============================================  ==========================

Every function takes either an ``nn.Module`` (its trainable parameters, i.e. those with
``requires_grad``) or a :class:`StackedFunctional` — ``K`` copies of one architecture with their parameters
stacked along dim 0, as :func:`torch.func.stack_module_state` makes them — and then returns a tensor of
shape ``(K,)``, one value per model, computed with :func:`torch.func.vmap` over the model dimension.

Everything is computed through :func:`torch.func.functional_call` on detached views of the
parameters (the Jacobian with :mod:`torch.func`, gradients and Hessian-vector products with
``torch.autograd.grad`` on fresh leaves that share the parameters' storage), so nothing here changes
the model: not its parameters, not their ``.grad``, not its buffers (BatchNorm running statistics),
and its train/eval mode is restored afterwards. It works inside ``torch.no_grad()`` too (not inside
``torch.inference_mode()``). Probe data must already be on the parameters' device and dtype.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, stack_module_state, vmap
from torch.nn.modules.batchnorm import _BatchNorm

from decaylab.diagnostics.base import Context, Instrument, per_model_sum

LossFn = Callable[[Any, Tensor], Tensor]
Batch = tuple[Tensor, Tensor]
ParamSelection = Iterable[str | Tensor] | None

__all__ = [
    "HessianTrace",
    "JacobianNorm",
    "ScaleInvariantSharpness",
    "StackedFunctional",
    "JACOBIAN_CHUNK_NUMBERS",
    "hessian_trace",
    "hutchinson_samples",
    "jacobian_norm",
    "jacobian_norms",
    "scale_invariant_sharpness",
]


@dataclass
class StackedFunctional:
    """``K`` models of one architecture, parameters and buffers stacked along dim 0.

    ``base`` supplies the architecture (its own tensors are never read; it may live on the ``meta``
    device) and the train/eval mode; ``params`` and ``buffers`` are what
    :func:`torch.func.stack_module_state` returns. The dicts hold the very tensors the optimizer
    updates, so one ``StackedFunctional`` stays current through training.

    >>> models = [nn.Linear(3, 2) for _ in range(4)]
    >>> stacked = StackedFunctional.from_modules(models)
    >>> stacked.num_models, tuple(stacked.params["weight"].shape)
    (4, (4, 2, 3))
    """

    base: nn.Module
    params: dict[str, Tensor]
    buffers: dict[str, Tensor] = field(default_factory=dict)

    @classmethod
    def from_modules(cls, models: Sequence[nn.Module]) -> StackedFunctional:
        """Stack ``models`` with :func:`torch.func.stack_module_state`; the base is a ``meta`` copy."""
        params, buffers = stack_module_state(list(models))
        return cls(copy.deepcopy(models[0]).to("meta"), params, buffers)

    @property
    def num_models(self) -> int:
        return next(iter(self.params.values())).shape[0]


Model = nn.Module | StackedFunctional


# --- the functional view every diagnostic works on ----------------------------------------------


@dataclass
class _Functional:
    base: nn.Module
    selected: dict[str, Tensor]  # differentiated: the trainable (or the chosen) parameters
    fixed: dict[str, Tensor]  # passed through unchanged: other parameters and the buffers
    stacked: int | None  # K, or None for one model

    def call(self, selected: dict[str, Tensor], fixed: dict[str, Tensor], x: Any) -> Any:
        return functional_call(self.base, {**selected, **fixed}, (x,))

    def per_model(self, fn: Callable[..., Any], *shared: Any, selected: dict[str, Tensor] | None = None) -> Any:
        """``fn(selected, fixed, *shared)`` for one model, or vmapped over the K stacked models."""
        selected = self.selected if selected is None else selected
        if self.stacked is None:
            return fn(selected, self.fixed, *shared)
        in_dims = (0, 0) + (None,) * len(shared)
        return vmap(fn, in_dims=in_dims, randomness="different")(selected, self.fixed, *shared)

    def per_model_sum(self, t: Tensor) -> Tensor:
        return per_model_sum(t, self.stacked)

    def loss_on_leaves(self, loss_fn: LossFn, x: Any, y: Any) -> tuple[dict[str, Tensor], Tensor]:
        """Fresh leaves (sharing storage with the parameters, so the model's ``.grad`` is never
        touched) and the loss on ``(x, y)`` as a function of them: a scalar, or ``(K,)`` when stacked."""
        leaves = {name: t.detach().requires_grad_() for name, t in self.selected.items()}
        loss = self.per_model(lambda sel, fixed, x, y: loss_fn(self.call(sel, fixed, x), y), x, y, selected=leaves)
        return leaves, loss

    def single_shape(self, t: Tensor) -> torch.Size:
        return t.shape[1:] if self.stacked is not None else t.shape


def _functional(model: Model, params: ParamSelection = None) -> _Functional:
    """Split ``model`` into detached selected tensors (trainable, or ``params``) and fixed ones."""
    if isinstance(model, StackedFunctional):
        base, stacked = model.base, model.num_models
        named_params, named_buffers = list(model.params.items()), list(model.buffers.items())
    elif isinstance(model, nn.Module):
        base, stacked = model, None
        named_params, named_buffers = list(model.named_parameters()), list(model.named_buffers())
    else:
        raise TypeError(f"model must be an nn.Module or a StackedFunctional, got {type(model).__name__}")
    if params is None:
        chosen = {name for name, p in named_params if p.requires_grad}
    else:
        by_id = {id(p): name for name, p in named_params}
        chosen = set()
        for item in params:
            name = item if isinstance(item, str) else by_id.get(id(item))
            if name is None or name not in dict(named_params):
                what = repr(item) if isinstance(item, str) else "a tensor"
                raise ValueError(f"params: {what} is not a parameter of the model")
            chosen.add(name)
    if not chosen:
        raise ValueError("no parameters selected: the model has no trainable parameters (or params is empty)")
    selected = {name: p.detach() for name, p in named_params if name in chosen}
    fixed = {name: p.detach() for name, p in named_params if name not in chosen}
    fixed.update((name, b.detach()) for name, b in named_buffers)
    return _Functional(base, selected, fixed, stacked)


@contextmanager
def _mode(base: nn.Module, train: bool):
    """Put ``base`` in train or eval mode for the duration, then restore every submodule's mode.

    In train mode BatchNorm normalizes with batch statistics but its running statistics are left
    alone (``track_running_stats`` is switched off for the duration), so buffers never change.
    """
    saved = [(m, m.training, getattr(m, "track_running_stats", None)) for m in base.modules()]
    try:
        base.train(train)
        if train:
            for m in base.modules():
                if isinstance(m, _BatchNorm):
                    m.track_running_stats = False
        yield
    finally:
        for m, training, track in saved:
            m.training = training
            if isinstance(m, _BatchNorm):
                m.track_running_stats = track


def _as_result(x: Tensor, stacked: int | None) -> float | Tensor:
    return x.detach() if stacked is not None else float(x)


def _dot(a: dict[str, Tensor], b: dict[str, Tensor]) -> Tensor:
    """``Σ_tensors Σ_entries a·b`` for one model (call inside ``per_model``)."""
    return sum((a[n] * b[n]).sum() for n in a)


def _sq_norm(f: _Functional) -> Tensor:
    """``‖w‖²`` of the selected parameters: a scalar, or ``(K,)`` when stacked."""
    return f.per_model(lambda sel, fixed: _dot(sel, sel))


def _check_batches(batches: Iterable[Batch]) -> list[Batch]:
    batches = list(batches)
    if not batches:
        raise ValueError("batches is empty: give at least one (inputs, targets) pair")
    return batches


# --- Jacobian norm -------------------------------------------------------------------------------


def jacobian_norms(model: Model, inputs: Tensor, *, chunk_size: int | None = None) -> Tensor:
    r"""Per-input Frobenius norms ``‖J(x)‖_F`` with ``J(x) = ∂f(x; θ)/∂θ`` over all trainable θ.

    ``inputs`` has the examples along dim 0; each example goes through the model alone (as a batch
    of one) **in eval mode** — BatchNorm in train mode would make an example's output depend on the
    rest of the batch — and the previous mode is restored afterwards. ``J(x)`` has
    ``n_outputs × n_params`` entries per input (computed with ``vmap(jacrev(functional_call))``);
    ``chunk_size`` inputs are processed at once, so memory is about ``chunk_size·n_outputs·n_params``
    numbers (times ``K`` when stacked). The default picks the chunk that keeps this under
    ``JACOBIAN_CHUNK_NUMBERS`` = 2²² (at least one input per chunk, whatever its size).

    Returns shape ``(N,)``, or ``(K, N)`` for a :class:`StackedFunctional` (the same inputs for every model).

    For ``f(x) = Wx + b`` with two outputs, ``‖J‖_F² = 2·‖x‖² + 2``:

    >>> layer = nn.Linear(3, 2)
    >>> jacobian_norms(layer, torch.tensor([[1.0, 2.0, 2.0], [0.0, 0.0, 0.0]]))
    tensor([4.4721, 1.4142])
    """
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    f = _functional(model)

    def sq_norm_one(selected: dict[str, Tensor], fixed: dict[str, Tensor], x: Tensor) -> Tensor:
        jac = jacrev(lambda sel: f.call(sel, fixed, x.unsqueeze(0))[0])(selected)
        return sum(j.square().sum() for j in jac.values())

    def sq_norms(selected: dict[str, Tensor], fixed: dict[str, Tensor], xs: Tensor) -> Tensor:
        return vmap(sq_norm_one, in_dims=(None, None, 0))(selected, fixed, xs)

    with _mode(f.base, train=False):
        chunk_size = chunk_size or _jacobian_chunk_size(f, inputs)
        out = torch.cat([f.per_model(sq_norms, chunk) for chunk in inputs.split(chunk_size)], dim=-1)
    return out.sqrt().detach()


JACOBIAN_CHUNK_NUMBERS = 2**22  # entries of J per chunk when chunk_size is None (16 MiB in float32)


def _jacobian_chunk_size(f: _Functional, inputs: Tensor) -> int:
    """As many inputs as keep one chunk's Jacobians under ``JACOBIAN_CHUNK_NUMBERS`` entries (at least one)."""
    first = {n: t[0] for n, t in f.selected.items()} if f.stacked else f.selected
    fixed = {n: t[0] for n, t in f.fixed.items()} if f.stacked else f.fixed
    with torch.no_grad():
        n_outputs = f.call(first, fixed, inputs[:1]).numel()
    per_input = n_outputs * sum(t.numel() for t in f.selected.values())  # includes the K models
    return max(1, JACOBIAN_CHUNK_NUMBERS // per_input)


def jacobian_norm(model: Model, inputs: Tensor, *, chunk_size: int | None = None) -> float | Tensor:
    r"""``mean_x ‖∂f(x; θ)/∂θ‖_F`` over the examples in ``inputs`` — the "Why WD" Jacobian norm.

    The mean of the Frobenius norms (not of their squares) over inputs, with θ all trainable
    parameters and the model in eval mode; see :func:`jacobian_norms` for details and memory.
    A float, or ``(K,)`` for a :class:`StackedFunctional`.

    >>> round(jacobian_norm(nn.Linear(3, 2), torch.tensor([[1.0, 2.0, 2.0], [0.0, 0.0, 0.0]])), 4)
    2.9432
    """
    return _as_result(jacobian_norms(model, inputs, chunk_size=chunk_size).mean(-1), _stacked_of(model))


def _stacked_of(model: Model) -> int | None:
    return model.num_models if isinstance(model, StackedFunctional) else None


# --- Hessian trace (Hutchinson) ------------------------------------------------------------------


def _rademacher(f: _Functional, n: int, generator: torch.Generator | None) -> dict[str, Tensor]:
    """``n`` Rademacher vectors shaped like one model's selected parameters, ``(n, *shape)`` per tensor.

    Drawn one vector at a time, so the draws do not depend on how they are chunked; every stacked
    model gets the same vectors.
    """
    device = generator.device if generator is not None else None
    draws: dict[str, list[Tensor]] = {name: [] for name in f.selected}
    for _ in range(n):
        for name, p in f.selected.items():
            draws[name].append(torch.randint(0, 2, f.single_shape(p), generator=generator, device=device))
    return {
        name: torch.stack(d).to(device=f.selected[name].device, dtype=f.selected[name].dtype) * 2 - 1
        for name, d in draws.items()
    }


def hutchinson_samples(
    model: Model,
    loss_fn: LossFn,
    batches: Iterable[Batch],
    *,
    n_samples: int = 100,
    params: ParamSelection = None,
    generator: torch.Generator | None = None,
    chunk_size: int | None = 32,
    train: bool = False,
) -> Tensor:
    r"""The ``n_samples`` values ``zᵢᵀ H zᵢ`` behind :func:`hessian_trace`: shape ``(n,)`` or ``(K, n)``."""
    if not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    batches = _check_batches(batches)
    total = sum(len(x) for x, _ in batches)
    f = _functional(model, params)
    names = list(f.selected)
    step = chunk_size or n_samples
    values = []
    with _mode(f.base, train), torch.enable_grad():
        for start in range(0, n_samples, step):
            zs = _rademacher(f, min(step, n_samples - start), generator)
            quad = 0
            for x, y in batches:
                quad = quad + _quadratic_forms(f, names, loss_fn, x, y, zs) * (len(x) / total)
            values.append(quad)
    return torch.cat(values, dim=-1)


def _quadratic_forms(f: _Functional, names: list[str], loss_fn: LossFn, x: Any, y: Any,
                     zs: dict[str, Tensor]) -> Tensor:
    """``zᵢᵀ H_b zᵢ`` for the vectors ``zs`` (``(c, *shape)`` per tensor) on one batch: ``(c,)`` or ``(K, c)``.

    The gradient's graph is built once, then ``H z = ∇(∇L·z)`` (double backward) for all ``c``
    vectors in one batched backward; ops without a batching rule fall back to one backward per vector.
    """
    leaves, loss = f.loss_on_leaves(loss_fn, x, y)
    inputs = [leaves[n] for n in names]
    grads = torch.autograd.grad(loss.sum(), inputs, create_graph=True, materialize_grads=True)
    c = next(iter(zs.values())).shape[0]
    # Every stacked model sees the same vectors: (c, *shape) -> (c, K, *shape).
    z_full = {n: zs[n].unsqueeze(1).expand(c, *leaves[n].shape) if f.stacked else zs[n] for n in names}
    live = [(n, g) for n, g in zip(names, grads, strict=True) if g.requires_grad]
    if not live:  # the gradient does not depend on the parameters: H = 0
        return torch.zeros(*loss.shape, c, dtype=loss.dtype, device=loss.device)
    outputs, grad_outputs = [g for _, g in live], [z_full[n] for n, _ in live]
    try:
        hz = torch.autograd.grad(outputs, inputs, grad_outputs=grad_outputs, retain_graph=True,
                                 is_grads_batched=True, materialize_grads=True)
    except RuntimeError:
        per_vector = [
            torch.autograd.grad(outputs, inputs, grad_outputs=[z[i] for z in grad_outputs], retain_graph=True,
                                materialize_grads=True)
            for i in range(c)
        ]
        hz = [torch.stack(h) for h in zip(*per_vector, strict=True)]
    dims = (c, f.stacked, -1) if f.stacked else (c, -1)
    forms = sum((z_full[n] * h).reshape(dims).sum(-1) for n, h in zip(names, hz, strict=True))
    return forms.T.detach() if f.stacked else forms.detach()


def _mean_and_standard_error(values: Tensor, stacked: int | None) -> tuple[float | Tensor, float | Tensor]:
    n = values.shape[-1]
    se = values.std(dim=-1) / math.sqrt(n) if n > 1 else torch.full_like(values[..., 0], math.nan)
    return _as_result(values.mean(-1), stacked), _as_result(se, stacked)


def hessian_trace(
    model: Model,
    loss_fn: LossFn,
    batches: Iterable[Batch],
    *,
    n_samples: int = 100,
    params: ParamSelection = None,
    generator: torch.Generator | None = None,
    chunk_size: int | None = 32,
    train: bool = False,
) -> tuple[float | Tensor, float | Tensor]:
    r"""Hutchinson's estimate of ``Tr(H)``, the Hessian trace of the full-batch loss, and its standard error.

    ``Tr(H) ≈ (1/n)·Σᵢ zᵢᵀ H zᵢ`` with ``zᵢ`` independent Rademacher vectors (entries ±1), unbiased
    because ``E[z zᵀ] = I``; each ``H zᵢ = ∇(∇L·zᵢ)`` is a double-backward Hessian-vector product.
    The standard error is ``std(zᵢᵀ H zᵢ)/sqrt(n)`` (``nan`` for ``n = 1``). The loss is
    ``L = Σ_b (n_b/N)·loss_fn(model(x_b), y_b)`` over ``batches`` (``loss_fn`` returns the batch mean),
    so ``H`` is the full-batch Hessian. ``chunk_size`` vectors are held in memory at once (default 32;
    ``None``: all), and the ``batches`` are gone through once per chunk: one forward and one
    differentiable backward per batch and chunk, then one batched backward for the chunk's
    Hessian-vector products (memory grows with ``chunk_size``).

    ``params`` (names or parameter tensors) restricts ``H`` to that block of parameters (default:
    all trainable ones). ``generator`` draws the vectors (default: torch's global generator); the
    draws do not depend on ``chunk_size``, and a :class:`StackedFunctional` uses the same vectors for every
    model (so differences between models carry less noise), returning ``(K,)`` tensors.

    The model is evaluated in eval mode unless ``train=True`` (BatchNorm then uses batch statistics
    without touching its running statistics; dropout makes the loss itself random).

    For a linear model with orthogonal inputs ``H`` is diagonal, and every Rademacher vector gives
    ``zᵀHz = Tr(H)`` exactly — here ``H = (2/3)·diag(1, 4, 9)``:

    >>> model = nn.Linear(3, 1, bias=False)
    >>> x, y = torch.diag(torch.tensor([1.0, 2.0, 3.0])), torch.zeros(3, 1)
    >>> trace, se = hessian_trace(model, nn.functional.mse_loss, [(x, y)], n_samples=5)
    >>> round(trace, 4), round(se, 4)
    (9.3333, 0.0)
    """
    values = hutchinson_samples(
        model, loss_fn, batches, n_samples=n_samples, params=params, generator=generator,
        chunk_size=chunk_size, train=train,
    )
    return _mean_and_standard_error(values, _stacked_of(model))


def scale_invariant_sharpness(
    model: Model,
    loss_fn: LossFn,
    batches: Iterable[Batch],
    *,
    n_samples: int = 100,
    params: ParamSelection = None,
    generator: torch.Generator | None = None,
    chunk_size: int | None = 32,
    train: bool = False,
) -> tuple[float | Tensor, float | Tensor]:
    r"""``Tr(H_ww)·‖w‖²`` and its standard error: a sharpness that rescaling the weights cannot change.

    ``w`` are the parameters in ``params`` (names or tensors; default: all trainable ones),
    ``‖w‖²`` the sum of their squares and ``H_ww = ∇²_w L`` the block of the full-batch Hessian for
    those parameters, its trace estimated as in :func:`hessian_trace` (same arguments). The standard
    error is the trace's times ``‖w‖²``.

    Why it is invariant: if the loss is invariant to scaling ``w`` — ``L(c·w) = L(w)`` for all
    ``c > 0``, as for weights followed by a normalization (BatchNorm, LayerNorm, ``h/‖h‖``) —
    differentiating twice gives ``c²·H_ww(c·w) = H_ww(w)``, so
    ``Tr(H_ww(c·w))·‖c·w‖² = Tr(H_ww(w))/c² · c²·‖w‖² = Tr(H_ww(w))·‖w‖²``, while ``Tr(H_ww)`` alone
    falls as ``1/c²`` when weight decay shrinks ``w``. The invariance needs *every* selected parameter to
    be scale-invariant together (one common factor ``c``); with the default (all trainable
    parameters) it holds only when the whole network is scale-invariant, which is rare: select
    the weights that feed a normalization, and leave out biases, norm gains and the last layer.
    (Bjorck et al. propose a scale-invariant measure whose exact formula is unconfirmed; this is
    ``Tr(H)·‖w‖²`` and nothing else.)

    A float pair, or ``(K,)`` tensors for a :class:`StackedFunctional`.
    """
    f = _functional(model, params)
    norm_sq = _sq_norm(f).detach()
    values = hutchinson_samples(
        model, loss_fn, batches, n_samples=n_samples, params=params, generator=generator,
        chunk_size=chunk_size, train=train,
    )
    if f.stacked is not None:
        values = values * norm_sq[:, None]
    else:
        values = values * norm_sq
    return _mean_and_standard_error(values, f.stacked)


# --- instruments ---------------------------------------------------------------------------------


def _model_for(instrument: Instrument, ctx: Context) -> Model:
    """The instrument's own model if it was given one, else the context's; checked against ``ctx.stacked``."""
    model = instrument.model if instrument.model is not None else ctx.model
    if model is None:
        raise ValueError(f"{type(instrument).__name__}: no model (give model=... or a Context with a model)")
    if ctx.stacked and not isinstance(model, StackedFunctional):
        raise ValueError(
            f"{type(instrument).__name__}: the context stacks {ctx.stacked} models; give "
            "model=StackedFunctional(base, params, buffers) so the instrument knows the architecture"
        )
    if ctx.stacked and model.num_models != ctx.stacked:
        raise ValueError(
            f"{type(instrument).__name__}: the StackedFunctional has {model.num_models} models, the context "
            f"{ctx.stacked}"
        )
    return model


class _CurvatureInstrument(Instrument):
    cheap = False

    def __init__(self, interval: int, model: Model | None):
        super().__init__(interval)
        self.model = model


class JacobianNorm(_CurvatureInstrument):
    """Records ``jacobian_norm``: :func:`jacobian_norm` on fixed probe ``inputs`` (eval mode).

    ``model``: measure this model (or :class:`StackedFunctional`) instead of ``ctx.model``.
    """

    name = "jacobian_norm"

    def __init__(
        self, inputs: Tensor, interval: int = 100, *, chunk_size: int | None = None, model: Model | None = None
    ):
        super().__init__(interval, model)
        self.inputs, self.chunk_size = inputs, chunk_size

    def measure(self, ctx: Context) -> dict[str, float | Tensor]:
        return {"jacobian_norm": jacobian_norm(_model_for(self, ctx), self.inputs, chunk_size=self.chunk_size)}


class _HutchinsonInstrument(_CurvatureInstrument):
    """A Hutchinson estimate on fixed probe batches (the subclasses differ only in what they estimate)."""

    def __init__(
        self,
        loss_fn: LossFn,
        batches: Iterable[Batch],
        n_samples: int = 100,
        interval: int = 100,
        *,
        params: ParamSelection = None,
        model: Model | None = None,
        seed: int = 0,
        chunk_size: int | None = 32,
        train: bool = False,
    ):
        super().__init__(interval, model)
        self.loss_fn, self.batches, self.n_samples = loss_fn, _check_batches(batches), n_samples
        self.params = list(params) if params is not None else None
        self.seed, self.chunk_size, self.train = seed, chunk_size, train
        self._generator: torch.Generator | None = None

    def _kwargs(self, model: Model) -> dict[str, Any]:
        # One generator per instrument, created on the parameters' device and seeded once: each
        # sample draws fresh vectors, and a rerun with the same seed draws the same ones.
        if self._generator is None:
            device = next(iter(_functional(model, self.params).selected.values())).device
            self._generator = torch.Generator(device=device).manual_seed(self.seed)
        return dict(
            n_samples=self.n_samples, params=self.params, generator=self._generator,
            chunk_size=self.chunk_size, train=self.train,
        )


class HessianTrace(_HutchinsonInstrument):
    """Records ``hessian_trace`` and ``hessian_trace_se``: :func:`hessian_trace` on fixed probe ``batches``.

    ``batches`` are listed once at construction; the Rademacher vectors come from a generator seeded
    with ``seed``. Other keywords as in :func:`hessian_trace`.
    """

    name = "hessian_trace"

    def measure(self, ctx: Context) -> dict[str, float | Tensor]:
        model = _model_for(self, ctx)
        trace, se = hessian_trace(model, self.loss_fn, self.batches, **self._kwargs(model))
        return {"hessian_trace": trace, "hessian_trace_se": se}


class ScaleInvariantSharpness(_HutchinsonInstrument):
    """Records ``scale_invariant_sharpness`` (``Tr(H_ww)·‖w‖²``) and its ``_se``.

    ``params`` should name the scale-invariant weights (see :func:`scale_invariant_sharpness`).
    """

    name = "scale_invariant_sharpness"

    def measure(self, ctx: Context) -> dict[str, float | Tensor]:
        model = _model_for(self, ctx)
        value, se = scale_invariant_sharpness(model, self.loss_fn, self.batches, **self._kwargs(model))
        return {"scale_invariant_sharpness": value, "scale_invariant_sharpness_se": se}
