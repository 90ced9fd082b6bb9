r"""Low precision: how 16-bit parameters are written, and how the optimizer's state is stored.

**Parameter writes** (``low_precision=``). In bf16 (8 significant bits) ``w·(1 − lr·λ)`` with
``lr·λ = 1e-4`` rounds back to ``w``: an optimizer that stores its result with round-to-nearest
silently does no decay at all. Every mode computes the update in fp32:

* ``"kahan"`` (default): keep the rounding error of each write in a buffer of the parameter's
  dtype (state key ``kahan_comp``) and add it back before the next update::

      y = f(w + c)            (fp32)
      w ← round(y);  c ← round(y − w)

  Deterministic; one extra 16-bit tensor per parameter (as optimi does).
* ``"stochastic"`` (bf16 only): round ``y`` up or down at random with probabilities that make
  the rounding unbiased, so small decays take effect on average (as heavyball and torchao do).
* ``"exact"`` (bf16 only): the fp32 master weight, bit for bit. The parameter holds its upper 16 bits
  rounded to nearest, the state key ``param_remainder`` (int16) the rest, so that
  ``bits(w₃₂) = bits(w₁₆)·2¹⁶ + remainder`` (Megatron-LM's ``store_param_remainders``;
  modded-nanogpt keeps the lost mantissa the same way): the trajectory of the fp32 optimizer on the
  same gradients, at 4 bytes per weight instead of 6 (bf16 + an fp32 master copy).
* ``"none"``: round to nearest, torch's behaviour; small decays are lost, and the optimizer
  warns once when ``s_t·λ`` falls below the dtype's resolution.

fp32 and fp64 parameters are always written directly.

**State** (``state_dtype=``, ``state_rounding=``). With 16-bit parameters the moments are kept in fp32
by default: stored in bf16 with round-to-nearest, Adam's ``v·β₂`` with ``β₂ = 0.999`` rounds back to
``v`` (``1 − β₂`` is below bf16's resolution), so the second moment cannot decay and the run drifts
from the fp32 one (``benchmarks/low_precision.py`` measures it). ``state_dtype=torch.bfloat16`` halves
the state's memory; then ``state_rounding="stochastic"`` keeps its averages unbiased (heavyball's
choice), while ``"nearest"`` (torch's) lets them freeze, and the optimizer says so. Bytes per
parameter (Adam, two moments): 16-bit weights + fp32 state 2 + 8 (+ 2 for Kahan's buffer, + 2 for the
exact mode's remainder); + bf16 state 2 + 4 (+ 2). fp32 weights: 4 + 8.

fp16 (5 exponent bits, largest 65504): the same modes but ``"stochastic"`` and ``"exact"`` (fp16 is not
the top half of an fp32). An update that leaves fp16's range writes ±inf into the weight, as torch's
optimizers do; the optimizer then warns once (:class:`PrecisionOverflowWarning`). Keep the moments in
fp32 (the default): ``g²`` of a gradient above 256 overflows fp16.
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor

LOW_PRECISION = (torch.bfloat16, torch.float16)
MODES = ("kahan", "stochastic", "exact", "none")
STATE_DTYPES = (None, torch.float32, torch.float64, torch.bfloat16, torch.float16)
STATE_ROUNDINGS = ("nearest", "stochastic")
STATE_DTYPE_NAMES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
"""Short names of the state dtypes, as a config or a callback writes them (``optimizer_state:bf16``)."""


class PrecisionOverflowWarning(UserWarning):
    """A 16-bit write left the dtype's range: a weight became ±inf."""


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype an update is computed in: fp32 for 16-bit storage, else the storage dtype."""
    return torch.float32 if dtype in LOW_PRECISION else dtype


def state_dtype(param_dtype: torch.dtype, requested: torch.dtype | None) -> torch.dtype:
    """The dtype the optimizer's running averages are stored in (``None``: the compute dtype)."""
    return compute_dtype(param_dtype) if requested is None else requested


def _dtype(x) -> torch.dtype:
    return x.items[0].dtype if hasattr(x, "items") else x.dtype


def _up(x):
    return x.float() if _dtype(x) in LOW_PRECISION else x


def _each(fn, x, *others):
    """``fn`` on a tensor, or item by item on a TensorList (and the TensorLists beside it)."""
    if not hasattr(x, "items"):
        return fn(x, *others)
    from .tensorlist import TensorList

    return TensorList([fn(t, *(o.items[i] for o in others)) for i, t in enumerate(x.items)])


def _join(w16: Tensor, remainder: Tensor) -> Tensor:
    """The fp32 master from its upper 16 bits (a bf16 tensor) and the lower 16 (int16)."""
    bits = (w16.view(torch.int16).to(torch.int32) << 16) + remainder.to(torch.int32)
    return bits.view(torch.float32)


def _split(w32: Tensor) -> tuple[Tensor, Tensor]:
    """``(w16, remainder)``: the upper 16 bits rounded to nearest (as integers: ties away from zero) and
    what is left, in [−2¹⁵, 2¹⁵)."""
    bits = w32.contiguous().view(torch.int32)
    upper = (bits + 0x8000) >> 16
    remainder = (bits - (upper << 16)).to(torch.int16)
    return upper.to(torch.int16).view(torch.bfloat16), remainder


def read_param(p, st: dict, spec):
    """The parameter in compute dtype: with the Kahan compensation added back, or the exact fp32 master."""
    if spec.low_precision == "exact":
        return _each(_join, p, st["param_remainder"])
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
    if spec.low_precision == "exact":
        for t, r, x in (zip(p.items, st["param_remainder"].items, w.items, strict=True) if is_list
                        else [(p, st["param_remainder"], w)]):
            upper, remainder = _split(x)
            t.copy_(upper)
            r.copy_(remainder)
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


def write_state(dst, value, spec) -> None:
    """Store a running average into its state tensor (``state_rounding`` for 16-bit bf16 state)."""
    is_list = hasattr(dst, "items")
    if spec.state_rounding == "stochastic" and _dtype(dst) == torch.bfloat16:
        if is_list:
            torch._foreach_copy_(dst.items, [stochastic_round_bf16(t.float().contiguous()) for t in value.items])
        else:
            dst.copy_(stochastic_round_bf16(value.float().contiguous()))
        return
    value.copy_into(dst.items) if is_list else dst.copy_(value)


def resolution(dtype: torch.dtype) -> float:
    """The smallest relative change a round-to-nearest write of this dtype keeps (half an ulp at 1)."""
    return torch.finfo(dtype).eps / 2


def check_state_averages(betas: dict[str, float], dtype: torch.dtype, rounding: str, where: str) -> str | None:
    """Why a running average ``x ← β·x + …`` kept in ``dtype`` cannot move, or None.

    With round-to-nearest, ``β·x`` rounds back to ``x`` when ``1 − β`` is below the dtype's resolution:
    the average freezes (Adam's ``v`` with ``β₂ = 0.999`` in bf16).
    """
    if dtype not in LOW_PRECISION or rounding != "nearest":
        return None
    frozen = [f"{key} (β = {beta})" for key, beta in betas.items() if 0 < 1 - beta < resolution(dtype)]
    if not frozen:
        return None
    return (f"{where}: the running averages {', '.join(frozen)} are kept in {dtype} with round-to-nearest, "
            f"where β·x rounds back to x (1 − β is below {resolution(dtype):.2g}): they cannot decay. Keep the state "
            "in fp32 (state_dtype=None, the default for 16-bit parameters) or use state_rounding='stochastic'")


def warn_overflow(p_items, where: str, reported: set, key) -> None:
    """After an fp16 write: warn once when a weight became ±inf (the update left fp16's range)."""
    if key in reported:
        return
    if any(bool(torch.isinf(t).any()) for t in p_items):
        reported.add(key)
        warnings.warn(
            f"{where}: a float16 weight became ±inf (the update left float16's range, largest 65504); torch's "
            "optimizers do the same. Use bf16 or fp32 parameters, or scale the model down. (Reported once.)",
            PrecisionOverflowWarning, stacklevel=5,
        )
