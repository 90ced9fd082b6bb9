"""Tests for decaylab.groups: decay / no-decay param groups."""

from __future__ import annotations

import doctest
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import decaylab.groups
from decaylab.groups import DecaySplit, param_groups, split_parameters


class Mixed(nn.Module):
    """One of each layer kind the rules care about."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 8)
        self.bn = nn.BatchNorm1d(8)
        self.ln = nn.LayerNorm(8)
        self.emb = nn.Embedding(10, 4)
        self.bag = nn.EmbeddingBag(10, 4)
        self.conv = nn.Conv2d(3, 4, 3)
        self.gn = nn.GroupNorm(2, 4)
        self.inorm = nn.InstanceNorm2d(4, affine=True)
        self.rms = nn.RMSNorm(8)
        self.scale = nn.Parameter(torch.ones(8))  # a 1-d non-bias, non-norm parameter: role "scalar"
        self.head = nn.Linear(8, 3, bias=False)


# named_parameters() order: a module's own parameters (scale) come before its submodules'.
# The default stopped decaying `scale` (role "scalar", rule no_decay_scalar) to agree with timm's ndim <= 1.
MIXED_DEFAULT_DECAY = [
    "fc.weight",
    "emb.weight",
    "bag.weight",
    "conv.weight",
    "head.weight",
]
MIXED_DEFAULT_NO_DECAY = [
    "scale",
    "fc.bias",
    "bn.weight",
    "bn.bias",
    "ln.weight",
    "ln.bias",
    "conv.bias",
    "gn.weight",
    "gn.bias",
    "inorm.weight",
    "inorm.bias",
    "rms.weight",
]


class TinyGPT(nn.Module):
    """nanoGPT's layout: the lm_head weight is tied to the token embedding."""

    def __init__(self, vocab: int = 16, block: int = 8, dim: int = 4, head_first: bool = False):
        super().__init__()
        if head_first:  # register the head before the embedding: the shared weight's first name
            self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(vocab, dim),
                "wpe": nn.Embedding(block, dim),
                "fc": nn.Linear(dim, dim),
                "ln_f": nn.LayerNorm(dim),
            }
        )
        if not head_first:
            self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.transformer.wte.weight


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 24)
        self.rel_table = nn.Parameter(torch.zeros(5, 2))

    def no_weight_decay(self) -> set[str]:
        return {"rel_table"}  # relative to this module


class ViTish(nn.Module):
    def __init__(self, extra: set[str] | None = None) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, 4, 8))
        self.proj = nn.Linear(8, 8)
        self.blocks = nn.ModuleList([Attention()])
        self.extra = extra or set()

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"} | self.extra


def names(named: list[tuple[str, nn.Parameter]]) -> list[str]:
    return [name for name, _ in named]


def assert_partition(model: nn.Module, split: DecaySplit) -> None:
    """Every trainable parameter is in exactly one of decay/no_decay, frozen ones in neither."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    grouped = [p for _, p in split.decay + split.no_decay]
    assert len(grouped) == len(trainable)
    assert {id(p) for p in grouped} == {id(p) for p in trainable}
    assert [id(p) for _, p in split.frozen] == [
        id(p) for p in model.parameters() if not p.requires_grad
    ]
    assert set(split.reasons) == {name for name, _ in model.named_parameters()}


# --- membership -----------------------------------------------------------------------------


def test_default_membership_is_exact():
    model = Mixed()
    split = split_parameters(model)
    assert names(split.decay) == MIXED_DEFAULT_DECAY
    assert names(split.no_decay) == MIXED_DEFAULT_NO_DECAY
    assert split.frozen == [] and split.tied == {}
    assert_partition(model, split)
    assert split.reasons["fc.bias"] == "bias (no_decay_bias)"
    assert split.reasons["bn.weight"] == "norm BatchNorm1d (no_decay_norm)"
    assert split.reasons["rms.weight"] == "norm RMSNorm (no_decay_norm)"
    assert split.reasons["fc.weight"] == "default"
    assert split.reasons["scale"] == "scalar (no_decay_scalar)"


def test_param_groups_layout_and_names():
    model = Mixed()
    groups = param_groups(model, 0.1)
    assert len(groups) == 2
    decayed, not_decayed = groups
    assert set(decayed) == {"params", "weight_decay", "param_names"}
    assert decayed["weight_decay"] == 0.1 and not_decayed["weight_decay"] == 0.0
    assert decayed["param_names"] == MIXED_DEFAULT_DECAY
    assert not_decayed["param_names"] == MIXED_DEFAULT_NO_DECAY
    params = dict(model.named_parameters())
    for group in groups:
        assert [id(p) for p in group["params"]] == [id(params[n]) for n in group["param_names"]]


def test_flags_toggle_their_rule_only():
    model = Mixed()
    no_bias_rule = split_parameters(model, no_decay_bias=False)
    # Norm biases are still caught by the norm rule; only fc.bias and conv.bias move.
    assert set(names(no_bias_rule.decay)) == set(MIXED_DEFAULT_DECAY) | {"fc.bias", "conv.bias"}

    no_norm_rule = split_parameters(model, no_decay_norm=False)
    norm_weights = {"bn.weight", "ln.weight", "gn.weight", "inorm.weight", "rms.weight"}
    assert set(names(no_norm_rule.decay)) == set(MIXED_DEFAULT_DECAY) | norm_weights

    embeddings = split_parameters(model, no_decay_embedding=True)
    assert set(names(embeddings.no_decay)) == set(MIXED_DEFAULT_NO_DECAY) | {
        "emb.weight",
        "bag.weight",
    }
    assert embeddings.reasons["bag.weight"] == "embedding EmbeddingBag (no_decay_embedding)"

    one_d = split_parameters(model, no_decay_1d=True)
    assert set(names(one_d.no_decay)) == set(MIXED_DEFAULT_NO_DECAY)
    assert one_d.reasons["scale"] == "ndim 1 < 2 (no_decay_1d)"  # rule 7 comes before no_decay_scalar

    scalars = split_parameters(model, no_decay_scalar=False)
    assert set(names(scalars.decay)) == set(MIXED_DEFAULT_DECAY) | {"scale"}
    assert scalars.reasons["scale"] == "default"

    nothing = split_parameters(model, no_decay_bias=False, no_decay_norm=False, no_decay_scalar=False)
    assert nothing.no_decay == [] and len(nothing.decay) == len(list(model.parameters()))
    for split in (no_bias_rule, no_norm_rule, embeddings, one_d, scalars, nothing):
        assert_partition(model, split)


def test_nanogpt_rule_matches_nanogpt_configure_optimizers():
    model = TinyGPT()
    split = split_parameters(model, no_decay_1d=True)
    # nanoGPT: decay every >=2-d tensor, not the rest.
    params = dict(model.named_parameters())
    assert names(split.decay) == [n for n, p in params.items() if p.dim() >= 2]
    assert names(split.no_decay) == [n for n, p in params.items() if p.dim() < 2]


# --- tied weights ------------------------------------------------------------------------------


def test_tied_weight_appears_once_under_first_name():
    model = TinyGPT()
    split = split_parameters(model, no_decay_embedding=True)
    assert_partition(model, split)
    assert split.tied == {"transformer.wte.weight": ["lm_head.weight"]}
    all_names = names(split.decay) + names(split.no_decay)
    assert "lm_head.weight" not in all_names and all_names.count("transformer.wte.weight") == 1
    assert "transformer.wte.weight" in names(split.no_decay)
    assert "tied with lm_head.weight" in split.summary(detail=True)


def test_tied_weight_is_decided_by_first_name_when_owners_disagree():
    model = TinyGPT(head_first=True)  # first name is now lm_head.weight, owned by a Linear
    split = split_parameters(model, no_decay_embedding=True)
    assert split.tied == {"lm_head.weight": ["transformer.wte.weight"]}
    assert "lm_head.weight" in names(split.decay)
    assert "transformer.wpe.weight" in names(split.no_decay)
    assert_partition(model, split)


def test_pattern_naming_only_a_tied_alias_warns_with_the_first_name():
    with pytest.warns(UserWarning, match="tied alias 'lm_head.weight'.*'transformer.wte.weight'"):
        split = split_parameters(TinyGPT(), no_decay_patterns=["lm_head.weight"])
    assert "transformer.wte.weight" in names(split.decay)


# --- no_weight_decay() -------------------------------------------------------------------------


def test_no_weight_decay_of_root_and_submodule():
    model = ViTish()
    split = split_parameters(model)
    assert names(split.no_decay) == [
        "pos_embed",
        "proj.bias",
        "blocks.0.rel_table",
        "blocks.0.qkv.bias",
    ]
    assert names(split.decay) == ["proj.weight", "blocks.0.qkv.weight"]
    assert split.reasons["pos_embed"] == "no_weight_decay() of the model"
    assert split.reasons["blocks.0.rel_table"] == "no_weight_decay() of 'blocks.0'"

    ignored = split_parameters(model, respect_no_weight_decay=False)
    assert names(ignored.decay) == [
        "pos_embed",
        "proj.weight",
        "blocks.0.rel_table",
        "blocks.0.qkv.weight",
    ]


def test_no_weight_decay_name_matching_nothing_is_ignored_silently():
    # timm's ViT lists reg_token/dist_token whether or not the model has them; timm ignores them, so does decaylab
    # (it warned before).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        split = split_parameters(ViTish(extra={"dist_token", "reg_token"}))
    assert "pos_embed" in names(split.no_decay)
    assert "proj.weight" in names(split.decay)


def test_no_weight_decay_must_return_names():
    class Bad(nn.Linear):
        def no_weight_decay(self):
            return "weight"

    with pytest.raises(ValueError, match="no_weight_decay"):
        split_parameters(Bad(2, 2))


def test_no_weight_decay_may_return_any_iterable():
    class Generating(nn.Linear):
        def no_weight_decay(self):
            return (name for name in ["weight"])

    assert split_parameters(Generating(2, 2)).reasons["weight"] == "no_weight_decay() of the model"


# --- precedence --------------------------------------------------------------------------------


def test_decay_patterns_beat_every_other_rule():
    model = ViTish()
    split = split_parameters(
        model, decay_patterns=["*.bias", "pos_embed"], no_decay_patterns=["proj.*"]
    )
    assert "proj.bias" in names(split.decay)  # beats no_decay_patterns and the bias rule
    assert split.reasons["proj.bias"] == "decay_patterns '*.bias'"
    assert "pos_embed" in names(split.decay)  # beats no_weight_decay()
    assert "proj.weight" in names(split.no_decay)
    assert split.reasons["proj.weight"] == "no_decay_patterns 'proj.*'"

    norm_bias = split_parameters(Mixed(), decay_patterns=["ln.*"])
    assert {"ln.weight", "ln.bias"} <= set(names(norm_bias.decay))  # beats the norm rule


def test_no_decay_patterns_beat_no_weight_decay_and_the_bias_rule():
    split = split_parameters(ViTish(), no_decay_patterns=["pos_embed", "*qkv*"])
    assert split.reasons["pos_embed"] == "no_decay_patterns 'pos_embed'"
    assert split.reasons["blocks.0.qkv.bias"] == "no_decay_patterns '*qkv*'"
    assert "blocks.0.qkv.weight" in names(split.no_decay)


def test_no_weight_decay_beats_the_bias_and_norm_rules():
    class Listed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln = nn.LayerNorm(4)

        def no_weight_decay(self) -> set[str]:
            return {"ln.bias"}

    split = split_parameters(Listed())
    assert split.reasons == {
        "ln.weight": "norm LayerNorm (no_decay_norm)",
        "ln.bias": "no_weight_decay() of the model",
    }


def test_unmatched_pattern_warns():
    with pytest.warns(UserWarning, match="no_decay_patterns glob 'nope.*' matches no parameter"):
        split_parameters(Mixed(), no_decay_patterns=["nope.*"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        split_parameters(Mixed(), no_decay_patterns=["fc.*"])  # matches: no warning


# --- frozen, empty groups ----------------------------------------------------------------------


def test_frozen_parameters_are_excluded_and_counted():
    model = Mixed()
    model.fc.requires_grad_(False)
    split = split_parameters(model)
    assert names(split.frozen) == ["fc.weight", "fc.bias"]
    assert split.reasons["fc.weight"] == "frozen (requires_grad=False)"
    grouped = {n for g in split.to_param_groups(0.1) for n in g["param_names"]}
    assert grouped.isdisjoint({"fc.weight", "fc.bias"})
    assert_partition(model, split)
    assert split.summary().endswith("frozen: 2 tensors, 40 parameters")


def test_empty_group_is_omitted():
    only_decay = param_groups(nn.Linear(3, 3, bias=False), 0.1)
    assert [g["weight_decay"] for g in only_decay] == [0.1]
    only_norm = param_groups(nn.LayerNorm(3), 0.1)
    assert [g["weight_decay"] for g in only_norm] == [0.0]


# --- summary -----------------------------------------------------------------------------------


def test_summary_counts():
    model = Mixed()
    split = split_parameters(model)
    params = dict(model.named_parameters())
    n_decay = sum(params[n].numel() for n in MIXED_DEFAULT_DECAY)
    n_no_decay = sum(params[n].numel() for n in MIXED_DEFAULT_NO_DECAY)
    assert (
        str(split)
        == split.summary()
        == (
            f"decayed: 5 tensors, {n_decay:,} parameters | not decayed: 12 tensors, "
            f"{n_no_decay:,} parameters | frozen: 0 tensors"
        )
    )
    assert n_decay == 32 + 40 + 40 + 108 + 24


def test_summary_thousands_separator():
    split = split_parameters(nn.Linear(100, 100))
    assert split.summary() == (
        "decayed: 1 tensors, 10,000 parameters | not decayed: 1 tensors, 100 parameters"
        " | frozen: 0 tensors"
    )


def test_detail_has_one_line_per_tensor_with_shape_and_reason():
    model = Mixed()
    model.head.requires_grad_(False)
    lines = split_parameters(model).summary(detail=True).splitlines()
    assert len(lines) == 1 + len(list(model.parameters()))
    by_name = {line.split()[0]: line for line in lines[1:]}
    assert list(by_name) == [n for n, _ in model.named_parameters()]
    assert "(4, 3, 3, 3)" in by_name["conv.weight"] and "decay=yes" in by_name["conv.weight"]
    assert "decay=no" in by_name["gn.bias"] and by_name["gn.bias"].endswith("bias (no_decay_bias)")
    assert "decay=frozen" in by_name["head.weight"]


def test_verbose_prints_the_split_role_by_role(capsys):
    model = Mixed()
    param_groups(model, 0.1, verbose=True)
    # Changed on purpose: verbose printed the one-line summary; it now says which role went where and why.
    out = capsys.readouterr().out
    assert out == split_parameters(model).summary(detail="roles") + "\n"
    assert out.splitlines()[0] == split_parameters(model).summary()
    assert any(line.split()[:2] == ["scalar", "not"] and line.endswith("scalar (no_decay_scalar)")
               for line in out.splitlines())
    param_groups(model, 0.1)
    assert capsys.readouterr().out == ""


# --- passthrough and optimizers ----------------------------------------------------------------


def test_weight_decay_and_group_options_pass_through_unchanged():
    def schedule(step: int) -> float:
        return 0.1 * 0.5**step

    groups = param_groups(Mixed(), schedule, lr=3e-4, betas=(0.9, 0.95))
    assert groups[0]["weight_decay"] is schedule
    assert groups[1]["weight_decay"] == 0.0
    for group in groups:
        assert group["lr"] == 3e-4 and group["betas"] == (0.9, 0.95)
    tensor_decay = torch.tensor(0.05)
    assert param_groups(Mixed(), tensor_decay)[0]["weight_decay"] is tensor_decay


def test_adamw_steps_and_only_the_decayed_group_shrinks():
    torch.manual_seed(0)
    model = Mixed()
    lr, weight_decay = 0.1, 0.1
    optimizer = torch.optim.AdamW(param_groups(model, weight_decay), lr=lr)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()  # no zero entries: a decayed entry must visibly move
            p.grad = torch.zeros_like(p)  # zero gradient: Adam's step is 0, only decay is left
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer.step()
    after = dict(model.named_parameters())
    for name in MIXED_DEFAULT_DECAY:
        torch.testing.assert_close(after[name].detach(), before[name] * (1 - lr * weight_decay))
    for name in MIXED_DEFAULT_NO_DECAY:
        assert torch.equal(after[name].detach(), before[name]), name
    assert optimizer.state_dict()["param_groups"][0]["param_names"] == MIXED_DEFAULT_DECAY


def test_optimizer_state_dict_round_trips_with_names():
    model = TinyGPT()
    optimizer = torch.optim.AdamW(param_groups(model, 0.1, no_decay_1d=True))
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    fresh = torch.optim.AdamW(param_groups(model, 0.1, no_decay_1d=True))
    fresh.load_state_dict(optimizer.state_dict())
    assert fresh.param_groups[0]["param_names"] == optimizer.param_groups[0]["param_names"]


def test_without_names_groups_can_grow():
    model = Mixed()
    groups = param_groups(model, 0.1, with_names=False)
    assert all("param_names" not in g for g in groups)
    optimizer = torch.optim.AdamW(groups)
    optimizer.add_param_group({"params": [nn.Parameter(torch.zeros(2))], "weight_decay": 0.0})


# --- errors ------------------------------------------------------------------------------------


def test_model_must_be_a_module():
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        param_groups(list(Mixed().parameters()), 0.1)


def test_pattern_in_both_lists_is_rejected():
    with pytest.raises(ValueError, match=r"\['\*.bias'\].*decay_patterns and no_decay_patterns"):
        param_groups(Mixed(), 0.1, decay_patterns=["*.bias"], no_decay_patterns=["*.bias", "x"])


@pytest.mark.parametrize("argument", ["decay_patterns", "no_decay_patterns"])
def test_patterns_must_be_a_sequence_of_str(argument):
    with pytest.raises(TypeError, match=f"{argument} must be a sequence of glob strings"):
        param_groups(Mixed(), 0.1, **{argument: "*.bias"})
    with pytest.raises(TypeError, match=f"{argument} must contain glob strings"):
        param_groups(Mixed(), 0.1, **{argument: [3]})


def test_model_without_trainable_parameters_is_rejected():
    with pytest.raises(ValueError, match="model has no trainable parameters"):
        param_groups(nn.ReLU(), 0.1)
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="model has no trainable parameters"):
        param_groups(frozen, 0.1)
    with pytest.raises(ValueError, match="model has no trainable parameters"):
        DecaySplit(decay=[], no_decay=[]).to_param_groups(0.1)


def test_lazy_parameters_are_rejected():
    with pytest.raises(ValueError, match="model has an uninitialized"):
        param_groups(nn.LazyLinear(3), 0.1)


@pytest.mark.parametrize("bad", [-0.1, float("nan")])
def test_weight_decay_must_be_non_negative(bad):
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        param_groups(Mixed(), bad)
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        split_parameters(Mixed()).to_param_groups(bad)


def test_weight_decay_must_not_be_a_bool():
    with pytest.raises(TypeError, match="weight_decay must be a non-negative number"):
        param_groups(Mixed(), True)


@pytest.mark.parametrize("key", ["params", "param_names"])
def test_reserved_group_options_are_rejected(key):
    with pytest.raises(ValueError, match=f"group_options may not contain '{key}'"):
        param_groups(Mixed(), 0.1, **{key: []})


# --- properties, doctest -----------------------------------------------------------------------

LAYERS = [
    lambda: nn.Linear(3, 3),
    lambda: nn.Linear(3, 3, bias=False),
    lambda: nn.LayerNorm(3),
    lambda: nn.BatchNorm1d(3),
    lambda: nn.Embedding(4, 3),
    lambda: nn.RMSNorm(3),
]


@settings(max_examples=40, deadline=None)
@given(
    layers=st.lists(st.integers(0, len(LAYERS) - 1), min_size=1, max_size=6),
    flags=st.tuples(st.booleans(), st.booleans(), st.booleans(), st.booleans()),
    frozen=st.sets(st.integers(0, 5)),
)
def test_every_trainable_parameter_lands_in_exactly_one_group(layers, flags, frozen):
    model = nn.Sequential(*(LAYERS[i]() for i in layers))
    for i, layer in enumerate(model):
        if i in frozen:
            layer.requires_grad_(False)
    bias, norm, embedding, one_d = flags
    kwargs = {
        "no_decay_bias": bias,
        "no_decay_norm": norm,
        "no_decay_embedding": embedding,
        "no_decay_1d": one_d,
    }
    if not any(p.requires_grad for p in model.parameters()):
        with pytest.raises(ValueError):
            split_parameters(model, **kwargs)
        return
    split = split_parameters(model, **kwargs)
    assert_partition(model, split)
    groups = split.to_param_groups(0.1)
    grouped = [p for g in groups for p in g["params"]]
    assert (
        len(grouped)
        == len({id(p) for p in grouped})
        == sum(p.requires_grad for p in model.parameters())
    )
    if one_d:
        assert all(p.ndim >= 2 for _, p in split.decay)


def test_doctests_pass():
    result = doctest.testmod(decaylab.groups)
    assert result.attempted > 0 and result.failed == 0
