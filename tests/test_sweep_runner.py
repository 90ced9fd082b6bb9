"""The sweep driver (decaylab.sweep.driver) with fake trainers: stacking, resume, failures, interrupts,
concurrency, SIGKILL, and its executors (in this process, in worker processes)."""
from __future__ import annotations

import collections
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_sweep_contract import config_class

from decaylab.sweep import Store, SweepAborted, load_spec, run_sweep
from decaylab.sweep.testing import FakeTrainer

SPEC = """
name = "small"
[base]
epochs = 1
[grid]
lr = { log = [1e-3, 1e-1], num = 3 }
weight_decay = [0.0, 0.1]
seed = [0, 1]
[[methods]]
label = "A"
decay = "decoupled"
[[methods]]
label = "B"
decay = "l2"
"""  # 2 methods × 12 runs


def spec(text=SPEC):
    return load_spec(text, config_class=config_class())


class Counting(FakeTrainer):
    """Records every config each trainer was called with, in this process."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seen: list[str] = []
        self.group_sizes: list[int] = []

    def _begin(self, configs):
        super()._begin(configs)
        self.seen.extend(c.key() for c in configs)
        self.group_sizes.append(len(configs))


def sweep(store, trainer, text=SPEC, **kwargs):
    return run_sweep(spec(text), store, train_fn=trainer.train, train_stacked_fn=trainer.train_stacked,
                     progress=False, **kwargs)


def test_stacked_sweep_and_resume(tmp_path):
    path = tmp_path / "runs.sqlite"
    first = Counting()
    summary = sweep(path, first, stack=5, limit=10)
    assert (summary.total, summary.trained, summary.skipped, summary.remaining) == (24, 10, 0, 14)
    assert first.group_sizes == [4, 4, 2]  # A's 12 runs in even parts of <= 5, the limit cutting the third
    second = Counting()
    summary = sweep(path, second, stack=5)
    assert (summary.trained, summary.skipped, summary.remaining, summary.failed) == (14, 10, 0, 0)
    assert not set(first.seen) & set(second.seen)  # no finished run is trained again
    assert sorted(first.seen + second.seen) == sorted(c.key() for _, c in spec().configs())
    store = Store(path)
    runs = store.runs("small")
    assert all(r["status"] == "done" for r in runs) and len(runs) == 24
    assert collections.Counter(r["label"] for r in runs) == {"A": 12, "B": 12}
    assert len(store.curves(runs[0]["id"])["test_loss"]) == 3
    third = Counting()
    assert sweep(path, third).trained == 0 and third.seen == []


def test_no_stack_uses_train_fn(tmp_path):
    trainer = Counting()
    calls = []
    summary = run_sweep(spec(), tmp_path / "runs.sqlite", stack=1, progress=False,
                        train_fn=lambda c: calls.append(c) or trainer.train(c),
                        train_stacked_fn=lambda cs: pytest.fail("train_stacked_fn used with stack=1"))
    assert summary.trained == 24 and len(calls) == 24 and set(trainer.group_sizes) == {1}


def test_failed_group_keeps_the_rest(tmp_path, capsys):
    path = tmp_path / "runs.sqlite"
    trainer = Counting(fail_lrs=(0.01,))
    summary = sweep(path, trainer, stack=1, max_failed_groups=5)  # one at a time: the runs with lr = 0.01 fail
    assert (summary.trained, summary.failed) == (16, 8)
    assert "fake failure for lr=0.01" in capsys.readouterr().err
    store = Store(path)
    failed = store.runs("small", "failed")
    assert {r["config"]["lr"] for r in failed} == {0.01} and len(failed) == 8
    assert "ValueError: fake failure for lr=0.01" in failed[0]["error"] and "Traceback" in failed[0]["error"]
    assert sweep(path, Counting()).trained == 0  # failed runs are not retried by default...
    retry = Counting()
    assert sweep(path, retry, retry_failed=True).trained == 8  # ...but on request
    assert {c for c in retry.seen} == {r["key"] for r in failed}
    assert store.counts("small")["done"] == 24


def test_failing_trainer_aborts_after_groups_in_a_row(tmp_path):
    path = tmp_path / "runs.sqlite"
    with pytest.raises(SweepAborted, match=r"3 groups in a row failed \(last: ValueError: fake failure"):
        sweep(path, FakeTrainer(fail_lrs=(0.001, 0.01, 0.1)), stack=4)
    assert Store(path).counts("small") == {"pending": 12, "running": 0, "done": 0, "failed": 12}


def test_bad_result_fails_only_that_run(tmp_path):
    class BadCurves(FakeTrainer):
        def train_stacked(self, configs, **kwargs):
            results = super().train_stacked(configs)
            results[0].curves = [{"step": "one", "test_loss": 1.0}]
            return results

    path = tmp_path / "runs.sqlite"
    summary = sweep(path, BadCurves(), stack=12)
    assert (summary.trained, summary.failed) == (22, 2)
    assert "curves[0]['step'] must be an integer" in Store(path).runs(status="failed")[0]["error"]

    class TooFew(FakeTrainer):
        def train_stacked(self, configs, **kwargs):
            return super().train_stacked(configs)[1:]

    summary = sweep(tmp_path / "few.sqlite", TooFew(), stack=12, max_failed_groups=5)
    assert summary.failed == 24
    assert "returned 11 results for 12 configs" in Store(tmp_path / "few.sqlite").runs()[0]["error"]


def test_keyboard_interrupt_returns_runs_to_pending(tmp_path):
    path = tmp_path / "runs.sqlite"
    with pytest.raises(KeyboardInterrupt):
        sweep(path, FakeTrainer(interrupt_after=2), stack=4)
    assert Store(path).counts("small") == {"pending": 16, "running": 0, "done": 8, "failed": 0}
    assert sweep(path, Counting()).trained == 16


@pytest.mark.parametrize("kwargs, match", [
    ({"stack": 0}, "stack must be an integer >= 1, got 0"),
    ({"stack": 2.5}, "stack must be an integer >= 1, got 2.5"),
    ({"limit": 0}, "limit must be an integer >= 1 or None, got 0"),
    ({"heartbeat_every": 0}, "heartbeat_every must be a number of seconds > 0"),
])
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        sweep(tmp_path / "runs.sqlite", FakeTrainer(), **kwargs)
    assert not (tmp_path / "runs.sqlite").exists()  # nothing touched


def test_progress_bar_shows_running_method(tmp_path, capsys):
    sweep_text = SPEC.replace('"small"', '"bar"')
    run_sweep(spec(sweep_text), tmp_path / "runs.sqlite", stack=12, progress=True,
              train_stacked_fn=FakeTrainer().train_stacked)
    err = capsys.readouterr().err
    assert "bar:" in err and "24/24" in err and "A ×12" in err and "B ×12" in err


def _sweep_worker(path, barrier, log):
    loaded = spec()  # the slow part (imports) before both start
    barrier.wait()
    run_sweep(loaded, path, stack=2, progress=False, train_stacked_fn=FakeTrainer(delay=0.05, log=log).train_stacked)


def read_log(path: Path) -> list[tuple[int, str]]:
    if not path.exists():
        return []
    return [(int(pid), key) for pid, key in (line.split() for line in path.read_text().splitlines())]


def test_two_processes_sweep_one_store(tmp_path):
    path, log = tmp_path / "runs.sqlite", tmp_path / "calls.log"
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_sweep_worker, args=(str(path), barrier, str(log))) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    calls = read_log(log)
    keys = [key for _, key in calls]
    assert len(keys) == len(set(keys)) == 24  # every run trained once, by one of the two
    assert len({pid for pid, _ in calls}) == 2  # and both did work
    store = Store(path)
    assert store.counts("small") == {"pending": 0, "running": 0, "done": 24, "failed": 0}
    assert all(len(store.curves(r["id"])["test_acc"]) == 3 for r in store.runs())


KILLED_SWEEP = """
import sys
from test_sweep_contract import config_class
from decaylab.sweep import load_spec, run_sweep
from decaylab.sweep.testing import FakeTrainer
spec = load_spec(sys.argv[1], config_class=config_class())
run_sweep(spec, sys.argv[2], stack=2, progress=False,
          train_stacked_fn=FakeTrainer(delay=0.15, log=sys.argv[3]).train_stacked)
"""


def test_sigkill_and_resume(tmp_path):
    spec_path, path = tmp_path / "small.toml", tmp_path / "runs.sqlite"
    spec_path.write_text(SPEC)
    log1, log2 = tmp_path / "killed.log", tmp_path / "resumed.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_SWEEP, str(spec_path), str(path), str(log1)], env=env)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if path.exists() and Store(path).counts("small")["done"] >= 6:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the sweep finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    store = Store(path)
    done_before = {r["key"] for r in store.runs("small", "done")}
    assert 6 <= len(done_before) < 24
    assert {key for _, key in read_log(log1)} >= done_before

    resumed = FakeTrainer(log=str(log2))
    summary = run_sweep(spec(), path, stack=2, progress=False, train_stacked_fn=resumed.train_stacked)
    redone = [key for _, key in read_log(log2)]
    assert not set(redone) & done_before  # no finished run is trained again
    assert len(redone) == len(set(redone)) == 24 - len(done_before) == summary.trained
    runs = store.runs("small")
    assert [r["status"] for r in runs] == ["done"] * 24 and not store.runs(status="running")
    assert all(len(store.curves(r["id"])["test_loss"]) == 3 for r in runs)  # each done exactly once


# ---------------------------------------------------------------------------------------------- worker processes


class KillsItsWorker(FakeTrainer):
    """Kills the process it trains in (SIGKILL, as the out-of-memory killer would) for configs with lr ``kill_lr``."""

    def __init__(self, kill_lr: float, **kwargs):
        super().__init__(**kwargs)
        self.kill_lr = kill_lr

    def _begin(self, configs):
        super()._begin(configs)
        if any(abs(c.lr - self.kill_lr) < 1e-12 for c in configs):
            os.kill(os.getpid(), signal.SIGKILL)


def test_worker_processes_train_every_run_once(tmp_path):
    path, log = tmp_path / "runs.sqlite", tmp_path / "calls.log"
    trainer = FakeTrainer(delay=0.05, log=str(log))
    summary = sweep(path, trainer, stack=2, processes=2, limit=20)  # a limit works with processes too
    assert (summary.trained, summary.remaining) == (20, 4)
    summary = sweep(path, trainer, stack=2, processes=2)
    assert (summary.trained, summary.skipped, summary.remaining) == (4, 20, 0)
    calls = read_log(log)
    keys = [key for _, key in calls]
    assert len(keys) == len(set(keys)) == 24  # every run trained once
    assert os.getpid() not in {pid for pid, _ in calls} and len({pid for pid, _ in calls}) >= 2  # by the workers
    store = Store(path)
    assert all(r["final"] is not None and len(store.curves(r["id"])["test_acc"]) == 3 for r in store.runs("small"))


def test_a_dead_worker_counts_a_death_and_its_group_is_failed_after_three(tmp_path, capsys):
    path = tmp_path / "runs.sqlite"
    summary = sweep(path, KillsItsWorker(kill_lr=0.01), stack=4, processes=2, max_failed_groups=10)
    assert (summary.trained, summary.failed, summary.remaining) == (16, 8, 0)  # lr = 0.01's runs, 3 deaths each
    store = Store(path)
    failed = store.runs("small", "failed")
    assert {r["config"]["lr"] for r in failed} == {0.01} and all(r["deaths"] == 3 for r in failed)
    assert "died 3 times" in failed[0]["error"] and "exit code -9" in failed[0]["error"]
    assert "go back to pending" in capsys.readouterr().err
    assert store.counts("small")["running"] == 0


def test_an_interrupted_driver_stops_its_workers_and_gives_their_runs_back(tmp_path, monkeypatch):
    from decaylab.sweep import ProcessExecutor

    path = tmp_path / "runs.sqlite"
    real_wait, waits = ProcessExecutor.wait, [0]

    def wait(self, bar):  # Ctrl-C in the driver on its third wait, with two groups in flight
        waits[0] += 1
        if waits[0] == 3:
            raise KeyboardInterrupt
        return real_wait(self, bar)

    monkeypatch.setattr(ProcessExecutor, "wait", wait)
    with pytest.raises(KeyboardInterrupt):
        sweep(path, FakeTrainer(delay=0.3), stack=4, processes=2)
    counts = Store(path).counts("small")
    assert counts == {"pending": 16, "running": 0, "done": 8, "failed": 0}  # two groups of 4 were written
