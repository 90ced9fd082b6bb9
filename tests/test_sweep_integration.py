"""decaylab.sweep with the real decaylab.train: a tiny MNIST-1D sweep, stacked and one at a time."""
from __future__ import annotations

import math

import pytest

from decaylab.sweep import LocalExecutor, Store, format_status, load_spec, run_sweep

train = pytest.importorskip("decaylab.train", reason="decaylab.train is not written yet")
if not all(hasattr(train, name) for name in ("TrainConfig", "train", "train_stacked")):
    pytest.skip("decaylab.train is not written yet", allow_module_level=True)

SPEC = """
name = "tiny"
[base]
dataset = "mnist1d"
model = "mlp"
steps = 12
batch_size = 64
eval_every = 6
schedule = "cosine"
[grid]
lr = [3e-3, 1e-2]
weight_decay = [0.0, 0.1]
[[methods]]
label = "AdamW (torch)"
decay = "decoupled"
[[methods]]
label = "ProxAdam"
decay = "prox"
"""


def test_real_training_into_the_store(tmp_path):
    path = tmp_path / "runs.sqlite"
    spec = load_spec(SPEC)  # the real TrainConfig
    assert all(isinstance(c, train.TrainConfig) for _, c in spec.configs())
    summary = run_sweep(spec, path, stack=4, progress=False, limit=4)  # one stacked group: AdamW's 4 runs
    assert (summary.trained, summary.failed, summary.remaining) == (4, 0, 4)
    summary = run_sweep(spec, path, stack=1, progress=False)  # ProxAdam one at a time with train.train
    assert (summary.trained, summary.failed, summary.skipped, summary.remaining) == (4, 0, 4, 0)
    store = Store(path)
    runs = store.runs("tiny")
    assert [r["status"] for r in runs] == ["done"] * 8
    assert [r["label"] for r in runs] == ["AdamW (torch)"] * 4 + ["ProxAdam"] * 4
    for run in runs:
        final = run["final"]
        assert 0 <= final["test_acc"] <= 1 and math.isfinite(final["test_loss"]) and final["weight_norm"] > 0
        assert train.TrainConfig.from_dict(run["config"]).key() == run["key"]
        curves = store.curves(run["id"])
        assert [step for step, _ in curves["test_loss"]][-1] == 12 and len(curves["test_loss"]) >= 2
    assert "ProxAdam" in format_status(store)
    assert run_sweep(spec, path, progress=False).trained == 0  # everything is done: nothing is trained again


def test_worker_processes_give_the_same_results(tmp_path):
    """processes=2: two worker processes (one torch thread each) train the groups the driver submits;
    every run is trained exactly once, and the results equal a one-process sweep's."""
    spec = load_spec(SPEC.replace("steps = 12", "steps = 30"))
    one, two = tmp_path / "one.sqlite", tmp_path / "two.sqlite"
    run_sweep(spec, one, stack=1, progress=False)
    summary = run_sweep(spec, two, stack=1, progress=False, processes=2)
    assert (summary.trained, summary.failed, summary.remaining) == (8, 0, 0)
    finals = {}
    for path in (one, two):
        with Store(path) as store:
            runs = store.runs("tiny")
            assert [r["status"] for r in runs] == ["done"] * 8
            finals[path] = {r["key"]: {k: v for k, v in r["final"].items() if k != "wall_s"} for r in runs}
    # one torch thread per process vs the default threads: sums in another order, same runs
    assert finals[one].keys() == finals[two].keys()
    for key, final in finals[one].items():
        assert final == pytest.approx(finals[two][key], rel=1e-6)


def test_processes_argument_is_checked(tmp_path):
    with pytest.raises(ValueError, match="processes must be an integer >= 1"):
        run_sweep(load_spec(SPEC), tmp_path / "s.sqlite", processes=0)
    with pytest.raises(ValueError, match="processes must be 1 with an executor"):
        run_sweep(load_spec(SPEC), tmp_path / "s.sqlite", processes=2, executor=LocalExecutor())
