"""What makes decaylab's optimizers drop-ins for ``torch.optim``: keywords, state dicts, checkpoints.

* torch's keyword arguments a user copies over: ``foreach=True`` and ``fused=True`` choose those
  executors, ``None``/``False`` leave the choice to ``backend``; ``capturable`` and
  ``differentiable`` may only be False (decaylab cannot honour them, and says what to use);
  ``Adam(decoupled_weight_decay=True)`` is AdamW.
* decaylab's own group keys live where no torch scheduler writes: the peak lr of
  ``decay_scale="schedule"/"corrected"`` is ``decay_max_lr`` (``OneCycleLR`` writes ``max_lr``).
* State dicts: torch's format, plus torch's ``decoupled_weight_decay`` key so that torch's Adam reads
  the form; weight-decay schedules as plain data (``torch.load(weights_only=True)`` reads them in a
  fresh process). Loading validates hyperparameters and state shapes and is all-or-nothing; it
  reads torch checkpoints (the form from ``decoupled_weight_decay``, the group step from the
  parameters' counts) and decaylab checkpoints written before the key names above.
* A decaylab checkpoint loaded into a torch optimizer that cannot run its rule warns at its first step.
"""
from __future__ import annotations

import warnings
import weakref
from typing import Any

import torch
from torch import Tensor

from . import precision, schedules

MAX_LR = "decay_max_lr"
"""The group key of the peak lr that ``decay_scale="schedule"/"corrected"`` divide by."""
# decaylab's group keys a torch checkpoint lacks: a loaded torch group takes them from the group it replaces
_DECAYLAB_KEYS = ("decay", "decay_scale", "decay_to", "backend", "low_precision", MAX_LR)


class CheckpointFormWarning(UserWarning):
    """A state dict changes the decay rule a param group runs (it was written by another optimizer)."""


# --------------------------------------------------------------------------- keyword arguments


def backend_from_torch_flags(name: str, backend: str, *, foreach: bool | None = None, fused: bool | None = None,
                             capturable: bool = False, differentiable: bool = False) -> str:
    """``backend`` after torch's ``foreach``/``fused``/``capturable``/``differentiable`` flags."""
    if capturable:
        raise ValueError(
            f"{name}: capturable=True is not supported (decaylab keeps step counts on the CPU, as torch does "
            "without it); use capturable=False, and capture the forward and backward in CUDA graphs, not the step"
        )
    if differentiable:
        raise ValueError(
            f"{name}: differentiable=True is not supported (decaylab's step runs under no_grad); use "
            "differentiable=False, or torch.optim for differentiating through the update"
        )
    for flag, value in (("foreach", foreach), ("fused", fused)):
        if value not in (None, False, True):
            raise ValueError(f"{name}: {flag} must be None, False or True; got {value!r}")
    if foreach and fused:
        raise ValueError(f"{name}: foreach=True and fused=True are two executors; choose one (or backend=...)")
    chosen = "foreach" if foreach else "fused" if fused else None
    if chosen is None:
        return backend
    if backend not in ("auto", chosen):
        raise ValueError(f"{name}: {chosen}=True and backend={backend!r} disagree; give one of them")
    return chosen


def decay_from_torch_flag(name: str, decay: Any, decoupled_weight_decay: bool | None) -> Any:
    """``decay`` after torch's ``Adam(decoupled_weight_decay=...)``: True is AdamW's decoupled decay."""
    if decoupled_weight_decay is None or decoupled_weight_decay is False:
        return decay  # False is torch's default (L2), which decay= already says or overrides
    if decoupled_weight_decay is not True:
        raise ValueError(f"{name}: decoupled_weight_decay must be True or False; got {decoupled_weight_decay!r}")
    given = decay if isinstance(decay, str) else getattr(decay, "name", decay)
    if given in ("l2", "decoupled"):  # l2 is the default: torch's flag chooses
        return "decoupled"
    raise ValueError(
        f"{name}: decoupled_weight_decay=True (torch's flag for decay='decoupled') disagrees with decay={given!r}; "
        "give decay= alone"
    )


# --------------------------------------------------------------------------- state dicts


def _torch_form(optimizer_direction: str, group: dict[str, Any]) -> str:
    """The rule a torch checkpoint's group ran."""
    if optimizer_direction == "adam":
        return "decoupled" if group.get("decoupled_weight_decay", False) else "l2"
    return "l2"


def fill_groups(opt) -> None:
    """Complete every param group after ``__setstate__`` (an unpickled or loaded optimizer)."""
    for group in opt.param_groups:
        if "decay" not in group:  # a torch.optim checkpoint: its flag says which form it used
            group["decay"] = _torch_form(opt.direction_of(group).name, group)
        if MAX_LR not in group and "max_lr" in group and "decay_scale" in group:
            group[MAX_LR] = group["max_lr"]  # a decaylab checkpoint from before the key had its own name
        for key, value in opt.defaults.items():
            group.setdefault(key, value)
        if group.get(MAX_LR) is None:
            group[MAX_LR] = group.get("initial_lr", group["lr"])
        for p in group["params"]:
            st = opt.state.get(p, {})
            if "step" in st and not isinstance(st["step"], Tensor):  # checkpoints before torch 1.12
                st["step"] = torch.tensor(float(st["step"]), dtype=_step_dtype())
        # Weight-decay schedules read the group's step. A torch checkpoint has none, and one that
        # went through torch.optim kept a stale one: the parameters' own counts are the truth.
        counts = [opt.state.get(p, {}).get("step") for p in group["params"]]
        # (a count that is not one finite number is refused by the checks that follow a load)
        steps = [int(c) for c in counts if isinstance(c, Tensor) and c.numel() == 1 and bool(torch.isfinite(c))]
        group["step"] = max([group.get("step", 0), *steps])


def _step_dtype() -> torch.dtype:
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def to_torch_state_dict(opt, sd: dict[str, Any]) -> dict[str, Any]:
    """torch's state dict of ``opt``, with torch's form flag and schedules as plain data."""
    for group in sd["param_groups"]:
        if opt.direction_of(group).name == "adam":
            # torch.optim.Adam reads this key; it makes a decaylab checkpoint mean the same there.
            group["decoupled_weight_decay"] = group["decay"] == "decoupled"
        wd = group["weight_decay"]
        if callable(wd) and not isinstance(wd, Tensor):
            state = schedules.to_state(wd)
            if state is not None:
                group["weight_decay"] = state
    return sd


def load_state_dict(opt, state_dict: dict[str, Any], torch_load) -> None:
    """Load ``state_dict`` into ``opt`` with torch's ``load_state_dict`` (``torch_load``), then check it.

    A torch group lacks decaylab's keys: they come from the group it replaces, so a torch AdamW
    checkpoint loaded into ``ProxAdam(decay_scale=...)`` keeps what the constructor said except the
    form, which the checkpoint records (as torch does) — with a :class:`CheckpointFormWarning` when
    that changes the form. Any failure restores the optimizer as it was.
    """
    if not isinstance(state_dict, dict) or not isinstance(state_dict.get("param_groups"), list):
        raise ValueError("state_dict must be a dict with 'state' and 'param_groups' (an optimizer's state_dict())")
    groups, changed = [], []
    for i, saved in enumerate(state_dict["param_groups"]):
        if not isinstance(saved, dict):
            raise ValueError(f"state_dict: param group {i} is not a dict")
        group = dict(saved)
        if "weight_decay" in group:
            group["weight_decay"] = schedules.from_state(group["weight_decay"])
        current = opt.param_groups[i] if i < len(opt.param_groups) else None
        if current is not None:
            if "decay" not in group:
                group["decay"] = _torch_form(opt.direction_of(group).name, group)
            if MAX_LR not in group and "max_lr" in group and "decay_scale" in group:
                group[MAX_LR] = group["max_lr"]
            for key in _DECAYLAB_KEYS:
                if key not in group and key != MAX_LR:
                    group[key] = current[key]
            if group["decay"] != current["decay"]:
                changed.append(
                    f"load_state_dict: param group {i} was saved with decay={group['decay']!r}, and this "
                    f"{type(opt).__name__} was built with decay={current['decay']!r}; the group now runs "
                    f"decay={group['decay']!r}, as the checkpoint recorded (as torch.optim does). To keep "
                    f"{current['decay']!r}, set optimizer.param_groups[{i}]['decay'] = {current['decay']!r} after "
                    "loading.")
        groups.append(group)
    state_dict = dict(state_dict, param_groups=groups)

    saved_state, saved_groups = opt.state, opt.param_groups
    try:
        torch_load(state_dict)
        for group in opt.param_groups:
            opt._validate_group(group)
        _restore_state_dtypes(opt, state_dict)
        check_state_shapes(opt)
    except Exception:
        opt.state, opt.param_groups = saved_state, saved_groups
        raise
    opt.carried.clear()
    for message in changed:
        warnings.warn(message, CheckpointFormWarning, stacklevel=3)


def state_dtype_of(opt, group: dict[str, Any], key: str, p: Tensor) -> torch.dtype | None:
    """The dtype state ``key`` of ``p`` is kept in (None: not a floating tensor decaylab checks)."""
    if key == "step":
        return None
    if key == "param_remainder":
        return torch.int16
    if key in ("kahan_comp", "init_param"):
        return p.dtype
    return precision.state_dtype(p.dtype, group.get("state_dtype"))


def _restore_state_dtypes(opt, state_dict: dict[str, Any]) -> None:
    """torch's load casts every floating state tensor to its parameter's dtype; decaylab keeps the running
    averages of 16-bit parameters in their own dtype (fp32 by default), so they are taken again from the
    saved tensors, at the group's state dtype (a bf16 checkpoint's moments widen to fp32 exactly)."""
    saved = state_dict.get("state", {})
    index = 0
    for group in opt.param_groups:
        for p in group["params"]:
            entries = saved.get(index, {}) if isinstance(saved, dict) else {}
            index += 1
            st = opt.state.get(p)
            if not st or not isinstance(entries, dict):
                continue
            for key, value in entries.items():
                want = state_dtype_of(opt, group, key, p)
                if want is None or not isinstance(value, Tensor) or key not in st or st[key].dtype == want:
                    continue
                if value.is_floating_point() or want == torch.int16:
                    st[key] = value.to(dtype=want, device=p.device)


def check_state_shapes(opt) -> None:
    """Every loaded state tensor has the shape and dtype its parameter needs (torch moves dtype and device)."""
    for index, group in enumerate(opt.param_groups):
        for j, p in enumerate(group["params"]):
            for key, value in opt.state.get(p, {}).items():
                if not isinstance(value, Tensor):
                    if value is None and key == "momentum_buffer":
                        continue
                    raise ValueError(
                        f"state_dict: param group {index}, parameter {j}: state {key!r} is a {type(value).__name__}, "
                        "not a tensor"
                    )
                shape = opt.direction_of(group).state_shape(key, p)
                if shape is None:
                    continue
                if key == "step":
                    if value.numel() != 1 or not torch.isfinite(value).all() or float(value) < 0:
                        raise ValueError(
                            f"state_dict: param group {index}, parameter {j}: step must be one finite count >= 0; "
                            f"got a tensor of shape {tuple(value.shape)}"
                        )
                    continue
                if tuple(value.shape) != shape:
                    raise ValueError(
                        f"state_dict: param group {index}, parameter {j} has shape {tuple(p.shape)}, but its state "
                        f"{key!r} has shape {tuple(value.shape)}: the state dict is from another model (a narrower or "
                        "wider one?). Load the optimizer state saved with these parameters."
                    )
                want = state_dtype_of(opt, group, key, p)
                if value.dtype != want or value.device != p.device:
                    raise ValueError(
                        f"state_dict: param group {index}, parameter {j}: state {key!r} is {value.dtype} on "
                        f"{value.device}, and it must be {want} on the parameter's {p.device}"
                    )


# --------------------------------------------------------------------------- torch optimizers given decaylab state

_warned: weakref.WeakSet = weakref.WeakSet()
_hook = None


def _torch_runs(opt: torch.optim.Optimizer, group: dict[str, Any]) -> str | None:
    if isinstance(opt, torch.optim.Adam):  # AdamW is an Adam
        return "decoupled" if group.get("decoupled_weight_decay", False) else "l2"
    if isinstance(opt, torch.optim.SGD):
        return "l2"
    return None


def _check_torch_optimizer(opt, args, kwargs) -> None:
    if opt in _warned or type(opt).__module__.startswith("decaylab."):
        return
    for i, group in enumerate(opt.param_groups):
        form = group.get("decay")
        if form is None:
            continue
        runs = _torch_runs(opt, group)
        differs = form != runs or group.get("decay_scale", "lr") != "lr" or group.get("decay_to", "zero") != "zero"
        if runs is not None and differs:
            _warned.add(opt)
            warnings.warn(
                f"{type(opt).__name__}: param group {i} was loaded from a decaylab state dict with decay={form!r}, "
                f"decay_scale={group.get('decay_scale', 'lr')!r}, decay_to={group.get('decay_to', 'zero')!r}; torch "
                f"runs decay={runs!r} instead. Load it into the decaylab optimizer that wrote it to continue that run.",
                CheckpointFormWarning,
                stacklevel=3,
            )
            return


def install_torch_load_warning() -> None:
    """Warn (once per optimizer) when a torch optimizer steps with a decaylab group it cannot run.

    A global step pre-hook of torch.optim: it reads a dict key per group, and only of non-decaylab
    optimizers.
    """
    global _hook
    if _hook is None:
        from torch.optim.optimizer import register_optimizer_step_pre_hook

        _hook = register_optimizer_step_pre_hook(_check_torch_optimizer)


__all__ = ["MAX_LR", "CheckpointFormWarning", "backend_from_torch_flags", "decay_from_torch_flag", "fill_groups",
           "to_torch_state_dict", "load_state_dict", "check_state_shapes", "install_torch_load_warning"]
