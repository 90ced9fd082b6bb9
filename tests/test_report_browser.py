"""The HTML report in headless Chromium: every figure decodes, and the page renders offline.

Needs Chromium on the PATH; it fails (not skips) without it:
``apt-get update && apt-get install -y chromium``.
"""
from __future__ import annotations

import json
import math
import re
import shutil
import sqlite3
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from decaylab.report import SCHEMA, build_report

INSTALL = "apt-get update && apt-get install -y chromium"


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(f"headless Chromium is needed to test the HTML report and none is on the PATH; install it: {INSTALL}")


def run_chromium(profile: Path, *args: str) -> subprocess.CompletedProcess:
    command = [
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # offline: a page that needs the network shows it here
        f"--user-data-dir={profile}", "--hide-scrollbars", *args,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"chromium failed ({done.returncode}): {done.stderr[-2000:]}"
    return done


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    db = sqlite3.connect(root / "store.db")
    db.executescript(SCHEMA)
    db.execute("INSERT INTO sweeps VALUES ('demo', 'lr = [1e-3, 1e-2]', 0)")
    grid = [1e-4, 1e-3, 1e-2, 1e-1]
    for label, surface in [("AdamW (torch)", lambda a, b: a * a + b * b), ("Adam + L2", lambda a, b: (a + b) ** 2)]:
        for lr in grid:
            for wd in grid:
                x, y = math.log10(lr) + 2.5, math.log10(wd) + 2.5
                error = 0.05 + 0.02 * surface(x, y)
                config = {"lr": lr, "weight_decay": wd, "seed": 0, "decay": "decoupled", "decay_scale": "lr"}
                run_id = db.execute(
                    "INSERT INTO runs (sweep, key, config, label, status, final) VALUES ('demo', ?, ?, ?, 'done', ?)",
                    (f"{label}{lr}{wd}", json.dumps(config), label, json.dumps({"test_acc": 1 - error})),
                ).lastrowid
                db.executemany("INSERT INTO curves VALUES (?, ?, ?, ?)", [
                    (run_id, step, metric, value) for step in (0, 50, 100) for metric, value in
                    {"train_loss": 1 / (1 + step), "test_loss": 1.2 / (1 + step), "weight_norm": 5 - step / 50,
                     "effective_lr": lr / (5 - step / 50)}.items()])
    db.commit()
    db.close()
    return build_report(root / "store.db", out_dir=root / "out")


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_every_figure_decodes_in_chromium(report, tmp_path):
    # A copy of the report with a script that records what the browser decoded; the report has none.
    probe = """<script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  document.body.setAttribute("data-loaded", images.filter(function (i) {
    return i.complete && i.naturalWidth > 0; }).length + "/" + images.length);
  document.body.setAttribute("data-sizes", images.map(function (i) {
    return i.id + ":" + i.naturalWidth + "x" + i.naturalHeight; }).join(","));
});
</script>
</body>"""
    page = tmp_path / "probe.html"
    page.write_text(report.html_path.read_text(encoding="utf-8").replace("</body>", probe), encoding="utf-8")
    done = run_chromium(tmp_path / "profile", "--run-all-compositor-stages-before-draw",
                        "--virtual-time-budget=5000", "--dump-dom", page.as_uri())
    loaded = re.search(r'data-loaded="(\d+)/(\d+)"', done.stdout)
    assert loaded, f"the page script did not run; DOM starts: {done.stdout[:500]}"
    assert loaded.group(1) == loaded.group(2) == str(len(report.png_paths)) == "5"
    sizes = dict(item.split(":") for item in re.search(r'data-sizes="([^"]*)"', done.stdout).group(1).split(","))
    expected = {path.stem: "{}x{}".format(*_png_size(path.read_bytes())) for path in report.png_paths}
    assert sizes == expected
    assert "<title>decaylab report: demo</title>" in done.stdout and 'id="summary-table"' in done.stdout


def test_screenshot_is_not_blank(report, tmp_path):
    from matplotlib.image import imread

    shot = tmp_path / "report.png"
    run_chromium(tmp_path / "profile", "--window-size=1280,2200", "--virtual-time-budget=5000",
                 f"--screenshot={shot}", report.html_path.as_uri())
    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (2200, 1280)
    not_white = (pixels < 0.95).any(axis=-1).mean()
    rgb = (pixels * 255).astype(np.uint32)
    colours = len(np.unique(rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2]))
    assert not_white > 0.05 and colours > 200, (not_white, colours)
