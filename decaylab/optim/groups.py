"""Parameter roles, and the decay policies of the big codebases, as optimizer param groups.

Weight decay shrinks a parameter towards zero at every step; with torch's AdamW convention

    p <- p - lr * weight_decay * p - lr * adam_update(g)

Shrinking biases, normalization gains and layer-scale gains is usually unwanted, and Muon is
meant for the hidden matrices only, so training scripts split their parameters into groups. This
module gives every parameter a **role**, decides by a **policy** (decaylab's, or a preset that
reproduces a codebase's) whether it decays and, for Muon, which optimizer takes it, and prints the
split role by role before a run trains.

Roles (:func:`parameter_roles`; first match wins, shapes read past ``batch_dims`` leading model
dimensions; "vector-like" means at most one of those dimensions is larger than 1):

================  =========================================================================================
``norm_gain``     a parameter of a normalization module other than its bias: torch's BatchNorm/InstanceNorm/
                  LayerNorm/GroupNorm/RMSNorm and subclasses, or a vector-like one of any class whose name ends in
                  ``Norm`` (timm's ``RmsNorm``/``RmsNorm2d``/``SimpleNorm``, nanoGPT's ``LayerNorm``, HF's
                  ``*RMSNorm``)
``norm_bias``     a normalization module's bias (an attribute named ``*bias*``, ``beta``, ``b``, ``shift``)
``embedding``     the ``weight`` of ``nn.Embedding``/``nn.EmbeddingBag`` or of a class named ``*Embedding``; a
                  parameter named ``*token`` or ``*_pos`` (ViT's ``cls_token``, ``reg_token``, ``dist_token``), or
                  a table (not vector-like) named ``*embed*`` (ViT's ``pos_embed``)
``unembedding``   the output head's ``weight``: the last module owning a matrix ``weight`` under a root child
                  named ``head``, ``lm_head``, ``head_dist``, ``classifier``, ``output`` or ``output_layer``; when
                  no root child has such a name, the model's last module owning a matrix ``weight``. A head
                  tied to an embedding takes the role of the tensor's first name (see "Tied" below).
``bias``          a parameter named ``bias`` (any shape), or a vector-like one whose name contains ``bias``
``attention_bias``  a learned attention-logit bias table: not vector-like and named ``*bias*`` or ``rel_pos*``
                  (Swin/BEiT ``relative_position_bias_table``, LeViT ``attention_biases``)
``layer_scale``   a vector-like gain of a ``*LayerScale*`` class, or named ``gamma``, ``gamma1``, ``gamma_2``,
                  ``gamma_xca``, ``ls1``, ``layer_scale``: timm's ViT ``ls1/ls2.gamma``, ConvNeXt ``gamma``,
                  XCiT ``gamma1/gamma2``, CaiT/BEiT/EVA ``gamma_1/gamma_2``, FastViT's ``(C, 1, 1)`` ``gamma``
``scalar``        any other vector-like parameter: scalars, gates, temperatures, per-channel scales
``hidden_matrix`` the rest: ``weight`` s of Linear/Conv layers (a conv kernel is a hidden matrix of ndim 4)
                  and raw tensors with two dimensions larger than 1
================  =========================================================================================

decaylab's policy (``preset="decaylab"``, the default; first match wins):

1. the name matches a ``decay_patterns`` glob (:func:`fnmatch.fnmatchcase`) -> decayed
2. the name matches a ``no_decay_patterns`` glob -> not decayed
3. ``respect_no_weight_decay`` and a module's ``no_weight_decay()`` lists it -> not decayed. The
   entries are fnmatch patterns relative to that module, as timm matches them (timm asks the root
   only; decaylab asks every module, e.g. XCiT's attention lists its ``temperature``). An entry that
   matches nothing is ignored silently: timm's ViT lists ``reg_token``/``dist_token`` on purpose.
4. ``no_decay_bias`` and role ``bias``, ``norm_bias`` or ``attention_bias`` -> not decayed
5. ``no_decay_norm`` and role ``norm_gain`` or ``norm_bias`` -> not decayed
6. ``no_decay_embedding`` and role ``embedding`` -> not decayed
7. ``no_decay_1d`` and ndim < 2 (nanoGPT's rule) -> not decayed
8. ``no_decay_layer_scale`` and role ``layer_scale`` -> not decayed
9. ``no_decay_scalar`` and role ``scalar`` -> not decayed
10. otherwise (hidden matrices, embeddings, the output head) -> decayed

On timm's models this agrees with timm's ``param_groups_weight_decay`` (``preset="timm"``) except
where timm's ``ndim <= 1`` misses a vector shaped ``(C, 1, 1)`` or ``(1, 1, C)`` (FastViT's layer
scale, Swin V2's ``logit_scale``, XCiT's ``temperature``), which timm decays and decaylab does not,
and names that only a submodule's ``no_weight_decay()`` lists, which timm's optimizer factory never
asks for. Changed on purpose from decaylab's earlier default (which decayed layer-scale gains,
scalars and timm's ``RmsNorm`` weights, matched ``no_weight_decay()`` names exactly, and warned
about entries that match nothing): rules 5's class names, 8, 9, and 3's patterns.

Presets (:data:`PRESETS`; each reproduces the named code, cited to its file; the ``decay_patterns``
and ``no_decay_patterns`` globs still come first, the ``no_decay_*`` flags belong to decaylab's
policy and must keep their defaults with the others):

==================  ===============================================================================================
``nanogpt``         decays every tensor with ``p.dim() >= 2`` -- karpathy/nanoGPT ``model.py``,
                    ``GPT.configure_optimizers``
``hf``              decays all but parameters inside an ``nn.LayerNorm`` and those whose lower-cased name matches
                    ``bias``, ``layernorm``, ``rmsnorm``, ``(?:^|\\.)norm(?:$|\\.)`` or ``_norm(?:$|\\.)`` --
                    huggingface/transformers ``src/transformers/trainer.py``, ``Trainer.get_decay_parameter_names``
                    with ``trainer_pt_utils.get_parameter_names`` (the name patterns since PR #35927, 2025; before,
                    only ``bias``)
``timm``            does not decay ``ndim <= 1``, names ending in ``.bias``, and names matching (``fnmatch``) the
                    root's ``no_weight_decay()`` -- huggingface/pytorch-image-models
                    ``timm/optim/_param_groups.py``, ``param_groups_weight_decay``, called by
                    ``timm/optim/_optim_factory.py`` with ``model.no_weight_decay()``
``megatron``        does not decay names matching ``*.bias`` and 1-d tensors (``len(shape) == 1``: a 0-d scalar
                    decays) -- NVIDIA/Megatron-LM ``megatron/core/optimizer/__init__.py``,
                    ``get_standard_config_overrides`` and ``_get_param_groups`` (``wd_mult=0``)
``olmo-core``       decays all but the token embedding -- allenai/OLMo-core ``src/scripts/train/OLMo2/OLMo2-7B.py``
                    (and the OLMo 3/OLMoE scripts): ``OptimGroupOverride(params=["embeddings.weight"],
                    opts=dict(weight_decay=0.0))``, applied by ``OptimConfig.build_groups`` in
                    ``src/olmo_core/optim/config.py``; here: every parameter of role ``embedding``
``torchtitan``      decays every parameter -- pytorch/torchtitan ``torchtitan/components/optimizer/optimizer.py``,
                    ``default_adamw`` (one catch-all group, ``weight_decay=0.1``)
``modded-nanogpt``  hidden matrices to Muon and decayed; embeddings, the head and scalars to Adam, not decayed --
                    KellerJordan/modded-nanogpt ``train_gpt.py`` at commit ``28fda1ef`` (2025-12-15):
                    ``NorMuon(hidden_matrix_params + gate_params, weight_decay=1.2)``,
                    ``DistAdam(embed_params + scalar_params + head_params, weight_decay=0.0)``
``muon``            decaylab's split for Muon: 2-d hidden matrices to ``"muon"``, everything else (embeddings,
                    the head, conv kernels, biases, gains, scalars) to ``"adamw"``; decay decided by decaylab's
                    policy, the AdamW side with its own λ (``adamw_weight_decay``)
==================  ===============================================================================================

The Muon presets tag each group with ``"optimizer": "muon"`` or ``"adamw"``;
:meth:`ParamGroups.for_optimizer` picks one optimizer's groups, so a Muon run with torch's
optimizers is two lines, and one line with decaylab's ``Muon`` (examples below). Why the split:
torch's ``Muon`` takes 2-d parameters only and its docs say embeddings, biases and the output layer
belong to AdamW; Moonlight (MoonshotAI/Moonlight ``examples/toy_train.py``: ``ndim >= 2`` and not
``embed_tokens``/``lm_head`` to Muon, one λ for both), OLMo-core's ``MuonConfig``
(``src/olmo_core/optim/muon.py``: block matrices to Muon; embeddings to AdamW at λ = 0; vectors and
the head to AdamW) and modded-nanogpt split the same way.

Tied (shared) parameters appear once, under the first name ``named_parameters()`` gives them, and
are judged by that name and its owning module. In a GPT whose ``transformer.wte`` is registered
before the tied ``lm_head``, the shared matrix is ``transformer.wte.weight``, role ``embedding``.
A pattern, ``no_weight_decay()`` entry or role override that matches only a later alias warns.
Parameters with ``requires_grad=False`` are in no group and reported as frozen.

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
>>> split.reasons["1.weight"], split.roles["1.weight"], split.roles["2.weight"]
('norm LayerNorm (no_decay_norm)', 'norm_gain', 'unembedding')
>>> print(split.summary(detail="roles"))
decayed: 2 tensors, 48 parameters | not decayed: 4 tensors, 26 parameters | frozen: 0 tensors
  hidden_matrix  decayed      1 tensors, 32 parameters  default
  bias           not decayed  2 tensors, 10 parameters  bias (no_decay_bias)
  norm_gain      not decayed  1 tensors, 8 parameters   norm LayerNorm (no_decay_norm)
  norm_bias      not decayed  1 tensors, 8 parameters   bias (no_decay_bias)
  unembedding    decayed      1 tensors, 16 parameters  default

Muon for the hidden matrices, AdamW with its own λ for the rest:

>>> groups = param_groups(model, weight_decay=0.1, preset="muon", adamw_weight_decay=0.01)
>>> [(g["optimizer"], g["weight_decay"], g["param_names"]) for g in groups]
[('muon', 0.1, ['0.weight']), ('adamw', 0.01, ['2.weight']), ('adamw', 0.0, ['0.bias', '1.weight', '1.bias', '2.bias'])]
>>> muon = torch.optim.Muon(groups.for_optimizer("muon"), lr=0.02)
>>> adamw = torch.optim.AdamW(groups.for_optimizer("adamw"), lr=3e-4)

decaylab's ``Muon`` takes all of them at once (the AdamW groups say ``"direction": "adam"``):

>>> from decaylab.optim import Muon
>>> optimizer = Muon(groups, lr=3e-4, adjust_lr_fn="match_rms_adamw")
>>> [optimizer.direction_of(g).name for g in optimizer.param_groups]
['muon', 'adam', 'adam']
"""

from __future__ import annotations

import fnmatch
import numbers
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.parameter import is_lazy

__all__ = [
    "EMBEDDING_TYPES",
    "NORM_TYPES",
    "PRESETS",
    "ROLES",
    "DecaySplit",
    "ParamGroups",
    "Preset",
    "Role",
    "param_groups",
    "parameter_roles",
    "split_parameters",
]

#: Module types whose parameters are always normalization parameters (roles ``norm_gain``/``norm_bias``).
#: ``_NormBase`` covers BatchNorm1d/2d/3d, SyncBatchNorm, InstanceNorm1d/2d/3d and lazy variants;
#: classes whose name ends in ``Norm`` (timm's ``RmsNorm``, nanoGPT's ``LayerNorm``) count too.
NORM_TYPES: tuple[type[nn.Module], ...] = (_NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)

#: Module types whose ``weight`` has the role ``embedding`` (so do classes named ``*Embedding``).
EMBEDDING_TYPES: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag)

#: Every role :func:`parameter_roles` gives, in the order the module docstring describes them.
ROLES: tuple[str, ...] = (
    "norm_gain",
    "norm_bias",
    "embedding",
    "unembedding",
    "bias",
    "attention_bias",
    "layer_scale",
    "scalar",
    "hidden_matrix",
)

#: Root children with one of these names hold the output head.
HEAD_NAMES: tuple[str, ...] = ("head", "lm_head", "head_dist", "classifier", "output", "output_layer")

#: What ``weight_decay`` usually is; any object is passed through to the groups unchanged.
WeightDecay = float | torch.Tensor | Callable[..., Any]

# Keys that to_param_groups writes itself; a group option with one of these names would clobber it.
_RESERVED_GROUP_KEYS = ("params", "param_names")

_NORM_CLASS = re.compile(r"Norm(\d*d?)?(Fp32)?$")
_EMBEDDING_CLASS = re.compile(r"Embedding(Bag)?$")
_NORM_BIAS_ATTRS = ("beta", "b", "shift", "offset")
_TOKEN_ATTR = re.compile(r"token\d*$|(^|_)pos$")
_LAYER_SCALE_ATTR = re.compile(r"gamma(_?\d+|_\w+)?|ls\d*|ls_gamma|layer_?scale\d*")
_HF_NAME_PATTERNS = (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)")


class Role(NamedTuple):
    """A parameter's role (one of :data:`ROLES`) and why it has it."""

    role: str
    why: str


@dataclass(frozen=True)
class Preset:
    """A decay policy: its name, the file whose rule it reproduces, the rule in one line."""

    name: str
    source: str
    rule: str
    optimizers: bool = False  # whether it also says which optimizer ("muon"/"adamw") takes each parameter


#: The policies ``preset=`` accepts (see the module docstring for each one's rule and source).
PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("decaylab", "decaylab.optim.groups", "no decay on biases, norms, layer scales, scalars"),
        Preset("nanogpt", "karpathy/nanoGPT model.py (GPT.configure_optimizers)", "decay p.dim() >= 2"),
        Preset(
            "hf",
            "huggingface/transformers src/transformers/trainer.py (Trainer.get_decay_parameter_names)",
            "no decay inside nn.LayerNorm or for names matching bias/layernorm/rmsnorm/norm",
        ),
        Preset(
            "timm",
            "huggingface/pytorch-image-models timm/optim/_param_groups.py (param_groups_weight_decay)",
            "no decay for ndim <= 1, '.bias', the root's no_weight_decay() patterns",
        ),
        Preset(
            "megatron",
            "NVIDIA/Megatron-LM megatron/core/optimizer/__init__.py (get_standard_config_overrides)",
            "no decay for '*.bias' and len(shape) == 1",
        ),
        Preset(
            "olmo-core",
            "allenai/OLMo-core src/scripts/train/OLMo2/OLMo2-7B.py (OptimGroupOverride embeddings.weight)",
            "decay all but the token embedding",
        ),
        Preset(
            "torchtitan",
            "pytorch/torchtitan torchtitan/components/optimizer/optimizer.py (default_adamw)",
            "decay every parameter",
        ),
        Preset(
            "modded-nanogpt",
            "KellerJordan/modded-nanogpt train_gpt.py at 28fda1ef (NorMuon weight_decay=1.2, DistAdam 0.0)",
            "hidden matrices to Muon, decayed; the rest to Adam, not decayed",
            optimizers=True,
        ),
        Preset(
            "muon",
            "decaylab.optim.groups (torch.optim.Muon's docs, Moonlight, OLMo-core MuonConfig)",
            "2-d hidden matrices to Muon; the rest to AdamW; decay by decaylab's policy",
            optimizers=True,
        ),
    )
}

# decaylab's own policy flags and their defaults; the other presets decide by their own rule.
_FLAG_DEFAULTS = {
    "no_decay_bias": True,
    "no_decay_norm": True,
    "no_decay_embedding": False,
    "no_decay_1d": False,
    "no_decay_layer_scale": True,
    "no_decay_scalar": True,
    "respect_no_weight_decay": True,
}
_OWN_POLICY = ("decaylab", "muon")


def _count(named: Sequence[tuple[str, nn.Parameter]]) -> str:
    return f"{len(named)} tensors, {sum(p.numel() for _, p in named):,} parameters"


class ParamGroups(list):
    """A list of torch param groups (what :func:`param_groups` returns) that can pick one optimizer's.

    The Muon presets tag each group with ``"optimizer"``; torch's optimizers keep such a key and ignore it.
    """

    @property
    def optimizers(self) -> tuple[str, ...]:
        """The ``"optimizer"`` tags of the groups, in order, each once (empty for a one-optimizer split)."""
        return tuple(dict.fromkeys(g["optimizer"] for g in self if "optimizer" in g))

    def for_optimizer(self, name: str) -> list[dict[str, Any]]:
        """The groups tagged ``"optimizer": name`` (e.g. ``"muon"``, ``"adamw"``), in order."""
        if name not in self.optimizers:
            have = ", ".join(repr(o) for o in self.optimizers) or "none (no preset that splits by optimizer)"
            raise ValueError(f"name must be one of the groups' optimizers: {have}; got {name!r}")
        return [g for g in self if g.get("optimizer") == name]


@dataclass
class DecaySplit:
    """The outcome of :func:`split_parameters`: which parameters decay, which don't, their roles, and why.

    Attributes:
        decay: ``(name, parameter)`` pairs to decay, in ``named_parameters()`` order.
        no_decay: ``(name, parameter)`` pairs not to decay.
        frozen: ``(name, parameter)`` pairs with ``requires_grad=False``; in no group.
        reasons: for every parameter name (frozen included), the rule that decided it,
            e.g. ``"bias (no_decay_bias)"`` or ``"default"``.
        tied: for each shared parameter, its first name -> the other names it is known by.
        roles: for every parameter name, its role (one of :data:`ROLES`).
        role_reasons: for every parameter name, why it has its role.
        optimizers: for every trainable parameter, ``"muon"`` or ``"adamw"`` when the preset splits by
            optimizer; empty otherwise.
        preset: the policy that decided (a key of :data:`PRESETS`).
    """

    decay: list[tuple[str, nn.Parameter]]
    no_decay: list[tuple[str, nn.Parameter]]
    frozen: list[tuple[str, nn.Parameter]] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    tied: dict[str, list[str]] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)
    role_reasons: dict[str, str] = field(default_factory=dict)
    optimizers: dict[str, str] = field(default_factory=dict)
    preset: str = "decaylab"

    def to_param_groups(
        self,
        weight_decay: WeightDecay,
        *,
        adamw_weight_decay: WeightDecay | None = None,
        with_names: bool = True,
        **group_options: Any,
    ) -> ParamGroups:
        """Torch-optimizer param groups: the decayed one first, then ``weight_decay=0.0``.

        ``weight_decay`` (a float, tensor or schedule object) and ``group_options`` (``lr=...``,
        ``betas=...``) are put into the groups unchanged. An empty group is omitted, so look
        groups up by their ``weight_decay``, not by index. With ``with_names`` each group has a
        ``"param_names"`` list (accepted by ``torch.optim.Optimizer`` since torch 2.6; note torch
        then refuses ``add_param_group`` calls whose group has no names, so pass
        ``with_names=False`` for optimizers that grow their groups later).

        When the split says which optimizer takes each parameter (the Muon presets), the groups are
        ``muon`` decayed (``weight_decay``), ``muon`` not decayed, ``adamw`` decayed
        (``adamw_weight_decay``, default ``weight_decay``), ``adamw`` not decayed, each tagged
        ``"optimizer"``; :meth:`ParamGroups.for_optimizer` picks one optimizer's (for torch's
        ``Muon`` and ``AdamW``). The ``adamw`` groups also say ``"direction": "adam"``, so
        decaylab's ``Muon`` takes the whole list and runs them on Adam with its decoupled decay.
        """
        _check_weight_decay(weight_decay)
        reserved = _RESERVED_GROUP_KEYS + (("optimizer", "direction") if self.optimizers else ())
        for key in reserved:
            if key in group_options:
                raise ValueError(f"group_options may not contain {key!r}: to_param_groups sets it itself")
        if adamw_weight_decay is not None:
            if not self.optimizers:
                raise ValueError(
                    f"adamw_weight_decay is the λ of the AdamW groups of a split by optimizer (preset 'muon' or "
                    f"'modded-nanogpt'); this split (preset {self.preset!r}) has one optimizer: use weight_decay"
                )
            _check_weight_decay(adamw_weight_decay, "adamw_weight_decay")
        else:
            adamw_weight_decay = weight_decay
        if not self.decay and not self.no_decay:
            raise ValueError("model has no trainable parameters: every group would be empty")
        if self.optimizers:
            layout = [
                (opt, named, wd)
                for opt, lam in (("muon", weight_decay), ("adamw", adamw_weight_decay))
                for named, wd in (
                    ([(n, p) for n, p in self.decay if self.optimizers[n] == opt], lam),
                    ([(n, p) for n, p in self.no_decay if self.optimizers[n] == opt], 0.0),
                )
            ]
        else:
            layout = [(None, self.decay, weight_decay), (None, self.no_decay, 0.0)]
        groups = ParamGroups()
        for optimizer, named, group_weight_decay in layout:
            if not named:
                continue
            group: dict[str, Any] = {"params": [p for _, p in named], "weight_decay": group_weight_decay}
            if with_names:
                group["param_names"] = [name for name, _ in named]
            if optimizer is not None:
                group["optimizer"] = optimizer
                if optimizer == "adamw":
                    group["direction"] = "adam"  # decaylab's Muon runs such a group on Adam; torch ignores the key
            group.update(group_options)
            groups.append(group)
        return groups

    def summary(self, detail: bool | str = False) -> str:
        """One nanoGPT-style line of counts; ``detail="roles"`` adds a line per role and decision (with the
        optimizer, the count and the rule that decided); ``detail=True`` a line per tensor instead."""
        if detail not in (False, True, "roles"):
            raise ValueError(f"detail must be False, True or 'roles'; got {detail!r}")
        # Frozen parameters are usually absent; then "frozen: 0 tensors" says all there is.
        frozen = _count(self.frozen) if self.frozen else "0 tensors"
        head = f"decayed: {_count(self.decay)} | not decayed: {_count(self.no_decay)} | frozen: {frozen}"
        if self.optimizers:
            for opt in ("muon", "adamw"):
                named = [(n, p) for n, p in (*self.decay, *self.no_decay) if self.optimizers[n] == opt]
                head += f" | {opt}: {_count(named)}"
        if not detail:
            return head
        status = {name: "yes" for name, _ in self.decay}
        status.update({name: "no" for name, _ in self.no_decay})
        status.update({name: "frozen" for name, _ in self.frozen})
        params = dict((*self.decay, *self.no_decay, *self.frozen))
        # Model order (reasons was filled while walking named_parameters()).
        names = [name for name in self.reasons if name in status]
        lines = [head]
        if detail == "roles":
            decision = {"yes": "decayed", "no": "not decayed", "frozen": "frozen"}
            rows: dict[tuple[str, str, str, str], list[tuple[str, nn.Parameter]]] = {}
            for name in names:
                key = (self.roles.get(name, "?"), self.optimizers.get(name, ""), decision[status[name]],
                       self.reasons[name])
                rows.setdefault(key, []).append((name, params[name]))
            cells = [(role, opt, dec, _count(named), reason) for (role, opt, dec, reason), named in rows.items()]
            widths = [max(len(cell[i]) for cell in cells) for i in range(4)]
            for role, opt, dec, count, reason in cells:
                target = f"{opt:<{widths[1]}}  " if self.optimizers else ""
                lines.append(f"  {role:<{widths[0]}}  {target}{dec:<{widths[2]}}  {count:<{widths[3]}}  {reason}")
            return "\n".join(lines)
        shapes = {name: tuple(p.shape) for name, p in params.items()}
        width = max(len(name) for name in names)
        shape_width = max(len(str(shapes[name])) for name in names)
        role_width = max(len(self.roles.get(name, "?")) for name in names)
        for name in names:
            reason = self.reasons[name]
            if name in self.tied:
                reason += f"; tied with {', '.join(self.tied[name])}"
            target = f"  opt={self.optimizers.get(name, '-'):<5}" if self.optimizers else ""
            lines.append(
                f"  {name:<{width}}  {shapes[name]!s:<{shape_width}}  {self.roles.get(name, '?'):<{role_width}}"
                f"{target}  decay={status[name]:<6}  {reason}"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _check_weight_decay(weight_decay: object, argument: str = "weight_decay") -> None:
    # Only plain numbers can be checked here; tensors and schedules pass through untouched.
    if isinstance(weight_decay, bool):
        raise TypeError(f"{argument} must be a non-negative number, tensor or schedule, got {weight_decay!r}")
    if isinstance(weight_decay, numbers.Real) and not weight_decay >= 0:  # also catches NaN
        raise ValueError(f"{argument} must be >= 0, got {weight_decay!r}")


def _check_patterns(argument: str, patterns: Sequence[str]) -> tuple[str, ...]:
    # A bare string is a Sequence[str] too, and would silently become one glob per character.
    if isinstance(patterns, str):
        raise TypeError(f"{argument} must be a sequence of glob strings, e.g. ({patterns!r},), not a str")
    patterns = tuple(patterns)
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise TypeError(f"{argument} must contain glob strings, got {type(pattern).__name__} {pattern!r}")
    return patterns


def _check_preset(preset: object) -> Preset:
    if preset is None:
        return PRESETS["decaylab"]
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(repr(p) for p in PRESETS)}; got {preset!r}")
    return PRESETS[preset]


def _check_batch_dims(batch_dims: object) -> int:
    if isinstance(batch_dims, bool) or not isinstance(batch_dims, int) or batch_dims < 0:
        raise ValueError(f"batch_dims must be an int >= 0 (1 for decaylab's stacked models); got {batch_dims!r}")
    return batch_dims


def _first_match(name: str, patterns: tuple[str, ...]) -> str | None:
    return next((pattern for pattern in patterns if fnmatch.fnmatchcase(name, pattern)), None)


def _warn_unmatched(
    what: str, matches: Callable[[str], bool], names: Sequence[str], aliases: dict[str, str], *, quiet: bool = False
) -> None:
    """Warn when ``what`` matches no name; ``quiet`` warns only when it matches a tied alias and nothing else."""
    if any(matches(name) for name in names):
        return
    hits = [alias for alias in aliases if matches(alias)]
    if hits:
        message = (
            f"{what} matches only the tied alias {hits[0]!r} of {aliases[hits[0]]!r}; rules use a"
            f" shared parameter's first name, so it has no effect (use {aliases[hits[0]]!r})"
        )
    elif quiet:
        return
    else:
        message = f"{what} matches no parameter of the model"
    warnings.warn(message, stacklevel=4)


def _listed(module: nn.Module, label: str) -> list[str]:
    """The names ``module.no_weight_decay()`` returns, checked (a bare str or non-str entries are errors)."""
    returned = module.no_weight_decay()
    # Materialize once: a generator would be used up by the check below.
    names = [] if isinstance(returned, str) else list(returned or ())
    if isinstance(returned, str) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"no_weight_decay() of {label} must return a set of parameter names, got {returned!r}")
    return names


def _no_weight_decay_patterns(model: nn.Module, *, root_only: bool = False) -> list[tuple[str, str, str]]:
    """``(full-name pattern, the pattern as listed, which module listed it)`` for every ``no_weight_decay()``."""
    patterns: list[tuple[str, str, str]] = []
    modules = [("", model)] if root_only else model.named_modules()
    for prefix, module in modules:
        method = getattr(module, "no_weight_decay", None)
        if not callable(method) or isinstance(method, nn.Module):
            continue
        label = repr(prefix) if prefix else "the model"
        for entry in _listed(module, label):
            patterns.append((f"{prefix}.{entry}" if prefix else entry, entry, label))
    return patterns


# ----------------------------------------------------------------------------------------------- roles


def _class_names(module: nn.Module) -> list[str]:
    return [cls.__name__ for cls in type(module).__mro__ if cls not in (nn.Module, object)]


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, NORM_TYPES) or any(_NORM_CLASS.search(n) for n in _class_names(module))


def _is_embedding(module: nn.Module) -> bool:
    return isinstance(module, EMBEDDING_TYPES) or any(_EMBEDDING_CLASS.search(n) for n in _class_names(module))


def _owns_matrix_weight(module: nn.Module, batch_dims: int) -> bool:
    weight = module._parameters.get("weight")
    return (
        isinstance(weight, torch.Tensor)
        and not is_lazy(weight)
        and weight.ndim - batch_dims >= 2
        and not _is_embedding(module)
        and not _is_norm(module)
    )


def _head_modules(model: nn.Module, batch_dims: int) -> list[tuple[str, nn.Module]]:
    """The output head(s): see the ``unembedding`` role in the module docstring."""
    named = [(n, c) for n, c in model.named_children() if n in HEAD_NAMES]
    if named:
        heads = []
        for child_name, child in named:
            owners = [(f"{child_name}.{n}" if n else child_name, m) for n, m in child.named_modules()
                      if _owns_matrix_weight(m, batch_dims)]
            heads += owners[-1:]
        return heads
    owners = [(n, m) for n, m in model.named_modules() if _owns_matrix_weight(m, batch_dims)]
    return owners[-1:]


def _vector_like(p: torch.Tensor, batch_dims: int) -> bool:
    return sum(size > 1 for size in p.shape[batch_dims:]) <= 1


def _role(
    name: str, p: torch.Tensor, owner: nn.Module, heads: dict[int, str], tied: list[str], batch_dims: int
) -> Role:
    attr = name.rpartition(".")[2]
    lower = attr.lower()
    kind = type(owner).__name__
    ndim = p.ndim - batch_dims
    tie = f"; tied with {', '.join(tied)}" if tied else ""
    vector = _vector_like(p, batch_dims)
    # torch's norm types always; a class merely named *Norm only for vector-like parameters.
    if isinstance(owner, NORM_TYPES) or (vector and _is_norm(owner)):
        if "bias" in lower or lower in _NORM_BIAS_ATTRS:
            return Role("norm_bias", f"{attr} of {kind}")
        return Role("norm_gain", f"{attr} of {kind}")
    if attr == "weight" and _is_embedding(owner):
        head = f"; also the output head {heads[id(p)]}" if id(p) in heads else ""
        return Role("embedding", f"weight of {kind}{head or tie}")
    if id(p) in heads:
        return Role("unembedding", f"the output head ({kind}){tie}")
    if attr == "bias":
        return Role("bias", f"bias of {kind}")
    if "bias" in lower or lower.startswith("rel_pos"):
        if vector:
            return Role("bias", f"{attr}: a bias vector")
        return Role("attention_bias", f"{attr}: a learned bias table, shape {tuple(p.shape)}")
    if attr != "weight" and (_TOKEN_ATTR.search(lower) or ("embed" in lower and not vector)):
        return Role("embedding", f"{attr}: named like an embedding")
    if attr == "weight" and ndim >= 2:
        return Role("hidden_matrix", f"weight of {kind}" + (f", ndim {ndim}" if ndim != 2 else ""))
    if vector:
        if any("LayerScale" in n for n in _class_names(owner)):
            return Role("layer_scale", f"{attr} of {kind}")
        if _LAYER_SCALE_ATTR.fullmatch(lower):
            return Role("layer_scale", f"{attr}: named like a layer-scale gain")
        return Role("scalar", f"{attr}: {'a scalar' if p.numel() == 1 else 'a vector'} of {kind}")
    return Role("hidden_matrix", f"{attr}: a tensor of shape {tuple(p.shape)}")


def _check_roles(overrides: Mapping[str, str] | None) -> dict[str, str]:
    if overrides is None:
        return {}
    if not isinstance(overrides, Mapping):
        raise TypeError(
            f"role_overrides must be a mapping of glob -> role, e.g. {{'pooler.*': 'hidden_matrix'}}; got {overrides!r}"
        )
    for pattern, role in overrides.items():
        if not isinstance(pattern, str):
            raise TypeError(f"role_overrides: each key must be a glob string, got {type(pattern).__name__} {pattern!r}")
        if role not in ROLES:
            raise ValueError(f"role_overrides: {pattern!r} -> {role!r}; a role must be one of {', '.join(ROLES)}")
    return dict(overrides)


class _Model(NamedTuple):
    """What every rule needs to know about a model, worked out once."""

    named: list[tuple[str, nn.Parameter]]  # first names, named_parameters() order
    aliases: dict[str, str]  # later name of a shared parameter -> its first name
    tied: dict[str, list[str]]  # first name -> later names
    roles: dict[str, Role]


def _inspect(model: nn.Module, batch_dims: int, overrides: dict[str, str]) -> _Model:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    named = list(model.named_parameters())
    first_name = {id(p): name for name, p in named}
    aliases: dict[str, str] = {}
    tied: dict[str, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if first_name[id(p)] != name:
            aliases[name] = first_name[id(p)]
            tied.setdefault(first_name[id(p)], []).append(name)
    for name, p in named:
        if is_lazy(p):
            raise ValueError(f"model has an uninitialized (lazy) parameter {name!r}; run a forward pass first")
        if p.ndim < batch_dims:
            raise ValueError(
                f"batch_dims={batch_dims}: parameter {name!r} has shape {tuple(p.shape)}, fewer dimensions than the"
                " leading model dimensions batch_dims says every parameter has"
            )
    all_names = [name for name, _ in named]
    for pattern in overrides:
        _warn_unmatched(
            f"role_overrides glob {pattern!r}", lambda n, g=pattern: fnmatch.fnmatchcase(n, g), all_names, aliases
        )
    heads = {id(m._parameters["weight"]): f"{n}.weight" if n else "weight" for n, m in _head_modules(model, batch_dims)}
    roles = {}
    for name, p in named:
        pattern = _first_match(name, tuple(overrides))
        if pattern is not None:
            roles[name] = Role(overrides[pattern], f"role_overrides {pattern!r}")
            continue
        owner = model.get_submodule(name.rpartition(".")[0])
        roles[name] = _role(name, p, owner, heads, tied.get(name, []), batch_dims)
    return _Model(named, aliases, tied, roles)


def parameter_roles(
    model: nn.Module, *, batch_dims: int = 0, role_overrides: Mapping[str, str] | None = None
) -> dict[str, Role]:
    """The role of every parameter of ``model`` (frozen ones included), by first name, in model order.

    ``batch_dims`` leading dimensions stack models (1 for decaylab's stacked trainer) and are left
    out of every shape rule; ``role_overrides`` maps globs to roles and overrides the classifier (e.g.
    ``{"pooler.*": "hidden_matrix"}``). The rules are in the module docstring.

    >>> from torch import nn
    >>> roles = parameter_roles(nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 10)))
    >>> {name: role.role for name, role in roles.items()}  # doctest: +NORMALIZE_WHITESPACE
    {'0.weight': 'embedding', '1.weight': 'hidden_matrix', '1.bias': 'bias', '2.weight': 'norm_gain',
     '2.bias': 'norm_bias', '3.weight': 'unembedding', '3.bias': 'bias'}
    >>> roles["3.weight"].why
    'the output head (Linear)'

    Raises:
        TypeError: ``model`` is not an ``nn.Module``; ``role_overrides`` is not a mapping of globs.
        ValueError: an unknown role; a lazy parameter; a parameter with fewer than ``batch_dims`` dimensions.
    """
    return _inspect(model, _check_batch_dims(batch_dims), _check_roles(role_overrides)).roles


# -------------------------------------------------------------------------------------------- policies

Decision = tuple[bool, str]  # (decayed, why)


def _decaylab_policy(model: nn.Module, info: _Model, flags: dict[str, bool], batch_dims: int) -> Callable:
    listed = _no_weight_decay_patterns(model) if flags["respect_no_weight_decay"] else []
    all_names = [name for name, _ in info.named]
    for full, entry, label in listed:
        _warn_unmatched(
            f"no_weight_decay() of {label}: name {entry!r}",
            lambda n, g=full: fnmatch.fnmatchcase(n, g),
            all_names,
            info.aliases,
            quiet=True,
        )

    def decide(name: str, p: torch.Tensor, owner: nn.Module, role: str) -> Decision:
        for full, entry, label in listed:
            if fnmatch.fnmatchcase(name, full):
                pattern = f" ({entry!r})" if full != name else ""
                return False, f"no_weight_decay() of {label}{pattern}"
        if flags["no_decay_bias"] and role in ("bias", "norm_bias", "attention_bias"):
            return False, "attention bias table (no_decay_bias)" if role == "attention_bias" else "bias (no_decay_bias)"
        if flags["no_decay_norm"] and role in ("norm_gain", "norm_bias"):
            return False, f"norm {type(owner).__name__} (no_decay_norm)"
        if flags["no_decay_embedding"] and role == "embedding":
            return False, f"embedding {type(owner).__name__} (no_decay_embedding)"
        if flags["no_decay_1d"] and p.ndim - batch_dims < 2:
            return False, f"ndim {p.ndim - batch_dims} < 2 (no_decay_1d)"
        if flags["no_decay_layer_scale"] and role == "layer_scale":
            return False, "layer scale (no_decay_layer_scale)"
        if flags["no_decay_scalar"] and role == "scalar":
            return False, "scalar (no_decay_scalar)"
        return True, "default"

    return decide


def _nanogpt_policy(model: nn.Module, info: _Model, batch_dims: int) -> Callable:
    def decide(name: str, p: torch.Tensor, owner: nn.Module, role: str) -> Decision:
        ndim = p.dim() - batch_dims
        return (True, f"ndim {ndim} >= 2 (nanoGPT)") if ndim >= 2 else (False, f"ndim {ndim} < 2 (nanoGPT)")

    return decide


def _hf_policy(model: nn.Module, info: _Model, batch_dims: int) -> Callable:
    patterns = [re.compile(p) for p in _HF_NAME_PATTERNS]

    def decide(name: str, p: torch.Tensor, owner: nn.Module, role: str) -> Decision:
        # get_parameter_names tests isinstance on every module below the root on the parameter's path, and the
        # patterns on each path suffix; a suffix matches only where the whole lower-cased name matches.
        parts = name.split(".")[:-1]
        for depth in range(1, len(parts) + 1):
            module = model.get_submodule(".".join(parts[:depth]))
            if isinstance(module, nn.LayerNorm):
                return False, f"inside nn.LayerNorm {'.'.join(parts[:depth])!r} (HF Trainer)"
        for pattern in patterns:
            if pattern.search(name.lower()):
                return False, f"name matches {pattern.pattern!r} (HF Trainer)"
        return True, "default (HF Trainer)"

    return decide


def _timm_policy(model: nn.Module, info: _Model, batch_dims: int) -> Callable:
    # create_optimizer_v2 asks the model itself only: getattr(model, 'no_weight_decay', lambda: set())().
    listed = [entry for _, entry, _ in _no_weight_decay_patterns(model, root_only=True)]

    def decide(name: str, p: torch.Tensor, owner: nn.Module, role: str) -> Decision:
        if p.ndim - batch_dims <= 1:
            return False, f"ndim {p.ndim - batch_dims} <= 1 (timm)"
        if name.endswith(".bias"):
            return False, "name ends with '.bias' (timm)"
        pattern = next((e for e in listed if fnmatch.fnmatch(name, e)), None)
        if pattern is not None:
            return False, f"no_weight_decay() {pattern!r} (timm)"
        return True, "default (timm)"

    return decide


def _megatron_policy(model: nn.Module, info: _Model, batch_dims: int) -> Callable:
    def decide(name: str, p: torch.Tensor, owner: nn.Module, role: str) -> Decision:
        if fnmatch.fnmatch(name, "*.bias"):
            return False, "name matches '*.bias' (Megatron)"
        if p.ndim - batch_dims == 1:
            return False, "len(shape) == 1 (Megatron)"
        return True, "default (Megatron)"

    return decide


def _olmo_core_policy(model: nn.Module, info: _Model, batch_dims: int) -> Callable:
    def decide(name: str, p: torch.Tensor, owner: nn.Module, role: str) -> Decision:
        if role == "embedding":
            return False, "embedding: weight_decay=0.0 (OLMo-core embeddings.weight)"
        return True, "default (OLMo-core)"

    return decide


def _torchtitan_policy(model: nn.Module, info: _Model, batch_dims: int) -> Callable:
    def decide(name: str, p: torch.Tensor, owner: nn.Module, role: str) -> Decision:
        return True, "every parameter decays (torchtitan)"

    return decide


def _modded_nanogpt_policy(model: nn.Module, info: _Model, batch_dims: int) -> Callable:
    def decide(name: str, p: torch.Tensor, owner: nn.Module, role: str) -> Decision:
        if _muon_target(role, p, batch_dims)[0] == "muon":
            return True, "Muon side: weight_decay=1.2 (modded-nanogpt)"
        return False, "Adam side: weight_decay=0.0 (modded-nanogpt)"

    return decide


def _muon_target(role: str, p: torch.Tensor, batch_dims: int) -> tuple[str, str]:
    """``("muon" | "adamw", why)``: Muon takes the 2-d hidden matrices (past ``batch_dims``), AdamW the rest."""
    if role != "hidden_matrix":
        return "adamw", f"{role}: not a hidden matrix"
    ndim = p.ndim - batch_dims
    if ndim != 2:
        return "adamw", f"hidden tensor of ndim {ndim}: Muon takes 2-d matrices"
    return "muon", "hidden matrix"


_POLICIES: dict[str, Callable[..., Callable]] = {
    "nanogpt": _nanogpt_policy,
    "hf": _hf_policy,
    "timm": _timm_policy,
    "megatron": _megatron_policy,
    "olmo-core": _olmo_core_policy,
    "torchtitan": _torchtitan_policy,
    "modded-nanogpt": _modded_nanogpt_policy,
}


def split_parameters(
    model: nn.Module,
    *,
    preset: str | None = None,
    no_decay_bias: bool = True,
    no_decay_norm: bool = True,
    no_decay_embedding: bool = False,
    no_decay_1d: bool = False,
    no_decay_layer_scale: bool = True,
    no_decay_scalar: bool = True,
    no_decay_patterns: Sequence[str] = (),
    decay_patterns: Sequence[str] = (),
    respect_no_weight_decay: bool = True,
    batch_dims: int = 0,
    role_overrides: Mapping[str, str] | None = None,
) -> DecaySplit:
    """Decide, for every trainable parameter of ``model``, its role and whether it is decayed (see module docs).

    ``preset`` picks the policy (a key of :data:`PRESETS`; ``None`` is ``"decaylab"``). The
    ``no_decay_*`` flags and ``respect_no_weight_decay`` configure decaylab's policy (``"decaylab"``
    and ``"muon"``); with another preset they must keep their defaults. ``decay_patterns`` and
    ``no_decay_patterns`` come first with every preset. ``batch_dims`` leading dimensions stack
    models (1 for decaylab's stacked trainer): shape rules look past them. ``role_overrides`` sets the
    role of the parameters its globs match.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, or a pattern argument is not a
            sequence of str.
        ValueError: an unknown preset (the message lists them); a flag set with a preset that
            decides by its own rule; a glob in both ``decay_patterns`` and ``no_decay_patterns``;
            the model has no trainable parameters or has uninitialized (lazy) ones.

    Warns (``UserWarning``) when a pattern or role glob matches no parameter, or when it or a
    ``no_weight_decay()`` entry matches only a tied alias.
    """
    policy = _check_preset(preset)
    flags = {
        "no_decay_bias": no_decay_bias,
        "no_decay_norm": no_decay_norm,
        "no_decay_embedding": no_decay_embedding,
        "no_decay_1d": no_decay_1d,
        "no_decay_layer_scale": no_decay_layer_scale,
        "no_decay_scalar": no_decay_scalar,
        "respect_no_weight_decay": respect_no_weight_decay,
    }
    if policy.name not in _OWN_POLICY:
        changed = [f"{k}={v!r}" for k, v in flags.items() if v != _FLAG_DEFAULTS[k]]
        if changed:
            raise ValueError(
                f"{', '.join(changed)}: the no_decay_* flags and respect_no_weight_decay configure decaylab's policy"
                f" (preset 'decaylab' or 'muon'); preset {policy.name!r} decides by its own rule"
                " (use decay_patterns / no_decay_patterns to adjust it)"
            )
    batch_dims = _check_batch_dims(batch_dims)
    decay_patterns = _check_patterns("decay_patterns", decay_patterns)
    no_decay_patterns = _check_patterns("no_decay_patterns", no_decay_patterns)
    both = sorted(set(decay_patterns) & set(no_decay_patterns))
    if both:
        raise ValueError(f"patterns {both} are in both decay_patterns and no_decay_patterns; put each in one")
    overrides = _check_roles(role_overrides)

    info = _inspect(model, batch_dims, overrides)
    all_names = [name for name, _ in info.named]
    for pattern in (*decay_patterns, *no_decay_patterns):
        argument = "decay_patterns" if pattern in decay_patterns else "no_decay_patterns"
        _warn_unmatched(
            f"{argument} glob {pattern!r}", lambda n, g=pattern: fnmatch.fnmatchcase(n, g), all_names, info.aliases
        )
    if policy.name in _OWN_POLICY:
        decide = _decaylab_policy(model, info, flags, batch_dims)
    else:
        decide = _POLICIES[policy.name](model, info, batch_dims)

    split = DecaySplit(decay=[], no_decay=[], frozen=[], reasons={}, tied=info.tied, preset=policy.name)
    for name, p in info.named:
        role = info.roles[name]
        split.roles[name], split.role_reasons[name] = role.role, role.why
        if not p.requires_grad:
            split.frozen.append((name, p))
            split.reasons[name] = "frozen (requires_grad=False)"
            continue
        owner = model.get_submodule(name.rpartition(".")[0])
        if (pattern := _first_match(name, decay_patterns)) is not None:
            decay, reason = True, f"decay_patterns {pattern!r}"
        elif (pattern := _first_match(name, no_decay_patterns)) is not None:
            decay, reason = False, f"no_decay_patterns {pattern!r}"
        else:
            decay, reason = decide(name, p, owner, role.role)
        if policy.optimizers:
            split.optimizers[name] = _muon_target(role.role, p, batch_dims)[0]
        (split.decay if decay else split.no_decay).append((name, p))
        split.reasons[name] = reason

    if not split.decay and not split.no_decay:
        raise ValueError(
            f"model has no trainable parameters ({len(split.frozen)} frozen tensors, none with requires_grad=True)"
        )
    return split


def param_groups(
    model: nn.Module,
    weight_decay: WeightDecay,
    *,
    preset: str | None = None,
    no_decay_bias: bool = True,
    no_decay_norm: bool = True,
    no_decay_embedding: bool = False,
    no_decay_1d: bool = False,
    no_decay_layer_scale: bool = True,
    no_decay_scalar: bool = True,
    no_decay_patterns: Sequence[str] = (),
    decay_patterns: Sequence[str] = (),
    respect_no_weight_decay: bool = True,
    batch_dims: int = 0,
    role_overrides: Mapping[str, str] | None = None,
    adamw_weight_decay: WeightDecay | None = None,
    verbose: bool = False,
    with_names: bool = True,
    **group_options: Any,
) -> ParamGroups:
    """Decay / no-decay param groups for ``torch.optim.AdamW(groups)`` or decaylab's optimizers.

    Equivalent to ``split_parameters(model, ...).to_param_groups(weight_decay, ...)``; returns

        [{"params": [...], "weight_decay": weight_decay, "param_names": [...], **group_options},
         {"params": [...], "weight_decay": 0.0, "param_names": [...], **group_options}]

    with an empty group omitted; the Muon presets (``"muon"``, ``"modded-nanogpt"``) return up to
    four groups tagged ``"optimizer"`` (``adamw_weight_decay`` is the AdamW side's λ, default
    ``weight_decay``), from which :meth:`ParamGroups.for_optimizer` picks. ``verbose`` prints the
    split role by role: where each role went and the rule that sent it there. The policies, roles
    and presets are in the module docstring.

    Raises:
        TypeError, ValueError: as :func:`split_parameters`; also for a negative, NaN or boolean
            ``weight_decay`` and for ``params``/``param_names`` given as group options.
    """
    _check_weight_decay(weight_decay)
    split = split_parameters(
        model,
        preset=preset,
        no_decay_bias=no_decay_bias,
        no_decay_norm=no_decay_norm,
        no_decay_embedding=no_decay_embedding,
        no_decay_1d=no_decay_1d,
        no_decay_layer_scale=no_decay_layer_scale,
        no_decay_scalar=no_decay_scalar,
        no_decay_patterns=no_decay_patterns,
        decay_patterns=decay_patterns,
        respect_no_weight_decay=respect_no_weight_decay,
        batch_dims=batch_dims,
        role_overrides=role_overrides,
    )
    groups = split.to_param_groups(
        weight_decay, adamw_weight_decay=adamw_weight_decay, with_names=with_names, **group_options
    )
    if verbose:
        print(split.summary(detail="roles"))
    return groups
