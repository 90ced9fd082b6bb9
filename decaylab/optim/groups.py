"""Split a model's parameters into decayed and not-decayed optimizer param groups.

Weight decay shrinks a parameter towards zero at every step; with torch's AdamW
convention (decay multiplied by the learning rate)

    p <- p - lr * weight_decay * p - lr * adam_update(g)

Shrinking biases, normalization gains/shifts and (optionally) embeddings is
usually unwanted, so training scripts build two param groups: one with
``weight_decay`` and one with ``weight_decay=0.0``. This module makes that split
explicit, explains it parameter by parameter, and prints it the way nanoGPT's
``configure_optimizers`` does before a run trains.

Rules, first match wins (each parameter is judged by its full name as
``model.named_parameters()`` reports it):

1. the name matches a ``decay_patterns`` glob (:func:`fnmatch.fnmatchcase`) -> decayed
2. the name matches a ``no_decay_patterns`` glob -> not decayed
3. ``respect_no_weight_decay`` and a module's ``no_weight_decay()`` lists it
   (timm convention: names relative to that module) -> not decayed
4. ``no_decay_bias`` and the name ends with ``"bias"`` -> not decayed
5. ``no_decay_norm`` and it belongs to a normalization module
   (BatchNorm/InstanceNorm/SyncBatchNorm, LayerNorm, GroupNorm, RMSNorm) -> not decayed
6. ``no_decay_embedding`` and it is the weight of ``nn.Embedding``/``nn.EmbeddingBag``
   -> not decayed
7. ``no_decay_1d`` and ``param.ndim < 2`` (nanoGPT's rule) -> not decayed
8. otherwise -> decayed

Tied (shared) parameters appear once, under the first name ``named_parameters()``
gives them, and every rule is decided by that name and its owning module only.
E.g. in a GPT whose ``transformer.wte`` is registered before the tied ``lm_head``,
the shared matrix is ``transformer.wte.weight`` and is treated as an embedding.
A pattern or ``no_weight_decay()`` name that matches only a later alias warns.

Parameters with ``requires_grad=False`` are left out of the groups and reported
as frozen. Custom normalization classes that do not subclass torch's (nanoGPT's
own ``LayerNorm``, for one) are not recognized by rule 5: their biases are caught
by rule 4 and their gains by ``no_decay_1d=True`` or a ``no_decay_patterns`` glob.

Example:

>>> import torch
>>> from torch import nn
>>> model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
>>> groups = param_groups(model, weight_decay=0.1, lr=1e-3)
>>> [(g["weight_decay"], g["param_names"]) for g in groups]
[(0.1, ['0.weight', '2.weight']), (0.0, ['0.bias', '1.weight', '1.bias', '2.bias'])]
>>> optimizer = torch.optim.AdamW(groups)
>>> split = split_parameters(model)
>>> print(split)
decayed: 2 tensors, 48 parameters | not decayed: 4 tensors, 26 parameters | frozen: 0 tensors
>>> split.reasons["1.weight"]
'norm LayerNorm (no_decay_norm)'
"""

from __future__ import annotations

import fnmatch
import numbers
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.parameter import is_lazy

__all__ = ["EMBEDDING_TYPES", "NORM_TYPES", "DecaySplit", "param_groups", "split_parameters"]

#: Module types whose parameters rule 5 (``no_decay_norm``) keeps out of decay.
#: ``_NormBase`` covers BatchNorm1d/2d/3d, SyncBatchNorm, InstanceNorm1d/2d/3d and lazy variants.
#: ``nn.LocalResponseNorm`` has no parameters, so it needs no entry.
NORM_TYPES: tuple[type[nn.Module], ...] = (_NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)

#: Module types whose ``weight`` rule 6 (``no_decay_embedding``) keeps out of decay.
EMBEDDING_TYPES: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag)

#: What ``weight_decay`` usually is; any object is passed through to the groups unchanged.
WeightDecay = float | torch.Tensor | Callable[..., Any]

# Keys that to_param_groups writes itself; a group option with one of these names would clobber it.
_RESERVED_GROUP_KEYS = ("params", "param_names")


def _count(named: Sequence[tuple[str, nn.Parameter]]) -> str:
    return f"{len(named)} tensors, {sum(p.numel() for _, p in named):,} parameters"


@dataclass
class DecaySplit:
    """The outcome of :func:`split_parameters`: which parameters decay, which don't, and why.

    Attributes:
        decay: ``(name, parameter)`` pairs to decay, in ``named_parameters()`` order.
        no_decay: ``(name, parameter)`` pairs not to decay.
        frozen: ``(name, parameter)`` pairs with ``requires_grad=False``; in no group.
        reasons: for every parameter name (frozen included), the rule that decided it,
            e.g. ``"bias (no_decay_bias)"`` or ``"default"``.
        tied: for each shared parameter, its first name -> the other names it is known by.
    """

    decay: list[tuple[str, nn.Parameter]]
    no_decay: list[tuple[str, nn.Parameter]]
    frozen: list[tuple[str, nn.Parameter]] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    tied: dict[str, list[str]] = field(default_factory=dict)

    def to_param_groups(
        self, weight_decay: WeightDecay, *, with_names: bool = True, **group_options: Any
    ) -> list[dict[str, Any]]:
        """Torch-optimizer param groups: the decayed one first, then ``weight_decay=0.0``.

        ``weight_decay`` (a float, tensor or schedule object) and ``group_options`` (``lr=...``,
        ``betas=...``) are put into the groups unchanged. An empty group is omitted, so look
        groups up by their ``weight_decay``, not by index. With ``with_names`` each group has a
        ``"param_names"`` list (accepted by ``torch.optim.Optimizer`` since torch 2.6; note torch
        then refuses ``add_param_group`` calls whose group has no names, so pass
        ``with_names=False`` for optimizers that grow their groups later).
        """
        _check_weight_decay(weight_decay)
        for key in _RESERVED_GROUP_KEYS:
            if key in group_options:
                raise ValueError(
                    f"group_options may not contain {key!r}: to_param_groups sets it itself"
                )
        if not self.decay and not self.no_decay:
            raise ValueError("model has no trainable parameters: every group would be empty")
        groups = []
        for named, group_weight_decay in ((self.decay, weight_decay), (self.no_decay, 0.0)):
            if not named:
                continue
            group: dict[str, Any] = {
                "params": [p for _, p in named],
                "weight_decay": group_weight_decay,
            }
            if with_names:
                group["param_names"] = [name for name, _ in named]
            group.update(group_options)
            groups.append(group)
        return groups

    def summary(self, detail: bool = False) -> str:
        """One nanoGPT-style line of counts; with ``detail``, one line per tensor and its rule."""
        # Frozen parameters are usually absent; then "frozen: 0 tensors" says all there is.
        frozen = _count(self.frozen) if self.frozen else "0 tensors"
        head = (
            f"decayed: {_count(self.decay)} | not decayed: {_count(self.no_decay)}"
            f" | frozen: {frozen}"
        )
        if not detail:
            return head
        status = {name: "yes" for name, _ in self.decay}
        status.update({name: "no" for name, _ in self.no_decay})
        status.update({name: "frozen" for name, _ in self.frozen})
        shapes = {name: tuple(p.shape) for name, p in (*self.decay, *self.no_decay, *self.frozen)}
        # Model order (reasons was filled while walking named_parameters()).
        names = [name for name in self.reasons if name in status]
        width = max(len(name) for name in names)
        shape_width = max(len(str(shapes[name])) for name in names)
        lines = [head]
        for name in names:
            reason = self.reasons[name]
            if name in self.tied:
                reason += f"; tied with {', '.join(self.tied[name])}"
            lines.append(
                f"  {name:<{width}}  {shapes[name]!s:<{shape_width}}"
                f"  decay={status[name]:<6}  {reason}"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _check_weight_decay(weight_decay: object) -> None:
    # Only plain numbers can be checked here; tensors and schedules pass through untouched.
    if isinstance(weight_decay, bool):
        raise TypeError(
            f"weight_decay must be a non-negative number, tensor or schedule, got {weight_decay!r}"
        )
    if isinstance(weight_decay, numbers.Real) and not weight_decay >= 0:  # also catches NaN
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")


def _check_patterns(argument: str, patterns: Sequence[str]) -> tuple[str, ...]:
    # A bare string is a Sequence[str] too, and would silently become one glob per character.
    if isinstance(patterns, str):
        raise TypeError(
            f"{argument} must be a sequence of glob strings, e.g. ({patterns!r},), not a str"
        )
    patterns = tuple(patterns)
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise TypeError(
                f"{argument} must contain glob strings, got {type(pattern).__name__} {pattern!r}"
            )
    return patterns


def _first_match(name: str, patterns: tuple[str, ...]) -> str | None:
    return next((pattern for pattern in patterns if fnmatch.fnmatchcase(name, pattern)), None)


def _warn_unmatched(
    what: str, matches: Callable[[str], bool], names: Sequence[str], aliases: dict[str, str]
) -> None:
    if any(matches(name) for name in names):
        return
    hits = [alias for alias in aliases if matches(alias)]
    if hits:
        message = (
            f"{what} matches only the tied alias {hits[0]!r} of {aliases[hits[0]]!r}; rules use a"
            f" shared parameter's first name, so it has no effect (use {aliases[hits[0]]!r})"
        )
    else:
        message = f"{what} matches no parameter of the model"
    warnings.warn(message, stacklevel=3)


def _no_weight_decay_names(model: nn.Module) -> dict[str, str]:
    """Full parameter name -> the module whose ``no_weight_decay()`` listed it."""
    listed: dict[str, str] = {}
    for prefix, module in model.named_modules():
        method = getattr(module, "no_weight_decay", None)
        if not callable(method) or isinstance(method, nn.Module):
            continue
        label = repr(prefix) if prefix else "the model"
        returned = method()
        # Materialize once: a generator would be used up by the check below.
        names = [] if isinstance(returned, str) else list(returned or ())
        if isinstance(returned, str) or not all(isinstance(n, str) for n in names):
            raise ValueError(
                f"no_weight_decay() of {label} must return a set of parameter names,"
                f" got {returned!r}"
            )
        for name in names:
            listed.setdefault(f"{prefix}.{name}" if prefix else name, label)
    return listed


def split_parameters(
    model: nn.Module,
    *,
    no_decay_bias: bool = True,
    no_decay_norm: bool = True,
    no_decay_embedding: bool = False,
    no_decay_1d: bool = False,
    no_decay_patterns: Sequence[str] = (),
    decay_patterns: Sequence[str] = (),
    respect_no_weight_decay: bool = True,
) -> DecaySplit:
    """Decide, for every trainable parameter of ``model``, whether it is decayed (see module docs).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, or a pattern argument is not a
            sequence of str.
        ValueError: a glob is in both ``decay_patterns`` and ``no_decay_patterns``; the model has
            no trainable parameters or has uninitialized (lazy) ones.

    Warns (``UserWarning``) when a pattern or a ``no_weight_decay()`` name matches no parameter.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    decay_patterns = _check_patterns("decay_patterns", decay_patterns)
    no_decay_patterns = _check_patterns("no_decay_patterns", no_decay_patterns)
    both = sorted(set(decay_patterns) & set(no_decay_patterns))
    if both:
        raise ValueError(
            f"patterns {both} are in both decay_patterns and no_decay_patterns; put each in one"
        )

    named = list(model.named_parameters())
    first_name = {id(p): name for name, p in named}
    aliases: dict[str, str] = {}  # later name of a shared parameter -> its first name
    tied: dict[str, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if first_name[id(p)] != name:
            aliases[name] = first_name[id(p)]
            tied.setdefault(first_name[id(p)], []).append(name)
    all_names = [name for name, _ in named]

    for pattern in (*decay_patterns, *no_decay_patterns):
        argument = "decay_patterns" if pattern in decay_patterns else "no_decay_patterns"
        _warn_unmatched(
            f"{argument} glob {pattern!r}",
            lambda name, pattern=pattern: fnmatch.fnmatchcase(name, pattern),
            all_names,
            aliases,
        )
    listed = _no_weight_decay_names(model) if respect_no_weight_decay else {}
    for listed_name, label in listed.items():
        _warn_unmatched(
            f"no_weight_decay() of {label}: name {listed_name!r}",
            lambda name, listed_name=listed_name: name == listed_name,
            all_names,
            aliases,
        )

    split = DecaySplit(decay=[], no_decay=[], frozen=[], reasons={}, tied=tied)
    for name, p in named:
        if is_lazy(p):
            raise ValueError(
                f"model has an uninitialized (lazy) parameter {name!r}; run a forward pass first"
            )
        if not p.requires_grad:
            split.frozen.append((name, p))
            split.reasons[name] = "frozen (requires_grad=False)"
            continue
        owner = model.get_submodule(name.rpartition(".")[0])
        attribute = name.rpartition(".")[2]
        decay, reason = True, "default"
        if (pattern := _first_match(name, decay_patterns)) is not None:
            reason = f"decay_patterns {pattern!r}"
        elif (pattern := _first_match(name, no_decay_patterns)) is not None:
            decay, reason = False, f"no_decay_patterns {pattern!r}"
        elif name in listed:
            decay, reason = False, f"no_weight_decay() of {listed[name]}"
        elif no_decay_bias and name.endswith("bias"):
            decay, reason = False, "bias (no_decay_bias)"
        elif no_decay_norm and isinstance(owner, NORM_TYPES):
            decay, reason = False, f"norm {type(owner).__name__} (no_decay_norm)"
        elif no_decay_embedding and isinstance(owner, EMBEDDING_TYPES) and attribute == "weight":
            decay, reason = False, f"embedding {type(owner).__name__} (no_decay_embedding)"
        elif no_decay_1d and p.ndim < 2:
            decay, reason = False, f"ndim {p.ndim} < 2 (no_decay_1d)"
        (split.decay if decay else split.no_decay).append((name, p))
        split.reasons[name] = reason

    if not split.decay and not split.no_decay:
        raise ValueError(
            f"model has no trainable parameters ({len(split.frozen)} frozen tensors,"
            " none with requires_grad=True)"
        )
    return split


def param_groups(
    model: nn.Module,
    weight_decay: WeightDecay,
    *,
    no_decay_bias: bool = True,
    no_decay_norm: bool = True,
    no_decay_embedding: bool = False,
    no_decay_1d: bool = False,
    no_decay_patterns: Sequence[str] = (),
    decay_patterns: Sequence[str] = (),
    respect_no_weight_decay: bool = True,
    verbose: bool = False,
    with_names: bool = True,
    **group_options: Any,
) -> list[dict[str, Any]]:
    """Decay / no-decay param groups for ``torch.optim.AdamW(groups)`` or decaylab's optimizers.

    Equivalent to ``split_parameters(model, ...).to_param_groups(weight_decay, ...)``; returns

        [{"params": [...], "weight_decay": weight_decay, "param_names": [...], **group_options},
         {"params": [...], "weight_decay": 0.0, "param_names": [...], **group_options}]

    with an empty group omitted. ``verbose`` prints the one-line summary, as nanoGPT does.
    The rules and their precedence are in the module docstring.

    Raises:
        TypeError, ValueError: as :func:`split_parameters`; also for a negative, NaN or
            boolean ``weight_decay`` and for ``params``/``param_names`` given as group options.
    """
    _check_weight_decay(weight_decay)
    split = split_parameters(
        model,
        no_decay_bias=no_decay_bias,
        no_decay_norm=no_decay_norm,
        no_decay_embedding=no_decay_embedding,
        no_decay_1d=no_decay_1d,
        no_decay_patterns=no_decay_patterns,
        decay_patterns=decay_patterns,
        respect_no_weight_decay=respect_no_weight_decay,
    )
    if verbose:
        print(split.summary())
    return split.to_param_groups(weight_decay, with_names=with_names, **group_options)
