r"""Low-precision parameter writes: keep weight decay alive in bf16 and fp16.

In bf16 (8 significant bits) ``w·(1 − lr·λ)`` with ``lr·λ = 1e-4`` rounds back to ``w``: an
optimizer that stores its result with round-to-nearest silently does no decay at all. Two
cures, both computing the update in fp32:

* ``"kahan"`` (default): keep the rounding error of each write in a buffer of the parameter's
  dtype (state key ``kahan_comp``) and add it back before the next update::

      y = f(w + c)            (fp32)
      w ← round(y);  c ← round(y − w)

  Deterministic; costs one extra tensor per parameter (as optimi does).
* ``"stochastic"`` (bf16 only): round ``y`` up or down at random with probabilities that make
  the rounding unbiased, so small decays take effect on average (as heavyball and torchao do).
* ``"none"``: round to nearest, torch's behaviour; small decays are lost, and the optimizer
  warns once when ``s_t·λ`` falls below the dtype's resolution.

fp32 and fp64 parameters are always written directly.
"""
from __future__ import annotations

import torch
from torch import Tensor

LOW_PRECISION = (torch.bfloat16, torch.float16)
MODES = ("kahan", "stochastic", "none")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype an update is computed in: fp32 for 16-bit storage, else the storage dtype."""
    return torch.float32 if dtype in LOW_PRECISION else dtype


def _dtype(x) -> torch.dtype:
    return x.items[0].dtype if hasattr(x, "items") else x.dtype


def _up(x):
    return x.float() if _dtype(x) in LOW_PRECISION else x


def read_param(p, st: dict, spec):
    """The parameter in compute dtype, with the Kahan compensation added back."""
    w = _up(p)
    if spec.low_precision == "kahan":
        w = w + st["kahan_comp"].float()
    return w


def stochastic_round_bf16(x: Tensor) -> Tensor:
    """Round an fp32 tensor to bf16, up or down with probability proportional to proximity.

    bf16 is the top 16 bits of fp32: add uniform noise below bit 16, then truncate.
    """
    bits = x.view(torch.int32)
    noise = torch.randint_like(bits, 0, 1 << 16)
    return ((bits + noise) & -65536).view(torch.float32).to(torch.bfloat16)


def write_param(p, st: dict, w, spec) -> None:
    """Store ``w`` (compute dtype) into ``p`` by the bucket's low-precision rule."""
    is_list = hasattr(p, "items")
    if _dtype(p) not in LOW_PRECISION or spec.low_precision == "none":
        w.copy_into(p.items) if is_list else p.copy_(w)
        return
    if spec.low_precision == "kahan":
        stored = w.to(_dtype(p))
        comp = w - stored.float()
        if is_list:
            stored.copy_into(p.items)
            comp.copy_into(st["kahan_comp"].items)
        else:
            p.copy_(stored)
            st["kahan_comp"].copy_(comp)
        return
    # stochastic rounding (bf16; the optimizer rejects it for fp16)
    if is_list:
        torch._foreach_copy_(p.items, [stochastic_round_bf16(t.contiguous()) for t in w.items])
    else:
        p.copy_(stochastic_round_bf16(w.contiguous()))


def resolution(dtype: torch.dtype) -> float:
    """The smallest relative change a round-to-nearest write of this dtype keeps (half an ulp at 1)."""
    return torch.finfo(dtype).eps / 2
