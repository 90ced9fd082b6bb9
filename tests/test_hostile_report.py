"""Issue 15, items 5, 9 and 10 on the reading side: diverged runs stored and reported as such, one-line
errors (not tracebacks) from ``report`` and ``status`` on damaged stores, bad rows and output folders
that cannot be written, a method label too long for a file name, and ``status``'s elapsed time."""
from __future__ import annotations

import errno
import json
import math
import sqlite3
from pathlib import Path

import pytest
from test_sweep_contract import config_class
from test_sweep_store import CONTRACT_SQL

from decaylab.cli import main
from decaylab.report import build_report
from decaylab.store import load_sweep
from decaylab.sweep import Store, format_status, load_spec, run_sweep, status_rows
from decaylab.sweep.testing import FakeResult, FakeTrainer

SPEC = """
name = "probe"
[base]
epochs = 1
[grid]
lr = [0.001, 0.01, 0.1]
weight_decay = [0.0, 0.1]
[[methods]]
label = "A"
"""


class Diverging(FakeTrainer):
    """lr = 0.1 diverges: NaN losses and the accuracy of NaN logits (the frequency of class 0)."""

    def _result(self, config):
        result = super()._result(config)
        if config.lr == 0.1:
            final = dict(result.final, train_loss=math.nan, test_loss=math.nan, test_acc=0.102, weight_norm=math.nan)
            curves = [dict(point, test_loss=math.nan) if i else point for i, point in enumerate(result.curves)]
            return FakeResult(config, final, curves)
        return result


@pytest.fixture
def diverged_store(tmp_path):
    trainer = Diverging()
    path = tmp_path / "runs.sqlite"
    run_sweep(load_spec(SPEC, config_class=config_class()), path, train_fn=trainer.train,
              train_stacked_fn=trainer.train_stacked, progress=False)
    return path


# ---------------------------------------------------------------------------------------------- item 5


def test_item5_a_diverged_run_is_stored_with_every_metric_null(diverged_store):
    store = Store(diverged_store)
    diverged = [run for run in store.runs("probe") if run["config"]["lr"] == 0.1]
    assert len(diverged) == 2 and all(run["status"] == "done" for run in diverged)
    for run in diverged:
        # one decoding of a diverged run for every reader: every metric None, as stored
        assert set(run["final"].values()) == {None} and run["diverged"] == "train_loss is nan"
        raw = sqlite3.connect(diverged_store).execute("SELECT final FROM runs WHERE id = ?", (run["id"],)).fetchone()
        assert set(json.loads(raw[0]).values()) == {None}  # test_acc 0.102 is not kept
        assert len(store.curves(run["id"])["test_loss"]) == 1  # the finite points before divergence stay
    assert store.runs("probe", status="done")[0]["diverged"] is None
    assert "2 of the done runs diverged" in format_status(store)
    # the writer and the reader decode a stored run the same way (once: decaylab.store.schema.decode_final)
    read = {run.id: (run.final, run.diverged) for run in load_sweep(diverged_store, "probe").runs}
    assert read == {run["id"]: (run["final"], run["diverged"]) for run in store.runs("probe")}


def test_item5_the_report_marks_diverged_runs(diverged_store, tmp_path):
    result = build_report(diverged_store, out_dir=tmp_path / "out")
    row = result.summary["methods"]["A"]
    assert row["diverged_cells"] == 2 and result.summary["diverged_runs"] == 2
    assert row["best_lr"] != 0.1
    html = result.html_path.read_text(encoding="utf-8")
    assert "6 done (2 diverged)" in html


def test_item5_a_store_from_before_divergence_was_recorded_is_read_right(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(CONTRACT_SQL)
    db.execute("INSERT INTO sweeps VALUES ('old', 'x', 0)")
    for k, (lr, final) in enumerate([(1e-3, {"test_loss": 0.3, "test_acc": 0.9}),
                                     (1e-2, {"test_loss": 0.2, "test_acc": 0.95}),
                                     (1e-1, {"test_loss": None, "test_acc": 0.102})]):  # the probe's bad cell
        db.execute("INSERT INTO runs (sweep, key, config, label, status, final) VALUES ('old', ?, ?, 'A', 'done', ?)",
                   (f"k{k}", json.dumps({"lr": lr, "weight_decay": 0.1, "seed": 0}), json.dumps(final)))
    db.commit()
    db.close()
    before = path.read_bytes()
    result = build_report(path, out_dir=tmp_path / "out")
    assert result.summary["methods"]["A"]["diverged_cells"] == 1 and result.summary["diverged_runs"] == 1
    assert format_status(Store(path, readonly=True)).splitlines()[-1].startswith("1 of the done runs diverged")
    assert path.read_bytes() == before  # read, never upgraded by a reader


# ---------------------------------------------------------------------------------------------- item 9


def test_item9_report_out_that_is_a_file_is_one_line(diverged_store, tmp_path, capsys):
    out = tmp_path / "out.txt"
    out.write_text("not a folder")
    assert main(["report", str(diverged_store), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--out {out}: is a file, not a folder" in err
    assert out.read_text() == "not a folder"


def test_item9_report_on_a_full_disk_is_one_line(diverged_store, tmp_path, monkeypatch, capsys):
    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_bytes", full)
    assert main(["report", str(diverged_store), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "could not write the report (No space left on device" in err


def test_item9_a_label_too_long_for_a_file_name(tmp_path):
    long = "AdamW with a very long description " * 9  # 315 characters: a file name may have 255 bytes
    trainer = FakeTrainer()
    text = SPEC.replace('label = "A"', f'label = "{long}"\n[[methods]]\nlabel = "{long}!"\ndecay = "l2"')
    run_sweep(load_spec(text, config_class=config_class()), tmp_path / "runs.sqlite", train_fn=trainer.train,
              train_stacked_fn=trainer.train_stacked, progress=False)
    result = build_report(tmp_path / "runs.sqlite", out_dir=tmp_path / "out")
    names = [path.name for path in result.png_paths if path.name.startswith("heatmap-")]
    assert len(names) == 2 and len(set(names)) == 2 and all(len(name) < 100 for name in names)


def _damage(path):
    """Overwrite the store's pages after the first (the schema stays readable, the data does not)."""
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    data[page:] = b"\xa5" * (len(data) - page)
    path.write_bytes(bytes(data))


def test_item9_a_damaged_store_is_one_line_everywhere(diverged_store, tmp_path, capsys):
    Store(diverged_store).close()  # checkpoint the WAL into the file, then damage the file
    (diverged_store.parent / (diverged_store.name + "-wal")).unlink(missing_ok=True)
    _damage(diverged_store)
    spec = tmp_path / "probe.toml"
    spec.write_text(SPEC)
    for argv in (["status", str(diverged_store)], ["sweep", str(spec), "--store", str(diverged_store), "--quiet"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err  # (sweep first says what it is about to do)
        assert "Traceback" not in err and err.splitlines()[-1].startswith(f"decaylab {argv[0]}: error: store "), err
        assert "database disk image is malformed" in err and "damaged" in err
    assert main(["report", str(diverged_store), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "database disk image is malformed" in err, err


def test_item9_a_store_that_cannot_be_written_is_one_line(tmp_path, capsys):
    spec = tmp_path / "probe.toml"
    spec.write_text(SPEC)
    store = tmp_path / "runs.sqlite"
    (tmp_path / "runs.sqlite-wal").mkdir()  # SQLite cannot make its write-ahead log (root ignores chmod)
    assert main(["sweep", str(spec), "--store", str(store), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"decaylab sweep: error: --store {store}: store ")


def test_item9_bad_rows_in_status_are_one_line(tmp_path, capsys):
    path = tmp_path / "runs.sqlite"
    store = Store(path)
    store.register("s", "spec", [("A", {"k": 1}), ("A", {"k": 2})], key=lambda c: str(c["k"]))
    store.close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA ignore_check_constraints = ON")  # a row only a hand edit (or another tool) makes
    db.execute("UPDATE runs SET status = 'paused' WHERE key = '1'")
    db.commit()
    assert main(["status", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run 1 in" in err and "has status 'paused'" in err
    db.execute("UPDATE runs SET status = 'pending', config = '{not json' WHERE key = '1'")
    db.commit()
    assert main(["status", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run 1: its config in the store is not valid JSON" in err


# ---------------------------------------------------------------------------------------------- item 10


def test_item10_status_elapsed_time_of_a_finished_sweep_stops_growing(tmp_path):
    trainer = FakeTrainer(fail_lrs=(0.1,))
    text = SPEC + '[[methods]]\nlabel = "B"\ndecay = "l2"\nlr = 0.1\n'  # B: every run fails
    run_sweep(load_spec(text, config_class=config_class()), tmp_path / "runs.sqlite", train_fn=trainer.train,
              stack=1, max_failed_groups=10, progress=False)
    store = Store(tmp_path / "runs.sqlite")
    now = max(run["finished"] for run in store.runs())
    early, late = status_rows(store, now=now + 1), status_rows(store, now=now + 86400)
    assert [(row["label"], row["done"], row["failed"]) for row in early] == [("A", 4, 2), ("B", 0, 2), (None, 4, 4)]
    assert [row["elapsed_s"] for row in early] == [row["elapsed_s"] for row in late]
    assert all(row["elapsed_s"] is not None and row["elapsed_s"] < 60 for row in early)
