"""Tests for decaylab.models: shapes, parameter counts, training, causality and stacking under vmap.

The stacking tests build K=3 models, stack them with ``torch.func.stack_module_state``, run
``vmap(functional_call(base, (params, buffers), x))`` on a ``meta`` copy of the first (as stacked
training does) and compare with each model's own forward: outputs, gradients and, for BatchNorm in
train mode, the running statistics each model updates.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap
from torch.nn.modules.batchnorm import _BatchNorm
from torch.testing import assert_close

from decaylab.groups import NORM_TYPES, param_groups, split_parameters
from decaylab.models import (
    GPT,
    MLP,
    CNN1d,
    GPTConfig,
    available,
    build,
    num_parameters,
    preact_resnet18,
    resnet20,
    vgg16,
)

K = 3
NAMES = [
    "mlp",
    "mlp-bn",
    "mlp-deep",
    "mlp-deep-bn",
    "cnn1d",
    "resnet20",
    "resnet20-nobn",
    "preact-resnet18",
    "preact-resnet18-nobn",
    "vgg16",
    "gpt-micro",
    "gpt-nano",
]
# Parameter counts for the registry defaults (10 classes; GPT: vocab 256, block 128).
PARAMETER_COUNTS = {
    "mlp": 15_210,
    "mlp-bn": 15_410,
    "mlp-deep": 9_034,
    "mlp-deep-bn": 9_290,
    "cnn1d": 5_210,
    "resnet20": 269_722,
    "resnet20-nobn": 268_346,
    "preact-resnet18": 11_172_176,
    "preact-resnet18-nobn": 11_164_362,
    "vgg16": 14_719_818,
    "gpt-micro": 1_844_928,
    "gpt-nano": 37_024,
}
NO_BN = ("resnet20-nobn", "preact-resnet18-nobn", "vgg16")


# Small convolutions are dominated by thread start-up: one thread keeps this file fast and steady.
pytestmark = pytest.mark.usefixtures("one_thread")


def example_input(name: str, batch: int = 2, generator: torch.Generator | None = None) -> torch.Tensor:
    """A small input for model ``name`` (images as small as the architecture allows)."""
    g = generator or torch.Generator().manual_seed(0)
    if name in ("mlp", "mlp-bn", "mlp-deep", "mlp-deep-bn", "cnn1d"):
        return torch.randn(batch, 40, generator=g)
    if name.startswith("gpt"):
        return torch.randint(0, 256, (batch, 16), generator=g)
    size = {"vgg16": 32, "preact-resnet18": 16, "preact-resnet18-nobn": 16}.get(name, 8)
    return torch.randn(batch, 3, size, size, generator=g)


def logits_of(output: torch.Tensor | tuple) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


# ---------------------------------------------------------------------------------------------
# registry


def test_available_lists_every_name():
    assert available() == NAMES


def test_unknown_name_lists_the_allowed_names():
    with pytest.raises(ValueError, match="unknown model name 'resnet18'") as info:
        build("resnet18")
    for name in NAMES:
        assert repr(name) in str(info.value)


def test_name_fixed_keyword_conflict_points_to_the_right_name():
    with pytest.raises(ValueError, match="'resnet20-nobn' fixes norm='none'; for norm='bn' build 'resnet20'"):
        build("resnet20-nobn", norm="bn")
    assert build("resnet20", norm="bn").norm == "bn"  # repeating the fixed value is fine


def test_build_passes_keywords_through():
    assert build("resnet20", num_classes=100).linear.out_features == 100
    assert build("mlp", hidden=(7,)).hidden[0].out_features == 7
    gpt = build("gpt-micro", n_layer=2, attention="manual")
    assert len(gpt.transformer.h) == 2 and gpt.config.attention == "manual"
    with pytest.raises(ValueError, match="unknown GPTConfig fields \\['n_layers'\\]"):
        build("gpt-micro", n_layers=2)
    with pytest.raises(TypeError):
        build("mlp", depth=3)


def test_build_draws_a_fresh_init_each_time():
    a, b = build("mlp"), build("mlp")
    assert not torch.equal(a.head.weight, b.head.weight)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: resnet20(norm="ln"), "norm must be one of \\['bn', 'none'\\], got 'ln'"),
        (lambda: preact_resnet18(norm="gn"), "norm must be one of"),
        (lambda: vgg16(norm="batch"), "norm must be one of"),
        (lambda: resnet20(shortcut="C"), "shortcut must be one of \\['A', 'B'\\]"),
        (lambda: MLP(activation="swish"), "activation must be one of \\['relu', 'gelu', 'tanh', 'silu'\\]"),
        (lambda: GPTConfig(attention="flash"), "attention must be one of \\['sdpa', 'manual'\\]"),
        (lambda: GPTConfig(n_embd=190, n_head=4), "n_embd \\(190\\) must be divisible by n_head \\(4\\)"),
        (lambda: GPTConfig(dropout=1.0), "dropout must be in"),
        (lambda: CNN1d(in_length=2), "in_length must be at least 3"),
    ],
)
def test_bad_arguments_name_the_argument(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_bad_input_shapes_raise_clear_errors():
    with pytest.raises(ValueError, match="built for in_length=40"):
        CNN1d()(torch.randn(2, 50))
    with pytest.raises(ValueError, match="sequence length 129 exceeds block_size 128"):
        GPT()(torch.zeros(1, 129, dtype=torch.long))
    with pytest.raises(TypeError, match="hidden must be a sequence"):
        MLP(hidden=100)


# ---------------------------------------------------------------------------------------------
# architecture


@pytest.mark.parametrize("name", NAMES)
def test_forward_shapes(name):
    model = build(name)
    x = example_input(name)
    out = model(x)
    if name.startswith("gpt"):
        logits, loss = out
        assert logits.shape == (2, 16, 256) and loss is None
        logits, loss = model(x, x)
        assert loss.shape == () and torch.isfinite(loss)
    else:
        assert out.shape == (2, 10)
    assert torch.isfinite(logits_of(out)).all()


def test_parameter_counts_match_the_published_numbers():
    counts = {name: num_parameters(build(name)) for name in NAMES}
    assert counts == PARAMETER_COUNTS
    assert round(counts["resnet20"] / 1e6, 2) == 0.27  # He et al.
    assert round(counts["preact-resnet18"] / 1e6, 2) == 11.17  # kuangliu / "Why WD"
    assert round(counts["vgg16"] / 1e6, 1) == 14.7  # CIFAR VGG-16
    assert resnet20(shortcut="B").linear.in_features == 64 and num_parameters(resnet20(shortcut="B")) == 272_474
    assert num_parameters(vgg16(hidden_fc=(512, 512))) == 15_245_130  # the "Why WD" code's head
    gpt = build("gpt-micro")
    assert gpt.num_parameters() == 1_844_928 and gpt.num_parameters(non_embedding=True) == 1_820_352


@pytest.mark.parametrize("name", NAMES)
def test_batchnorm_only_where_asked(name):
    model = build(name)
    has_bn = any(isinstance(m, _BatchNorm) for m in model.modules())
    assert has_bn == (name in ("mlp-bn", "mlp-deep-bn", "resnet20", "preact-resnet18"))
    if name in NO_BN:
        assert not any(isinstance(m, NORM_TYPES) for m in model.modules())
        assert not list(model.buffers())


def test_mnist1d_models_follow_the_reference_code():
    assert CNN1d().linear.in_features == 125  # 25 channels × length 5, as MNIST-1D's ConvBase
    model = MLP(residual=True)
    x = torch.randn(3, 40)
    h = F.relu(model.hidden[0](x))
    h = h + F.relu(model.hidden[1](h))  # MNIST-1D's MLPBase
    assert_close(model(x), model.head(h))
    assert MLP(residual=True)._skip == [False, True]


def test_zero_init_residual():
    nobn = resnet20(norm="none")
    assert all(not block.conv2.weight.any() for stage in (nobn.layer1, nobn.layer2, nobn.layer3) for block in stage)
    assert nobn.layer1[0].conv1.weight.any()
    assert all(block.conv2.weight.any() for block in resnet20(norm="none", zero_init_residual=False).layer1)
    bn = resnet20()
    assert all(block.bn2.weight.eq(1).all() for block in bn.layer1)  # He et al.'s init by default
    assert all(not block.bn2.weight.any() for block in resnet20(zero_init_residual=True).layer1)
    preact = preact_resnet18(norm="none")
    assert all(not block.conv2.weight.any() for block in preact.layer1)
    # Each no-BN block then starts as its shortcut: stage 1 of ResNet-20 passes relu(x) through.
    x = torch.randn(2, 16, 8, 8).relu()
    assert_close(nobn.layer1(x), x)


def test_gpt_follows_nanogpt_init_and_tying():
    torch.manual_seed(0)
    gpt = GPT(GPTConfig.micro())
    assert gpt.lm_head.weight is gpt.transformer.wte.weight
    assert [n for n, _ in gpt.named_parameters()][0] == "transformer.wte.weight"
    c_proj = torch.cat([b.attn.c_proj.weight.flatten() for b in gpt.transformer.h])
    c_attn = torch.cat([b.attn.c_attn.weight.flatten() for b in gpt.transformer.h])
    assert c_proj.std().item() == pytest.approx(0.02 / (2 * 4) ** 0.5, rel=0.03)
    assert c_attn.std().item() == pytest.approx(0.02, rel=0.03)
    assert gpt.transformer.wpe.weight.std().item() == pytest.approx(0.02, rel=0.03)
    big = GPTConfig.gpt2_small()
    assert (big.n_layer, big.n_head, big.n_embd, big.block_size, big.vocab_size) == (12, 12, 768, 1024, 50304)


@pytest.mark.parametrize("bias", [False, True])
def test_gpt_decays_exactly_matmul_weights_and_embeddings(bias):
    gpt = GPT(GPTConfig.micro(n_layer=2, bias=bias))
    matmuls = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    expected = ["transformer.wte.weight", "transformer.wpe.weight"]
    expected += [f"transformer.h.{i}.{m}" for i in range(2) for m in matmuls]
    groups = param_groups(gpt, 0.1, no_decay_1d=True)
    decayed = next(g for g in groups if g["weight_decay"] == 0.1)
    assert sorted(decayed["param_names"]) == sorted(expected)
    not_decayed = next(g for g in groups if g["weight_decay"] == 0.0)["param_names"]
    assert all(".ln_" in name or name.endswith("bias") for name in not_decayed)
    assert len(decayed["param_names"]) + len(not_decayed) == len(list(gpt.parameters()))
    assert all(p.ndim == 2 for p in decayed["params"])
    # nanoGPT's own rule (every 2-d tensor) gives the same split.
    assert sorted(n for n, _ in split_parameters(gpt, no_decay_norm=False, no_decay_1d=True).decay) == sorted(expected)


@pytest.mark.parametrize("attention", ["sdpa", "manual"])
def test_gpt_is_causal(attention):
    torch.manual_seed(0)
    gpt = GPT(GPTConfig.micro(n_layer=2, attention=attention)).eval()
    idx = torch.randint(0, 256, (2, 16))
    changed = idx.clone()
    changed[:, 10] = (changed[:, 10] + 1) % 256
    before, after = gpt(idx)[0], gpt(changed)[0]
    assert_close(after[:, :10], before[:, :10], rtol=0, atol=1e-6)
    assert (after[:, 10:] - before[:, 10:]).abs().amax(dim=-1).gt(1e-4).all()


def test_gpt_attention_implementations_agree():
    torch.manual_seed(0)
    sdpa = GPT(GPTConfig.micro(n_layer=2))
    manual = GPT(GPTConfig.micro(n_layer=2, attention="manual"))
    manual.load_state_dict(sdpa.state_dict())
    idx = torch.randint(0, 256, (2, 16))
    assert_close(manual(idx, idx)[0], sdpa(idx, idx)[0], rtol=1e-4, atol=1e-5)


def test_gpt_loss_ignores_minus_one_targets():
    gpt = GPT(GPTConfig.micro(n_layer=1))
    idx = torch.randint(0, 256, (2, 8))
    targets = idx.roll(-1, 1)
    targets[:, -1] = -1
    logits, loss = gpt(idx, targets)
    assert_close(loss, F.cross_entropy(logits[:, :-1].flatten(0, 1), targets[:, :-1].flatten()))


# ---------------------------------------------------------------------------------------------
# training


@pytest.mark.parametrize("name, lr", [("mlp", 0.1), ("cnn1d", 0.3), ("resnet20-nobn", 0.05), ("gpt-micro", 0.05)])
def test_sgd_overfits_one_batch(name, lr):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = build(name)
    x = example_input(name, batch=32 if name in ("mlp", "mlp-bn", "cnn1d") else 8, generator=g)
    if name.startswith("gpt"):
        y = x.roll(-1, 1)
        loss_fn = lambda: model(x, y)[1]
    else:
        y = torch.randint(0, 10, (len(x),), generator=g)
        loss_fn = lambda: F.cross_entropy(model(x), y)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


# ---------------------------------------------------------------------------------------------
# stacking under vmap


def stacked_call(models: list[nn.Module], *args: torch.Tensor, fn=None):
    """``vmap`` over K stacked models on a meta base; ``fn(output)`` picks what to return."""
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    base.train(models[0].training)
    pick = fn or logits_of

    def one(p, b, *a):
        return pick(functional_call(base, (p, b), a))

    in_dims = (0, 0) + (None,) * len(args)
    return vmap(one, in_dims=in_dims)(params, buffers, *args), params, buffers


# Train and eval mode differ only with BatchNorm (dropout is 0), so the others run in train mode only.
VMAP_CASES = [
    ("mlp", True),
    ("mlp-bn", True),
    ("mlp-bn", False),
    ("cnn1d", True),
    ("resnet20", True),
    ("resnet20", False),
    ("resnet20-nobn", True),
    ("preact-resnet18", True),
    ("preact-resnet18", False),
    ("preact-resnet18-nobn", True),
    ("vgg16", True),
    ("gpt-micro", True),
    ("gpt-micro-manual", True),
]


# SDPA on CPU has no batching rule: vmap loops over the models and says so (see decaylab.models.gpt).
@pytest.mark.filterwarnings("ignore:There is a performance drop")
@pytest.mark.parametrize("case, train", VMAP_CASES, ids=[f"{c}-{'train' if t else 'eval'}" for c, t in VMAP_CASES])
def test_vmap_functional_call_matches_each_model(case, train):
    name, kwargs = ("gpt-micro", {"attention": "manual"}) if case == "gpt-micro-manual" else (case, {})
    if name == "gpt-micro":
        kwargs["n_layer"] = 2
    torch.manual_seed(0)
    models = [build(name, **kwargs).train(train) for _ in range(K)]
    if name == "resnet20":
        # Non-trivial BN state: moved running statistics and affine parameters.
        for model in models:
            for module in model.modules():
                if isinstance(module, _BatchNorm):
                    module.running_mean.normal_()
                    module.running_var.uniform_(0.5, 2.0)
                    module.weight.data.normal_(1.0, 0.1)
    separate = copy.deepcopy(models)
    x = example_input(name, batch=4 if name.startswith("resnet20") else 2)
    out, _, buffers = stacked_call(models, x)
    expected = torch.stack([logits_of(model(x)) for model in separate])
    assert_close(out, expected, rtol=1e-4, atol=1e-5)
    # BatchNorm in train mode: each model updated its own slice of the stacked running statistics.
    for key, stacked in buffers.items():
        assert_close(stacked, torch.stack([dict(m.named_buffers())[key] for m in separate]), rtol=1e-5, atol=1e-6)
    if train and name == "resnet20":
        assert buffers["bn1.num_batches_tracked"].tolist() == [1] * K


@pytest.mark.filterwarnings("ignore:There is a performance drop")
@pytest.mark.parametrize("case", ["mlp", "cnn1d", "resnet20", "resnet20-nobn", "gpt-micro", "gpt-micro-manual"])
def test_vmap_grad_matches_each_model(case):
    """Per-model gradients through vmap(grad(functional_call)), BatchNorm in train mode included."""
    name, kwargs = ("gpt-micro", {"attention": "manual"}) if case == "gpt-micro-manual" else (case, {})
    if name == "gpt-micro":
        kwargs["n_layer"] = 2
    torch.manual_seed(0)
    models = [build(name, **kwargs) for _ in range(K)]
    separate = copy.deepcopy(models)
    x = example_input(name, batch=4)
    y = x.roll(-1, 1) if name == "gpt-micro" else torch.tensor([1, 2, 3, 4])
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")

    def loss(p, b, x, y):
        out = functional_call(base, (p, b), (x, y) if name == "gpt-micro" else (x,))
        return out[1] if name == "gpt-micro" else F.cross_entropy(out, y)

    grads = vmap(grad(loss), in_dims=(0, 0, None, None))(params, buffers, x, y)
    for k, model in enumerate(separate):
        out = model(x, y)[1] if name == "gpt-micro" else F.cross_entropy(model(x), y)
        out.backward()
        for key, p in model.named_parameters():
            assert_close(grads[key][k], p.grad, rtol=1e-4, atol=1e-6, msg=f"{case} model {k} {key}")


def test_vmap_gpt_without_targets_and_with_dropout():
    torch.manual_seed(0)
    models = [GPT(GPTConfig.micro(n_layer=1, dropout=0.1, attention="manual")) for _ in range(K)]
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    idx = torch.randint(0, 256, (2, 8))
    call = lambda p, x: functional_call(base, p, (x,))
    with pytest.raises(RuntimeError, match="randomness"):
        vmap(call, in_dims=(0, None), out_dims=(0, None))(params, idx)
    logits, loss = vmap(call, in_dims=(0, None), out_dims=(0, None), randomness="different")(params, idx)
    assert logits.shape == (K, 2, 8, 256) and loss is None


def test_batchnorm_with_unbatched_buffers_fails_in_train_mode():
    """Documented limit: BN's in-place running-stat update needs the buffers stacked (in_dims=0)."""
    models = [resnet20() for _ in range(2)]
    params, buffers = stack_module_state(models)
    shared = {key: value[0] for key, value in buffers.items()}
    base = copy.deepcopy(models[0]).to("meta")
    call = lambda p, x: functional_call(base, (p, shared), (x,))
    with pytest.raises(RuntimeError, match="running_mean or running_var"):
        vmap(call, in_dims=(0, None))(params, torch.randn(4, 3, 8, 8))
    base.eval()  # eval mode only reads the running statistics: shared buffers are fine
    assert vmap(call, in_dims=(0, None))(params, torch.randn(4, 3, 8, 8)).shape == (2, 4, 10)


# --------------------------------------------------------------------------- the MLP's own stacked forward


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("kwargs", [{}, dict(activation="gelu"), dict(hidden=(16, 16), residual=True)],
                         ids=["relu", "gelu", "residual"])
def test_mlp_stacked_forward_equals_vmap(kwargs, shared):
    """``MLP.stacked_forward`` (batched matmuls, its own backward) equals vmap(functional_call): logits and
    the gradients of every stacked parameter and of the input, in float64."""
    from decaylab.models.mnist1d import MLP

    torch.manual_seed(0)
    k, b = 3, 5
    models = [MLP(in_features=12, **({"hidden": (16, 8)} | kwargs)).double() for _ in range(k)]
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    x = torch.randn((b, 12) if shared else (k, b, 12), dtype=torch.float64, requires_grad=True)
    weights = torch.randn(k, b, 10, dtype=torch.float64)

    def via_vmap(p):
        call = lambda pp, bb, xx: functional_call(base, (pp, bb), (xx,))
        return vmap(call, in_dims=(0, 0, None if shared else 0))(p, buffers, x)

    out = {}
    for name, fn in (("vmap", via_vmap), ("stacked", lambda p: models[0].stacked_forward(p, x, shared=shared))):
        p = {n: t.detach().clone().requires_grad_() for n, t in params.items()}
        x.grad = None
        logits = fn(p)
        (logits * weights).sum().backward()
        out[name] = (logits.detach(), {n: t.grad for n, t in p.items()}, x.grad.clone())
    torch.testing.assert_close(out["stacked"][0], out["vmap"][0], rtol=1e-12, atol=1e-12)
    for n in params:
        torch.testing.assert_close(out["stacked"][1][n], out["vmap"][1][n], rtol=1e-12, atol=1e-12, msg=n)
        assert out["stacked"][1][n].is_contiguous()
    torch.testing.assert_close(out["stacked"][2], out["vmap"][2], rtol=1e-12, atol=1e-12)


def test_mlp_stacked_forward_twice_differentiable():
    from decaylab.models.mnist1d import MLP

    torch.manual_seed(0)
    models = [MLP(in_features=6, hidden=(5,)).double() for _ in range(2)]
    params, _ = stack_module_state(models)
    x = torch.randn(2, 4, 6, dtype=torch.float64)

    def loss(w):
        return models[0].stacked_forward(dict(params, **{"head.weight": w}), x).square().sum()

    torch.autograd.gradcheck(loss, (params["head.weight"].detach().clone().requires_grad_(),))
    torch.autograd.gradgradcheck(loss, (params["head.weight"].detach().clone().requires_grad_(),))


def test_mlp_stacked_forward_under_bf16_autocast():
    """Under autocast the stacked forward matches vmap(functional_call) and backpropagates (fp32 weights)."""
    from decaylab.models.mnist1d import MLP

    torch.manual_seed(0)
    models = [MLP(in_features=12, hidden=(16, 8)) for _ in range(3)]
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    x = torch.randn(3, 5, 12)
    out = {}
    for name in ("vmap", "stacked"):
        p = {n: t.detach().clone().requires_grad_() for n, t in params.items()}
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if name == "vmap":
                logits = vmap(lambda pp, bb, xx: functional_call(base, (pp, bb), (xx,)))(p, buffers, x)
            else:
                logits = models[0].stacked_forward(p, x)
        logits.float().square().sum().backward()
        out[name] = (logits.float().detach(), {n: t.grad for n, t in p.items()})
    assert out["stacked"][0].dtype == torch.float32
    bf16 = dict(rtol=3e-2, atol=2e-2)  # two bf16 roundings of the same products (bf16 resolution 2^-8)
    assert_close(out["stacked"][0], out["vmap"][0], **bf16)
    for n in params:
        assert out["stacked"][1][n].dtype == torch.float32
        assert_close(out["stacked"][1][n], out["vmap"][1][n], **bf16, msg=n)


def test_every_model_says_what_it_reads_and_gets_its_sizes_from_the_data():
    from decaylab.models import INPUTS, data_sizes, takes

    for name in available():
        assert takes(name) in INPUTS
        sizes = data_sizes(name, input_shape=(1, 40), num_classes=7, vocab_size=256, block_size=16)
        if takes(name) != "image":  # the image models need (3, H, W) inputs to run
            model = build(name, **sizes)
            x = torch.randint(0, 256, (2, 16)) if takes(name) == "tokens" else torch.randn(2, 1, 40)
            out = model(x)
            logits = out[0] if isinstance(out, tuple) else out
            assert logits.shape[-1] == (256 if takes(name) == "tokens" else 7), name
    with pytest.raises(ValueError, match=r"model 'cnn1d' takes a 1-d signal of shape \(L,\) or \(1, L\); "
                                         r"dataset 'pics' has \(3, 8, 8\)"):
        data_sizes("cnn1d", input_shape=(3, 8, 8), num_classes=10, dataset="pics")
    with pytest.raises(ValueError, match="unknown model name 'mlp2'"):
        takes("mlp2")
