"""Weight EMA, BatchNorm recomputation, snapshot ensembles and the distance between their predictions.

**Weight EMA.** :class:`WeightEMA` keeps an exponential moving average of a model's parameters.
It starts from the weights it is given (``ema_0 = w_0``) and every EMA update blends in the current
weights:

    ema_t = beta * ema_{t-1} + (1 - beta) * w_t

so it averages over about ``1 / (1 - beta)`` updates. "Why WD" (Andriushchenko et al.) averages
vision models with ``beta = 0.999`` per iteration and LLMs with ``beta = 0.99``. With
``bias_correction=True`` the start value gets no weight: Adam's bias correction,
``ema_t = sum_{s<=t} beta^(t-s) (1 - beta) w_s / (1 - beta^t)``, so the first update copies
``w_1`` (as :class:`torch.optim.swa_utils.AveragedModel` does) and the average never leans on
the initialization. Updates are one ``torch._foreach_lerp_`` over all tensors, and elementwise, so
stacked models (K models along dim 0 of every parameter) are averaged independently for free.

Buffers are *copied* from the model at every EMA update by default (``average_buffers=False``):
averaging BatchNorm running statistics gives statistics of no model in particular, and the EMA
model's BatchNorm statistics should be recomputed for its own weights anyway, with
:func:`recompute_batchnorm` (one pass over the training set, as "Why WD" does).
``average_buffers=True`` averages floating buffers like parameters (integer buffers such as
``num_batches_tracked`` are always copied).

**Snapshot ensembles.** :class:`SnapshotEnsemble` collects copies of the model's state dict at
chosen steps; :func:`ensemble_predict` averages the members' softmax outputs. "Why WD" compares
the EMA with such an ensemble by the total variation distance between their softmax outputs,
``TVD(p, q) = 1/2 sum_k |p_k - q_k|``, averaged over test points
(:func:`total_variation_distance`, :func:`ensemble_ema_tvd`). :class:`EMADistance` is the
instrument that tracks how far the live model is from its EMA during training.

Example:

>>> import torch
>>> from torch import nn
>>> _ = torch.manual_seed(0)
>>> model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
>>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
>>> ema = WeightEMA(model, beta=0.9)
>>> handle = ema.attach(optimizer)  # one EMA update after every optimizer.step()
>>> data = [torch.randn(16, 4) for _ in range(5)]
>>> for x in data:
...     optimizer.zero_grad()
...     model(x).square().mean().backward()
...     optimizer.step()
>>> ema.num_updates
5
>>> averaged = ema.ema_model()  # a new module holding the EMA weights
>>> recompute_batchnorm(averaged, data)  # BatchNorm statistics for the EMA weights
>>> p_ema = ensemble_predict([averaged], None, data[0])
>>> p_live = ensemble_predict([model], None, data[0])
>>> tvd = total_variation_distance(p_live, p_ema)
>>> bool(0 <= tvd <= 1)
True
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.hooks import RemovableHandle

from decaylab.diagnostics.base import Context, Instrument, per_model_sum

__all__ = [
    "WeightEMA",
    "recompute_batchnorm",
    "snapshot",
    "SnapshotEnsemble",
    "ensemble_predict",
    "total_variation_distance",
    "ensemble_ema_tvd",
    "EMADistance",
]


def _averageable(t: Tensor) -> bool:
    return t.is_floating_point() or t.is_complex()


# --------------------------------------------------------------------------- weight EMA


class WeightEMA:
    """Exponential moving average of a model's parameters (buffers copied or averaged).

    Args:
        model: the model being trained. Its parameters (tied ones once, in
            ``model.named_parameters()`` order, frozen ones included) are averaged.
        beta: decay per EMA update, ``0 <= beta < 1``: ``ema_t = beta*ema_{t-1} + (1-beta)*w_t``.
        bias_correction: if True, divide out the weight of the start value (Adam-style): the first
            update copies the weights and ``ema_t = sum_s beta^(t-s) (1-beta) w_s / (1-beta^t)``.
            If False, ``ema_0`` is the model's weights when the EMA is created.
        every: apply an EMA update on every ``every``-th call of :meth:`update` (i.e. every
            ``every`` optimizer steps when attached); ``beta`` is per EMA update, so the average
            spans about ``every / (1 - beta)`` steps.
        average_buffers: average floating buffers like parameters instead of copying them.
        dtype: dtype of the average of floating tensors (e.g. ``torch.float32`` for a bfloat16
            model, whose ulp is larger than ``1 - beta`` times a typical step). Default: the
            tensor's own dtype.

    Use :meth:`update` after each ``optimizer.step()`` or :meth:`attach` the EMA to the optimizer.
    :meth:`ema_model` returns a copy of the model holding the average; :meth:`copy_to` writes it
    into a module of the same structure. :meth:`state_dict` / :meth:`load_state_dict` save and
    restore the average and its counters, like torch's state dicts (tensors by reference).
    """

    def __init__(
        self,
        model: nn.Module,
        beta: float = 0.999,
        *,
        bias_correction: bool = False,
        every: int = 1,
        average_buffers: bool = False,
        dtype: torch.dtype | None = None,
    ):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1) (decay per EMA update); got {beta!r}")
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"every must be a positive int (optimizer steps between EMA updates); got {every!r}")
        if dtype is not None and not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype; got {dtype}")
        self.model = model
        self.beta = float(beta)
        self.bias_correction = bool(bias_correction)
        self.every = every
        self.average_buffers = bool(average_buffers)
        self.dtype = dtype
        self.num_calls = 0  # update() calls (optimizer steps when attached)
        self.num_updates = 0  # EMA updates applied
        self._handle: RemovableHandle | None = None

        named_params = list(model.named_parameters())
        if not named_params:
            raise ValueError("model has no parameters to average")
        self.param_names = [n for n, _ in named_params]
        self.buffer_names = [n for n, _ in model.named_buffers()]
        with torch.no_grad():
            self.params = [self._new_average(p) for _, p in named_params]
            self.buffers = [self._new_average(b) for _, b in model.named_buffers()]
        # Which tensors are averaged; the rest (integer tensors; buffers unless average_buffers) are copied.
        self._avg_params = [i for i, p in enumerate(self.params) if _averageable(p)]
        self._copy_params = [i for i, p in enumerate(self.params) if not _averageable(p)]
        self._avg_buffers = [i for i, b in enumerate(self.buffers) if self.average_buffers and _averageable(b)]
        self._copy_buffers = [i for i, b in enumerate(self.buffers) if not (self.average_buffers and _averageable(b))]

    def _new_average(self, t: Tensor) -> Tensor:
        dtype = self.dtype if (self.dtype is not None and t.is_floating_point()) else t.dtype
        return t.detach().to(dtype=dtype, copy=True)

    def _live(self) -> tuple[list[Tensor], list[Tensor]]:
        # Fetched every update (cheap) so that replaced tensors (model.to(), reassigned buffers) are seen.
        params = [p.detach() for p in self.model.parameters()]
        buffers = [b.detach() for b in self.model.buffers()]
        if len(params) != len(self.params) or len(buffers) != len(self.buffers):
            raise RuntimeError("the model's parameters or buffers changed since the WeightEMA was created")
        return params, buffers

    @property
    def weight(self) -> float:
        """The weight ``(1 - beta)`` (bias corrected: ``(1-beta)/(1-beta^t)``) the next EMA update gives ``w_t``."""
        if self.bias_correction:
            return (1.0 - self.beta) / (1.0 - self.beta ** (self.num_updates + 1))
        return 1.0 - self.beta

    @torch.no_grad()
    def _blend(self, avg: list[Tensor], live: list[Tensor], weight: float) -> None:
        if not avg:
            return
        live = [x if x.dtype == a.dtype else x.to(a.dtype) for a, x in zip(avg, live, strict=True)]
        if weight == 1.0:
            torch._foreach_copy_(avg, live)
        else:
            torch._foreach_lerp_(avg, live, weight)  # avg += weight * (live - avg)

    @torch.no_grad()
    def update(self) -> bool:
        """Count one optimizer step; apply an EMA update if it is due. Returns whether it applied one."""
        self.num_calls += 1
        if self.num_calls % self.every != 0:
            return False
        weight = self.weight
        params, buffers = self._live()
        self._blend([self.params[i] for i in self._avg_params], [params[i] for i in self._avg_params], weight)
        self._blend([self.buffers[i] for i in self._avg_buffers], [buffers[i] for i in self._avg_buffers], weight)
        for i in self._copy_params:
            self.params[i].copy_(params[i])
        for i in self._copy_buffers:
            self.buffers[i].copy_(buffers[i])
        self.num_updates += 1
        return True

    def attach(self, optimizer: torch.optim.Optimizer) -> RemovableHandle:
        """Call :meth:`update` after every ``optimizer.step()`` (a step post hook). Undo with :meth:`detach`."""
        if self._handle is not None:
            raise RuntimeError("this WeightEMA is already attached to an optimizer; detach() it first")
        self._handle = optimizer.register_step_post_hook(lambda opt, args, kwargs: self.update())
        return self._handle

    def detach(self) -> None:
        """Stop updating after optimizer steps (no-op if not attached)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> nn.Module:
        """Write the averaged parameters and buffers into ``module`` (same names as the model). Returns it."""
        params = dict(module.named_parameters())
        buffers = dict(module.named_buffers())
        if list(params) != self.param_names or list(buffers) != self.buffer_names:
            raise ValueError("module's parameter/buffer names differ from the averaged model's")
        for name, avg in zip(self.param_names, self.params, strict=True):
            params[name].copy_(avg)
        for name, avg in zip(self.buffer_names, self.buffers, strict=True):
            buffers[name].copy_(avg)
        return module

    def ema_model(self) -> nn.Module:
        """A deep copy of the model holding the averaged weights (same mode, device and dtypes).

        Its BatchNorm statistics are the (copied or averaged) buffers; call
        :func:`recompute_batchnorm` on it for statistics that match the averaged weights.
        """
        return self.copy_to(copy.deepcopy(self.model))

    def state_dict(self) -> dict[str, Any]:
        """Settings, counters and averaged tensors (by reference, like ``nn.Module.state_dict``)."""
        return {
            "beta": self.beta,
            "bias_correction": self.bias_correction,
            "every": self.every,
            "average_buffers": self.average_buffers,
            "num_calls": self.num_calls,
            "num_updates": self.num_updates,
            "params": dict(zip(self.param_names, self.params, strict=True)),
            "buffers": dict(zip(self.buffer_names, self.buffers, strict=True)),
        }

    @torch.no_grad()
    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`; its settings (beta, every, ...) replace this EMA's."""
        for key, names, tensors in (
            ("params", self.param_names, self.params),
            ("buffers", self.buffer_names, self.buffers),
        ):
            saved = state_dict[key]
            if list(saved) != names:
                raise ValueError(f"saved {key} names {list(saved)} differ from the model's {names}")
            for name, t in zip(names, tensors, strict=True):
                if saved[name].shape != t.shape:
                    raise ValueError(f"{key} {name!r}: saved shape {tuple(saved[name].shape)} != {tuple(t.shape)}")
        average_buffers = bool(state_dict["average_buffers"])
        if average_buffers != self.average_buffers:
            raise ValueError("saved average_buffers differs; create the WeightEMA with the same setting")
        for name, t in zip(self.param_names, self.params, strict=True):
            t.copy_(state_dict["params"][name])
        for name, t in zip(self.buffer_names, self.buffers, strict=True):
            t.copy_(state_dict["buffers"][name])
        self.beta = float(state_dict["beta"])
        self.bias_correction = bool(state_dict["bias_correction"])
        self.every = int(state_dict["every"])
        self.num_calls = int(state_dict["num_calls"])
        self.num_updates = int(state_dict["num_updates"])

    def __repr__(self) -> str:
        return (
            f"WeightEMA(beta={self.beta}, bias_correction={self.bias_correction}, every={self.every}, "
            f"num_updates={self.num_updates})"
        )


# --------------------------------------------------------------------------- BatchNorm statistics


def _first_tensor(batch: Any) -> Tensor:
    if isinstance(batch, (list, tuple)):
        batch = batch[0]
    if not isinstance(batch, Tensor):
        raise TypeError(f"a batch must be a tensor or a list/tuple whose first element is one; got {type(batch)}")
    return batch


@torch.no_grad()
def recompute_batchnorm(
    model: nn.Module,
    loader: Iterable[Any],
    device: torch.device | str | None = None,
    *,
    exact: bool = True,
) -> None:
    """Reset and recompute the running statistics of every BatchNorm layer with one pass over ``loader``.

    The model runs in train mode, as during training (so each layer sees the inputs it saw in
    training: earlier BatchNorm layers normalize with batch statistics), under ``no_grad``; every
    module's train/eval mode and every BatchNorm's ``momentum`` are restored afterwards. A batch is
    a tensor or a list/tuple whose first element is the input (``torch.optim.swa_utils.update_bn``'s
    convention); ``device`` moves it first.

    ``exact=True`` sets each layer's statistics to those of *all* its inputs over the pass, per
    channel (float64, Chan's pairwise combination): ``running_mean`` is their mean and
    ``running_var`` their unbiased variance (the convention BatchNorm stores), whatever the batch
    sizes, and ``num_batches_tracked`` the number of batches. ``exact=False`` calls ``update_bn``,
    i.e. momentum=None: the plain average of per-batch means and of per-batch variances, which
    ignores the spread of batch means (so it underestimates the variance) and weighs small last
    batches like full ones. Layers with ``track_running_stats=False`` are left alone.
    """
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not bns:
        return
    modes = {m: m.training for m in model.modules()}
    if not exact:
        try:
            torch.optim.swa_utils.update_bn(loader, model, device)
        finally:
            for m, training in modes.items():
                m.train(training)
        return

    stats: dict[nn.Module, list] = {m: [0, None, None, 0] for m in bns}  # count, mean, M2, batches

    def accumulate(module: nn.Module, args: tuple) -> None:
        x = args[0].detach()
        x = x.transpose(0, 1).reshape(x.shape[1], -1).to(torch.float64)
        n_b = x.shape[1]
        mean_b = x.mean(1)
        m2_b = (x - mean_b[:, None]).square().sum(1)
        s = stats[module]
        n_a = s[0]
        if n_a == 0:
            s[1], s[2] = mean_b, m2_b
        else:
            n = n_a + n_b
            delta = mean_b - s[1]
            s[1] = s[1] + delta * (n_b / n)
            s[2] = s[2] + m2_b + delta.square() * (n_a * n_b / n)
        s[0] += n_b
        s[3] += 1

    handles = [m.register_forward_pre_hook(accumulate) for m in bns]
    try:
        for m in bns:
            m.reset_running_stats()
        model.train()
        for batch in loader:
            x = _first_tensor(batch)
            model(x.to(device) if device is not None else x)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.train(training)

    for m, (count, mean, m2, batches) in stats.items():
        if count == 0:
            raise ValueError("the loader gave no batches (or a BatchNorm layer never ran); statistics were reset")
        m.running_mean.copy_(mean)
        m.running_var.copy_(m2 / max(count - 1, 1))
        m.num_batches_tracked.fill_(batches)


# --------------------------------------------------------------------------- snapshot ensembles


def snapshot(model: nn.Module, device: torch.device | str | None = None) -> dict[str, Tensor]:
    """A copy of ``model.state_dict()`` (detached clones, optionally on ``device``)."""
    return {k: v.detach().to(device=device, copy=True) for k, v in model.state_dict().items()}


class SnapshotEnsemble:
    """Collects :func:`snapshot` s of a model at chosen optimizer steps.

    Args:
        every: collect at every multiple of ``every`` steps.
        at: also collect at these steps (e.g. the ends of cosine cycles).
        device: where to keep the snapshots (e.g. ``"cpu"`` to spare accelerator memory).

    Call :meth:`maybe_collect` with the step count after each optimizer step, or :meth:`attach`
    to the optimizer (it then counts steps itself). ``snapshots`` and ``collected_steps`` hold what
    was collected; :meth:`predict` averages the members' softmax outputs.
    """

    def __init__(self, every: int | None = None, *, at: Iterable[int] = (), device: torch.device | str | None = None):
        if every is not None and (not isinstance(every, int) or isinstance(every, bool) or every < 1):
            raise ValueError(f"every must be a positive int or None; got {every!r}")
        self.every = every
        self.at = frozenset(int(s) for s in at)
        if every is None and not self.at:
            raise ValueError("give every= and/or at= (the steps to snapshot)")
        self.device = device
        self.snapshots: list[dict[str, Tensor]] = []
        self.collected_steps: list[int] = []
        self.num_steps = 0  # optimizer steps counted by the attached hook
        self._handle: RemovableHandle | None = None

    def due(self, step: int) -> bool:
        return step in self.at or (self.every is not None and step > 0 and step % self.every == 0)

    def collect(self, model: nn.Module, step: int) -> None:
        self.snapshots.append(snapshot(model, self.device))
        self.collected_steps.append(int(step))

    def maybe_collect(self, model: nn.Module, step: int) -> bool:
        """Collect a snapshot if ``step`` (optimizer steps taken so far) is due. Returns whether it did."""
        if self.due(step):
            self.collect(model, step)
            return True
        return False

    def attach(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> RemovableHandle:
        """After every ``optimizer.step()``, count it and snapshot ``model`` when due. Undo with :meth:`detach`."""
        if self._handle is not None:
            raise RuntimeError("this SnapshotEnsemble is already attached; detach() it first")

        def hook(opt, args, kwargs):
            self.num_steps += 1
            self.maybe_collect(model, self.num_steps)

        self._handle = optimizer.register_step_post_hook(hook)
        return self._handle

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def predict(self, base_model: nn.Module, inputs: Tensor) -> Tensor:
        """Mean softmax output of the collected snapshots (see :func:`ensemble_predict`)."""
        return ensemble_predict(self.snapshots, base_model, inputs)

    def __len__(self) -> int:
        return len(self.snapshots)

    def state_dict(self) -> dict[str, Any]:
        return {"snapshots": self.snapshots, "collected_steps": self.collected_steps, "num_steps": self.num_steps}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.snapshots = [dict(s) for s in state_dict["snapshots"]]
        self.collected_steps = [int(s) for s in state_dict["collected_steps"]]
        self.num_steps = int(state_dict["num_steps"])


def _softmax(logits: Tensor) -> Tensor:
    # Probabilities in at least float32: bfloat16 softmax outputs are too coarse for a TVD.
    return torch.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)


@torch.no_grad()
def _predict_eval(model: nn.Module, inputs: Tensor) -> Tensor:
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        return _softmax(model(inputs))
    finally:
        for m, training in modes.items():
            m.train(training)


@torch.no_grad()
def ensemble_predict(
    members: Sequence[nn.Module | Mapping[str, Tensor]],
    base_model: nn.Module | None,
    inputs: Tensor,
) -> Tensor:
    """Average of the members' softmax outputs (over the last dim of the logits), in eval mode.

    ``members`` are modules or state dicts; state dicts are loaded into one deep copy of
    ``base_model`` (which is itself left untouched; it may be None when every member is a module).
    Modules get back their train/eval modes. Returns probabilities shaped like the logits.
    """
    if len(members) == 0:
        raise ValueError("no ensemble members")
    scratch = None
    total = None
    for member in members:
        if isinstance(member, nn.Module):
            probs = _predict_eval(member, inputs)
        elif isinstance(member, Mapping):
            if base_model is None:
                raise ValueError("state-dict members need a base_model to load them into")
            if scratch is None:
                scratch = copy.deepcopy(base_model)
            scratch.load_state_dict(member)
            probs = _predict_eval(scratch, inputs)
        else:
            raise TypeError(f"ensemble members must be nn.Module or state dicts; got {type(member)}")
        total = probs if total is None else total + probs
    return total / len(members)


# --------------------------------------------------------------------------- total variation distance


def _check_probs(p: Tensor, name: str) -> None:
    tol = 1e-3 if torch.finfo(p.dtype).eps < 1e-4 else 5e-2
    if bool((p < -tol).any()) or bool(((p.sum(-1) - 1).abs() > tol).any()):
        raise ValueError(
            f"{name} is not a probability vector along its last dim (negative entries or sums != 1); "
            "pass softmax outputs, not logits"
        )


def total_variation_distance(p: Tensor, q: Tensor, *, reduction: str = "mean") -> Tensor:
    """``TVD(p, q) = 1/2 sum_k |p_k - q_k|`` over the last dim, averaged over all other dims.

    ``p`` and ``q`` are probability vectors along their last dim (softmax outputs), same shape.
    ``reduction="none"`` returns one distance per point (shape ``p.shape[:-1]``). Values lie in
    [0, 1]: the largest difference in probability the two assign to any set of classes.

    >>> p = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    >>> q = torch.tensor([[0.0, 1.0], [0.25, 0.75]])
    >>> total_variation_distance(p, q)
    tensor(0.6250)
    """
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same shape; got {tuple(p.shape)} and {tuple(q.shape)}")
    if p.dim() == 0:
        raise ValueError("p and q need a class dim (the last one)")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none'; got {reduction!r}")
    _check_probs(p, "p")
    _check_probs(q, "q")
    per_point = 0.5 * (p - q).abs().sum(-1)
    return per_point if reduction == "none" else per_point.mean()


def ensemble_ema_tvd(ensemble_probs: Tensor, ema_probs: Tensor) -> Tensor:
    """TVD between a snapshot ensemble's and the EMA model's softmax outputs, averaged over test points.

    The comparison "Why WD" makes between the two ways of averaging a run; equal to
    :func:`total_variation_distance` of the two (e.g. from :func:`ensemble_predict`).
    """
    return total_variation_distance(ensemble_probs, ema_probs)


# --------------------------------------------------------------------------- instrument


class EMADistance(Instrument):
    """How far the live model is from its weight EMA.

    Metrics:

    - ``ema_rel_distance``: ``||w - w_ema|| / ||w||`` over the trainable parameters (those of
      ``ctx.params()``) that ``ema`` averages, all tensors together.
    - ``ema_tvd`` (only with ``inputs``): mean TVD between the softmax outputs of the live model
      and of the EMA model on ``inputs``, both in eval mode. The EMA model is a private copy
      (made once, refreshed each time); with ``bn_loader`` its BatchNorm statistics are
      recomputed on it first (:func:`recompute_batchnorm`), otherwise it uses the EMA's buffers.

    With ``ctx.stacked = K`` both are ``(K,)`` tensors: dim 0 of every parameter and of the
    logits indexes the model. Reads the model and the EMA, never changes them (modes restored).
    """

    name = "ema_distance"

    def __init__(
        self,
        ema: WeightEMA,
        interval: int = 1,
        *,
        inputs: Tensor | None = None,
        bn_loader: Iterable[Any] | None = None,
    ):
        super().__init__(interval)
        self.ema = ema
        self.inputs = inputs
        self.bn_loader = bn_loader
        self.cheap = inputs is None  # a TVD costs two forward passes (and a BN pass with bn_loader)
        self._ema_copy: nn.Module | None = None

    @torch.no_grad()
    def relative_distance(self, ctx: Context) -> float | Tensor:
        wanted = {id(p) for p in ctx.params()}
        pairs = [(p, a) for p, a in zip(self.ema.model.parameters(), self.ema.params, strict=True) if id(p) in wanted]
        if not pairs:
            raise ValueError("none of the context's parameters is averaged by this WeightEMA (another model?)")
        diff2 = norm2 = 0.0
        for p, a in pairs:
            p64 = p.detach().to(torch.float64)
            diff2 = diff2 + per_model_sum((p64 - a.to(torch.float64)).square(), ctx.stacked)
            norm2 = norm2 + per_model_sum(p64.square(), ctx.stacked)
        rel = (diff2 / norm2).sqrt()
        return rel if ctx.stacked else float(rel)

    @torch.no_grad()
    def tvd(self, ctx: Context) -> float | Tensor:
        model = ctx.model if ctx.model is not None else self.ema.model
        if self._ema_copy is None:
            self._ema_copy = copy.deepcopy(self.ema.model)
        self.ema.copy_to(self._ema_copy)
        if self.bn_loader is not None:
            recompute_batchnorm(self._ema_copy, self.bn_loader)
        p_live = _predict_eval(model, self.inputs)
        p_ema = _predict_eval(self._ema_copy, self.inputs)
        per_point = total_variation_distance(p_live, p_ema, reduction="none")
        if ctx.stacked:
            return per_point.reshape(per_point.shape[0], -1).mean(1)
        return float(per_point.mean())

    def measure(self, ctx: Context) -> dict[str, float | Tensor]:
        out = {"ema_rel_distance": self.relative_distance(ctx)}
        if self.inputs is not None:
            out["ema_tvd"] = self.tvd(ctx)
        return out

    def __repr__(self) -> str:
        return f"EMADistance(interval={self.interval}, beta={self.ema.beta}, tvd={self.inputs is not None})"
