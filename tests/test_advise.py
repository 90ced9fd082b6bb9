"""decaylab advise: the table, --json, errors, λ from a timescale, --from-store."""
from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys

import pytest

from decaylab import timescale as ts
from decaylab.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

EXAMPLE = ["advise", "--lr", "1e-3", "--weight-decay", "0.1", "--convention", "torch", "--steps", "10000",
           "--batch-size", "256", "--dataset-size", "50000"]


def _json(argv, capsys) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_issues_example_table(capsys) -> None:
    assert main(EXAMPLE) == 0
    out = capsys.readouterr().out
    assert "λ = 0.1 in the torch convention (decay per step lr_t·λ), peak lr 0.001" in out
    assert "τ_iter   10000 steps" in out and "τ_epoch  51.2 epochs" in out and "1 of the run" in out
    assert "1 e-folds" in out and "0.368 of the initial weights" in out
    for name in ts.CONVENTIONS:
        assert f"\n  {name} " in out
    assert "modded-nanogpt" in out and "Wang & Aitchison" in out and "inside the guideline range [1, 51.2]" in out


def test_the_issues_example_json(capsys) -> None:
    got = _json(EXAMPLE, capsys)
    assert got["tau_iter"] == pytest.approx(1e4) and got["tau_epoch"] == pytest.approx(51.2)
    assert got["tau_fraction"] == pytest.approx(1.0) and got["integrated_decay_efolds"] == pytest.approx(1.0)
    assert got["weight_decay"] == pytest.approx({"torch": 0.1, "paper": 1e-4, "corrected": 0.1, "constant": 1e-4,
                                                 "palm": 100.0})
    assert got["angular_update_rad"] == pytest.approx(math.sqrt(2 * 1e-4 * 0.1 / 1.9))


def test_a_schedule_prints_both_equivalences(capsys) -> None:
    argv = ["advise", "--lr", "1e-3", "--weight-decay", "0.1", "--steps", "1000", "--schedule", "cosine"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "equal at peak lr" in out and "equal Σ s_t·λ" in out
    got = _json(argv, capsys)
    # Σ η = 500.5 and Σ η² = 375.5 over a 1000-step cosine (hand-computed, see test_timescale)
    assert got["integrated_decay_efolds"] == pytest.approx(0.1 * 1e-3 * 500.5)
    assert got["weight_decay_integrated"]["constant"] == pytest.approx(1e-4 * 500.5 / 1000)
    assert got["weight_decay_integrated"]["palm"] == pytest.approx(100 * 500.5 / 375.5)
    assert got["weight_decay"]["constant"] == pytest.approx(1e-4)


def test_without_a_schedule_one_column(capsys) -> None:
    assert main(["advise", "--lr", "3e-4", "--weight-decay", "0.01", "--convention", "paper"]) == 0
    out = capsys.readouterr().out
    assert "equal Σ" not in out and "give --steps and --schedule" in out and "τ_epoch  —" in out


@pytest.mark.parametrize("flag, value, extra, expected_torch", [
    ("--tau-iters", "10000", [], 0.1),
    ("--tau-epochs", "5", ["--batch-size", "128", "--dataset-size", "50000"], 0.512),
    ("--tau-fraction", "0.5", ["--steps", "20000"], 0.1),
])
def test_lambda_from_a_timescale(flag, value, extra, expected_torch, capsys) -> None:
    got = _json(["advise", "--lr", "1e-3", flag, value, *extra], capsys)
    assert got["weight_decay"]["torch"] == pytest.approx(expected_torch)
    assert got["from_timescale"] == flag
    # the same target in the paper's convention gives the same λ there
    paper = _json(["advise", "--lr", "1e-3", flag, value, *extra, "--convention", "paper"], capsys)
    assert paper["weight_decay_given"] == pytest.approx(expected_torch * 1e-3)


@pytest.mark.parametrize("args, message", [
    (["--lr", "-1", "--weight-decay", "0.1"], "--lr must be a number > 0, got -1"),
    (["--lr", "abc", "--weight-decay", "0.1"], "--lr must be a number > 0, got 'abc'"),
    (["--lr", "1e-3", "--weight-decay", "-0.1"], "--weight-decay must be a number >= 0, got -0.1"),
    (["--lr", "1e-3", "--weight-decay", "0.1", "--tau-epochs", "5"],
     "give one of --weight-decay, --tau-iters, --tau-epochs, --tau-fraction; got --weight-decay and --tau-epochs"),
    (["--lr", "1e-3", "--tau-epochs", "5"], "--batch-size and --dataset-size are needed with --tau-epochs"),
    (["--lr", "1e-3", "--tau-fraction", "0.5"], "--steps is needed with --tau-fraction"),
    (["--lr", "1e-3", "--weight-decay", "0.1", "--batch-size", "64"], "--dataset-size is needed with --batch-size"),
    (["--lr", "1e-3", "--weight-decay", "0.1", "--schedule", "cosine"], "--steps is needed with --schedule"),
    (["--lr", "1e-3", "--weight-decay", "0.1", "--steps", "10", "--schedule", "exp"], "--schedule must be one of"),
    (["--lr", "1e-3", "--weight-decay", "0.1", "--steps", "10", "--warmup-steps", "10"],
     "--warmup-steps must be smaller than --steps"),
    (["--lr", "1e-3", "--weight-decay", "0.1", "--convention", "tf"], "--convention must be one of torch, paper"),
    (["--lr", "1e-3", "--weight-decay", "0.1", "--beta1", "1"], "--beta1 must be a number in [0, 1)"),
    (["--lr", "1e-3", "--steps", "0", "--weight-decay", "0.1"], "--steps must be an integer >= 1, got 0"),
    (["--weight-decay", "0.1"], "--lr is required"),
    (["--lr", "1e-3"], "--weight-decay (or a target timescale"),
    (["--lr", "1e-3", "--weight-decay", "0.1", "--metric", "val_acc"], "--sweep and --metric go with --from-store"),
])
def test_bad_input_is_one_line_naming_the_argument(args, message, capsys) -> None:
    assert main(["advise", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert "\n" not in err and err.startswith("decaylab advise: error: ") and message in err


def test_bad_input_exit_status_and_no_traceback_in_a_process() -> None:
    # "-1e-3" is a number to this command, not an unknown option (argparse's default would print usage)
    done = subprocess.run([sys.executable, "-m", "decaylab.cli", "advise", "--lr", "-1e-3", "--weight-decay", "0.1"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == "decaylab advise: error: --lr must be a number > 0, got -1e-3"


# ------------------------------------------------------------------------------------------- --from-store

TINY = """
name = "tiny-tau"
[base]
dataset = "mnist1d"
model = "mlp"
epochs = 1
batch_size = 256
schedule = "cosine"
[grid]
lr = [3e-3]
weight_decay = [0.1, 3.0, 30.0]
seed = [0, 1]
[[methods]]
label = "AdamW"
decay = "decoupled"
[[methods]]
label = "Adam+L2"
decay = "l2"
weight_decay = [1e-4]
"""


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    from decaylab.sweep import load_spec, run_sweep

    path = tmp_path_factory.mktemp("advise") / "tiny.sqlite"
    summary = run_sweep(load_spec(TINY), path, stack=8, progress=False)
    assert summary.failed == 0 and summary.remaining == 0
    return path


def test_from_store_on_a_real_sweep(tiny_store, capsys) -> None:
    from decaylab.store import load_sweep

    got = _json(["advise", "--from-store", str(tiny_store)], capsys)
    # every run records validation: it selects (a store from before selects on test and says so: below)
    assert got["metric"] == "val_acc" and got["validation"] is True and got["unit"] == "epochs"
    assert not any("no validation metric" in note for note in got["notes"])
    assert any("2 of 8 finished runs left out" in note for note in got["notes"])  # Adam+L2 has no EMA timescale
    assert list(got["methods"]) == ["AdamW"]
    # by hand: per seed the run with the best val_acc; τ_epoch = 1/(lr·λ)·epochs/steps, 15 steps per epoch
    runs = [r for r in load_sweep(tiny_store).runs if r.label == "AdamW"]
    expected = []
    for seed in (0, 1):
        best = max((r for r in runs if r.config["seed"] == seed), key=lambda r: r.final["val_acc"])
        assert best.final["steps"] == 4000 // 256
        expected.append(1 / (3e-3 * best.config["weight_decay"]) / best.final["steps"])
    entry = got["methods"]["AdamW"]
    assert entry["values"] == pytest.approx(expected) and entry["seeds"] == 2
    assert entry["geomean"] == pytest.approx(math.sqrt(expected[0] * expected[1]))
    assert main(["advise", "--from-store", str(tiny_store)]) == 0
    out = capsys.readouterr().out
    assert "selected on validation" in out and "τ* = " in out


def test_from_store_gives_lambda_at_a_target(tiny_store, capsys) -> None:
    got = _json(["advise", "--from-store", str(tiny_store), "--lr", "1e-3", "--batch-size", "128",
                 "--dataset-size", "40000"], capsys)
    tau = got["methods"]["AdamW"]["geomean"]
    lam = got["target"]["AdamW"]["torch"]
    assert ts.tau_epoch(lam, 1e-3, batch_size=128, dataset_size=40_000) == pytest.approx(tau)
    assert got["target"]["AdamW"]["paper"] == pytest.approx(lam * 1e-3)
    needs = _json(["advise", "--from-store", str(tiny_store), "--lr", "1e-3"], capsys)
    assert "--batch-size and --dataset-size" in needs["target"]["needs"]


def test_from_store_selects_on_validation_when_runs_record_it(tmp_path, capsys) -> None:
    from decaylab.store import SCHEMA

    path = tmp_path / "val.sqlite"
    db = sqlite3.connect(path)
    db.executescript(SCHEMA)
    db.execute("INSERT INTO sweeps VALUES ('lm', '', 0.0)")
    # validation prefers λ = 0.1, test prefers λ = 1: the advice must follow validation
    for i, (wd, val, test) in enumerate([(0.1, 2.0, 3.0), (1.0, 2.5, 1.0)]):
        config = {"lr": 1e-3, "weight_decay": wd, "seed": 0, "decay": "decoupled", "decay_scale": "lr",
                  "steps": 1000, "epochs": 10}
        final = {"val_loss": val, "test_loss": test, "steps": 1000}
        db.execute("INSERT INTO runs (sweep, key, config, label, status, final) "
                   "VALUES ('lm', ?, ?, 'AdamW', 'done', ?)", (f"k{i}", json.dumps(config), json.dumps(final)))
    db.commit()
    db.close()
    got = _json(["advise", "--from-store", str(path)], capsys)
    assert got["metric"] == "val_loss" and got["validation"] is True and not got["notes"]
    assert got["unit"] == "fraction"  # a run set by steps: no epochs without the dataset size
    assert got["methods"]["AdamW"]["values"] == pytest.approx([1 / (1e-3 * 0.1) / 1000])
    assert got["methods"]["AdamW"]["factor"] is None  # one seed: no spread (null in strict JSON)


@pytest.mark.parametrize("args, message", [
    (["--from-store", "/nonexistent/x.sqlite"], "--from-store: run store not found"),
    (["--from-store", "X", "--weight-decay", "0.1"],
     "--from-store finds the timescale itself; leave out --weight-decay"),
])
def test_from_store_errors(args, message, capsys) -> None:
    assert main(["advise", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err


def test_from_store_metric_must_be_recorded(tiny_store, capsys) -> None:
    assert main(["advise", "--from-store", str(tiny_store), "--metric", "val_top5"]) == 2
    assert "--metric must be a final metric every run records" in capsys.readouterr().err
