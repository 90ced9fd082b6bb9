"""The two ways a run's model is held: one module (:class:`SingleModel`) or K modules of one
architecture stacked along dim 0 (:class:`StackedModels`), behind one interface so that one
loop (:mod:`decaylab.train.loop`) trains both.

Every method works with a leading model dimension ``K`` (``K = 1`` for a single model): inputs
``(K, B, ...)``, logits ``(K, B, ...)``, per-model losses and norms ``(K,)``.

Stacking follows :mod:`decaylab.models`: the K models are built one by one (each after
``torch.manual_seed(its seed)``, exactly as a single run builds its model), their parameters
and buffers are stacked along dim 0, and the forward pass is
``vmap(functional_call(base, (params, buffers), x))`` on a ``meta`` copy of the first model.
The stacked tensors live in a *holder*: a copy of the first model whose parameters and buffers
were replaced by the stacked ones under the same names, so that the decay/no-decay split
(:func:`decaylab.groups.split_parameters`), :class:`~decaylab.diagnostics.WeightEMA`, the
:class:`~decaylab.diagnostics.Monitor` and ``state_dict`` work on it unchanged. (Never call the
holder's ``forward``: its tensors have the extra model dim.) BatchNorm buffers are vmapped with
``in_dims=0``, so each model normalizes with its own batch statistics and updates its own slice
of the stacked running statistics in place.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

__all__ = ["SingleModel", "StackedModels", "cross_entropy_per_model", "clip_grad_norm_per_model"]


def _logits(out):
    # The GPT returns (logits, loss); classifiers return logits.
    return out[0] if isinstance(out, tuple) else out


def cross_entropy_per_model(logits: Tensor, y: Tensor) -> Tensor:
    """Per-example cross-entropy ``(K, N)`` from logits ``(K, B, ..., C)`` and targets ``(K, B, ...)``
    (or shared targets ``(B, ...)``), computed in at least float32."""
    k, c = logits.shape[0], logits.shape[-1]
    if y.dim() == logits.dim() - 2:  # targets shared by the K models
        y = y.expand(k, *y.shape)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(logits.reshape(-1, c), y.reshape(-1), reduction="none").view(k, -1)


def clip_grad_norm_per_model(params: list[Tensor], max_norm: float, stacked: bool) -> Tensor:
    """Scale each model's gradients so that their global L2 norm is at most ``max_norm``.

    As :func:`torch.nn.utils.clip_grad_norm_` (``g ← g·min(1, max_norm/(‖g‖ + 1e-6))``), but per
    model when ``stacked`` (each parameter's dim 0 indexes the model). Returns the norms before
    clipping, shape ``(K,)`` (``(1,)`` for one model).
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(1)
    k = grads[0].shape[0] if stacked else 1
    norms = torch.stack([
        g.reshape(k, -1).to(torch.promote_types(g.dtype, torch.float32)).norm(dim=1) for g in grads
    ])
    total = norms.norm(dim=0)
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        shape = (k,) + (1,) * (g.dim() - 1) if stacked else (1,) * g.dim()
        g.mul_(coef.view(shape).to(g.dtype))
    return total


class SingleModel:
    """One module: ``K = 1``."""

    stacked = False
    num_models = 1

    def __init__(self, model: nn.Module):
        self.module = model

    @property
    def state_module(self) -> nn.Module:
        """The module whose parameters the optimizer updates and whose state_dict is checkpointed."""
        return self.module

    def train(self, mode: bool = True) -> None:
        self.module.train(mode)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(1, B, ...)`` for inputs ``(1, B, ...)``."""
        return _logits(self.module(x[0])).unsqueeze(0)

    def forward_shared(self, x: Tensor) -> Tensor:
        """Logits ``(1, N, ...)`` for inputs ``(N, ...)`` seen by every model."""
        return _logits(self.module(x)).unsqueeze(0)

    def parameters(self) -> list[Tensor]:
        return [p for p in self.module.parameters() if p.requires_grad]

    @torch.no_grad()
    def weight_norms(self) -> Tensor:
        total = sum(p.detach().double().square().sum() for p in self.parameters())
        return torch.as_tensor(total).sqrt().reshape(1)

    def modules(self) -> list[nn.Module]:
        return [self.module]


class StackedModels:
    """K modules of one architecture as one stacked model (see the module docs)."""

    stacked = True

    def __init__(self, models: list[nn.Module]):
        if not models:
            raise ValueError("models: need at least one model to stack")
        self.num_models = len(models)
        self.template = copy.deepcopy(models[0])  # unstacked, for per-model modules (EMA, results)
        self.holder = _stack_into_holder(models)
        self.base = copy.deepcopy(models[0]).to("meta")
        base = self.base

        def call(params, buffers, x):
            return _logits(functional_call(base, (params, buffers), (x,)))

        self._per_model = vmap(call, in_dims=(0, 0, 0))
        self._shared = vmap(call, in_dims=(0, 0, None))

    @property
    def state_module(self) -> nn.Module:
        return self.holder

    def train(self, mode: bool = True) -> None:
        self.base.train(mode)
        self.holder.train(mode)

    def _tensors(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        # The holder's tensors are updated in place (optimizer steps, load_state_dict), so their
        # dicts are built once; a check that they are still the holder's guards against swaps.
        cached = getattr(self, "_cache", None)
        if cached is None or next(iter(cached[0].values())) is not next(self.holder.parameters()):
            cached = self._cache = (dict(self.holder.named_parameters()), dict(self.holder.named_buffers()))
        return cached

    def forward(self, x: Tensor) -> Tensor:
        params, buffers = self._tensors()
        out = self._batched(params, x, shared=False)
        return out if out is not None else self._per_model(params, buffers, x)

    def forward_shared(self, x: Tensor) -> Tensor:
        params, buffers = self._tensors()
        out = self._batched(params, x, shared=True)
        return out if out is not None else self._shared(params, buffers, x)

    def _batched(self, params: dict[str, Tensor], x: Tensor, shared: bool) -> Tensor | None:
        # A model may compute all K at once itself (``stacked_forward``, e.g. the MLP's batched
        # matmuls): the same function as vmap(functional_call), tested equal, without vmap's
        # per-operation cost. None: it cannot here, and vmap does it.
        fast = getattr(self.template, "stacked_forward", None)
        return None if fast is None else fast(params, x, shared=shared)

    def parameters(self) -> list[Tensor]:
        return [p for p in self.holder.parameters() if p.requires_grad]

    @torch.no_grad()
    def weight_norms(self) -> Tensor:
        k = self.num_models
        total = sum(p.detach().double().square().reshape(k, -1).sum(1) for p in self.parameters())
        return total.sqrt()

    def module_at(self, k: int, params: dict[str, Tensor] | None = None,
                  buffers: dict[str, Tensor] | None = None) -> nn.Module:
        """Model ``k`` as a module of its own (a copy), from the holder or from given stacked tensors."""
        params = dict(self.holder.named_parameters()) if params is None else params
        buffers = dict(self.holder.named_buffers()) if buffers is None else buffers
        module = copy.deepcopy(self.template)
        with torch.no_grad():
            for name, p in module.named_parameters():
                p.copy_(params[name][k])
            for name, b in module.named_buffers():
                b.copy_(buffers[name][k])
        module.train(self.holder.training)
        return module

    def modules(self) -> list[nn.Module]:
        return [self.module_at(k) for k in range(self.num_models)]


def _stack_into_holder(models: list[nn.Module]) -> nn.Module:
    """A copy of ``models[0]`` whose parameters and buffers are the K models' stacked along dim 0.

    Tied parameters (the GPT's embedding and head) stay tied: every name of a shared tensor gets
    the same stacked parameter.
    """
    shapes = [[tuple(t.shape) for t in (*m.parameters(), *m.buffers())] for m in models]
    if any(s != shapes[0] for s in shapes[1:]):
        raise ValueError("models: every stacked model must have the same architecture (parameter shapes differ)")
    holder = copy.deepcopy(models[0])
    stacked: dict[int, nn.Parameter] = {}
    for name, p in list(holder.named_parameters(remove_duplicate=False)):
        if id(p) not in stacked:
            with torch.no_grad():
                value = torch.stack([m.get_parameter(name).detach() for m in models])
            stacked[id(p)] = nn.Parameter(value, requires_grad=p.requires_grad)
        owner, _, attr = name.rpartition(".")
        holder.get_submodule(owner)._parameters[attr] = stacked[id(p)]
    for name, _ in list(holder.named_buffers(remove_duplicate=False)):
        owner, _, attr = name.rpartition(".")
        holder.get_submodule(owner)._buffers[attr] = torch.stack([m.get_buffer(name) for m in models])
    return holder
