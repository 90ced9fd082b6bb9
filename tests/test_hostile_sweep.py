"""Issue 15, items 3, 4, 6, 7 and 8: the sweep and its store under hostile input (the probe's cases).

3. runs whose process the OS kills are not trained again for ever; what can be checked up front is;
4. huge grids are refused before they are expanded, and large sweeps need a confirmation;
6. a spec changed under the same sweep name keeps every version and relabels nothing silently;
7. readers never modify files, and only ``sweep`` creates a store (at a new path or an empty file);
8. a full disk loses no trained result; the summary counts every run; a store of another schema is
   refused before anything trains.
"""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import types

import pytest
from test_sweep_contract import config_class

from decaylab.cli import main
from decaylab.sweep import Store, load_spec, run_sweep
from decaylab.sweep.testing import FakeTrainer

SPEC = """
name = "probe"
[base]
epochs = 1
[grid]
lr = [0.001, 0.01, 0.1]
seed = [0, 1]
[[methods]]
label = "A"
[[methods]]
label = "B"
decay = "l2"
"""  # 2 methods × 6 runs


@pytest.fixture
def fake_train(monkeypatch):
    """decaylab.train replaced by the fake trainers (no preflight: the stand-in offers none)."""
    trainer = FakeTrainer()
    module = types.SimpleNamespace(TrainConfig=config_class(), train=trainer.train, train_stacked=trainer.train_stacked)
    monkeypatch.setitem(sys.modules, "decaylab.train", module)
    return trainer


def spec(text=SPEC):
    return load_spec(text, config_class=config_class())


def sweep(store, trainer, text=SPEC, **kwargs):
    return run_sweep(spec(text), store, train_fn=trainer.train, train_stacked_fn=trainer.train_stacked,
                     progress=False, **kwargs)


def file_state(path):
    """The bytes of a file and of every file beside it that SQLite could have made (-wal, -shm, -journal)."""
    return {p.name: p.read_bytes() for p in path.parent.iterdir() if p.name.startswith(path.name)}


def foreign_database(path):
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    db.execute("INSERT INTO users (name) VALUES ('ada')")
    db.commit()
    db.close()
    return path


# ---------------------------------------------------------------------------------------------- item 3


def test_item3_a_run_whose_process_keeps_dying_is_failed_with_the_reason(tmp_path):
    store = Store(tmp_path / "runs.sqlite")
    store.register("s", "spec", [("A", {"k": 1}), ("A", {"k": 2})], key=lambda c: str(c["k"]))
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    for death in range(1, 4):  # OOM-killed three times: claimed, the process dies, requeued
        store.claim("s", 1, group=lambda run: 0, keys={"1"})
        with sqlite3.connect(store.path) as conn:
            conn.execute("UPDATE leases SET pid = ?", (dead,))
        store.requeue_stale("s")
        status = {run["key"]: run["status"] for run in store.runs("s")}["1"]
        assert status == ("failed" if death == 3 else "pending"), death
    failed = store.runs("s", status="failed")[0]
    assert "died 3 times" in failed["error"] and "memory" in failed["error"] and failed["deaths"] == 3
    assert store.retry_failed("s") == 1 and store.runs("s", status="pending")[0]["deaths"] == 0


def test_item3_a_batch_larger_than_the_dataset_is_refused_before_anything_trains(tmp_path, capsys):
    path = tmp_path / "big-batch.toml"
    path.write_text('name = "big-batch"\n[base]\ndataset = "mnist1d"\nmodel = "mlp"\nsteps = 2\nbatch_size = 5000\n'
                    "[grid]\nlr = [0.001, 0.01]\n")
    store = tmp_path / "runs.sqlite"
    assert main(["sweep", str(path), "--store", str(store), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "batch_size must be at most the number of training examples (4000) of 'mnist1d'; got 5000" in err
    assert "Traceback" not in err
    assert not store.exists()  # refused before the store was made (no empty store is left behind)


def test_item3_text_batches_and_memory_are_checked_up_front():
    from decaylab.train import TrainConfig, check_runs

    lm = dict(model="gpt-micro", dataset="pystdlib-text", steps=10, block_size=128)
    with pytest.raises(ValueError, match=r"batch_size × block_size must be at most the number of training tokens"):
        check_runs([TrainConfig(batch_size=100_000, **lm)])
    configs = [TrainConfig(batch_size=512, seed=s, **lm) for s in range(4)]
    with pytest.raises(ValueError, match=r"gpt-micro on pystdlib-text with batch_size 512, block_size 128: 4 stacked "
                                         r"runs need about .* GB \(a rough estimate\), more than this machine's 0.5 GB "
                                         r"of memory; lower batch_size or block_size"):
        check_runs(configs, stack=4, memory=2**29)
    seconds = check_runs([TrainConfig(steps=20)], stack=16)  # a small run passes, with a time estimate
    assert seconds is not None and 0 < seconds < 60


# ---------------------------------------------------------------------------------------------- item 4


def _python(code, timeout=60, memory=None):
    """Run ``code`` in a fresh interpreter (a hang or a huge allocation cannot take the test run down)."""
    if memory is not None:
        code = f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({memory}, {memory}))\n" + code
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)


def test_item4_num_1e12_is_refused_at_once():
    code = textwrap.dedent("""
        from decaylab.sweep import load_spec
        try:
            load_spec('name = "x"\\n[grid]\\nlr = { log = [1e-4, 1.0], num = 1000000000000 }')
        except ValueError as error:
            print(error)
    """)
    try:
        out = _python(code, memory=4 << 30)
    except subprocess.TimeoutExpired:
        pytest.fail("load_spec with num = 10^12 did not return within 60 s")
    assert "num must be at most 100,000 (the most runs a sweep may have), got 1,000,000,000,000" in out.stdout


def test_item4_a_million_run_grid_is_refused_before_it_is_expanded():
    code = textwrap.dedent("""
        from decaylab.sweep import load_spec
        text = ('name = "x"\\n[grid]\\nlr = { log = [1e-4, 1.0], num = 1000 }\\n'
                'weight_decay = { linear = [0.0, 1.0], num = 1000 }')
        try:
            load_spec(text)
        except ValueError as error:
            print(error)
    """)
    try:
        out = _python(code, memory=4 << 30)  # the probe saw 5.7 GB before the first run
    except subprocess.TimeoutExpired:
        pytest.fail("a 1000 × 1000 grid was not refused within 60 s")
    assert "the spec expands to 1,000,000 runs ('x' 1,000,000), more than 100,000" in out.stdout, out.stderr[-500:]


def test_item4_seeds_near_1e20_are_a_clear_error():
    with pytest.raises(ValueError, match=r"seed in \[grid\]: range \[0, 100000000000000000000\] has "
                                         r"100,000,000,000,000,000,000 values"):
        spec('name = "x"\n[grid]\nseed = { range = [0, 100000000000000000000] }')
    with pytest.raises(ValueError, match=r"seed in \[grid\] must be an integer >= 0 and <= 9223372036854775807; "
                                         r"got 100000000000000000000"):
        load_spec('name = "x"\n[grid]\nseed = [100000000000000000000]')


BIG = """
name = "big"
[base]
steps = 2
[grid]
lr = { log = [1e-4, 1e-1], num = 60 }
weight_decay = { log = [1e-5, 1.0], num = 100 }
"""  # 6,000 runs


def test_item4_a_large_sweep_needs_yes_or_max_runs(tmp_path, fake_train):
    from decaylab.sweep import SweepTooLarge

    with pytest.raises(SweepTooLarge, match=r"sweep 'big' has 6,000 runs; a sweep of more than 5,000 runs needs "
                                            r"--yes \(yes=True\), or max_runs = 6000 at the top of its spec"):
        sweep(tmp_path / "a.sqlite", fake_train, BIG, limit=1)
    assert not (tmp_path / "a.sqlite").exists()  # refused before the store was made
    assert sweep(tmp_path / "b.sqlite", fake_train, BIG, limit=1, yes=True).trained == 1
    assert sweep(tmp_path / "c.sqlite", fake_train, "max_runs = 6000\n" + BIG, limit=1).trained == 1
    with pytest.raises(ValueError, match=r"expands to 6,000 runs .*more than 5,999, its max_runs"):
        spec("max_runs = 5999\n" + BIG)


def test_item4_the_message_says_how_long_it_would_take(tmp_path, capsys):
    path = tmp_path / "big.toml"
    path.write_text(BIG)
    assert main(["sweep", str(path), "--store", str(tmp_path / "runs.sqlite"), "--limit", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "sweep 'big' has 6,000 runs, about " in err and " of training on this machine (a rough estimate)" in err
    assert "needs --yes" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------- item 6


def test_item6_a_renamed_method_is_an_error_until_allowed(tmp_path, fake_train, capsys):
    path, renamed = tmp_path / "runs.sqlite", SPEC.replace('label = "A"', 'label = "A (renamed)"')
    assert sweep(path, fake_train).trained == 12
    with pytest.raises(ValueError, match=r"6 run\(s\) labelled 'A' in the store are 'A \(renamed\)' in this spec\. "
                                         r"Give this spec a new name .*--allow-spec-change"):
        sweep(path, fake_train, renamed)
    store = Store(path)
    assert [v["spec"] for v in store.spec_versions("probe")] == [SPEC]  # nothing was written
    assert {run["label"] for run in store.runs("probe")} == {"A", "B"}

    spec_file = tmp_path / "renamed.toml"
    spec_file.write_text(renamed)
    assert main(["sweep", str(spec_file), "--store", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "decaylab sweep: error: sweep 'probe'" in err and "--allow-spec-change" in err and "Traceback" not in err

    summary = sweep(path, fake_train, renamed, allow_spec_change=True)
    assert summary.trained == 0 and summary.skipped == 12
    versions = store.spec_versions("probe")
    assert [v["version"] for v in versions] == [1, 2] and versions[0]["spec"] == SPEC
    assert {run["label"] for run in store.runs("probe")} == {"A", "B"}  # trained runs keep the label they had
    assert sweep(path, fake_train, renamed).skipped == 12  # a version once allowed needs no flag again
    from decaylab.report import build_report

    html = build_report(path, out_dir=tmp_path / "report").html_path.read_text(encoding="utf-8")
    assert "<h3>Version 1</h3>" in html and "<h3>Version 2 (latest)</h3>" in html and "A (renamed)" in html


def test_item6_pending_runs_take_the_new_label(tmp_path, fake_train):
    path = tmp_path / "runs.sqlite"
    sweep(path, fake_train, limit=6)  # A's six runs trained, B's pending
    sweep(path, fake_train, SPEC.replace('label = "B"', 'label = "B2"'), allow_spec_change=True, limit=1)
    labels = {(run["label"], run["status"]) for run in Store(path).runs("probe")}
    assert labels == {("A", "done"), ("B2", "done"), ("B2", "pending")}


# ---------------------------------------------------------------------------------------------- item 7


def test_item7_status_refuses_another_programs_database_and_leaves_it_as_it_was(tmp_path, capsys):

    path = foreign_database(tmp_path / "app.db")
    before = file_state(path)
    assert main(["status", str(path)]) == 2
    err = capsys.readouterr().err
    assert "is not a decaylab store" in err and "users" in err and "Traceback" not in err
    assert file_state(path) == before  # no tables added, no switch to WAL, no -wal / -shm files
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "delete"


def test_item7_status_refuses_an_empty_file_and_leaves_it_empty(tmp_path, capsys):
    path = tmp_path / "empty.sqlite"
    path.write_bytes(b"")
    assert main(["status", str(path)]) == 2
    assert "is not a decaylab store: it is an empty file (0 bytes)" in capsys.readouterr().err
    assert file_state(path) == {"empty.sqlite": b""}


def test_item7_only_sweep_creates_a_store_and_only_at_a_new_path_or_an_empty_file(tmp_path, fake_train, capsys):
    path = foreign_database(tmp_path / "app.db")
    before = file_state(path)
    spec_file = tmp_path / "probe.toml"
    spec_file.write_text(SPEC)
    assert main(["sweep", str(spec_file), "--store", str(path), "--quiet"]) == 2
    assert "is not a decaylab store" in capsys.readouterr().err and fake_train.calls == 0
    assert file_state(path) == before
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    assert main(["sweep", str(spec_file), "--store", str(empty), "--quiet"]) == 0  # an empty file becomes a store
    assert Store(empty, readonly=True).counts("probe")["done"] == 12


def test_item7_a_reader_opens_a_store_read_only(tmp_path, fake_train):
    path = tmp_path / "runs.sqlite"
    sweep(path, fake_train)
    before = file_state(path)
    with Store(path, readonly=True) as store:
        assert store.counts("probe")["done"] == 12
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            store.fail([1], "a reader cannot write")
    # the data is untouched (SQLite may leave an empty -wal and an -shm index beside a WAL store it read)
    assert file_state(path)["runs.sqlite"] == before["runs.sqlite"]
    assert file_state(path).get("runs.sqlite-wal", b"") == before.get("runs.sqlite-wal", b"")


# ---------------------------------------------------------------------------------------------- item 8


def test_item8_a_full_disk_loses_no_result(tmp_path, fake_train, monkeypatch, capsys):
    import decaylab.sweep.driver as driver

    monkeypatch.setattr(driver, "_FIRST_RETRY_DELAY_S", 0.01, raising=False)
    fails = {"left": 3}
    finish = Store.finish

    def full_disk(self, run_id, final, curves=None):
        if fails["left"]:
            fails["left"] -= 1
            raise sqlite3.OperationalError("database or disk is full")
        return finish(self, run_id, final, curves)

    monkeypatch.setattr(Store, "finish", full_disk)
    summary = sweep(tmp_path / "runs.sqlite", fake_train)
    assert (summary.trained, summary.failed, summary.left_failed) == (12, 0, 0)
    assert fake_train.calls == 2  # nothing trained twice: the results waited in memory
    assert "could not write run" in capsys.readouterr().err


def test_item8_the_summary_counts_every_run_and_a_failed_run_is_an_error(tmp_path, monkeypatch, capsys):
    spec_file, store = tmp_path / "probe.toml", tmp_path / "runs.sqlite"
    spec_file.write_text(SPEC)
    for fail_lrs in ((0.1,), ()):
        trainer = FakeTrainer(fail_lrs=fail_lrs)
        module = types.SimpleNamespace(TrainConfig=config_class(), train=trainer.train,
                                       train_stacked=trainer.train_stacked)
        monkeypatch.setitem(sys.modules, "decaylab.train", module)
        assert main(["sweep", str(spec_file), "--store", str(store), "--quiet", "--no-stack"]) == 1
    err = capsys.readouterr().err
    assert ("sweep 'probe': 0 trained, 0 failed, 8 were already done, 4 failed before (--retry-failed trains them "
            "again), 0 left, of 12 runs") in err
    assert main(["sweep", str(spec_file), "--store", str(store), "--quiet", "--retry-failed"]) == 0


def test_item8_a_store_of_another_schema_is_refused_before_anything_trains(tmp_path, fake_train):
    path = tmp_path / "runs.sqlite"
    Store(path).close()
    with sqlite3.connect(path) as db:  # an older or foreign tool's curves table
        db.execute("DROP TABLE curves")
        db.execute("CREATE TABLE curves (run_id INTEGER, payload BLOB)")
    with pytest.raises(ValueError, match=r"its table 'curves' has columns \['run_id', 'payload'\]"):
        sweep(path, fake_train)
    assert fake_train.calls == 0
    with pytest.raises(ValueError, match="newer decaylab"):
        with sqlite3.connect(path) as db:
            db.execute("DROP TABLE curves")
            db.execute("PRAGMA user_version = 99")
        sweep(path, fake_train)
    assert fake_train.calls == 0


def test_item8_an_older_store_is_upgraded_and_keeps_its_runs(tmp_path, fake_train):
    from test_sweep_store import CONTRACT_SQL

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(CONTRACT_SQL)
    db.execute("INSERT INTO sweeps VALUES ('probe', ?, 0)", (SPEC,))
    [(label, config)] = spec().configs()[:1]
    db.execute("INSERT INTO runs (sweep, key, config, label, status, final) VALUES ('probe', ?, ?, ?, 'done', ?)",
               (config.key(), json.dumps(config.to_dict()), label, json.dumps({"test_acc": 0.5})))
    db.commit()
    db.close()
    assert sweep(path, fake_train).skipped == 1
    store = Store(path)
    assert [v["version"] for v in store.spec_versions("probe")] == [1] and store.counts("probe")["done"] == 12
    assert os.path.getsize(path) > 0
    # the upgraded store records the fields that vary within a stacked group, for the report
    assert store.sweep_meta("probe") == {"per_model": ["lr", "weight_decay", "seed"]}


def test_the_per_model_fields_are_read_from_the_store_not_the_config_class(tmp_path, fake_train):
    from decaylab.store import load_sweep
    from decaylab.store.schema import PER_MODEL_BEFORE_V3

    path = tmp_path / "runs.sqlite"
    sweep(path, fake_train)
    with sqlite3.connect(path) as db:  # a sweep whose config class stacks runs of several momenta
        db.execute("UPDATE sweep_meta SET value = '[\"lr\", \"weight_decay\", \"seed\", \"momentum\"]'")
    assert load_sweep(path, "probe").per_model == ("lr", "weight_decay", "seed", "momentum")
    with sqlite3.connect(path) as db:  # a store from before the list was kept reads as decaylab was then
        db.execute("DROP TABLE sweep_meta")
    assert load_sweep(path, "probe").per_model == PER_MODEL_BEFORE_V3
