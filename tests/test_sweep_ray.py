"""decaylab.sweep on Ray (run_sweep_ray, ``decaylab sweep --backend ray``) on a local 2-worker Ray instance.

One Ray instance serves the whole module (it takes ~10 s to start on 2 cores). The trainers are
the real decaylab.train (same store contents as the local backend) and FakeTrainer subclasses
defined here, pickled by value for the workers (which cannot import this test module).
"""
from __future__ import annotations

import collections
import math
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import ray
from test_sweep_integration import SPEC as TINY_SPEC
from test_sweep_runner import SPEC as SMALL_SPEC

from decaylab.cli import main as sweep_cli
from decaylab.store import process_alive
from decaylab.sweep import Store, SweepAborted, load_spec, run_sweep
from decaylab.sweep.ray_backend import check_reachable, run_sweep_ray
from decaylab.sweep.testing import FakeTrainer, fake_metrics
from decaylab.train import TrainConfig

REAL = TINY_SPEC  # 2 methods × 4 runs of the real trainer, 12 steps each
FAKE = SMALL_SPEC.replace('name = "small"', 'name = "fake"')  # 2 methods × 12 runs for FakeTrainer (never trained)


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """A local Ray instance with 2 CPUs, so 2 workers (one group each) for the whole module."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # KillOnce, KillAlways
    yield
    ray.shutdown()


class KillOnce(FakeTrainer):
    """Kills its own worker process (SIGKILL) the first time it trains a config with lr ``kill_lr``
    while ``marker`` exists (removing it first), so Ray's retry of that group succeeds."""

    def __init__(self, marker: str, kill_lr: float, **kwargs):
        super().__init__(**kwargs)
        self.marker, self.kill_lr = marker, kill_lr

    def _begin(self, configs):
        super()._begin(configs)
        if any(math.isclose(c.lr, self.kill_lr) for c in configs) and os.path.exists(self.marker):
            os.remove(self.marker)
            os.kill(os.getpid(), signal.SIGKILL)


class KillAlways(FakeTrainer):
    """Kills its worker every time it trains a config with decay form ``kill_decay``."""

    def __init__(self, kill_decay: str, **kwargs):
        super().__init__(**kwargs)
        self.kill_decay = kill_decay

    def _begin(self, configs):
        super()._begin(configs)
        if any(c.decay == self.kill_decay for c in configs):
            os.kill(os.getpid(), signal.SIGKILL)


def fake_sweep(path, trainer, **kwargs):
    kwargs.setdefault("stack", 4)
    return run_sweep_ray(load_spec(FAKE), path, train_fn=trainer.train, train_stacked_fn=trainer.train_stacked,
                         progress=False, **kwargs)


def trained_log(log) -> list[tuple[int, str]]:
    """(pid, run key) per config trained, from FakeTrainer's log file."""
    lines = log.read_text().split("\n") if log.exists() else []
    return [(int(pid), key) for pid, key in (line.split() for line in lines if line)]


def test_same_store_contents_as_the_local_backend(tmp_path):
    spec = load_spec(REAL)
    local = run_sweep(spec, tmp_path / "local.sqlite", stack=2, progress=False)
    remote = run_sweep_ray(spec, tmp_path / "ray.sqlite", stack=2, workers=2, progress=False)
    assert (remote.trained, remote.failed, remote.remaining) == (local.trained, local.failed, 0) == (8, 0, 0)
    a, b = Store(tmp_path / "local.sqlite"), Store(tmp_path / "ray.sqlite")
    runs_a, runs_b = a.runs("tiny"), b.runs("tiny")
    assert [(r["key"], r["label"], r["config"], r["status"]) for r in runs_a] == \
           [(r["key"], r["label"], r["config"], r["status"]) for r in runs_b]
    for ra, rb in zip(runs_a, runs_b, strict=True):
        # Bitwise equal: the workers train with 1 torch thread, this process with 2; the tiny
        # MLP's kernels give the same floats either way.
        fa = {k: v for k, v in ra["final"].items() if k != "wall_s"}
        fb = {k: v for k, v in rb["final"].items() if k != "wall_s"}
        assert fa == fb and math.isfinite(fa["test_loss"]), ra["label"]
        assert a.curves(ra["id"]) == b.curves(rb["id"])
    assert b.counts("tiny") == {"pending": 0, "running": 0, "done": 8, "failed": 0}
    assert b.runs("tiny")[0]["final"]["wall_s"] > 0


def test_a_killed_worker_loses_only_its_group_which_is_retried(tmp_path):
    path, log, marker = tmp_path / "runs.sqlite", tmp_path / "trained.log", tmp_path / "kill-me"
    marker.touch()
    trainer = KillOnce(str(marker), kill_lr=1e-2, delay=0.3, log=str(log))
    summary = fake_sweep(path, trainer, workers=2)
    assert not marker.exists()  # a worker really killed itself
    assert (summary.trained, summary.failed, summary.remaining) == (24, 0, 0)
    store = Store(path)
    assert store.counts("fake") == {"pending": 0, "running": 0, "done": 24, "failed": 0}
    for run in store.runs("fake"):
        assert run["final"] == fake_metrics(TrainConfig.from_dict(run["config"]))
    calls = trained_log(log)
    times = collections.Counter(key for _, key in calls)
    killed = {key for key, n in times.items() if n > 1}
    # Only the killed group ran twice (its 4 runs with lr = 1e-2 of one method), in two processes;
    # every other run (the other worker's groups in flight included) trained once.
    assert len(killed) == 4 and set(times.values()) == {1, 2} and len(times) == 24
    assert all(r["config"]["lr"] == pytest.approx(1e-2) for r in store.runs("fake") if r["key"] in killed)
    assert all(len({pid for pid, key in calls if key == k}) == 2 for k in killed)
    first = next(pid for pid, key in calls if key in killed)
    assert not process_alive(first)  # the worker that took the group first was really killed


def test_a_worker_that_always_dies_fails_its_group_after_the_retries(tmp_path):
    path, log = tmp_path / "runs.sqlite", tmp_path / "trained.log"
    summary = fake_sweep(path, KillAlways("l2", log=str(log)), stack=12, max_retries=1)
    assert (summary.trained, summary.failed, summary.remaining) == (12, 12, 0)
    store = Store(path)
    failed = store.runs("fake", "failed")
    assert {r["label"] for r in failed} == {"B"} and len(failed) == 12
    assert all("worker died" in r["error"] for r in failed), failed[0]["error"]
    tries = collections.Counter(key for _, key in trained_log(log))
    assert {tries[r["key"]] for r in failed} == {2}  # tried once and retried once (max_retries=1)
    # --retry-failed runs them again; with a trainer that works, the sweep ends complete.
    summary = fake_sweep(path, FakeTrainer(), retry_failed=True)
    assert (summary.trained, summary.skipped, summary.remaining) == (12, 12, 0)


def test_a_trainer_exception_fails_its_group_at_once(tmp_path):
    path, log = tmp_path / "runs.sqlite", tmp_path / "trained.log"
    summary = fake_sweep(path, FakeTrainer(fail_lrs=(1e-3,), log=str(log)))
    assert (summary.trained, summary.failed) == (16, 8)
    failed = Store(path).runs("fake", "failed")
    assert all("fake failure for lr=0.001" in r["error"] for r in failed)
    assert all(n == 1 for n in collections.Counter(key for _, key in trained_log(log)).values())  # not retried
    with pytest.raises(SweepAborted, match="3 groups in a row failed"):
        fake_sweep(tmp_path / "broken.sqlite", FakeTrainer(fail_lrs=(1e-3, 1e-2, 1e-1)), workers=1)
    assert Store(tmp_path / "broken.sqlite").counts("fake")["running"] == 0


def test_limit_and_resume(tmp_path):
    path = tmp_path / "runs.sqlite"
    summary = fake_sweep(path, FakeTrainer(), limit=10, stack=3)
    assert summary.trained == 10 and summary.remaining == 14
    summary = fake_sweep(path, FakeTrainer(), stack=3)
    assert (summary.trained, summary.skipped, summary.remaining) == (14, 10, 0)
    assert fake_sweep(path, FakeTrainer()).trained == 0


def test_progress_bar(tmp_path, capsys):
    trainer = FakeTrainer(delay=0.2)
    run_sweep_ray(load_spec(FAKE), tmp_path / "runs.sqlite", stack=4, train_fn=trainer.train,
                  train_stacked_fn=trainer.train_stacked, progress=True)
    err = capsys.readouterr().err
    assert "24/24" in err and "A ×4, A ×4" in err  # two groups in flight, named on the bar


def test_interrupt_cancels_and_returns_runs_in_flight_to_pending(tmp_path, monkeypatch):
    path = tmp_path / "runs.sqlite"
    waits = [0]
    real_wait = ray.wait

    def wait(*args, **kwargs):  # Ctrl-C in the driver on its third wait, with two groups in flight
        waits[0] += 1
        if waits[0] == 3:
            raise KeyboardInterrupt
        return real_wait(*args, **kwargs)

    monkeypatch.setattr(ray, "wait", wait)
    with pytest.raises(KeyboardInterrupt):
        fake_sweep(path, FakeTrainer(delay=0.2), workers=2)
    counts = Store(path).counts("fake")
    assert counts == {"pending": 16, "running": 0, "done": 8, "failed": 0}  # two groups of 4 were written
    monkeypatch.setattr(ray, "wait", real_wait)
    summary = fake_sweep(path, FakeTrainer())
    assert (summary.trained, summary.skipped, summary.remaining) == (16, 8, 0)


DRIVER = """
import sys
from decaylab.sweep import load_spec
from decaylab.cli._args import stop_on_sigterm
from decaylab.sweep.ray_backend import run_sweep_ray
from decaylab.sweep.testing import FakeTrainer

trainer = FakeTrainer(delay=1.0)
spec, store = sys.argv[1:]
try:
    with stop_on_sigterm():  # what `decaylab sweep` does: SIGTERM stops the sweep like Ctrl-C
        run_sweep_ray(load_spec(open(spec).read()), store, stack=4, workers=2, train_fn=trainer.train,
                      train_stacked_fn=trainer.train_stacked, progress=False)
except KeyboardInterrupt:
    sys.exit(130)
"""


def test_sigterm_to_the_driver_returns_runs_in_flight_to_pending(tmp_path):
    """A real driver process (its own ray.init) stopped by SIGTERM mid-sweep: ray.init's own
    SIGTERM handler (which aborts) must not replace the CLI's."""
    spec_path, path = tmp_path / "fake.toml", tmp_path / "runs.sqlite"
    spec_path.write_text(FAKE)
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(spec_path), str(path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.2)
            if path.exists() and Store(path).counts("fake")["done"] >= 4:
                break
        driver.send_signal(signal.SIGTERM)
        err = driver.communicate(timeout=60)[1]
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 130, err[-3000:]
    counts = Store(path).counts("fake")
    assert counts["running"] == 0 and counts["failed"] == 0 and 4 <= counts["done"] < 24, counts
    assert counts["pending"] == 24 - counts["done"]


def test_heartbeats_keep_runs_in_flight_leased(tmp_path):
    path = tmp_path / "runs.sqlite"
    done = threading.Event()
    thread = threading.Thread(target=lambda: (fake_sweep(path, FakeTrainer(delay=2.0), stack=12, workers=2,
                                                         heartbeat_every=0.2), done.set()))
    thread.start()
    renewed = 0.0  # how long after its claim a running run's lease was last renewed
    try:
        watcher = Store(path)
        deadline = time.monotonic() + 60
        while not done.is_set() and time.monotonic() < deadline:
            time.sleep(0.1)
            rows = watcher._conn.execute("SELECT l.heartbeat - r.started FROM leases l JOIN runs r ON r.id = l.run_id "
                                         "WHERE r.status = 'running'").fetchall()
            renewed = max([renewed] + [age for (age,) in rows])
    finally:
        thread.join(timeout=60)
    assert done.is_set()
    assert renewed > 0.5  # the driver renewed the leases of both groups in flight while they trained
    assert Store(path).counts("fake")["done"] == 24


def test_cli_backend_ray(tmp_path, capsys):
    spec_path, path = tmp_path / "tiny.toml", tmp_path / "runs.sqlite"
    spec_path.write_text(REAL)
    code = sweep_cli(["sweep", str(spec_path), "--store", str(path), "--backend", "ray", "--workers", "2",
                      "--stack", "2", "--limit", "4", "--quiet"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "on Ray (a local instance)" in err and "4 trained" in err
    assert Store(path).counts("tiny") == {"pending": 4, "running": 0, "done": 4, "failed": 0}
    assert sweep_cli(["sweep", str(spec_path), "--store", str(path), "--address", "auto"]) == 2
    assert "--address needs --backend ray" in capsys.readouterr().err


def test_an_address_where_nothing_listens_fails_at_once():
    started = time.monotonic()
    with pytest.raises(ConnectionError, match="no Ray cluster answers at ray://127.0.0.1:1"):
        check_reachable("ray://127.0.0.1:1")
    with pytest.raises(ConnectionError, match="127.0.0.1:1"):
        check_reachable("127.0.0.1:1")
    assert time.monotonic() - started < 5  # (ray.init would retry for many minutes)
    port = ray.get_runtime_context().gcs_address.rsplit(":", 1)[1]
    check_reachable(f"127.0.0.1:{port}")  # the fixture's instance answers


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"workers": 0}, "workers must be an integer >= 1"),
    ({"num_cpus": -1}, "num_cpus must be a number >= 0"),
    ({"num_gpus": "one"}, "num_gpus must be a number >= 0 or None"),
    ({"max_retries": -1}, "max_retries must be an integer >= 0"),
    ({"address": ""}, "address must be a Ray address"),
    ({"stack": 0}, "stack must be an integer >= 1"),
])
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fake_sweep(tmp_path / "runs.sqlite", FakeTrainer(), **kwargs)
