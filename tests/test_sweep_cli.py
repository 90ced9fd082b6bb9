"""decaylab sweep / decaylab status: argument parsing, the commands, and the status table."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from test_sweep_contract import config_class

from decaylab.cli import build_parser, main
from decaylab.sweep import Store, format_status, status_rows
from decaylab.sweep.testing import FakeTrainer

SPEC = """
name = "cli"
[grid]
lr = [0.001, 0.01, 0.1]
seed = [0, 1]
[[methods]]
label = "AdamW"
[[methods]]
label = "Adam+L2"
decay = "l2"
"""


def parser():
    return build_parser()


@pytest.fixture
def fake_train(monkeypatch):
    """decaylab.train replaced by the fake trainers (the commands look it up when they run)."""
    trainer = FakeTrainer()
    module = types.SimpleNamespace(TrainConfig=config_class(), train=trainer.train, train_stacked=trainer.train_stacked)
    monkeypatch.setitem(sys.modules, "decaylab.train", module)
    return trainer


def test_add_cli_parses():
    args = parser().parse_args(["sweep", "s.toml", "--stack", "4", "--limit", "3", "--retry-failed"])
    assert (args.spec, args.store, args.stack, args.limit, args.retry_failed, args.no_stack) == (
        "s.toml", "decaylab.sqlite", 4, 3, True, False)
    assert callable(args.handler)
    args = parser().parse_args(["status", "x.sqlite", "--sweep", "demo"])
    assert (args.store, args.sweep) == ("x.sqlite", "demo")


@pytest.mark.parametrize("argv, message", [
    (["sweep", "s.toml", "--stack", "0"], "--stack must be a positive integer, got 0"),
    (["sweep", "s.toml", "--limit", "x"], "--limit must be a positive integer, got 'x'"),
    (["sweep", "s.toml", "--stack", "2", "--no-stack"], "not allowed with argument --stack"),
    (["status"], "the following arguments are required: STORE"),
])
def test_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        parser().parse_args(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_sweep_then_status(tmp_path, fake_train, capsys):
    spec, store = tmp_path / "cli.toml", tmp_path / "runs.sqlite"
    spec.write_text(SPEC)
    assert main(["sweep", str(spec), "--store", str(store), "--limit", "5", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "sweep 'cli': 12 runs (2 methods), stack 16" in err and "5 trained" in err and "7 left" in err
    assert main(["sweep", str(spec), "--store", str(store), "--no-stack", "--quiet"]) == 0
    assert "7 trained, 0 failed, 5 were already done, 0 left" in capsys.readouterr().err
    spec.write_text(SPEC.replace("seed = [0, 1]", "seed = [0, 1, 2]"))
    assert main(["sweep", str(spec), "--store", str(store), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "from a different spec text; the store keeps its runs (0 of them not in this spec)" in err
    assert "6 trained, 0 failed, 12 were already done" in err
    assert main(["status", str(store)]) == 0
    out = capsys.readouterr().out
    assert "AdamW" in out and "Adam+L2" in out and "(all)" in out and "18/18" in out and "val_acc" in out


def test_sweep_errors(tmp_path, fake_train, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text(SPEC.replace("seed =", "seeds ="))
    store = tmp_path / "runs.sqlite"
    assert main(["sweep", str(bad), "--store", str(store)]) == 2
    assert ("decaylab sweep: error: unknown key 'seeds' in [grid]; allowed: TrainConfig fields"
            in capsys.readouterr().err)
    assert not store.exists()
    assert main(["sweep", str(tmp_path / "nope.toml")]) == 2
    assert "does not exist (the checked-in specs: demo" in capsys.readouterr().err
    bad.write_text(SPEC)
    assert main(["sweep", str(bad), "--store", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "decaylab sweep: error: --store" in err and "is a directory" in err


def test_interrupt_and_failure_exit_codes(tmp_path, monkeypatch, capsys):
    spec, store = tmp_path / "cli.toml", tmp_path / "runs.sqlite"
    spec.write_text(SPEC)
    trainer = FakeTrainer(interrupt_after=1)
    module = types.SimpleNamespace(TrainConfig=config_class(), train=trainer.train, train_stacked=trainer.train_stacked)
    monkeypatch.setitem(sys.modules, "decaylab.train", module)
    assert main(["sweep", str(spec), "--store", str(store), "--quiet"]) == 130
    assert "interrupted: the runs in flight went back to pending" in capsys.readouterr().err
    assert Store(store).counts("cli") == {"pending": 6, "running": 0, "done": 6, "failed": 0}
    trainer = FakeTrainer(fail_lrs=(0.1,))
    module.train, module.train_stacked = trainer.train, trainer.train_stacked
    assert main(["sweep", str(spec), "--store", str(store), "--quiet"]) == 1  # a failure in a group fails the group
    assert Store(store).counts("cli") == {"pending": 0, "running": 0, "done": 6, "failed": 6}


def test_status_table(tmp_path):
    store = Store(tmp_path / "runs.sqlite")
    store.register("s", "spec", [("A", {"k": i, "lr": 0.1 * (i + 1), "weight_decay": 0.5}) for i in range(10)]
                   + [("B", {"k": 10 + i, "lr": 0.01}) for i in range(10)], key=lambda c: str(c["k"]))
    runs = store.claim("s", 20, group=lambda run: 0)
    for i, run in enumerate(runs[:8]):
        store.finish(run["id"], {"test_acc": 0.5 + 0.01 * i, "test_loss": 1.0})
    store.fail(runs[8]["id"], "boom")
    store.release(r["id"] for r in runs[14:])
    conn = sqlite3.connect(store.path)
    with conn:  # 8 runs done over the 80 s since the sweep started: 0.1 run/s
        conn.execute("UPDATE runs SET started = 1000")
        conn.execute("UPDATE runs SET finished = 1000 + 10 * (id - 0) WHERE status = 'done'")
    rows = {r["label"]: r for r in status_rows(store, now=1100)}
    whole = rows[None]
    assert (whole["done"], whole["failed"], whole["running"], whole["pending"], whole["total"]) == (8, 1, 5, 6, 20)
    assert whole["eta_s"] == pytest.approx(11 / 0.1) and whole["elapsed_s"] == 100
    assert rows["A"]["best"][:2] == ("test_acc", pytest.approx(0.57))
    assert rows["B"]["done"] == 0 and rows["B"]["best"] is None
    text = format_status(store, now=1100)
    lines = text.splitlines()
    assert lines[0].split() == ["sweep", "method", "done", "running", "pending", "failed", "best", "so", "far",
                                "elapsed", "ETA"]
    assert lines[2].split()[:6] == ["s", "A", "8/10", "1", "0", "1"]
    assert "test_acc 0.5700 (lr 0.8, λ 0.5)" in lines[2]
    assert lines[-1].split()[:6] == ["s", "(all)", "8/20", "5", "6", "1"] and lines[-1].endswith("1m50s")
    assert format_status(store, "other").endswith("no runs of sweep 'other'")
    with conn:  # the process that held the running runs is gone (a pid above any pid_max)
        conn.execute("UPDATE leases SET pid = ?", (2**22 + 1,))
    text = format_status(store, now=1100)
    assert text.splitlines()[-2].endswith("1m50s (idle)")
    assert text.splitlines()[-1].startswith("5 of the running runs were left by a process that is gone")


def test_status_command_subprocess(tmp_path):
    store = Store(tmp_path / "runs.sqlite")
    store.register("demo", "spec", [("AdamW", {"k": 1})], key=lambda c: str(c["k"]))
    cmd = [sys.executable, "-m", "decaylab.cli", "status"]
    out = subprocess.run(cmd + [str(store.path)], capture_output=True, text=True, env=os.environ)
    assert out.returncode == 0 and out.stdout.splitlines()[2].split()[:5] == ["demo", "AdamW", "0/1", "0", "1"]
    missing = tmp_path / "missing.sqlite"
    out = subprocess.run(cmd + [str(missing)], capture_output=True, text=True)
    assert out.returncode == 2
    assert "decaylab status: error: STORE: store" in out.stderr and "does not exist" in out.stderr
    assert not missing.exists()


SIGTERM_SWEEP = """
import sys, types
from test_sweep_contract import config_class
from decaylab.cli import main
from decaylab.sweep.testing import FakeTrainer
trainer = FakeTrainer(delay=0.2)
sys.modules["decaylab.train"] = types.SimpleNamespace(TrainConfig=config_class(), train=trainer.train,
                                                      train_stacked=trainer.train_stacked)
sys.exit(main(["sweep", sys.argv[1], "--store", sys.argv[2], "--stack", "2", "--quiet"]))
"""


def test_sigterm_gives_runs_back(tmp_path):
    spec, store = tmp_path / "cli.toml", tmp_path / "runs.sqlite"
    spec.write_text(SPEC)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", SIGTERM_SWEEP, str(spec), str(store)], env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if store.exists() and Store(store).counts("cli")["done"] >= 2:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "interrupted" in err
    counts = Store(store).counts("cli")
    assert counts["running"] == 0 and counts["done"] >= 2 and counts["done"] + counts["pending"] == 12
