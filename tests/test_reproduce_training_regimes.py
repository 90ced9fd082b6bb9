"""Reproductions 4-6 (overtraining, undertraining, bf16): specs, verdict logic both ways on stores of
made-up runs, the two-stage effective-lr control, and the engine fields they added, through the
real training loop (the lr_factors and jacobian callbacks, optimizer="torch-adamw")."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

import decaylab.sweep
from decaylab.diagnostics import jacobian_norm
from decaylab.reproduce import get
from decaylab.reproduce import stats as S
from decaylab.reproduce.undertraining import control_label, spec_with_control
from decaylab.sweep import Store
from decaylab.train import TrainConfig, train, train_stacked
from decaylab.train.schedules import LRSchedule

NAMES = ("overtraining", "undertraining", "bf16")


def fill(path, spec, result, configs=None):
    """Register ``spec``'s runs (or ``configs``) in a store and finish each with ``result(label, config)``
    = (final, curves)."""
    store = Store(path)
    store.register(spec.name, spec.text, configs if configs is not None else spec.configs())
    while runs := store.claim(spec.name, 64, group=lambda run: 0):
        for run in runs:
            final, curves = result(run["label"], TrainConfig.from_dict(run["config"]))
            store.finish(run["id"], final, curves)
    store.close()
    return path


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


# ---------------------------------------------------------------------------------------------- undertraining


def _lm_result(end_with_decay=2.60, control_end=2.65):
    def result(label, c):
        decayed = c.weight_decay > 0
        control = label != "AdamW"
        mid = 3.0 + (0.2 if decayed else 0.0)
        end = end_with_decay if decayed else (control_end if control else 2.80)
        norm = 1.0 if decayed else 2.0
        noise = 0.002 * c.seed
        curves = []
        for step in range(c.eval_every, c.steps + 1, c.eval_every):
            frac = step / c.steps
            val = (mid + (end - mid) * (2 * frac - 1) if frac >= 0.5 else mid + (1 - 2 * frac)) + noise
            curves.append({"step": step, "val_loss": val, "train_loss": val - 0.05, "weight_norm": norm,
                           "effective_lr": 1e-3 / norm, "lr": 1e-3})
        last = curves[-1]
        return {"train_loss": last["train_loss"], "val_loss": last["val_loss"], "test_loss": last["val_loss"],
                "weight_norm": norm}, curves

    return result


def test_undertraining_control_factors_are_the_norm_ratio(tmp_path):
    spec = get("undertraining").spec()
    store = fill(tmp_path / "s.sqlite", spec, _lm_result())
    full = spec_with_control(store, spec)
    controls = [c for label, c in full.configs() if label == control_label(10.0)]
    assert len(controls) == 3 and {c.weight_decay for c in controls} == {0.0}
    # ‖w(λ=0)‖ / ‖w(λ=10)‖ = 2 at every evaluation, 1 at step 0
    assert controls[0].callbacks == ("lr_factors:" + ",".join(["1"] + ["2"] * (120 // 15)),)
    assert "[[methods]]" in full.text and spec.text.strip() in full.text
    assert len(full) == len(spec) + 3


def test_undertraining_control_needs_the_finished_runs(tmp_path):
    spec = get("undertraining").spec()
    some = [(label, c) for label, c in spec.configs() if c.weight_decay == 0]
    with pytest.raises(ValueError, match="finished"):
        spec_with_control(fill(tmp_path / "s.sqlite", spec, _lm_result(), some), spec)


@pytest.mark.parametrize("end_with_decay, control_end, held", [(2.60, 2.65, True), (2.90, 2.80, False),
                                                               (2.60, 2.78, False)])
def test_undertraining_verdict(tmp_path, end_with_decay, control_end, held):
    spec = get("undertraining").spec()
    result = _lm_result(end_with_decay, control_end)
    store = fill(tmp_path / "s.sqlite", spec, result)
    full = spec_with_control(store, spec)
    fill(store, full, result)  # the control runs: the others are already done
    v = get("undertraining").analyze(store, full, "small")
    assert v.held is held, v.line
    assert "step 60 and 120" in v.line and "3 seeds" in v.line
    assert v.numbers["parts"]["mid higher λ=10"] == "held"


def test_undertraining_runs_both_stages(tmp_path, monkeypatch):
    """The two-stage run trains the spec, adds the control, trains only the control, and judges."""
    real = decaylab.sweep.run_sweep
    calls = []
    fake_result = _lm_result()

    def fake_train(config, **_):
        final, curves = fake_result("control" if config.callbacks else "AdamW", config)
        return SimpleNamespace(config=config, final=final, curves=curves)

    def run_sweep(spec, store, **kwargs):
        summary = real(spec, store, stack=1, progress=False, train_fn=fake_train)
        calls.append((kwargs["stack"], summary.trained))
        return summary

    monkeypatch.setattr(decaylab.sweep, "run_sweep", run_sweep)
    v = get("undertraining").run(store=tmp_path / "s.sqlite", report=False, progress=False)
    assert calls == [(1, 9), (1, 3)]
    assert v.held is True, v.line
    sweeps = Store(tmp_path / "s.sqlite").sweeps()
    assert "lr_factors" in sweeps[0]["spec"]
    assert get("undertraining").spec().name == "reproduce-undertraining"  # back to the checked-in spec


# ---------------------------------------------------------------------------------------------- bf16


def _bf16_result(kahan_off=0.001, spike=True, torch_rounds=True):
    def result(label, c):
        decayed = c.weight_decay > 0
        curves = []
        for step in range(c.eval_every, 4 * c.eval_every + 1, c.eval_every):
            frac = step / (4 * c.eval_every)
            norm = 10.0 * (1 - 0.5 * frac) if decayed else 10.0
            if decayed and label == "bf16 torch AdamW" and torch_rounds:
                norm = 10.0  # the decay rounded away
            if decayed and label == "bf16 decaylab AdamW":
                norm *= 1 + kahan_off
            loss = 2.0 - frac + 0.001 * c.seed
            if spike and label == "bf16 autocast" and not decayed and frac == 0.75:
                loss += 3.0
            curves.append({"step": step, "weight_norm": norm, "train_loss": loss})
        last = curves[-1]
        return {"train_loss": last["train_loss"], "test_loss": 1.2, "weight_norm": last["weight_norm"]}, curves

    return result


def test_bf16_held(tmp_path):
    spec = get("bf16").spec()
    v = get("bf16").analyze(fill(tmp_path / "s.sqlite", spec, _bf16_result()), spec, "small")
    assert v.held is True, v.line
    assert v.numbers["torch_final_norm_ratio"]["mean"] == pytest.approx(2.0)
    assert v.numbers["decay_effect_norm_ratio"]["bf16 torch AdamW"]["mean"] == pytest.approx(1.0)
    assert v.numbers["decay_effect_norm_ratio"]["fp32"]["mean"] == pytest.approx(0.5)
    assert v.numbers["kahan_max_trajectory_deviation"] == pytest.approx(0.001)
    assert v.numbers["unstable_runs"]["bf16 autocast λ=0"] == 3


CASES = {"compensated update drifts": (_bf16_result(kahan_off=0.05), "rounding"),
         "torch keeps the decay": (_bf16_result(torch_rounds=False), "rounding"),
         "no divergence": (_bf16_result(spike=False), "stability")}


@pytest.mark.parametrize("case", list(CASES))
def test_bf16_not_held(tmp_path, case):
    spec = get("bf16").spec()
    result, part = CASES[case]
    v = get("bf16").analyze(fill(tmp_path / "s.sqlite", spec, result), spec, "small")
    assert v.held is False, v.line
    assert v.numbers[part] == "did not hold"


def test_unstable():
    from decaylab.reproduce.bf16 import unstable

    assert not unstable([(1, 2.0), (2, 1.5), (3, 1.6)], 1.6)
    assert unstable([(1, 2.0), (2, 1.0), (3, 1.6)], 1.6)
    assert unstable([(1, 2.0)], math.nan)


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
