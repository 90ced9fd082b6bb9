"""decaylab.report: scores on synthetic lr × λ surfaces, the table, PNGs, the HTML page, errors, CLI.

The stores here are built with the contract's SQL, written out below rather than imported, so a
change of schema on either side shows up as a failing test.
"""
from __future__ import annotations

import base64
import doctest
import json
import math
import re
import sqlite3
import struct
from pathlib import Path

import numpy as np
import pytest

from decaylab.cli import build_parser
from decaylab.report import Section, analysis, build, build_report, diagonal_slope, figures, html, separability
from decaylab.store import reader as store
from decaylab.store import schema

CONTRACT_SQL = """
CREATE TABLE runs (
  id INTEGER PRIMARY KEY, sweep TEXT NOT NULL, key TEXT NOT NULL,
  config TEXT NOT NULL,
  label TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('pending','running','done','failed')),
  final TEXT,
  error TEXT, started REAL, finished REAL, UNIQUE (sweep, key));
CREATE TABLE curves (run_id INTEGER NOT NULL REFERENCES runs(id), step INTEGER NOT NULL,
  metric TEXT NOT NULL, value REAL NOT NULL, PRIMARY KEY (run_id, step, metric));
CREATE TABLE sweeps (name TEXT PRIMARY KEY, spec TEXT NOT NULL, created REAL NOT NULL);
"""
SPEC = 'name = "fig2"\n# lr x wd grid <for> "AdamW" & "Adam+L2"\nlr = [1e-4, 1e-1]\n'
EXPONENTS = np.arange(-4.0, -0.9, 0.5)          # 1e-4 … 1e-1 in half decades, for lr and for λ
GRID = [float(10.0**e) for e in EXPONENTS]


def axis_aligned(lr: float, wd: float) -> float:
    """Test error = f(lr) + g(λ): best at lr = 10^-2.5, λ = 1e-3 whatever the other one is."""
    return 0.05 + 0.03 * (math.log10(lr) + 2.5) ** 2 + 0.03 * (math.log10(wd) + 3) ** 2


def diagonal(lr: float, wd: float) -> float:
    """Test error depends on lr·λ only: best on the band lr·λ = 1e-5 (λ* = 1e-5 / lr)."""
    return 0.05 + 0.05 * (math.log10(lr) + math.log10(wd) + 5) ** 2


def make_store(path: Path, *, extra_sweep: bool = False) -> Path:
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")  # as decaylab.sweep writes it
    db.executescript(CONTRACT_SQL)
    db.execute("INSERT INTO sweeps VALUES (?, ?, ?)", ("fig2", SPEC, 1.7e9))
    rows = []
    methods = [("AdamW (paper)", "decoupled", "schedule", axis_aligned), ("Adam + L2", "l2", "lr", diagonal)]
    for label, decay, scale, surface in methods:
        for lr in GRID:
            for wd in GRID:
                for seed in (0, 1):
                    error = surface(lr, wd) + (0.001 if seed == 0 else -0.001)
                    config = {"dataset": "mnist1d", "model": "mlp", "optimizer": "adam", "decay": decay,
                              "decay_scale": scale, "lr": lr, "weight_decay": wd, "seed": seed, "epochs": 2}
                    final = {"test_acc": 1 - error, "test_loss": 2 * error, "train_loss": error,
                             "weight_norm": 1 / (1 + wd), "train_acc": 1.0, "wall_s": 0.1}
                    rows.append(("fig2", label, config, "done", final))
    # A third method: one missing cell, one cell with a diverged seed, a pending and a failed run.
    for lr in (1e-3, 1e-2):
        for wd in (0.0, 1e-2):
            for seed in (0, 1):
                config = {"decay": "decoupled", "decay_scale": "lr", "lr": lr, "weight_decay": wd, "seed": seed}
                if lr == 1e-2 and wd == 1e-2:
                    rows.append(("fig2", "SGDW", config, "pending" if seed == 0 else "failed", None))
                    continue
                acc = float("nan") if (lr == 1e-2 and wd == 0.0 and seed == 1) else 0.8 + 10 * lr
                rows.append(("fig2", "SGDW", config, "done", {"test_acc": acc, "test_loss": 0.5}))
    if extra_sweep:
        rows.append(("other", "AdamW", {"lr": 1e-3, "weight_decay": 0.1, "seed": 0}, "pending", None))
    for k, (sweep, label, config, status, final) in enumerate(rows):
        cursor = db.execute(
            "INSERT INTO runs (sweep, key, config, label, status, final, error, started, finished) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (sweep, f"k{k}", json.dumps(config), label, status, None if final is None else json.dumps(final),
             "RuntimeError: loss is nan" if status == "failed" else None, 0.0, 1.0),
        )
        if final is None or label == "SGDW":
            continue
        run_id, error = cursor.lastrowid, 1 - final["test_acc"]
        for step in range(0, 101, 25):
            lr_t = config["lr"] * 0.5 * (1 + math.cos(math.pi * step / 100))
            values = {"train_loss": 2 * math.exp(-step / 30) + error, "test_loss": 2 * math.exp(-step / 40) + error,
                      "test_acc": 1 - error - 0.3 * math.exp(-step / 30), "weight_norm": 10 - step / 20,
                      "lr": lr_t, "effective_lr": lr_t / (10 - step / 20) + 1e-9}
            db.executemany("INSERT INTO curves VALUES (?, ?, ?, ?)",
                           [(run_id, step, metric, value) for metric, value in values.items()])
    db.commit()
    db.close()
    return path


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    path = make_store(root / "store.db")
    return build_report(path, out_dir=root / "out"), path


def test_scores_tell_axis_aligned_from_diagonal(report):
    methods = report[0].summary["methods"]
    aligned, diag = methods["AdamW (paper)"], methods["Adam + L2"]
    # f + g with quadratic f, g: the good region is a plus of 5 cells in a 3 × 3 box (5/9);
    # lr·λ = const: a one-cell diagonal over the 7 × 7 grid (7/49).
    assert aligned["separability"] == pytest.approx(5 / 9)
    assert aligned["good_cells"] == 5
    assert diag["separability"] == pytest.approx(7 / 49)
    assert diag["good_cells"] == 7
    assert aligned["diagonal_slope"] == pytest.approx(0.0, abs=1e-9)
    assert diag["diagonal_slope"] == pytest.approx(-1.0, abs=1e-9)
    assert aligned["additivity"] == pytest.approx(1.0, abs=1e-9)
    assert diag["additivity"] < 0.5


def test_best_cell_mean_and_std_over_seeds(report):
    methods = report[0].summary["methods"]
    aligned, diag = methods["AdamW (paper)"], methods["Adam + L2"]
    assert aligned["best_lr"] == pytest.approx(10**-2.5) and aligned["best_weight_decay"] == pytest.approx(1e-3)
    assert aligned["best_test_acc"] == pytest.approx(0.95)
    assert aligned["best_test_acc_std"] == pytest.approx(0.002 / math.sqrt(2))
    assert aligned["best_seeds"] == 2 and aligned["runs_done"] == 98 and aligned["grid"] == [7, 7]
    # every cell of the band ties; the first in lr order wins: lr = 1e-4, λ = 1e-1
    assert (diag["best_lr"], diag["best_weight_decay"]) == (pytest.approx(1e-4), pytest.approx(1e-1))
    assert report[0].summary["metric"] == "test_error"


def test_missing_and_diverged_cells(report):
    sgdw = report[0].summary["methods"]["SGDW"]
    assert sgdw["runs_done"] == 6 and sgdw["runs_total"] == 8  # 1 pending, 1 failed
    assert sgdw["diverged_cells"] == 1
    assert sgdw["best_lr"] == pytest.approx(1e-3)  # lr 1e-2 has a diverged cell and a missing one
    assert sgdw["diagonal_slope"] is None  # best λ is 0 on the only informative row
    assert sgdw["additivity"] is None  # 3 cells, 2 rows, 2 columns: an additive model fits any such grid


def test_table_text(report):
    lines = report[0].table_text.splitlines()
    assert lines[0].split()[:2] == ["method", "runs"] and "separability" in lines[0] and "diagonal slope" in lines[0]
    assert len(lines) == 4
    assert re.search(r"AdamW \(paper\)\s+98\s+95\.00 ± 0\.14\s+2\s+3\.16e-3\s+1e-3\s+0\.56\s+5\s+\+0\.00\s+1\.00",
                     lines[1]), lines[1]
    assert re.search(r"Adam \+ L2\s+98\s+95\.00 ± 0\.14\s+2\s+1e-4\s+1e-1\s+0\.14\s+7\s+-1\.00", lines[2]), lines[2]
    assert re.search(r"SGDW\s+6/8\s+", lines[3]), lines[3]


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_pngs_written(report):
    result = report[0]
    names = sorted(p.name for p in result.png_paths)
    assert names == sorted(["heatmap-adamw-paper.png", "heatmap-adam-l2.png", "heatmap-sgdw.png",
                            "learning-curves.png", "weight-norm.png", "effective-lr.png"])
    for path in result.png_paths:
        width, height = _png_size(path.read_bytes())
        assert width > 300 and height > 250, path
    assert (result.html_path.parent / "summary.json").is_file()


def test_html_is_self_contained(report):
    result = report[0]
    text = result.html_path.read_text(encoding="utf-8")
    images = re.findall(r'<img id="([^"]+)" alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)">', text)
    assert [i for i, _, _ in images] == ["heatmap-adamw-paper", "heatmap-adam-l2", "heatmap-sgdw",
                                         "learning-curves", "weight-norm", "effective-lr"]
    for (_, alt, data), path in zip(images, result.png_paths, strict=True):
        assert base64.b64decode(data) == path.read_bytes() and alt
    assert '<table id="summary-table">' in text and text.count("<tr>") >= 4
    assert "separability = |G| / |observed cells of rows(G) × cols(G)|" in text
    assert "lr x wd grid &lt;for&gt; &quot;AdamW&quot; &amp; &quot;Adam+L2&quot;" in text  # the spec, escaped
    assert "<pre>" in text and "generated 20" in text
    for external in ("http://", "https://", "<script", "<link", "@import", "url(", "//cdn"):
        assert external not in text, external


def test_png_output_is_deterministic(report, tmp_path):
    again = build_report(report[1], "fig2", tmp_path)
    for first, second in zip(report[0].png_paths, again.png_paths, strict=True):
        assert first.name == second.name and first.read_bytes() == second.read_bytes(), first.name


def test_store_is_opened_read_only(tmp_path):
    path = make_store(tmp_path / "store.db")
    writer = sqlite3.connect(path)  # a sweep still holding the store open
    writer.execute("INSERT INTO sweeps VALUES ('late', 'x', 0)")
    writer.commit()
    # the reader may write read marks into the shared-memory index (-shm), never into the data
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and not p.name.endswith("-shm")}
    data = store.load_sweep(path, "fig2")
    assert len(data.runs) == 2 * 98 + 6 and data.status_counts == {"pending": 1, "running": 0, "done": 202,
                                                                  "failed": 1}
    assert store.sweep_names(path) == ["fig2", "late"]
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and not p.name.endswith("-shm")}
    assert after == before
    writer.close()


def test_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="run store not found"):
        build_report(tmp_path / "nope.db", out_dir=tmp_path / "out")
    assert not (tmp_path / "nope.db").exists()
    (tmp_path / "text.db").write_text("not a database, just some text that is long enough " * 10)
    with pytest.raises(ValueError, match="not an SQLite database"):
        store.load_sweep(tmp_path / "text.db")
    sqlite3.connect(tmp_path / "empty.db").execute("CREATE TABLE runs (id INTEGER)").connection.close()
    with pytest.raises(ValueError, match="lacks the table.s. curves, sweeps"):
        store.load_sweep(tmp_path / "empty.db")
    path = make_store(tmp_path / "store.db", extra_sweep=True)
    with pytest.raises(ValueError, match="sweep 'fig3' is not in the store .*available sweeps: fig2, other"):
        build_report(path, "fig3", tmp_path / "out")
    with pytest.raises(ValueError, match="holds 2 sweeps; choose one .*: fig2, other"):
        build_report(path, out_dir=tmp_path / "out")
    with pytest.raises(ValueError, match="sweep 'other' has no finished runs yet .1 pending."):
        build_report(path, "other", tmp_path / "out")
    with pytest.raises(ValueError, match="delta must be"):
        build_report(path, "fig2", tmp_path / "out", delta=-1)
    with pytest.raises(ValueError, match="metric 'val_loss' is missing .* runs record: .*test_acc"):
        build_report(path, "fig2", tmp_path / "out", metric="val_loss")


def test_sections_hook_and_loss_metric(tmp_path):
    from matplotlib.figure import Figure

    db = sqlite3.connect(tmp_path / "lm.db")
    db.executescript(CONTRACT_SQL)
    db.execute("INSERT INTO sweeps VALUES ('lm', 'model = \"gpt\"', 0)")
    for k, (lr, wd) in enumerate([(a, b) for a in (3e-4, 6e-4) for b in (0.0, 0.1, 0.3)]):
        final = {"val_loss": 3.0 + 1000 * abs(lr - 6e-4) - wd, "train_loss": 3.0}
        db.execute("INSERT INTO runs (sweep, key, config, label, status, final) "
                   "VALUES ('lm', ?, ?, 'AdamW', 'done', ?)",
                   (f"k{k}", json.dumps({"lr": lr, "weight_decay": wd, "seed": 0}), json.dumps(final)))
    db.commit()
    db.close()
    figure = Figure(figsize=(3, 2))
    figure.add_subplot().plot([0, 1], [1, 0])
    png = figures.png_bytes(figure)
    sections = [
        Section("Verdict", "WD lowers the final loss.\n\nSecond paragraph.", [("a line", figure), ("bytes", png)],
                [{"claim": "lower loss", "holds": True}]),
        lambda data: Section(f"{len(data.runs)} runs", table=[{"n": len(data.runs)}]),
    ]
    result = build_report(tmp_path / "lm.db", None, tmp_path / "out", sections=sections)
    assert result.summary["metric"] == "val_loss"
    assert result.summary["methods"]["AdamW"]["best_metric"] == pytest.approx(2.7)
    assert "best val_loss" in result.table_text.splitlines()[0]
    text = result.html_path.read_text(encoding="utf-8")
    assert '<section id="section-verdict">' in text and "<p>Second paragraph.</p>" in text
    assert 'id="section-verdict-1"' in text and 'id="section-verdict-2"' in text
    assert "<td>lower loss</td><td class=\"num\">True</td>" not in text  # bools are not numbers
    assert "<td>lower loss</td><td>True</td>" in text and '<section id="section-6-runs">' in text
    assert (tmp_path / "out" / "section-verdict-2.png").read_bytes() == png


def test_cli(report, tmp_path, capsys):
    parser = build_parser("report")
    args = parser.parse_args(["report", str(report[1]), "--sweep", "fig2", "--out", str(tmp_path)])
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert "Adam + L2" in out and str(tmp_path / "report.html") in out
    args = parser.parse_args(["report", str(tmp_path / "missing.db")])
    assert args.handler(args) == 2
    assert "run store not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["report", "x.db", "--delta", "-1"])


def test_metric_values():
    # decaylab.sweep writes a non-finite metric as JSON null: a diverged run, not a missing metric
    assert analysis.metric_value({"test_acc": None}, "test_error") == math.inf
    assert analysis.metric_value({"test_acc": float("nan")}, "test_error") == math.inf
    assert analysis.metric_value({"test_acc": 0.75}, "test_error") == 0.25
    assert analysis.metric_value({"test_loss": 0.5}, "test_error") is None
    assert analysis.metric_value({"val_loss": 3.5}, "val_loss") == 3.5


def test_score_functions_directly():
    nan = float("nan")
    # a missing cell inside the good rectangle does not count against it
    error = np.array([[0.1, 0.1, 0.5], [0.1, nan, 0.5], [0.5, 0.5, 0.5]])
    assert separability(error, 0.01) == 1.0
    # the best λ grows with lr: slope +1
    grid = [1e-3, 1e-2, 1e-1]
    error = np.array([[0.1, 0.3, 0.3], [0.3, 0.1, 0.3], [0.3, 0.3, 0.1]])
    assert diagonal_slope(error, grid, grid) == pytest.approx(1.0)
    assert math.isnan(separability(np.full((2, 2), np.inf), 0.01))
    assert math.isnan(diagonal_slope(np.array([[0.1, 0.2]]), [1e-3], [1e-3, 1e-2]))


@pytest.mark.parametrize("module", [analysis, build, figures, html, store, schema])
def test_doctests(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0


def test_validation_selects_and_test_is_reported_for_the_selected_cell(tmp_path):
    from decaylab.store import SCHEMA

    path = tmp_path / "val.db"
    db = sqlite3.connect(path)
    db.executescript(SCHEMA)
    db.execute("INSERT INTO sweeps VALUES ('v', 'x', 0)")
    # the cell validation prefers (lr 1e-3) is not the one test would have picked (lr 1e-2)
    for k, (lr, val_acc, test_acc) in enumerate([(1e-3, 0.90, 0.50), (1e-2, 0.80, 0.95)]):
        final = {"val_acc": val_acc, "val_loss": 1 - val_acc, "test_acc": test_acc, "test_loss": 1 - test_acc}
        db.execute("INSERT INTO runs (sweep, key, config, label, status, final) VALUES ('v', ?, ?, 'A', 'done', ?)",
                   (f"k{k}", json.dumps({"lr": lr, "weight_decay": 0.1, "seed": 0}), json.dumps(final)))
    db.commit()
    db.close()
    result = build_report(path, out_dir=tmp_path / "out")
    row = result.summary["methods"]["A"]
    assert result.summary["metric"] == "val_error"
    assert row["best_lr"] == 1e-3 and row["best_test_acc"] == 0.50  # selected on validation, test reported
    assert "50.00" in result.table_text.splitlines()[1]
    html = result.html_path.read_text(encoding="utf-8")
    assert "validation error (%)" in html and "never selects what it judges" in html
