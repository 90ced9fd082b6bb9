r"""Adam buffer mixing (Bjorck et al.): how much of Adam's first moment comes from the L2 term.

With L2 decay in the gradient (decaylab's ``Adam(decay="l2")``, ``torch.optim.Adam(weight_decay=λ)``)
Adam's first moment is an EMA of ``∇L + λ·w``. EMA is linear, so it splits exactly into two shadow
EMAs that this instrument keeps with the group's ``β₁``, updated before *every* step::

    m_grad  ← β₁·m_grad  + (1 − β₁)·∇L          (∇L = p.grad as backward left it; −p.grad if maximize)
    m_decay ← β₁·m_decay + (1 − β₁)·λ_t·(w − w_ref)   (w before the step; w_ref = 0, or the initial
                                                      weights with decay_to="init")

and ``m_grad + m_decay`` equals the optimizer's ``exp_avg`` (up to rounding) when the monitor is
attached before the first step; attached later, the optimizer's earlier history is missing from
both shadows and ``exp_avg − m_grad − m_decay`` decays like ``β₁^t``. Neither optimizer writes
the L2 term into ``p.grad``, so ``p.grad`` is ``∇L``.

Metrics (per group ``group_i`` of coupled-L2 Adam, and ``total`` over those groups):

* ``adam_mixing/decay_grad_ratio``: ``‖λ_t·w‖ / ‖∇L‖`` of the sampled step (what enters the buffer);
* ``adam_mixing/buffer_ratio``: ``‖m_decay‖ / ‖m_grad‖``;
* ``adam_mixing/decay_share``: ``⟨m_decay, m⟩ / ‖m‖²`` with ``m = m_grad + m_decay``: the share
  of the buffer along the decay term (the grad share is ``1 −`` this). The paper's claim is that
  with L2 the λw term can "drown out" the objective; decoupling removes it from the buffer.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from decaylab.optim.sharded import global_sums, local_shard

from .base import Context, Instrument, step_hparams
from .weights import LOW_PRECISION, _direction, _form

__all__ = ["AdamBufferMixing", "coupled_l2_groups"]


def coupled_l2_groups(optimizer: torch.optim.Optimizer) -> list[int]:
    """Indices of the param groups of an Adam whose decay enters the gradient (and so Adam's buffers)."""
    if _direction(optimizer) != "adam":
        return []
    return [
        gi for gi, g in enumerate(optimizer.param_groups)
        if _form(optimizer, g) == "l2" and not (isinstance(g["weight_decay"], (int, float)) and g["weight_decay"] == 0)
    ]


def _compute(x: Tensor) -> Tensor:
    return x.float() if x.dtype in LOW_PRECISION else x


class AdamBufferMixing(Instrument):
    r"""Shadow EMAs of ``∇L`` and ``λ·w`` with Adam's ``β₁``: see the module docstring.

    Hooks every optimizer step (``every_step``; the monitor calls :meth:`before_step`) even when
    it reports at an interval; costs two parameter-sized buffers and a few element-wise passes per
    step. Raises at attach when the optimizer has no coupled-L2 Adam group.

    Example:
        >>> import torch
        >>> from decaylab.optim import Adam
        >>> from decaylab.diagnostics.monitor import Monitor
        >>> w = torch.nn.Parameter(torch.ones(4))
        >>> opt = Adam([w], lr=0.1, weight_decay=0.5, decay="l2")
        >>> mon = Monitor(None, opt, instruments=[AdamBufferMixing()])
        >>> w.grad = torch.full((4,), 0.5); opt.step()
        >>> mon.history("adam_mixing/decay_share/total")  # buffer = (1-β₁)·(0.5 + 0.5·1)
        [(1, 0.5)]
        >>> mon.close()
    """

    name = "adam_mixing"
    every_step = True

    def __init__(self, interval: int = 1):
        super().__init__(interval)
        self.m_grad: dict[int, Tensor] = {}
        self.m_decay: dict[int, Tensor] = {}
        self._groups: list[int] = []
        self._instant: dict[int, tuple[Tensor, Tensor]] = {}
        self._instant_step: int | None = None

    def attach(self, ctx: Context) -> None:
        if ctx.optimizer is None:
            raise ValueError("AdamBufferMixing needs the optimizer: it mirrors Adam's first moment")
        self._groups = coupled_l2_groups(ctx.optimizer)
        if not self._groups:
            raise ValueError(
                "AdamBufferMixing measures the L2 term inside Adam's buffers and this optimizer has no param group "
                f"with coupled L2 decay ({type(ctx.optimizer).__name__}); use decaylab.optim.Adam(decay='l2', "
                "weight_decay=λ) or torch.optim.Adam(weight_decay=λ)"
            )

    def detach(self) -> None:
        self._instant.clear()  # the shadows stay readable after the monitor closes

    def _reduce_sq(self, tensors: list[Tensor], stacked: int | None, params: list[Tensor]) -> Tensor:
        """Σ‖t‖² over the tensors (float64), per model when stacked.

        The tensors are local shards of ``params`` (for DTensor parameters, FSDP2): the sums are
        completed over the mesh.
        """
        if stacked:
            return sum(t.reshape(stacked, -1).double().pow(2).sum(1) for t in tensors)
        return global_sums(torch.stack(torch._foreach_norm(tensors)).double().pow(2), params).sum()

    @torch.no_grad()
    def before_step(self, ctx: Context) -> None:
        due = self.due(ctx.step)
        instant: dict[int, tuple[Tensor, Tensor]] = {}
        for gi in self._groups:
            group = ctx.optimizer.param_groups[gi]
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            weight = 1 - group["betas"][0]
            lam = step_hparams(group, taken=False)["lam"]
            grads, decays = [], []
            for p in params:
                # Sharded parameters (DTensor, FSDP2): the shadows hold this rank's shards.
                state = {k: local_shard(v) for k, v in ctx.optimizer.state.get(p, {}).items()}
                w = _compute(local_shard(p.detach()))
                if "kahan_comp" in state:  # decaylab's L2 term reads the compensated weight
                    w = w + state["kahan_comp"].float()
                if "init_param" in state:
                    w = w - _compute(state["init_param"])
                if isinstance(lam, Tensor) and lam.dim() == 1:
                    decays.append(w * lam.to(w.device, w.dtype).view(-1, *([1] * (w.dim() - 1))))
                else:
                    decays.append(w * (lam.to(w.device, w.dtype) if isinstance(lam, Tensor) else lam))
                g = _compute(local_shard(p.grad.detach()))
                grads.append(-g if group.get("maximize", False) else g)
                if id(p) not in self.m_grad:
                    self.m_grad[id(p)] = torch.zeros_like(g)
                    self.m_decay[id(p)] = torch.zeros_like(g)
            m_grad = [self.m_grad[id(p)] for p in params]
            m_decay = [self.m_decay[id(p)] for p in params]
            torch._foreach_lerp_(m_grad, grads, weight)
            torch._foreach_lerp_(m_decay, decays, weight)
            if due:
                k = ctx.stacked
                instant[gi] = (self._reduce_sq(decays, k, params), self._reduce_sq(grads, k, params))
        if due:
            self._instant, self._instant_step = instant, ctx.step

    @torch.no_grad()
    def measure(self, ctx: Context) -> dict[str, Any]:
        out: dict[str, Any] = {}
        k = ctx.stacked
        totals: dict[str, Any] = {}
        for gi in self._groups:
            params = [p for p in ctx.optimizer.param_groups[gi]["params"] if id(p) in self.m_grad]
            if not params:
                continue
            md = [self.m_decay[id(p)] for p in params]
            mg = [self.m_grad[id(p)] for p in params]
            m = torch._foreach_add(mg, md)
            if k:
                dot = sum((a.double() * b.double()).reshape(k, -1).sum(1) for a, b in zip(md, m, strict=True))
            else:
                dot = global_sums(torch.stack([torch.vdot(a.reshape(-1).double(), b.reshape(-1).double())
                                               for a, b in zip(md, m, strict=True)]), params).sum()
            sums = {"md": self._reduce_sq(md, k, params), "mg": self._reduce_sq(mg, k, params),
                    "m": self._reduce_sq(m, k, params), "dot": dot}
            if self._instant_step == ctx.step and gi in self._instant:
                sums["wd"], sums["g"] = self._instant[gi]
            for key, value in sums.items():
                totals[key] = totals.get(key, 0) + value
            self._emit(out, f"group_{gi}", sums)
        if totals:
            self._emit(out, "total", totals)
        return out

    @staticmethod
    def _emit(out: dict[str, Any], scope: str, sums: dict[str, Tensor]) -> None:
        if "wd" in sums:
            out[f"adam_mixing/decay_grad_ratio/{scope}"] = (sums["wd"] / sums["g"]).sqrt()
        out[f"adam_mixing/buffer_ratio/{scope}"] = (sums["md"] / sums["mg"]).sqrt()
        out[f"adam_mixing/decay_share/{scope}"] = sums["dot"] / sums["m"]
