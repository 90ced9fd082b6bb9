"""Checkpoints: a run that crashes and resumes from its last checkpoint ends bit for bit where an
uninterrupted run ends (parameters, buffers, optimizer state, EMA, curves, instrument records)."""
from __future__ import annotations

import pytest
import torch

from decaylab.data import TensorData
from decaylab.diagnostics import WeightNorm
from decaylab.train import TrainConfig, train, train_stacked

N = 7  # steps between checkpoints; the epoch is 4 steps, so the checkpoint falls mid-epoch


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_data(shape=(40,)) -> TensorData:
    g = torch.Generator().manual_seed(0)
    return TensorData(torch.randn(64, *shape, generator=g), torch.randint(0, 4, (64,), generator=g),
                      torch.randn(16, *shape, generator=g), torch.randint(0, 4, (16,), generator=g), 4, "tiny")


class Crash(Exception):
    pass


def crash_at(step):
    def on_step(done):
        if done == step:
            raise Crash

    return on_step


def assert_identical(a, b):
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name
    strip = lambda d: {k: v for k, v in d.items() if k != "wall_s"}  # noqa: E731
    assert strip(a.final) == strip(b.final)
    assert a.curves == b.curves
    assert a.records == b.records


CONFIG = TrainConfig(steps=2 * N, batch_size=16, eval_every=3, lr=1e-2, weight_decay=0.1, schedule="warmup_cosine",
                     warmup_steps=3, grad_clip=0.5, callbacks=("ema:0.8", "decay_window:0-0.7"))


@pytest.mark.parametrize("model, shape, precision", [("mlp", (40,), "fp32"), ("resnet20", (3, 4, 4), "fp32"),
                                                     ("mlp", (40,), "bf16")])
def test_resume_equals_uninterrupted(tmp_path, model, shape, precision):
    data = tiny_data(shape)
    config = CONFIG.replace(model=model, precision=precision)
    make = lambda: [WeightNorm(interval=2, per_tensor=False)]  # noqa: E731
    whole = train(config, data=data, instruments=make())
    with pytest.raises(Crash):
        train(config, data=data, checkpoint_dir=tmp_path, checkpoint_every=N, on_step=crash_at(N + 2),
              instruments=make())
    assert (tmp_path / f"{config.key()}.pt").exists()
    steps_after_resume = []
    resumed = train(config, data=data, checkpoint_dir=tmp_path, checkpoint_every=N, resume=True,
                    on_step=steps_after_resume.append, instruments=make())
    assert steps_after_resume == list(range(N + 1, 2 * N + 1))  # it went on from the checkpoint
    assert_identical(whole, resumed)


def test_resume_a_finished_run_trains_no_more(tmp_path):
    data = tiny_data()
    first = train(CONFIG, data=data, checkpoint_dir=tmp_path)  # checkpoint at the end only
    steps = []
    again = train(CONFIG, data=data, checkpoint_dir=tmp_path, resume=True, on_step=steps.append)
    assert steps == []
    assert_identical(first, again)


def test_resume_without_checkpoint_starts_fresh(tmp_path):
    data = tiny_data()
    assert_identical(train(CONFIG, data=data), train(CONFIG, data=data, checkpoint_dir=tmp_path, resume=True))


def test_stacked_resume_equals_uninterrupted(tmp_path):
    data = tiny_data()
    configs = [CONFIG.replace(lr=lr, seed=s) for lr, s in ((1e-2, 0), (3e-2, 1))]
    whole = train_stacked(configs, data=data)
    with pytest.raises(Crash):
        train_stacked(configs, data=data, checkpoint_dir=tmp_path, checkpoint_every=N, on_step=crash_at(N + 1))
    resumed = train_stacked(configs, data=data, checkpoint_dir=tmp_path, checkpoint_every=N, resume=True)
    for a, b in zip(whole, resumed, strict=True):
        assert_identical(a, b)


def test_checkpoint_of_other_configs_is_refused(tmp_path):
    data = tiny_data()
    train(CONFIG, data=data, checkpoint_dir=tmp_path)
    path = tmp_path / f"{CONFIG.key()}.pt"
    other = CONFIG.replace(lr=0.5)
    path.rename(tmp_path / f"{other.key()}.pt")
    with pytest.raises(ValueError, match="belongs to other configs"):
        train(other, data=data, checkpoint_dir=tmp_path, resume=True)


def test_a_checkpoint_from_before_callbacks_resumes(tmp_path):
    """A checkpoint written before the knobs were callbacks holds the EMA under "ema" and its decay window
    as a DecaySchedule in the optimizer's param group: it resumes to the same end as an uninterrupted run."""
    data = tiny_data()
    whole = train(CONFIG, data=data)
    with pytest.raises(Crash):
        train(CONFIG, data=data, checkpoint_dir=tmp_path, checkpoint_every=N, on_step=crash_at(N + 2))
    path = tmp_path / f"{CONFIG.key()}.pt"
    ckpt = torch.load(path, weights_only=True)
    ckpt["ema"] = ckpt.pop("callbacks")["ema"]  # the layout before callbacks
    for group in ckpt["optimizer"]["param_groups"]:
        if isinstance(group["weight_decay"], dict):  # the window, as the DecaySchedule of then held it
            assert group["weight_decay"]["fields"]["windows"] == ((0, 10),)
            group["weight_decay"] = {"decaylab_schedule": "DecaySchedule", "module": "decaylab.train.schedules",
                                     "fields": {"weight_decay": 0.1, "kind": "early", "switch_step": 10}}
    torch.save(ckpt, path)
    resumed = train(CONFIG, data=data, checkpoint_dir=tmp_path, checkpoint_every=N, resume=True)
    assert_identical(whole, resumed)
