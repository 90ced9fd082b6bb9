"""decaylab.groups: parameter roles, the codebases' decay presets, the Muon split, timm agreement.

Each preset is checked against the codebase's rule restated here from its source file (cited in
decaylab/optim/groups.py), on small look-alike models built in the test with the parameter names and
module types of the originals (timm, torchvision and transformers are not imported).
"""

from __future__ import annotations

import copy
import fnmatch
import re
import warnings

import pytest
import torch
from torch import nn

from decaylab.groups import PRESETS, ROLES, ParamGroups, param_groups, parameter_roles, split_parameters

# --- look-alikes: timm ----------------------------------------------------------------------------------


class RmsNorm(nn.Module):
    """timm.layers.RmsNorm: an nn.Module (not torch's RMSNorm) with a `weight`."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))


class LayerNorm2d(nn.LayerNorm):
    """timm.layers.LayerNorm2d subclasses nn.LayerNorm."""


class LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(1e-5 * torch.ones(dim))


class Mlp(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)


class Attention(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)


class Block(nn.Module):
    def __init__(self, dim: int, norm: type[nn.Module]) -> None:
        super().__init__()
        self.norm1 = norm(dim)
        self.attn = Attention(dim)
        self.ls1 = LayerScale(dim)
        self.norm2 = norm(dim)
        self.mlp = Mlp(dim)
        self.ls2 = LayerScale(dim)


class VisionTransformer(nn.Module):
    """timm's VisionTransformer: names, the tokens, and its no_weight_decay() set as timm writes it."""

    def __init__(self, dim: int = 8, depth: int = 2, norm: type[nn.Module] = nn.LayerNorm, reg_tokens: int = 0,
                 num_classes: int = 5) -> None:
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, 4, 4)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.reg_token = nn.Parameter(torch.zeros(1, reg_tokens, dim)) if reg_tokens else None
        self.pos_embed = nn.Parameter(torch.zeros(1, 17, dim))
        self.blocks = nn.Sequential(*(Block(dim, norm) for _ in range(depth)))
        self.norm = norm(dim)
        self.fc_norm = nn.Identity()
        self.head = nn.Linear(dim, num_classes) if num_classes else nn.Identity()

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "reg_token", "dist_token"}


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.mlp = Mlp(dim)
        self.gamma = nn.Parameter(1e-6 * torch.ones(dim))


class NormMlpClassifierHead(nn.Module):
    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = LayerNorm2d(dim)
        self.pre_logits = nn.Identity()
        self.fc = nn.Linear(dim, num_classes)


class ConvNeXt(nn.Module):
    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dim, 4, 4), LayerNorm2d(dim))
        self.stages = nn.Sequential(nn.Module())
        self.stages[0].downsample = nn.Identity()
        self.stages[0].blocks = nn.Sequential(ConvNeXtBlock(dim), ConvNeXtBlock(dim))
        self.norm_pre = nn.Identity()
        self.head = NormMlpClassifierHead(dim, 5)


class XCA(nn.Module):
    def __init__(self, dim: int, heads: int = 2) -> None:
        super().__init__()
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def no_weight_decay(self) -> set[str]:
        return {"temperature"}


class LPI(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.bn = nn.BatchNorm2d(dim)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)


class XCABlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = XCA(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.local_mp = LPI(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim)
        self.gamma1 = nn.Parameter(torch.ones(dim))
        self.gamma3 = nn.Parameter(torch.ones(dim))
        self.gamma2 = nn.Parameter(torch.ones(dim))


class PositionalEncodingFourier(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.token_projection = nn.Conv2d(64, dim, 1)


class XCiT(nn.Module):
    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Sequential(nn.Conv2d(3, dim, 3), nn.BatchNorm2d(dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = PositionalEncodingFourier(dim)  # a module: timm's "pos_embed" entry matches no parameter
        self.blocks = nn.ModuleList([XCABlock(dim), XCABlock(dim)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 5)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}


class WindowAttention(nn.Module):
    def __init__(self, dim: int, heads: int = 2) -> None:
        super().__init__()
        self.relative_position_bias_table = nn.Parameter(torch.zeros(9, heads))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)


class SwinLike(nn.Module):
    """Lists its bias tables with one fnmatch pattern (timm matches no_weight_decay() entries with fnmatch)."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.absolute_pos_embed = nn.Parameter(torch.zeros(1, 4, dim))
        self.blocks = nn.ModuleList([nn.Module(), nn.Module()])
        for block in self.blocks:
            block.norm1 = nn.LayerNorm(dim)
            block.attn = WindowAttention(dim)
        self.head = nn.Linear(dim, 5)

    def no_weight_decay(self) -> set[str]:
        return {"absolute_pos_embed", "blocks.*.attn.relative_position_bias_table"}


class FastViTLayerScale(nn.Module):
    """timm's FastViT keeps its layer scale as (C, 1, 1): ndim 3, so timm decays it."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1))


def timm_no_decay(model: nn.Module) -> set[str]:
    """timm/optim/_param_groups.py param_groups_weight_decay, restated: with the root's no_weight_decay() entries
    as fnmatch patterns (timm/optim/_optim_factory.py asks the model object itself, no submodule)."""
    method = getattr(model, "no_weight_decay", None)
    entries = set(method()) if method is not None else set()
    return {
        name for name, p in model.named_parameters()
        if p.requires_grad and (p.ndim <= 1 or name.endswith(".bias") or any(fnmatch.fnmatch(name, e) for e in entries))
    }


def no_decay_names(model: nn.Module, **kwargs) -> set[str]:
    return {name for name, _ in split_parameters(model, **kwargs).no_decay}


TIMM_MODELS = {
    "vit": lambda: VisionTransformer(),
    "vit_rmsnorm_reg": lambda: VisionTransformer(norm=RmsNorm, reg_tokens=4),
    "convnext": lambda: ConvNeXt(),
    "xcit": lambda: XCiT(),
    "swin": lambda: SwinLike(),
}


# --- timm: the preset, and the default's agreement ------------------------------------------------------


@pytest.mark.parametrize("which", list(TIMM_MODELS))
def test_timm_preset_reproduces_param_groups_weight_decay(which):
    model = TIMM_MODELS[which]()
    split = split_parameters(model, preset="timm")
    assert {n for n, _ in split.no_decay} == timm_no_decay(model)
    assert {n for n, _ in split.decay} == {n for n, _ in model.named_parameters()} - timm_no_decay(model)


@pytest.mark.parametrize("which", ["vit", "vit_rmsnorm_reg", "convnext", "swin"])
def test_default_agrees_with_timm_on_timm_models(which):
    model = TIMM_MODELS[which]()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ViT lists reg_token/dist_token it may not have: no warning
        assert no_decay_names(model) == timm_no_decay(model)


def test_default_differs_from_timm_on_xcit_only_by_the_temperature_its_attention_lists():
    # XCA.no_weight_decay() says {'temperature'}; timm's factory asks the root only, and temperature is
    # (heads, 1, 1), so timm decays it. decaylab asks every module (documented in the module docstring).
    model = XCiT()
    assert no_decay_names(model) - timm_no_decay(model) == {"blocks.0.attn.temperature", "blocks.1.attn.temperature"}
    assert timm_no_decay(model) <= no_decay_names(model)
    assert split_parameters(model).reasons["blocks.1.attn.temperature"] == "no_weight_decay() of 'blocks.1.attn'"


def test_the_old_default_disagreed_with_timm():
    # What the issue reported: layer-scale gammas decayed (and RmsNorm, before its class name counted).
    vit = VisionTransformer(norm=RmsNorm, reg_tokens=4)
    old = no_decay_names(vit, no_decay_layer_scale=False)
    assert timm_no_decay(vit) - old == {f"blocks.{i}.ls{j}.gamma" for i in range(2) for j in (1, 2)}
    convnext = ConvNeXt()
    assert timm_no_decay(convnext) - no_decay_names(convnext, no_decay_layer_scale=False) == {
        "stages.0.blocks.0.gamma", "stages.0.blocks.1.gamma"}
    xcit_gammas = {f"blocks.{i}.gamma{j}" for i in range(2) for j in (1, 2, 3)}
    assert timm_no_decay(XCiT()) - no_decay_names(XCiT(), no_decay_layer_scale=False) == xcit_gammas


def test_no_weight_decay_entries_are_fnmatch_patterns():
    split = split_parameters(SwinLike())
    for i in range(2):
        name = f"blocks.{i}.attn.relative_position_bias_table"
        assert split.reasons[name] == "no_weight_decay() of the model ('blocks.*.attn.relative_position_bias_table')"
    assert split.reasons["absolute_pos_embed"] == "no_weight_decay() of the model"
    # Without no_weight_decay() the tables are still not decayed: role attention_bias, rule no_decay_bias.
    plain = split_parameters(SwinLike(), respect_no_weight_decay=False)
    assert plain.roles["blocks.0.attn.relative_position_bias_table"] == "attention_bias"
    assert plain.reasons["blocks.0.attn.relative_position_bias_table"] == "attention bias table (no_decay_bias)"
    assert "absolute_pos_embed" in {n for n, _ in plain.decay}


def test_fastvit_layer_scale_is_not_decayed_although_timm_decays_it():
    model = nn.Module()
    model.stem = nn.Conv2d(3, 4, 3)
    model.layer_scale = FastViTLayerScale(4)
    assert parameter_roles(model)["layer_scale.gamma"].role == "layer_scale"
    assert "layer_scale.gamma" in no_decay_names(model)
    assert "layer_scale.gamma" not in timm_no_decay(model)


def test_timm_preset_asks_the_root_only_and_ignores_unmatched_entries_silently():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        split = split_parameters(XCiT(), preset="timm")
    assert split.reasons["blocks.0.attn.temperature"] == "default (timm)"
    assert split.reasons["cls_token"] == "no_weight_decay() 'cls_token' (timm)"
    assert split.reasons["blocks.0.gamma1"] == "ndim 1 <= 1 (timm)"


# --- roles ---------------------------------------------------------------------------------------------


def roles_of(model: nn.Module, **kwargs) -> dict[str, str]:
    return {name: role.role for name, role in parameter_roles(model, **kwargs).items()}


def test_vit_roles():
    roles = roles_of(VisionTransformer(norm=RmsNorm, reg_tokens=4))
    assert roles["patch_embed.proj.weight"] == "hidden_matrix"
    assert roles["patch_embed.proj.bias"] == "bias"
    assert roles["cls_token"] == roles["reg_token"] == roles["pos_embed"] == "embedding"
    assert roles["blocks.0.norm1.weight"] == roles["norm.weight"] == "norm_gain"
    assert roles["blocks.0.attn.qkv.weight"] == roles["blocks.1.mlp.fc2.weight"] == "hidden_matrix"
    assert roles["blocks.0.ls1.gamma"] == roles["blocks.1.ls2.gamma"] == "layer_scale"
    assert roles["head.weight"] == "unembedding" and roles["head.bias"] == "bias"
    assert set(roles.values()) <= set(ROLES)


def test_every_role_has_a_model_that_shows_it():
    model = nn.Module()
    model.embed = nn.Embedding(10, 4)
    model.ln = nn.LayerNorm(4)
    model.fc = nn.Linear(4, 4)
    model.rel = WindowAttention(4)
    model.ls = LayerScale(4)
    model.gate = nn.Parameter(torch.zeros(()))
    model.head = nn.Linear(4, 10)
    roles = roles_of(model)
    assert roles == {
        "gate": "scalar",
        "embed.weight": "embedding",
        "ln.weight": "norm_gain",
        "ln.bias": "norm_bias",
        "fc.weight": "hidden_matrix",
        "fc.bias": "bias",
        "rel.relative_position_bias_table": "attention_bias",
        "rel.qkv.weight": "hidden_matrix",
        "rel.qkv.bias": "bias",
        "rel.proj.weight": "hidden_matrix",
        "rel.proj.bias": "bias",
        "ls.gamma": "layer_scale",
        "head.weight": "unembedding",
        "head.bias": "bias",
    }
    assert set(roles.values()) == set(ROLES)


def test_output_head_detection():
    # DeiT: both heads; a headless ViT (head is Identity): none; no head-named child: the last matrix owner.
    deit = VisionTransformer()
    deit.head_dist = nn.Linear(8, 5)
    assert [n for n, r in roles_of(deit).items() if r == "unembedding"] == ["head.weight", "head_dist.weight"]
    assert "unembedding" not in roles_of(VisionTransformer(num_classes=0)).values()
    resnet = nn.Module()
    resnet.conv1 = nn.Conv2d(3, 4, 3)
    resnet.bn1 = nn.BatchNorm2d(4)
    resnet.fc = nn.Linear(4, 10)
    assert roles_of(resnet)["fc.weight"] == "unembedding"
    assert roles_of(resnet)["conv1.weight"] == "hidden_matrix"
    assert parameter_roles(resnet)["conv1.weight"].why == "weight of Conv2d, ndim 4"
    convnext = roles_of(ConvNeXt())
    assert convnext["head.fc.weight"] == "unembedding" and convnext["head.norm.weight"] == "norm_gain"


class TinyGPT(nn.Module):
    def __init__(self, head_first: bool = False) -> None:
        super().__init__()
        if head_first:
            self.lm_head = nn.Linear(4, 16, bias=False)
        self.wte = nn.Embedding(16, 4)
        self.h = nn.ModuleList([nn.Linear(4, 4)])
        if not head_first:
            self.lm_head = nn.Linear(4, 16, bias=False)
        self.lm_head.weight = self.wte.weight


def test_tied_head_takes_the_role_of_its_first_name():
    tied = parameter_roles(TinyGPT())
    assert tied["wte.weight"] == ("embedding", "weight of Embedding; also the output head lm_head.weight")
    assert tied["h.0.weight"].role == "hidden_matrix"  # the tied head is the head: no other matrix becomes it
    head_first = parameter_roles(TinyGPT(head_first=True))
    assert head_first["lm_head.weight"] == ("unembedding", "the output head (Linear); tied with wte.weight")


def test_vector_shaped_parameters():
    model = nn.Module()
    model.temperature = nn.Parameter(torch.ones(2, 1, 1))  # XCiT, Swin V2 logit_scale
    model.alpha = nn.Parameter(torch.ones(1, 1, 4))  # ResMLP's Affine
    model.smear_gate = nn.Linear(12, 1, bias=False)  # modded-nanogpt: a 1 x 12 matrix, Muon takes it
    model.bias_k = nn.Parameter(torch.zeros(1, 1, 4))  # nn.MultiheadAttention(add_bias_kv=True)
    model.embed_scale = nn.Parameter(torch.ones(()))  # named *embed* but a scalar, not a table
    model.bigram_embed = nn.Parameter(torch.zeros(16, 4))  # a raw embedding table
    model.ada = AdaLayerNorm()
    model.head = nn.Linear(4, 2)
    roles = roles_of(model)
    assert roles["temperature"] == roles["alpha"] == roles["embed_scale"] == "scalar"
    assert roles["smear_gate.weight"] == "hidden_matrix"
    assert roles["bias_k"] == "bias"
    assert roles["bigram_embed"] == "embedding"
    assert roles["ada.weight"] == "hidden_matrix" and roles["ada.shift"] == "norm_bias"


class AdaLayerNorm(nn.Module):
    """Named like a norm, but owns a matrix: only its vector-like parameters are norm parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(8, 4))
        self.shift = nn.Parameter(torch.zeros(4))


def test_role_overrides_win_and_unknown_roles_are_rejected():
    model = VisionTransformer()
    roles = parameter_roles(model, role_overrides={"head.*": "hidden_matrix"})
    assert roles["head.weight"] == ("hidden_matrix", "role_overrides 'head.*'")
    assert roles["head.bias"].role == "hidden_matrix"
    with pytest.raises(ValueError, match="a role must be one of norm_gain, norm_bias, embedding"):
        parameter_roles(model, role_overrides={"head.*": "head"})
    with pytest.raises(TypeError, match="role_overrides must be a mapping"):
        parameter_roles(model, role_overrides=["head.*"])
    with pytest.warns(UserWarning, match="role_overrides glob 'nope' matches no parameter"):
        parameter_roles(model, role_overrides={"nope": "scalar"})


def stacked(model: nn.Module, k: int = 3) -> nn.Module:
    """The model with every parameter stacked k times along a new dim 0 (decaylab's stacked trainer's holder)."""
    holder = copy.deepcopy(model)
    for name, p in list(holder.named_parameters()):
        owner = holder.get_submodule(name.rpartition(".")[0])
        owner._parameters[name.rpartition(".")[2]] = nn.Parameter(torch.stack([p.detach()] * k))
    return holder


@pytest.mark.parametrize("preset", ["decaylab", "muon", "timm", "nanogpt", "megatron"])
def test_batch_dims_makes_a_stacked_holder_split_like_its_model(preset):
    model = VisionTransformer(norm=RmsNorm, reg_tokens=4)
    model.scale = nn.Parameter(torch.ones(()))
    alone, holder = split_parameters(model, preset=preset), split_parameters(stacked(model), preset=preset,
                                                                            batch_dims=1)
    assert holder.roles == alone.roles and holder.reasons == alone.reasons and holder.optimizers == alone.optimizers
    if preset == "decaylab":  # without batch_dims the (3, 8) gammas would be matrices
        assert split_parameters(stacked(model)).roles["blocks.0.ls1.gamma"] == "hidden_matrix"


def test_batch_dims_is_checked():
    with pytest.raises(ValueError, match="batch_dims must be an int >= 0"):
        split_parameters(VisionTransformer(), batch_dims=-1)
    model = nn.Module()
    model.scalar = nn.Parameter(torch.zeros(()))
    with pytest.raises(ValueError, match="parameter 'scalar' has shape \\(\\)"):
        split_parameters(model, batch_dims=1)


# --- the other codebases' presets -----------------------------------------------------------------------


class NanoLayerNorm(nn.Module):
    """nanoGPT's own LayerNorm (model.py): an nn.Module with weight and optional bias."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))


def nanogpt_like() -> nn.Module:
    gpt = nn.Module()
    gpt.transformer = nn.ModuleDict({"wte": nn.Embedding(16, 8), "wpe": nn.Embedding(4, 8), "h": nn.ModuleList()})
    for _ in range(2):
        block = nn.Module()
        block.ln_1, block.ln_2 = NanoLayerNorm(8), NanoLayerNorm(8)
        block.attn = nn.Module()
        block.attn.c_attn, block.attn.c_proj = nn.Linear(8, 24), nn.Linear(8, 8)
        block.mlp = nn.Module()
        block.mlp.c_fc, block.mlp.c_proj = nn.Linear(8, 32), nn.Linear(32, 8)
        gpt.transformer.h.append(block)
    gpt.transformer["ln_f"] = NanoLayerNorm(8)
    gpt.lm_head = nn.Linear(8, 16, bias=False)
    gpt.lm_head.weight = gpt.transformer.wte.weight
    gpt.temperature = nn.Parameter(torch.ones(()))  # a 0-d scalar: nanoGPT and Megatron disagree on it
    return gpt


class LlamaRMSNorm(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))


def llama_like(qk_norm: bool = True) -> nn.Module:
    """transformers' LlamaForCausalLM (Qwen3's q_norm/k_norm with qk_norm)."""
    lm = nn.Module()
    lm.model = nn.Module()
    lm.model.embed_tokens = nn.Embedding(16, 8)
    lm.model.layers = nn.ModuleList()
    for _ in range(2):
        layer = nn.Module()
        layer.self_attn = nn.Module()
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            setattr(layer.self_attn, proj, nn.Linear(8, 8, bias=proj != "o_proj"))
        if qk_norm:
            layer.self_attn.q_norm, layer.self_attn.k_norm = LlamaRMSNorm(4), LlamaRMSNorm(4)
        layer.mlp = nn.Module()
        layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj = (nn.Linear(8, 16, bias=False),
                                                                       nn.Linear(8, 16, bias=False),
                                                                       nn.Linear(16, 8, bias=False))
        layer.input_layernorm, layer.post_attention_layernorm = LlamaRMSNorm(8), LlamaRMSNorm(8)
        lm.model.layers.append(layer)
    lm.model.norm = LlamaRMSNorm(8)
    lm.lm_head = nn.Linear(8, 16, bias=False)
    return lm


def bert_like() -> nn.Module:
    """BERT's names: LayerNorm modules named "LayerNorm", attention.output.dense, a tied MLM decoder."""
    bert = nn.Module()
    bert.bert = nn.Module()
    bert.bert.embeddings = nn.Module()
    bert.bert.embeddings.word_embeddings = nn.Embedding(16, 8)
    bert.bert.embeddings.LayerNorm = nn.LayerNorm(8)
    layer = nn.Module()
    layer.attention = nn.Module()
    layer.attention.output = nn.Module()
    layer.attention.output.dense = nn.Linear(8, 8)
    layer.attention.output.LayerNorm = nn.LayerNorm(8)
    bert.bert.encoder = nn.Module()
    bert.bert.encoder.layer = nn.ModuleList([layer])
    bert.cls = nn.Module()
    bert.cls.decoder = nn.Linear(8, 16)
    bert.cls.decoder.weight = bert.bert.embeddings.word_embeddings.weight
    bert.scale = nn.Parameter(torch.ones(8))  # HF decays it; decaylab's default does not
    return bert


HF_PATTERNS = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]


def hf_decay(model: nn.Module) -> set[str]:
    """transformers Trainer.get_decay_parameter_names with get_parameter_names, restated: a name is left out when a
    module on its path below the root is an nn.LayerNorm, or when a pattern searches the lower-cased name from any
    module on its path down (every suffix of the name that starts at a module boundary)."""
    decay = set()
    for name, _ in model.named_parameters():
        parts = name.split(".")
        in_layernorm = any(isinstance(model.get_submodule(".".join(parts[:d])), nn.LayerNorm)
                           for d in range(1, len(parts)))
        suffixes = [".".join(parts[d:]).lower() for d in range(len(parts))]
        if not in_layernorm and not any(re.search(pat, s) for pat in HF_PATTERNS for s in suffixes):
            decay.add(name)
    return decay


CODEBASE_MODELS = {
    "nanogpt": nanogpt_like,
    "llama": llama_like,
    "bert": bert_like,
    "vit_rmsnorm": lambda: VisionTransformer(norm=RmsNorm, reg_tokens=4),
    "xcit": XCiT,
}


def decay_names(model: nn.Module, preset: str) -> set[str]:
    return {name for name, _ in split_parameters(model, preset=preset).decay}


@pytest.mark.parametrize("which", list(CODEBASE_MODELS))
def test_nanogpt_preset(which):
    model = CODEBASE_MODELS[which]()
    assert decay_names(model, "nanogpt") == {n for n, p in model.named_parameters() if p.dim() >= 2}


@pytest.mark.parametrize("which", list(CODEBASE_MODELS))
def test_hf_preset(which):
    model = CODEBASE_MODELS[which]()
    assert decay_names(model, "hf") == hf_decay(model)


def test_hf_preset_quirks():
    split = split_parameters(VisionTransformer(norm=RmsNorm), preset="hf")
    # timm's RmsNorm in a module named norm1 is neither an nn.LayerNorm nor named like a norm for HF's patterns.
    assert split.reasons["blocks.0.norm1.weight"] == "default (HF Trainer)"
    assert split.reasons["norm.weight"] == "name matches '(?:^|\\\\.)norm(?:$|\\\\.)' (HF Trainer)"
    assert split.reasons["blocks.0.ls1.gamma"] == "default (HF Trainer)"
    assert split_parameters(VisionTransformer(), preset="hf").reasons["blocks.0.norm1.weight"] == (
        "inside nn.LayerNorm 'blocks.0.norm1' (HF Trainer)")
    lone = nn.LayerNorm(4)  # the root is never type-checked by get_parameter_names
    assert decay_names(lone, "hf") == {"weight"}


def test_default_agrees_with_hf_on_llama():
    model = llama_like()
    assert decay_names(model, "decaylab") == hf_decay(model)


@pytest.mark.parametrize("which", list(CODEBASE_MODELS))
def test_megatron_preset(which):
    model = CODEBASE_MODELS[which]()
    expected = {n for n, p in model.named_parameters() if not (fnmatch.fnmatch(n, "*.bias") or len(p.shape) == 1)}
    assert decay_names(model, "megatron") == expected


def test_megatron_decays_a_0d_scalar_and_nanogpt_does_not():
    model = nanogpt_like()
    assert "temperature" in decay_names(model, "megatron")
    assert "temperature" not in decay_names(model, "nanogpt")


def olmo_like() -> nn.Module:
    """OLMo-core's Transformer names: embeddings, blocks.N.attention.w_q..., attention_norm, lm_head.w_out."""
    model = nn.Module()
    model.embeddings = nn.Embedding(16, 8)
    model.blocks = nn.ModuleDict()
    block = nn.Module()
    block.attention = nn.Module()
    for w in ("w_q", "w_k", "w_v", "w_out"):
        setattr(block.attention, w, nn.Linear(8, 8, bias=False))
    block.attention_norm = LlamaRMSNorm(8)
    block.feed_forward = nn.Module()
    block.feed_forward.w1, block.feed_forward.w2 = nn.Linear(8, 16, bias=False), nn.Linear(16, 8, bias=False)
    block.feed_forward_norm = LlamaRMSNorm(8)
    model.blocks["0"] = block
    model.lm_head = nn.Module()
    model.lm_head.norm = LlamaRMSNorm(8)
    model.lm_head.w_out = nn.Linear(8, 16, bias=False)
    return model


def test_olmo_core_preset_is_its_embeddings_override():
    model = olmo_like()
    expected = {n for n, _ in model.named_parameters() if not fnmatch.fnmatch(n, "embeddings.weight")}
    assert decay_names(model, "olmo-core") == expected  # norms decay: OLMo-core overrides the embedding only
    assert split_parameters(model, preset="olmo-core").roles["lm_head.w_out.weight"] == "unembedding"


@pytest.mark.parametrize("which", list(CODEBASE_MODELS))
def test_torchtitan_preset_decays_everything(which):
    model = CODEBASE_MODELS[which]()
    assert decay_names(model, "torchtitan") == {n for n, _ in model.named_parameters()}


class CastedLinear(nn.Linear):
    pass


def modded_like() -> nn.Module:
    """modded-nanogpt's GPT at 28fda1ef: embed, smear_gate, value_embeds, blocks with raw qkvo_w / c_fc / c_proj and
    an attn_gate, lm_head, scalars."""
    gpt = nn.Module()
    gpt.embed = nn.Embedding(16, 8)
    gpt.smear_gate = CastedLinear(12, 1, bias=False)
    gpt.value_embeds = nn.ModuleList([nn.Embedding(16, 8) for _ in range(3)])
    gpt.blocks = nn.ModuleList()
    for _ in range(2):
        block = nn.Module()
        block.attn = nn.Module()
        block.attn.qkvo_w = nn.Parameter(torch.empty(32, 8))
        block.attn.attn_gate = CastedLinear(12, 2, bias=False)
        block.mlp = nn.Module()
        block.mlp.c_fc, block.mlp.c_proj = nn.Parameter(torch.empty(16, 8)), nn.Parameter(torch.empty(16, 8))
        gpt.blocks.append(block)
    gpt.lm_head = CastedLinear(8, 16, bias=False)
    gpt.scalars = nn.Parameter(torch.ones(11))
    return gpt


def test_modded_nanogpt_preset_is_its_param_split():
    model = modded_like()
    names = [n for n, _ in model.named_parameters()]
    # train_gpt.py at 28fda1ef, restated: matrices in model.blocks without "embed"/"gate" plus every "gate" name go to
    # NorMuon (weight_decay=1.2); "embed" names, ndim < 2 and lm_head.weight to DistAdam (weight_decay=0.0).
    hidden = {f"blocks.{n}" for n, p in model.blocks.named_parameters() if p.ndim >= 2 and "embed" not in n
              and "gate" not in n}
    muon = hidden | {n for n in names if "gate" in n}
    adam = {n for n in names if "embed" in n} | {n for n, p in model.named_parameters() if p.ndim < 2} | {
        "lm_head.weight"}
    assert muon | adam == set(names) and not muon & adam
    split = split_parameters(model, preset="modded-nanogpt")
    assert {n for n, o in split.optimizers.items() if o == "muon"} == muon
    assert {n for n, _ in split.decay} == muon
    groups = split.to_param_groups(1.2)
    assert [(g["optimizer"], g["weight_decay"]) for g in groups] == [("muon", 1.2), ("adamw", 0.0)]


# --- the Muon split ---------------------------------------------------------------------------------------


def test_muon_preset_groups_and_two_optimizers():
    torch.manual_seed(0)
    model = ConvNeXt()
    groups = param_groups(model, 0.1, preset="muon", adamw_weight_decay=0.05)
    assert isinstance(groups, ParamGroups) and groups.optimizers == ("muon", "adamw")
    layout = [(g["optimizer"], g["weight_decay"]) for g in groups]
    assert layout == [("muon", 0.1), ("adamw", 0.05), ("adamw", 0.0)]
    muon_names = [n for g in groups.for_optimizer("muon") for n in g["param_names"]]
    assert muon_names == [f"stages.0.blocks.{i}.mlp.fc{j}.weight" for i in range(2) for j in (1, 2)]
    adamw_decayed = groups.for_optimizer("adamw")[0]["param_names"]
    assert adamw_decayed == ["stem.0.weight", "stages.0.blocks.0.conv_dw.weight", "stages.0.blocks.1.conv_dw.weight",
                             "head.fc.weight"]  # conv kernels (ndim 4) and the head
    lr, lr_adamw = 0.1, 0.01
    muon = torch.optim.Muon(groups.for_optimizer("muon"), lr=lr)
    adamw = torch.optim.AdamW(groups.for_optimizer("adamw"), lr=lr_adamw)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
            p.grad = torch.zeros_like(p)  # zero gradients: only decay moves a parameter
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    muon.step()
    adamw.step()
    after = dict(model.named_parameters())
    for group, factor in zip(groups, (1 - lr * 0.1, 1 - lr_adamw * 0.05, 1.0), strict=True):
        for name in group["param_names"]:
            torch.testing.assert_close(after[name].detach(), before[name] * factor)


def test_decaylab_muon_takes_every_group_of_the_muon_preset():
    from decaylab.optim import Muon

    torch.manual_seed(0)
    model = ConvNeXt()
    groups = param_groups(model, 0.1, preset="muon", adamw_weight_decay=0.05)
    assert [g.get("direction") for g in groups] == [None, "adam", "adam"]
    lr = 0.1
    optimizer = Muon(groups, lr=lr)  # one optimizer: the adamw groups run on Adam with decoupled decay
    assert [optimizer.direction_of(g).name for g in optimizer.param_groups] == ["muon", "adam", "adam"]
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
            p.grad = torch.zeros_like(p)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer.step()
    after = dict(model.named_parameters())
    for group, factor in zip(groups, (1 - lr * 0.1, 1 - lr * 0.05, 1.0), strict=True):
        for name in group["param_names"]:
            torch.testing.assert_close(after[name].detach(), before[name] * factor)


def test_muon_preset_sends_only_2d_hidden_matrices_to_muon():
    for model in (VisionTransformer(norm=RmsNorm, reg_tokens=4), XCiT(), SwinLike(), modded_like(), llama_like()):
        split = split_parameters(model, preset="muon")
        params = dict(model.named_parameters())
        muon = [n for n, o in split.optimizers.items() if o == "muon"]
        assert muon and all(params[n].ndim == 2 and split.roles[n] == "hidden_matrix" for n in muon)
        torch.optim.Muon([params[n] for n in muon])  # torch's Muon accepts them (it refuses anything not 2-d)
    llama = split_parameters(llama_like(), preset="muon")
    assert llama.optimizers["model.embed_tokens.weight"] == llama.optimizers["lm_head.weight"] == "adamw"


def test_muon_preset_takes_decaylab_flags():
    split = split_parameters(llama_like(), preset="muon", no_decay_embedding=True)
    assert split.reasons["model.embed_tokens.weight"] == "embedding Embedding (no_decay_embedding)"
    groups = split.to_param_groups(0.1)
    assert [(g["optimizer"], g["weight_decay"]) for g in groups] == [("muon", 0.1), ("adamw", 0.1), ("adamw", 0.0)]
    assert groups[1]["param_names"] == ["lm_head.weight"]


def test_roles_summary_says_where_each_role_went():
    model = VisionTransformer(norm=RmsNorm)
    lines = split_parameters(model, preset="muon").summary(detail="roles").splitlines()
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    muon = [n for n in sizes if n.startswith("blocks.") and n.endswith("weight") and ".norm" not in n]
    assert len(muon) == 8
    rest = [n for n in sizes if n not in muon]
    assert lines[0].endswith(f"| muon: 8 tensors, {sum(sizes[n] for n in muon):,} parameters"
                             f" | adamw: {len(rest)} tensors, {sum(sizes[n] for n in rest):,} parameters")
    rows = [line.split() for line in lines[1:]]
    assert ["layer_scale", "adamw", "not", "decayed", "4", "tensors,", "32", "parameters", "layer", "scale",
            "(no_decay_layer_scale)"] in rows
    assert ["hidden_matrix", "muon", "decayed", "8", "tensors,", f"{sum(sizes[n] for n in muon):,}", "parameters",
            "default"] in rows
    assert ["embedding", "adamw", "not", "decayed", "2", "tensors,", "144", "parameters", "no_weight_decay()", "of",
            "the", "model"] in rows  # cls_token and pos_embed: (1 + 17) * 8
    detail = split_parameters(VisionTransformer(), preset="muon").summary(detail=True).splitlines()
    head = next(line for line in detail if line.split()[0] == "head.weight")
    assert "unembedding" in head and "opt=adamw" in head and "decay=yes" in head


def test_param_groups_for_optimizer_and_adamw_weight_decay_are_checked():
    groups = param_groups(VisionTransformer(), 0.1)
    assert groups.optimizers == ()
    with pytest.raises(ValueError, match="name must be one of the groups' optimizers: none"):
        groups.for_optimizer("muon")
    with pytest.raises(ValueError, match="name must be one of the groups' optimizers: 'muon', 'adamw'; got 'sgd'"):
        param_groups(VisionTransformer(), 0.1, preset="muon").for_optimizer("sgd")
    with pytest.raises(ValueError, match="adamw_weight_decay is the λ of the AdamW groups"):
        param_groups(VisionTransformer(), 0.1, adamw_weight_decay=0.01)
    with pytest.raises(ValueError, match="adamw_weight_decay must be >= 0"):
        param_groups(VisionTransformer(), 0.1, preset="muon", adamw_weight_decay=-1.0)
    for key in ("optimizer", "direction"):
        with pytest.raises(ValueError, match=f"group_options may not contain '{key}'"):
            param_groups(VisionTransformer(), 0.1, preset="muon", **{key: "adam"})
    assert param_groups(VisionTransformer(), 0.1, direction="adam")[0]["direction"] == "adam"  # one optimizer: free


# --- errors ---------------------------------------------------------------------------------------------


def test_unknown_preset_lists_the_presets():
    listed = ", ".join(repr(p) for p in PRESETS)
    with pytest.raises(ValueError, match=re.escape(f"preset must be one of {listed}; got 'keras'")):
        param_groups(VisionTransformer(), 0.1, preset="keras")
    assert list(PRESETS) == ["decaylab", "nanogpt", "hf", "timm", "megatron", "olmo-core", "torchtitan",
                             "modded-nanogpt", "muon"]
    assert all(p.source and p.rule for p in PRESETS.values())


def test_decaylab_flags_are_refused_with_another_preset():
    with pytest.raises(ValueError, match="no_decay_embedding=True: the no_decay_\\* flags .* preset 'timm' decides"):
        split_parameters(VisionTransformer(), preset="timm", no_decay_embedding=True)
    with pytest.raises(ValueError, match="respect_no_weight_decay=False"):
        split_parameters(VisionTransformer(), preset="hf", respect_no_weight_decay=False)
    # patterns still come first with any preset
    split = split_parameters(VisionTransformer(), preset="torchtitan", no_decay_patterns=["pos_embed"])
    assert split.reasons["pos_embed"] == "no_decay_patterns 'pos_embed'"


def test_summary_detail_is_checked():
    with pytest.raises(ValueError, match="detail must be False, True or 'roles'; got 'role'"):
        split_parameters(VisionTransformer()).summary(detail="role")
