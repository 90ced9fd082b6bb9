"""train_stacked(): K configs trained as one stacked model equal K separate train() runs (float64):
parameters, buffers (BatchNorm running statistics), final metrics and curves, with each model's own
lr, λ, seed and data order, a warmup + cosine lr schedule, an early-decay schedule, gradient
clipping and the weight EMA."""
from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from decaylab.data import TensorData, TextData
from decaylab.train import TrainConfig, train, train_stacked
from decaylab.train.engines import StackedModels

TOL = dict(rtol=1e-9, atol=1e-11)


@pytest.fixture(autouse=True)
def float64_one_thread():
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)


def tiny_data(shape, n=48, n_test=20, classes=4) -> TensorData:
    g = torch.Generator().manual_seed(0)
    return TensorData(
        torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g),
        torch.randn(n_test, *shape, generator=g), torch.randint(0, classes, (n_test,), generator=g), classes, "tiny",
    )


def assert_same_runs(separate, stacked):
    assert len(separate) == len(stacked)
    for a, b in zip(separate, stacked, strict=True):
        assert a.config == b.config
        sa, sb = a.model.state_dict(), b.model.state_dict()
        assert list(sa) == list(sb)
        for name in sa:
            assert_close(sb[name], sa[name], **TOL, msg=lambda m, name=name: f"{name}: {m}")
        assert set(a.final) == set(b.final)
        for name in a.final:
            if name != "wall_s":
                assert b.final[name] == pytest.approx(a.final[name], rel=1e-9, abs=1e-12), name
        assert len(a.curves) == len(b.curves)
        for pa, pb in zip(a.curves, b.curves, strict=True):
            assert set(pa) == set(pb)
            for name in pa:
                assert pb[name] == pytest.approx(pa[name], rel=1e-9, abs=1e-12), name


def three(base: TrainConfig) -> list[TrainConfig]:
    return [
        base.replace(lr=1e-2, weight_decay=0.1, seed=1),
        base.replace(lr=3e-3, weight_decay=0.5, seed=2),
        base.replace(lr=2e-2, weight_decay=0.0, seed=3),
    ]


CASES = {
    "mlp": ((40,), {}),
    "cnn1d": ((40,), {"optimizer": "sgd", "momentum": 0.9, "decay": "prox", "decay_scale": "schedule"}),
    "resnet20": ((3, 8, 8), {}),  # BatchNorm: stacked running statistics
}


@pytest.mark.parametrize("model", list(CASES))
def test_stacked_equals_separate_runs(model):
    shape, extra = CASES[model]
    data = tiny_data(shape)
    base = TrainConfig(model=model, dataset="tiny", steps=7, batch_size=16, eval_every=3, schedule="warmup_cosine",
                       warmup_steps=2, callbacks=("decay_window:0-0.6", "ema:0.9"), grad_clip=1.0, **extra)
    configs = three(base)
    separate = [train(c, data=data) for c in configs]
    stacked = train_stacked(configs, data=data)
    assert_same_runs(separate, stacked)
    # The runs really differ (own lr, λ, seed, data order), and K stacked models are not one.
    assert len({r.final["test_loss"] for r in stacked}) == 3
    assert stacked[0].final["wall_s"] == stacked[1].final["wall_s"]  # one stacked wall time, shared


def test_stacked_with_restarts_late_decay_and_sgd_l2():
    data = tiny_data((40,))
    base = TrainConfig(model="mlp", steps=9, batch_size=16, eval_every=4, optimizer="sgd", momentum=0.5, decay="l2",
                       schedule="restarts", restart_steps=2, callbacks=("decay_window:0.3-1",))
    configs = three(base)
    assert_same_runs([train(c, data=data) for c in configs], train_stacked(configs, data=data))


@pytest.mark.filterwarnings("ignore:There is a performance drop")
def test_stacked_language_model_equals_separate_runs():
    g = torch.Generator().manual_seed(0)
    text = TextData(torch.randint(0, 256, (2000,), generator=g, dtype=torch.uint8),
                    torch.randint(0, 256, (500,), generator=g, dtype=torch.uint8), "tiny-text")
    base = TrainConfig(model="gpt-micro", dataset="tiny-text", steps=3, batch_size=2, block_size=8, eval_every=2,
                       lm_eval_batches=1, schedule="constant")
    configs = three(base)[:2]
    separate = [train(c, data=text, backend="foreach") for c in configs]
    stacked = train_stacked(configs, data=text, backend="foreach")
    assert_same_runs(separate, stacked)


def test_stacked_holder_keeps_names_and_ties():
    torch.manual_seed(0)
    from decaylab.models import GPT, GPTConfig

    models = [GPT(GPTConfig.micro(n_layer=1, n_embd=16, n_head=2, block_size=8)) for _ in range(3)]
    stacked = StackedModels(models)
    holder = stacked.holder
    assert [n for n, _ in holder.named_parameters()] == [n for n, _ in models[0].named_parameters()]
    assert holder.lm_head.weight is holder.transformer.wte.weight
    assert holder.transformer.wte.weight.shape == (3, 256, 16)
    back = stacked.module_at(2)
    for p, q in zip(back.parameters(), models[2].parameters(), strict=True):
        assert torch.equal(p, q)
    assert back.lm_head.weight is back.transformer.wte.weight


def test_one_config_stacked_equals_train():
    data = tiny_data((40,))
    config = TrainConfig(steps=5, batch_size=16, lr=1e-2, weight_decay=0.1)
    assert_same_runs([train(config, data=data)], train_stacked([config], data=data))


def _stacked_executors(steps, *, sgd=False, dtype=torch.float32):
    """What the optimizer's dispatcher runs for 16 stacked MLPs trained ``steps`` steps (as train_stacked sets it)."""
    from decaylab.models import build
    from decaylab.optim import SGD, Adam

    torch.manual_seed(0)
    engine = StackedModels([build("mlp").to(dtype) for _ in range(16)])  # 16 × 15,210 entries
    lr = torch.full((16,), 1e-3, dtype=torch.float64)
    opt = (SGD if sgd else Adam)(engine.parameters(), lr=lr, weight_decay=0.0)
    opt.dispatcher.expected_steps = steps
    return {row["executor"] for row in opt.explain()}


def test_auto_backend_compiles_only_long_stacked_runs(monkeypatch):
    from decaylab.optim.executors import EXECUTORS, compiled

    monkeypatch.setattr(EXECUTORS["native"], "why_not", lambda bucket: "switched off for this test")
    monkeypatch.setattr(compiled, "compiler_available", lambda device_type: None)
    assert _stacked_executors(1000) == {"fused"}  # short: compiling would not pay; torch's kernel per model
    assert _stacked_executors(3000) == {"compiled"}  # one graph for all K models
    assert _stacked_executors(1000, sgd=True) == {"foreach"}
    assert _stacked_executors(3000, sgd=True) == {"compiled"}
    monkeypatch.setattr(compiled, "compiler_available", lambda device_type: "no compiler in this test")
    assert _stacked_executors(10_000) == {"fused"}
    assert _stacked_executors(10_000, sgd=True) == {"foreach"}


def test_stacked_adam_on_cpu_uses_the_native_step_not_a_compile(monkeypatch):
    from decaylab.optim.executors import compiled

    monkeypatch.setattr(compiled, "compiler_available", lambda device_type: None)
    assert _stacked_executors(10_000) == {"native"}  # all K models in one call, no compile
    assert _stacked_executors(10_000, sgd=True) == {"native"}
    # bf16 parameters: no native step, the long run compiles
    assert _stacked_executors(10_000, dtype=torch.bfloat16) == {"compiled"}


@pytest.mark.parametrize("precision", ["bf16-autocast", "bf16"])
def test_stacked_mlp_trains_in_low_precision(precision):
    """The MLP's batched forward under autocast and with bf16 weights: K stacked runs end close to K
    separate ones (bf16 arithmetic: loose tolerance) with finite losses. In float32, as users run it:
    autocast leaves float64 alone."""
    torch.set_default_dtype(torch.float32)  # the autouse fixture restores it
    data = tiny_data((40,))
    base = TrainConfig(model="mlp", steps=6, batch_size=16, precision=precision, schedule="constant")
    configs = three(base)
    separate = [train(c, data=data) for c in configs]
    stacked = train_stacked(configs, data=data)
    for a, b in zip(separate, stacked, strict=True):
        assert torch.isfinite(torch.tensor(b.final["test_loss"]))
        assert abs(a.final["test_loss"] - b.final["test_loss"]) < 0.05 * abs(a.final["test_loss"]) + 0.05


@pytest.mark.parametrize("model, precision", [("mlp-bn", "bf16-autocast"), ("cnn1d", "bf16"),
                                              ("cnn1d", "bf16-autocast"), ("mlp", "bf16")])
def test_a_diverged_model_does_not_touch_the_others_in_low_precision(model, precision):
    """Stacked in 16-bit, a model whose loss goes to NaN (lr = 1e30) leaves its neighbour bit for bit
    as a sane neighbour does. Found broken: mlp-bn under autocast raised a dtype error in vmap's
    batch_norm, and cnn1d in bf16 turned the other models' gradients NaN in the batched convolution's
    input gradient."""
    torch.set_default_dtype(torch.float32)  # the autouse fixture restores it
    data = tiny_data((40,))
    base = TrainConfig(model=model, steps=8, batch_size=16, precision=precision, schedule="constant", lr=1e-3)
    beside_sane = train_stacked([base, base.replace(lr=1e-2)], data=data)
    beside_diverged = train_stacked([base, base.replace(lr=1e30)], data=data)
    assert not torch.isfinite(torch.tensor(beside_diverged[1].final["train_loss"]))
    assert beside_sane[0].final == {**beside_diverged[0].final, "wall_s": beside_sane[0].final["wall_s"]}
    for (name, a), b in zip(beside_sane[0].model.state_dict().items(),
                            beside_diverged[0].model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
