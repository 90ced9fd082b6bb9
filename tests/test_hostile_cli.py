"""Issue 15, items 9 and 10 on the command line: one line (not a traceback) for an output path that
cannot be written (checked before training), a truncated or garbage checkpoint, Ctrl-C and SIGTERM in
``decaylab train``, a spec or config that is not UTF-8, CIFAR-10 offline; valid JSON from
``decaylab train --out`` for a diverged run."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from decaylab.cli import main
from decaylab.train import RunResult, TrainConfig

TINY = ["--steps", "4", "--batch_size", "64", "--quiet"]
MAIN = "import sys; from decaylab.cli import main; sys.exit(main())"


def offline(env: dict, data: Path) -> dict:
    """Data in a fresh folder, and every download refused (a proxy on a closed port): CIFAR-10 offline."""
    return {**env, "DECAYLAB_DATA": str(data), "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9",
            "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "no_proxy": "", "NO_PROXY": ""}


@pytest.fixture
def no_training(monkeypatch):
    """Training that fails the test: what must be refused before training never gets there."""
    import decaylab.train.distributed as distributed

    def train(*args, **kwargs):
        raise AssertionError("trained before the output paths were checked")

    monkeypatch.setattr(distributed, "train_distributed", train)


# ---------------------------------------------------------------------------------------------- item 9


def test_item9_train_output_paths_are_checked_before_training(tmp_path, no_training, capsys):
    folder = tmp_path / "a-folder"
    folder.mkdir()
    assert main(["train", *TINY, "--out", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err == f"decaylab train: error: --out {folder}: is a folder; give the path of a file\n"
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert main(["train", *TINY, "--out", str(a_file / "result.json")]) == 2
    assert f"--out {a_file / 'result.json'}: its folder {a_file}: is a file, not a folder" in capsys.readouterr().err
    assert main(["train", *TINY, "--checkpoint-dir", str(a_file)]) == 2
    assert capsys.readouterr().err == (f"decaylab train: error: --checkpoint-dir {a_file}: is a file, not a folder; "
                                       "give a folder (made if missing)\n")


def test_item9_a_truncated_or_garbage_checkpoint_is_one_line(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    assert main(["train", *TINY, "--checkpoint-dir", str(ckpt)]) == 0
    [path] = ckpt.glob("*.pt")
    capsys.readouterr()
    good = path.read_bytes()
    for damaged in (good[: len(good) // 2], b"garbage, not a checkpoint" * 10, b""):
        path.write_bytes(damaged)
        assert main(["train", *TINY, "--checkpoint-dir", str(ckpt), "--resume"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"checkpoint {path} cannot be loaded safely" in err, err
    path.write_bytes(good)  # the checkpoint decaylab wrote still resumes (data only: weights_only)
    assert main(["train", *TINY, "--checkpoint-dir", str(ckpt), "--resume"]) == 0


def test_item9_a_full_disk_while_training_is_one_line_and_keeps_the_result(tmp_path, monkeypatch, capsys):
    import errno

    import torch

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "ckpt" / "x.tmp"))

    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", full)
        assert main(["train", *TINY, "--checkpoint-dir", str(tmp_path / "ckpt")]) == 1
    assert capsys.readouterr().err == f"decaylab train: error: No space left on device: {tmp_path / 'ckpt' / 'x.tmp'}\n"
    monkeypatch.setattr(Path, "write_text", full)
    assert main(["train", *TINY, "--out", str(tmp_path / "result.json")]) == 1
    captured = capsys.readouterr()
    assert "could not write the result (No space left on device); it was printed to stdout instead" in captured.err
    assert json.loads(captured.out.split("\ndecaylab train:")[0])["final"]["steps"] == 4.0


@pytest.mark.parametrize("how, said", [(signal.SIGINT, "interrupted: stopped at step"),
                                       (signal.SIGTERM, "interrupted by SIGTERM: stopped at step")])
def test_item9_ctrl_c_and_sigterm_stop_train_with_one_line(tmp_path, how, said):
    ckpt = tmp_path / "ckpt"
    cmd = [sys.executable, "-c", MAIN, "train", "--steps", "1000000", "--batch_size", "64", "--quiet",
           "--checkpoint-dir", str(ckpt), "--checkpoint-every", "5"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and not list(ckpt.glob("*.pt")):
            time.sleep(0.05)  # the first checkpoint: training is under way
        proc.send_signal(how)
        _, err = proc.communicate(timeout=180)  # generous: a loaded 2-core machine
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert err.count("\n") == 1 and said in err and "--resume with --checkpoint-dir" in err, err


def test_item9_demo_checks_its_output_folder_before_training(tmp_path, monkeypatch, capsys):
    import decaylab.sweep

    def run_sweep(*args, **kwargs):
        raise AssertionError("the demo trained before checking --out")

    monkeypatch.setattr(decaylab.sweep, "run_sweep", run_sweep)
    out = tmp_path / "report.html"
    out.write_text("a file")
    assert main(["demo", "--store", str(tmp_path / "runs" / "demo.sqlite"), "--out", str(out)]) == 2
    assert capsys.readouterr().err == (f"decaylab demo: error: --out {out}: is a file, not a folder; give a folder "
                                       "(made if missing)\n")
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("x")
    assert main(["demo", "--store", str(a_file / "demo.sqlite")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_item9_a_spec_or_config_that_is_not_utf8_names_the_file(tmp_path, capsys):
    spec = tmp_path / "latin1.toml"
    spec.write_bytes('name = "décroissance"\n'.encode("latin-1"))
    assert main(["sweep", str(spec), "--store", str(tmp_path / "runs.sqlite")]) == 2
    err = capsys.readouterr().err
    assert err == (f"decaylab sweep: error: sweep spec file {str(spec)!r} is not UTF-8 text (byte 0xe9 at offset 9); "
                   "save it as UTF-8\n")
    assert main(["train", str(spec), *TINY]) == 2
    assert f"config file {str(spec)!r} is not UTF-8 text (byte 0xe9 at offset 9)" in capsys.readouterr().err


def test_item9_cifar10_offline_is_one_message(tmp_path, monkeypatch, capsys):
    cmd = [sys.executable, "-c", MAIN, "train", "--dataset", "cifar10", "--model", "resnet20", *TINY]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=offline(dict(os.environ),
                                                                                       tmp_path / "data"))
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("decaylab train: error: dataset 'cifar10': ")
    spec = tmp_path / "cifar.toml"
    spec.write_text('name = "c"\n[base]\ndataset = "cifar10"\nmodel = "resnet20"\nsteps = 2\n[grid]\nlr = [0.1]\n')
    for name, value in offline({}, tmp_path / "data").items():
        monkeypatch.setenv(name, value)
    assert main(["sweep", str(spec), "--store", str(tmp_path / "runs.sqlite"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.splitlines()[-1].startswith("decaylab sweep: error: dataset 'cifar10': ")


# ---------------------------------------------------------------------------------------------- item 10


def test_item10_train_out_is_valid_json_for_a_diverged_run(tmp_path, monkeypatch, capsys):
    import decaylab.train.distributed as distributed

    def diverging(config, **kwargs):
        final = {"train_loss": math.nan, "test_loss": math.nan, "test_acc": 0.102, "steps": 4.0}
        return RunResult(config, final, [{"step": 2, "train_loss": 2.3}, {"step": 4, "train_loss": math.nan}])

    monkeypatch.setattr(distributed, "train_distributed", diverging)
    out = tmp_path / "result.json"
    assert main(["train", *TINY, "--out", str(out)]) == 0

    def no_bare_constants(token):
        raise AssertionError(f"--out holds a bare {token} token: not JSON")

    result = json.loads(out.read_text(), parse_constant=no_bare_constants)
    assert result["final"] == dict.fromkeys(["train_loss", "test_loss", "test_acc", "steps"])
    assert result["diverged"] == "train_loss is nan" and result["curves"][1]["train_loss"] is None
    assert TrainConfig.from_dict(result["config"]).steps == 4
    assert "(diverged: train_loss is nan)" in capsys.readouterr().out
