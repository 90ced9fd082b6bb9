"""train(): one model. Sanity on MNIST-1D, precision modes, gradient clipping, EMA, language models,
instruments, progress and the errors a run can raise."""
from __future__ import annotations

import pytest
import torch

from decaylab.data import TensorData, TextData
from decaylab.diagnostics import WeightNorm
from decaylab.train import TrainConfig, train, train_stacked
from decaylab.train.data import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_data(shape=(40,), n=64, n_test=32, classes=4, seed=0, dtype=torch.float32) -> TensorData:
    g = torch.Generator().manual_seed(seed)
    return TensorData(
        torch.randn(n, *shape, generator=g, dtype=dtype), torch.randint(0, classes, (n,), generator=g),
        torch.randn(n_test, *shape, generator=g, dtype=dtype), torch.randint(0, classes, (n_test,), generator=g),
        classes, "tiny",
    )


def tiny_text(seed=0) -> TextData:
    g = torch.Generator().manual_seed(seed)
    return TextData(torch.randint(0, 256, (4000,), generator=g, dtype=torch.uint8),
                    torch.randint(0, 256, (1000,), generator=g, dtype=torch.uint8), "tiny-text")


CLASSIFICATION_FINAL = {"train_loss", "train_acc", "test_loss", "test_acc", "weight_norm", "wall_s", "steps"}
CURVE_KEYS = {"step", "epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "weight_norm", "effective_lr"}


def test_loss_decreases_on_mnist1d():
    config = TrainConfig(model="mlp", dataset="mnist1d", lr=3e-3, weight_decay=1e-2, steps=300, eval_every=50,
                         schedule="warmup_cosine", warmup_steps=20)
    result = train(config)
    validation = {"val_loss", "val_acc"}  # every registered dataset has a validation split
    assert set(result.final) == CLASSIFICATION_FINAL | validation
    assert [p["step"] for p in result.curves] == [50, 100, 150, 200, 250, 300]
    assert all(set(p) == CURVE_KEYS | validation for p in result.curves)
    assert result.final["val_acc"] > 0.35 and result.final["val_acc"] != result.final["test_acc"]
    first, last = result.curves[0], result.curves[-1]
    assert last["train_loss"] < 0.85 * first["train_loss"]
    assert result.final["test_acc"] > 0.35  # chance is 0.1
    assert result.final["test_acc"] == last["test_acc"] and result.final["steps"] == 300
    assert last["epoch"] == pytest.approx(300 / (4000 // 128))
    assert last["effective_lr"] == pytest.approx(last["lr"] / last["weight_norm"])  # Adam: lr/‖w‖


def test_epochs_set_the_number_of_steps_and_lr_follows_the_schedule():
    data = tiny_data(n=64)
    result = train(TrainConfig(epochs=2.5, batch_size=16, eval_every=1, lr=0.1, schedule="step",
                               lr_milestones=(0.5,), lr_gamma=0.1), data=data)
    assert result.final["steps"] == 10  # round(2.5 · 64 // 16)
    assert [p["lr"] for p in result.curves] == pytest.approx([0.1] * 5 + [0.01] * 5)


def test_same_config_same_result_and_seeds_differ():
    data = tiny_data()
    config = TrainConfig(steps=6, batch_size=16, lr=1e-2, weight_decay=0.1)
    a, b, c = train(config, data=data), train(config, data=data), train(config.replace(seed=1), data=data)
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert a.final["test_loss"] == b.final["test_loss"] != c.final["test_loss"]


def test_init_follows_the_seed_and_decay_split_skips_biases():
    data = tiny_data()
    config = TrainConfig(steps=20, batch_size=16, optimizer="sgd", momentum=0.0, lr=1e-9, weight_decay=0.5,
                         decay_scale="constant", schedule="constant", seed=3)
    result = train(config, data=data)
    torch.manual_seed(3)
    init = build_model(config, data)
    for (name, p), p0 in zip(result.model.named_parameters(), init.parameters(), strict=True):
        factor = 1.0 if name.endswith("bias") else 0.5 ** 20  # pure decay: w·(1 − λ)^steps
        torch.testing.assert_close(p, p0 * factor, rtol=1e-4, atol=1e-6)
    everything = train(config.replace(no_decay_bias_norm=False), data=data)
    assert all(p.abs().max() < 1e-4 for p in everything.model.parameters())


def test_grad_clip_bounds_the_step_and_reports_the_norm():
    data = tiny_data()
    clip, lr = 1e-3, 0.1
    config = TrainConfig(steps=1, batch_size=16, optimizer="sgd", momentum=0.0, lr=lr, grad_clip=clip,
                         schedule="constant")
    result = train(config, data=data)
    torch.manual_seed(config.seed)
    init = build_model(config, data)
    step = torch.cat([(p - p0).flatten() for p, p0 in zip(result.model.parameters(), init.parameters(), strict=True)])
    assert result.curves[-1]["grad_norm"] > 100 * clip
    assert step.norm().item() == pytest.approx(lr * clip, rel=1e-3)
    unclipped = train(config.replace(grad_clip=None), data=data)
    assert "grad_norm" not in unclipped.curves[-1]


def test_bf16_autocast_runs_with_fp32_weights():
    data = tiny_data()
    config = TrainConfig(steps=30, batch_size=16, lr=1e-2, eval_every=10)
    fp32, auto = train(config, data=data), train(config.replace(precision="bf16-autocast"), data=data)
    assert all(p.dtype == torch.float32 for p in auto.model.parameters())
    assert auto.final["train_loss"] == pytest.approx(fp32.final["train_loss"], rel=0.05)
    assert auto.final["train_loss"] < auto.curves[0]["train_loss"] + 1e-6


def test_pure_bf16_keeps_weight_decay_alive():
    """A decay of 1e-3 per step is below bf16's resolution (2⁻⁸): it survives only because the
    optimizer compensates its rounding (Kahan). The bf16 weight norm must follow fp32's."""
    data = tiny_data()
    config = TrainConfig(steps=300, batch_size=16, optimizer="sgd", momentum=0.0, lr=1e-4, weight_decay=1e-3,
                         decay="decoupled", decay_scale="constant", schedule="constant", no_decay_bias_norm=False)
    fp32 = train(config, data=data)
    bf16 = train(config.replace(precision="bf16"), data=data)
    no_decay = train(config.replace(weight_decay=0.0), data=data)
    assert all(p.dtype == torch.bfloat16 for p in bf16.model.parameters())
    assert fp32.final["weight_norm"] == pytest.approx(0.999 ** 300 * no_decay.final["weight_norm"], rel=0.01)
    assert bf16.final["weight_norm"] == pytest.approx(fp32.final["weight_norm"], rel=0.02)


def test_ema_metrics():
    data = tiny_data()
    config = TrainConfig(steps=12, batch_size=16, lr=1e-2, callbacks=("ema:0.9",))
    result = train(config, data=data)
    for name in ("ema_test_loss", "ema_test_acc", "ema_train_loss", "ema_train_acc", "ema_weight_norm"):
        assert name in result.final
    assert result.final["ema_test_loss"] != result.final["test_loss"]
    live = train(config.replace(callbacks=("ema:0",)), data=data)  # β = 0: the average is the live model
    assert live.final["ema_test_loss"] == pytest.approx(live.final["test_loss"], rel=1e-12)
    assert live.final["ema_weight_norm"] == pytest.approx(live.final["weight_norm"], rel=1e-12)


def test_ema_with_batchnorm_recomputes_statistics():
    data = tiny_data(shape=(3, 8, 8), n=32, n_test=16)
    result = train(TrainConfig(model="resnet20", steps=3, batch_size=16, lr=1e-2, callbacks=("ema:0.5",)), data=data)
    assert 0 <= result.final["ema_test_acc"] <= 1 and result.final["ema_test_loss"] > 0


def test_language_model_on_text():
    config = TrainConfig(model="gpt-micro", dataset="tiny-text", steps=4, batch_size=2, block_size=16, lr=1e-3,
                         weight_decay=0.1, eval_every=2, lm_eval_batches=2)
    result = train(config, data=tiny_text(), backend="foreach")  # "auto" would compile for 1.8M parameters
    assert set(result.final) == {"train_loss", "val_loss", "test_loss", "weight_norm", "wall_s", "steps"}
    assert result.final["val_loss"] == result.final["test_loss"] > 0
    assert "test_acc" not in result.curves[-1] and "val_loss" in result.curves[-1]
    assert result.curves[-1]["epoch"] == pytest.approx(4 / (4000 // 32))


def test_instruments_records():
    result = train(TrainConfig(steps=4, batch_size=16), data=tiny_data(), instruments=[WeightNorm(interval=2)])
    steps = sorted({r["step"] for r in result.records if r["metric"] == "weight_norm/total"})
    assert steps == [2, 4]
    stacked = train_stacked([TrainConfig(steps=4, batch_size=16, seed=s) for s in (0, 1)], data=tiny_data(),
                            instruments=[WeightNorm(interval=2, per_tensor=False)])
    for r in stacked:
        assert sorted(x["step"] for x in r.records if x["metric"] == "weight_norm/total") == [2, 4]
    total = [x["value"] for x in stacked[1].records if x["metric"] == "weight_norm/total"][-1]
    assert total == pytest.approx(stacked[1].final["weight_norm"], rel=1e-5)


def test_progress_bar(capsys):
    train(TrainConfig(steps=3, batch_size=16), data=tiny_data(), progress=True)
    err = capsys.readouterr().err
    assert "decayed: 3 tensors" in err and "3/3" in err and "loss=" in err


def test_errors():
    data = tiny_data(n=64)
    with pytest.raises(ValueError, match=r"batch_size must be at most the number of training examples \(64\)"):
        train(TrainConfig(batch_size=65, steps=1), data=data)
    with pytest.raises(ValueError, match="warmup_steps must be smaller than the run's 4 steps"):
        train(TrainConfig(batch_size=16, steps=4, warmup_steps=4), data=data)
    with pytest.raises(ValueError, match="is a classifier but dataset 'tiny-text' is text"):
        train(TrainConfig(steps=1), data=tiny_text())
    with pytest.raises(ValueError, match="is a language model but dataset 'tiny' is classification"):
        train(TrainConfig(model="gpt-micro", steps=1), data=data)
    with pytest.raises(ValueError, match="checkpoint_every and resume need a checkpoint_dir"):
        train(TrainConfig(batch_size=16, steps=1), data=data, checkpoint_every=1)
    with pytest.raises(ValueError, match="config must be a TrainConfig"):
        train({"lr": 0.1})
    with pytest.raises(ValueError, match=r"differ only in lr, weight_decay, seed; these differ too: \['momentum'\]"):
        train_stacked([TrainConfig(), TrainConfig(momentum=0.5)], data=data)
