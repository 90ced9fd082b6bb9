"""Reproductions 4-6 (overtraining, undertraining, bf16): their specs load, and the engine fields they
added, through the real training loop (the lr_factors and jacobian callbacks, optimizer="torch-adamw").
The verdict logic of each is tested in its own file (tests/test_reproduce_NAME.py)."""
from __future__ import annotations

import pytest
import torch

from decaylab.diagnostics import jacobian_norm
from decaylab.reproduce import get
from decaylab.reproduce import stats as S
from decaylab.train import TrainConfig, train, train_stacked
from decaylab.train.schedules import LRSchedule

NAMES = ("overtraining", "undertraining", "bf16")


# ---------------------------------------------------------------------------------------------- specs


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("scale", ["small", "paper"])
def test_spec_loads_with_three_seeds_per_cell(name, scale):
    spec = get(name).spec(scale)
    assert spec.name == f"reproduce-{name}" + ("" if scale == "small" else "-paper")
    cells: dict = {}
    for label, config in spec.configs():
        cells.setdefault((label, config.lr, config.weight_decay, config.precision), set()).add(config.seed)
    assert cells and all(len(seeds) >= 3 for seeds in cells.values())


def test_listed_with_claims_and_sources():
    from decaylab.reproduce import describe

    text = describe(list(NAMES))
    for name in NAMES:
        assert f"{name} — " in text
    assert "Why do we need weight decay" in text


# ---------------------------------------------------------------------------------------------- statistics


def test_decide_and_combine():
    a, b = S.Stat.of([1.0, 1.1, 0.9]), S.Stat.of([2.0, 2.1, 1.9])
    assert S.decide(b.mean - a.mean, S.spread(a, b)) is True
    assert S.decide(a.mean - b.mean, S.spread(a, b)) is False
    assert S.decide(0.01, S.spread(a, b)) is None
    assert S.combine([True, True]) is True and S.combine([True, None]) is None and S.combine([None, False]) is False
    assert S.Stat.of([1.0, float("nan")]).text() == "diverged"


# overtraining: tests/test_reproduce_overtraining.py


# undertraining and bf16: their verdict logic is tested in tests/test_reproduce_undertraining.py and
# tests/test_reproduce_bf16.py.


# ---------------------------------------------------------------------------------------------- engine fields

TINY = TrainConfig(steps=12, batch_size=32, eval_every=4, lr=3e-3, schedule="constant")


def test_lr_factors_interpolate_over_the_run():
    s = LRSchedule("cosine", total_steps=9, factors=(1.0, 3.0, 0.0))
    plain = LRSchedule("cosine", total_steps=9)
    expected = [1.0, 1.5, 2.0, 2.5, 3.0, 2.25, 1.5, 0.75, 0.0]
    assert [s(t) for t in range(9)] == pytest.approx([plain(t) * f for t, f in enumerate(expected)])


def test_lr_factors_in_the_training_loop():
    result = train(TINY.replace(callbacks=("lr_factors:1,0.5,0",)))
    # the lr of each evaluation's last step: factors at steps 3, 7, 11 of 0..11
    assert [p["lr"] for p in result.curves] == pytest.approx([3e-3 * (1 - 0.5 * t / 5.5) for t in (3, 7, 11)])
    # zero lr throughout: Adam and the lr-scaled decay leave the weights where they started
    frozen = train(TINY.replace(callbacks=("lr_factors:0,0",), weight_decay=0.1))
    torch.manual_seed(0)
    from decaylab.train.data import build_model, load_data

    start = build_model(TINY, load_data(TINY, None))
    norm0 = torch.sqrt(sum(p.detach().double().square().sum() for p in start.parameters()))
    assert frozen.final["weight_norm"] == pytest.approx(float(norm0), rel=1e-7)


@pytest.mark.parametrize("bad", ["lr_factors:1", "lr_factors:1,-0.5", "lr_factors:1,inf", "lr_factors:1,x"])
def test_lr_factors_rejects(bad):
    with pytest.raises(ValueError, match="lr_factors"):
        TrainConfig(callbacks=(bad,))


def test_lr_factors_key_only_when_set():
    assert TrainConfig().key() == TrainConfig(callbacks=()).key() != TrainConfig(callbacks=("lr_factors:1,2",)).key()
    # the key an old store gave a run with the lr_factors field
    assert TrainConfig(callbacks=("lr_factors:1,2",)).key() == TrainConfig.from_dict({"lr_factors": [1.0, 2.0]}).key()


def test_jacobian_probe_final_metric():
    result = train(TINY.replace(callbacks=("jacobian:16",)))
    from decaylab.train.data import load_data

    x = load_data(TINY, None).x_test[:16]
    assert result.final["jacobian_norm"] == pytest.approx(jacobian_norm(result.model, x), rel=1e-5)
    stacked = train_stacked([TINY.replace(callbacks=("jacobian:16",), seed=s) for s in (0, 1)])
    # the same model up to summation order in the stacked forward (Adam magnifies it a little)
    assert stacked[0].final["jacobian_norm"] == pytest.approx(result.final["jacobian_norm"], rel=2e-3)
    with pytest.raises(ValueError, match="jacobian:4 is for classifiers"):
        TrainConfig(model="gpt-micro", dataset="pystdlib-text", callbacks=("jacobian:4",))


def test_torch_adamw_matches_decaylab_adamw_in_fp32():
    c = TINY.replace(weight_decay=0.5, schedule="cosine")
    ours, torchs = train(c), train(c.replace(optimizer="torch-adamw"))
    assert torchs.final["weight_norm"] == pytest.approx(ours.final["weight_norm"], rel=1e-5)
    assert torchs.final["test_loss"] == pytest.approx(ours.final["test_loss"], rel=1e-5)
    # stacked over seeds it is K independent AdamWs
    stacked = train_stacked([c.replace(optimizer="torch-adamw", seed=s) for s in (0, 1)])
    assert stacked[0].final["weight_norm"] == pytest.approx(torchs.final["weight_norm"], rel=1e-5)


def test_torch_adamw_in_bf16_loses_the_decay_and_decaylab_keeps_it():
    # lr·λ = 1e-3 < 2⁻⁹: torch's bf16 write w·(1 − lr·λ) rounds back to w, so λ changes nothing at all
    c = TINY.replace(lr=1e-3, weight_decay=1.0, precision="bf16", steps=20)
    torch_on, torch_off = train(c.replace(optimizer="torch-adamw")), train(c.replace(optimizer="torch-adamw",
                                                                                    weight_decay=0.0))
    assert torch_on.final["weight_norm"] == torch_off.final["weight_norm"]
    ours_on, ours_off = train(c), train(c.replace(weight_decay=0.0))
    fp32_on, fp32_off = train(c.replace(precision="fp32")), train(c.replace(precision="fp32", weight_decay=0.0))
    shrink_fp32 = fp32_on.final["weight_norm"] / fp32_off.final["weight_norm"]
    assert shrink_fp32 < 0.995
    assert ours_on.final["weight_norm"] / ours_off.final["weight_norm"] == pytest.approx(shrink_fp32, abs=2e-3)


def test_torch_adamw_rules():
    with pytest.raises(ValueError, match="decay must be 'decoupled'"):
        TrainConfig(optimizer="torch-adamw", decay="prox")
    with pytest.raises(ValueError, match="decay_window:0-0.5 needs decaylab's optimizer"):
        TrainConfig(optimizer="torch-adamw", callbacks=("decay_window:0-0.5",))
    a = TrainConfig(optimizer="torch-adamw", lr=1e-3)
    assert a.stack_key() != a.replace(lr=1e-2).stack_key()
    assert a.stack_key() == a.replace(seed=3).stack_key()
    assert TrainConfig(lr=1e-3).stack_key() == TrainConfig(lr=1e-2).stack_key()
