"""The monitor (hooks, intervals, records, stacked models, lifetime) and its sinks.

The monitor must never change training: runs with and without it are compared bitwise.
"""
from __future__ import annotations

import doctest
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from decaylab.diagnostics import base
from decaylab.diagnostics import monitor as monitor_module
from decaylab.diagnostics import sinks as sinks_module
from decaylab.diagnostics.base import Context, Instrument
from decaylab.diagnostics.mixing import AdamBufferMixing, coupled_l2_groups
from decaylab.diagnostics.monitor import Monitor
from decaylab.diagnostics.sinks import CSVSink, JSONLSink, TensorBoardSink, read_csv, read_jsonl
from decaylab.diagnostics.weights import AngularUpdate, DecayUnderflow, EffectiveLR, EMATimescale, WeightNorm
from decaylab.optim import SGD, Adam, AdamW


def mlp(seed: int = 0, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(dropout), nn.Linear(8, 2))


def train(model: nn.Module, opt, steps: int, monitor: Monitor | None = None, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    for _ in range(steps):
        x, y = torch.randn(6, 4, generator=gen).to(dtype), torch.randn(6, 2, generator=gen).to(dtype)
        loss = F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        if monitor is not None:
            monitor.log(loss=loss)
        opt.step()


class StepEcho(Instrument):
    """Records the step it sees; counts the calls of every hook."""

    def __init__(self, interval: int = 1, every_step: bool = False, needs_previous: bool = False):
        super().__init__(interval)
        self.every_step, self.needs_previous = every_step, needs_previous
        self.calls: dict[str, list[int]] = {"attach": [], "detach": [], "before": [], "after": [], "measure": []}
        self.previous_seen: list[dict[int, torch.Tensor]] = []

    def attach(self, ctx: Context) -> None:
        self.calls["attach"].append(ctx.step)

    def detach(self) -> None:
        self.calls["detach"].append(0)

    def before_step(self, ctx: Context) -> None:
        self.calls["before"].append(ctx.step)

    def after_step(self, ctx: Context) -> None:
        self.calls["after"].append(ctx.step)

    def measure(self, ctx: Context) -> dict:
        self.calls["measure"].append(ctx.step)
        if self.needs_previous:
            self.previous_seen.append({k: v.clone() for k, v in ctx.previous.items()})
        return {f"echo_{self.interval}": float(ctx.step)}


def test_doctests() -> None:
    for module in (monitor_module, sinks_module, base):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0, module.__name__


# --------------------------------------------------------------------------- hooks and intervals


def test_intervals_are_respected_and_steps_count_optimizer_steps() -> None:
    model = mlp()
    opt = AdamW(model.parameters(), lr=1e-2)
    instruments = [StepEcho(1), StepEcho(3), WeightNorm(interval=4, per_tensor=False), AngularUpdate(interval=5)]
    with Monitor(model, opt, instruments) as mon:
        train(model, opt, 10)
    assert [s for s, _ in mon.history("echo_1")] == list(range(1, 11))
    assert mon.history("echo_3") == [(3, 3.0), (6, 6.0), (9, 9.0)]
    assert [s for s, _ in mon.history("weight_norm/total")] == [4, 8]
    assert [s for s, _ in mon.history("angular_update/total")] == [5, 10]
    assert instruments[1].calls["measure"] == [3, 6, 9]


def test_snapshot_is_taken_only_before_sampled_steps_and_holds_the_weights_before(monkeypatch) -> None:
    model = mlp()
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    echo = StepEcho(interval=3, needs_previous=True)
    snapshots: list[int] = []
    mon = Monitor(model, opt, [echo])
    original = mon._take_snapshot
    monkeypatch.setattr(mon, "_take_snapshot", lambda step: (snapshots.append(step), original(step)))
    befores = []
    for step in range(1, 7):
        befores.append({id(p): p.detach().clone() for p in model.parameters()})
        train(model, opt, 1, seed=step)
    mon.close()
    assert snapshots == [3, 6]
    for seen, before in zip(echo.previous_seen, (befores[2], befores[5]), strict=True):
        assert seen.keys() == before.keys()
        assert all(torch.equal(seen[k], before[k]) for k in before)


def test_every_step_instruments_are_called_around_every_step() -> None:
    model = mlp()
    opt = AdamW(model.parameters(), lr=1e-2)
    echo = StepEcho(interval=2, every_step=True)
    with Monitor(model, opt, [echo]):
        train(model, opt, 4)
    assert echo.calls["attach"] == [0]
    assert echo.calls["before"] == [1, 2, 3, 4]  # the number the step will carry
    assert echo.calls["after"] == [1, 2, 3, 4]
    assert echo.calls["measure"] == [2, 4]
    assert echo.calls["detach"] == [0]


def test_attached_mid_run_counts_from_the_optimizer_steps() -> None:
    for make in (lambda ps: AdamW(ps, lr=1e-2), lambda ps: torch.optim.AdamW(ps, lr=1e-2),
                 lambda ps: SGD(ps, lr=0.1, momentum=0.9)):
        model = mlp()
        opt = make(model.parameters())
        train(model, opt, 3)
        with Monitor(model, opt, [StepEcho(2)]) as mon:
            train(model, opt, 3)
        assert [s for s, _ in mon.history("echo_2")] == [4, 6]


# --------------------------------------------------------------------------- records


def test_log_attaches_scalars_to_the_coming_step() -> None:
    model = mlp()
    opt = AdamW(model.parameters(), lr=1e-2)
    mon = Monitor(model, opt, [StepEcho(2)])
    losses = []
    gen = torch.Generator().manual_seed(0)
    for step in range(1, 4):
        loss = F.mse_loss(model(torch.randn(3, 4, generator=gen)), torch.zeros(3, 2))
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        mon.log(loss=loss, lr=opt.param_groups[0]["lr"], step_index=step)
        opt.step()
    mon.log(final=1.5)
    mon.close()
    assert mon.history("loss") == [(s, pytest.approx(v)) for s, v in zip((1, 2, 3), losses, strict=True)]
    assert mon.history("step_index") == [(1, 1.0), (2, 2.0), (3, 3.0)]
    assert mon.history("final") == [(3, 1.5)]  # pending at close: written at the current step
    assert all(set(r) == {"step", "metric", "value", "model"} and type(r["value"]) is float for r in mon.records)
    with pytest.raises(RuntimeError, match="closed"):
        mon.log(loss=1.0)


def test_history_errors() -> None:
    model = mlp()
    opt = AdamW(model.parameters(), lr=1e-2)
    with Monitor(model, opt, [WeightNorm()]) as mon:
        train(model, opt, 1)
    with pytest.raises(KeyError, match="did you mean"):
        mon.history("weight_norm/totl")
    assert "weight_norm/total" in mon.metrics


class PerModel(Instrument):
    def __init__(self, k: int, shape=None):
        super().__init__(1)
        self.k, self.shape = k, shape

    def measure(self, ctx: Context) -> dict:
        return {"per_model": torch.arange(self.k, dtype=torch.float32) + ctx.step,
                "shared": torch.tensor(0.5), "bad": torch.zeros(self.shape) if self.shape else 1}


def stacked_params(k: int = 3):
    torch.manual_seed(0)
    return [nn.Parameter(torch.randn(k, 4, 5)), nn.Parameter(torch.randn(k, 4))]


def test_stacked_values_become_one_record_per_model() -> None:
    k = 3
    params = stacked_params(k)
    opt = AdamW(params, lr=torch.full((k,), 1e-2), weight_decay=torch.tensor([0.0, 0.1, 0.2]))
    with Monitor(None, opt, [PerModel(k), WeightNorm()]) as mon:
        assert mon.stacked == k  # inferred from the (K,) hyperparameters
        for _ in range(2):
            for p in params:
                p.grad = torch.ones_like(p)
            mon.log(loss=torch.tensor([1.0, 2.0, 3.0]))
            opt.step()
    assert [r["model"] for r in mon.records if r["metric"] == "per_model" and r["step"] == 2] == [0, 1, 2]
    assert [mon.history("per_model", model=m) for m in range(k)] == [[(1, 1.0), (2, 2.0)], [(1, 2.0), (2, 3.0)],
                                                                    [(1, 3.0), (2, 4.0)]]
    assert mon.history("shared") == [(1, 0.5), (2, 0.5)]  # a scalar stays one record, model None
    assert mon.history("loss", model=2) == [(1, 3.0), (2, 3.0)]
    for m in range(k):
        want = torch.cat([p[m].detach().flatten() for p in params]).norm().item()
        assert mon.history("weight_norm/total", model=m)[-1][1] == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError, match="model="):
        mon.history("per_model")


def test_stacked_explicit_and_validation() -> None:
    params = stacked_params(3)
    opt = SGD(params, lr=0.1)  # scalar lr: stacking cannot be inferred
    with Monitor(None, opt, [PerModel(3)]) as mon:
        assert mon.stacked is None
    mon = Monitor(None, opt, [PerModel(3)], stacked=3)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    mon.close()
    assert len(mon.history("per_model", model=1)) == 1
    with pytest.raises(ValueError, match="stack 4 models"):
        Monitor(None, opt, [], stacked=4)
    with pytest.raises(ValueError, match="positive int"):
        Monitor(None, opt, [], stacked=0)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        mon = Monitor(None, opt, [PerModel(3, shape=(2,))], stacked=3)
        opt.step()
    mon.close()


def test_bad_inputs_get_clear_errors() -> None:
    model = mlp()
    opt = AdamW(model.parameters())
    with pytest.raises(ValueError, match="optimizer must be"):
        Monitor(model, model, [])
    with pytest.raises(ValueError, match="Instrument"):
        Monitor(model, opt, [lambda ctx: {}])
    with pytest.raises(ValueError, match="sinks"):
        Monitor(model, opt, [], sinks=["run.jsonl"])
    with pytest.raises(ValueError, match="interval"):
        WeightNorm(interval=0)

    class Wrong(Instrument):
        def measure(self, ctx):
            return {"text": "high"}

    mon = Monitor(model, opt, [Wrong()])
    with pytest.raises(ValueError, match="Wrong gave 'text'"):
        train(model, opt, 1)
    mon.close()


def test_a_failing_attach_detaches_the_instruments_attached_before() -> None:
    model = mlp()
    opt = AdamW(model.parameters())  # decoupled: AdamBufferMixing refuses it
    echo = StepEcho()
    hooks = len(opt._optimizer_step_post_hooks)
    with pytest.raises(ValueError, match="coupled L2"):
        Monitor(model, opt, [echo, AdamBufferMixing()])
    assert echo.calls["attach"] == [0] and echo.calls["detach"] == [0]
    assert len(opt._optimizer_step_post_hooks) == hooks


# --------------------------------------------------------------------------- lifetime


def test_close_removes_hooks_and_stops_recording() -> None:
    model = mlp()
    opt = AdamW(model.parameters(), lr=1e-2)
    pre, post = len(opt._optimizer_step_pre_hooks), len(opt._optimizer_step_post_hooks)
    mon = Monitor(model, opt, [AngularUpdate(), StepEcho(every_step=True)])
    assert len(opt._optimizer_step_pre_hooks) == pre + 1 and len(opt._optimizer_step_post_hooks) == post + 1
    train(model, opt, 2)
    n = len(mon.records)
    mon.close()
    mon.close()  # idempotent
    assert len(opt._optimizer_step_pre_hooks) == pre and len(opt._optimizer_step_post_hooks) == post
    train(model, opt, 2)
    assert len(mon.records) == n and mon.step == 2


def test_context_manager_closes_on_error(tmp_path) -> None:
    model = mlp()
    opt = AdamW(model.parameters(), lr=1e-2)
    sink = JSONLSink(tmp_path / "run.jsonl")
    with pytest.raises(RuntimeError, match="boom"), Monitor(model, opt, [WeightNorm()], [sink]) as mon:
        train(model, opt, 1)
        raise RuntimeError("boom")
    assert not opt._optimizer_step_post_hooks and sink._file.closed
    assert len(read_jsonl(tmp_path / "run.jsonl")) == len(mon.records) > 0


class RandomProbe(Instrument):
    """An expensive instrument that draws random numbers (like a Hutchinson probe)."""

    cheap = False

    def measure(self, ctx: Context) -> dict:
        return {"probe": torch.randn(100).abs().mean()}


def run(make_opt, dtype, monitored: bool, steps: int = 12):
    model = mlp(seed=0, dropout=0.3).to(dtype)
    opt = make_opt(model.parameters())
    torch.manual_seed(123)  # dropout and stochastic rounding draw from the global generator
    mon = None
    if monitored:
        instruments = [WeightNorm(), EffectiveLR(), AngularUpdate(interval=2), DecayUnderflow(),
                       RandomProbe(interval=3)]
        instruments.append(AdamBufferMixing(interval=2) if coupled_l2_groups(opt) else EMATimescale())
        mon = Monitor(model, opt, instruments)
    train(model, opt, steps, mon)
    if mon is not None:
        mon.close()
        assert len(mon.records) > steps
    return model, opt


@pytest.mark.parametrize(
    "make_opt, dtype",
    [
        (lambda ps: Adam(ps, lr=1e-2, weight_decay=0.1, decay="l2"), torch.float32),
        (lambda ps: AdamW(ps, lr=1e-2, weight_decay=0.1), torch.float32),
        (lambda ps: AdamW(ps, lr=1e-2, weight_decay=0.1, low_precision="stochastic"), torch.bfloat16),
        (lambda ps: SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.1, decay="decoupled"), torch.float64),
        (lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=0.1), torch.float32),
    ],
    ids=["adam-l2", "adamw", "adamw-bf16-stochastic", "sgdw", "torch-adam"],
)
def test_the_monitor_does_not_change_the_trajectory(make_opt, dtype) -> None:
    bare_model, bare_opt = run(make_opt, dtype, monitored=False)
    mon_model, mon_opt = run(make_opt, dtype, monitored=True)
    for a, b in zip(bare_model.parameters(), mon_model.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(bare_model.parameters(), mon_model.parameters(), strict=True):
        sa, sb = bare_opt.state[a], mon_opt.state[b]
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------- sinks


def records_run(sinks, stacked: bool = False) -> Monitor:
    if stacked:
        params = stacked_params(2)
        opt = AdamW(params, lr=torch.tensor([1e-2, 2e-2]), weight_decay=0.1)
        with Monitor(None, opt, [WeightNorm(), StepEcho(2)], sinks) as mon:
            for _ in range(3):
                for p in params:
                    p.grad = torch.ones_like(p)
                opt.step()
        return mon
    model = mlp()
    opt = AdamW(model.parameters(), lr=1e-2)
    with Monitor(model, opt, [WeightNorm(), AngularUpdate(interval=2), StepEcho(2)], sinks) as mon:
        train(model, opt, 4, mon)
    return mon


@pytest.mark.parametrize("stacked", [False, True])
def test_jsonl_and_csv_sinks_read_back(tmp_path, stacked) -> None:
    mon = records_run([JSONLSink(tmp_path / "a" / "run.jsonl"), CSVSink(tmp_path / "run.csv")], stacked)
    assert read_jsonl(tmp_path / "a" / "run.jsonl") == mon.records
    assert read_csv(tmp_path / "run.csv") == mon.records
    with open(tmp_path / "run.csv") as f:
        assert f.readline().strip() == "step,metric,value,model"
    assert {r["model"] for r in mon.records} == ({None, 0, 1} if stacked else {None})


def test_csv_and_jsonl_append(tmp_path) -> None:
    first = records_run([JSONLSink(tmp_path / "run.jsonl"), CSVSink(tmp_path / "run.csv")])
    second = records_run([JSONLSink(tmp_path / "run.jsonl", append=True), CSVSink(tmp_path / "run.csv", append=True)])
    assert read_jsonl(tmp_path / "run.jsonl") == first.records + second.records
    assert read_csv(tmp_path / "run.csv") == first.records + second.records


def test_sinks_keep_nan_and_inf(tmp_path) -> None:
    class Odd(Instrument):
        def measure(self, ctx):
            return {"nan": math.nan, "inf": torch.tensor(math.inf)}

    model = mlp()
    opt = AdamW(model.parameters())
    with Monitor(model, opt, [Odd()], [JSONLSink(tmp_path / "r.jsonl"), CSVSink(tmp_path / "r.csv")]):
        train(model, opt, 1)
    for records in (read_jsonl(tmp_path / "r.jsonl"), read_csv(tmp_path / "r.csv")):
        values = {r["metric"]: r["value"] for r in records}
        assert math.isnan(values["nan"]) and values["inf"] == math.inf


@pytest.mark.parametrize("stacked", [False, True])
def test_tensorboard_sink_reads_back(tmp_path, stacked) -> None:
    import tensorboard  # noqa: F401  (in the test extra: absent is a failure, not a skip)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    mon = records_run([TensorBoardSink(tmp_path / "tb")], stacked)
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    expected: dict[str, list[tuple[int, float]]] = {}
    for r in mon.records:
        tag = r["metric"] if r["model"] is None else f"{r['metric']}/model_{r['model']}"
        expected.setdefault(tag, []).append((r["step"], r["value"]))
    assert sorted(acc.Tags()["scalars"]) == sorted(expected)
    for tag, rows in expected.items():
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in rows]
        assert [v for _, v in got] == pytest.approx([v for _, v in rows], rel=1e-6)  # stored as float32
    if stacked:
        assert "weight_norm/total/model_1" in expected
