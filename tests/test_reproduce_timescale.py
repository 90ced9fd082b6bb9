"""decaylab reproduce timescale: nested training subsets, the statistic, the verdict both ways, premises, the run."""
from __future__ import annotations

import doctest
import json
import math
import sqlite3

import pytest
import torch

from decaylab import data
from decaylab.data import TensorData
from decaylab.reproduce import core, get
from decaylab.reproduce import timescale as T
from decaylab.reproduce.core import spec_seeds

pytestmark = pytest.mark.usefixtures("one_thread")

BUILTIN = {"mnist1d", "digits", "pystdlib-text", "cifar10", "cifar100", "openwebtext", "tinystories"}


def test_doctests() -> None:
    from decaylab.reproduce import stats

    for module in (T, stats):  # row_optimum, the statistic, lives in stats (decoupling uses it too)
        result = doctest.testmod(module)
        assert result.attempted >= 1 and result.failed == 0
    assert T.row_optimum is stats.row_optimum


# ------------------------------------------------------------------------------------------- data


def _toy(n_train: int = 40, n_test: int = 7) -> TensorData:
    x = torch.arange(n_train, dtype=torch.float32)[:, None].repeat(1, 3)
    return TensorData(x, torch.arange(n_train) % 3, -torch.ones(n_test, 3), torch.zeros(n_test, dtype=torch.int64),
                      num_classes=3, name="toy", x_val=-2 * torch.ones(n_test, 3),
                      y_val=torch.zeros(n_test, dtype=torch.int64))


def test_training_subsets_are_deterministic_and_nested() -> None:
    full = _toy()
    small, large = full.train_subset(5), full.train_subset(30)
    again = full.train_subset(5)
    assert torch.equal(small.x_train, again.x_train) and small.meta == again.meta
    ids = lambda x: set(x[:, 0].long().tolist())  # noqa: E731 -- example i has features (i, i, i)
    assert ids(small.x_train) <= ids(large.x_train)  # the ×1 subset is part of the ×6 one
    assert small.x_train[:, 0].tolist() == sorted(small.x_train[:, 0].tolist())  # in the dataset's own order
    # validation and test are the dataset's own, the same for every size
    assert torch.equal(small.x_val, full.x_val) and torch.equal(large.x_test, full.x_test)
    with pytest.raises(ValueError, match="train_examples must be an integer from 1 to 40"):
        full.train_subset(41)


def test_train_examples_trains_on_the_subset() -> None:
    from decaylab.train import TrainConfig
    from decaylab.train.data import load_data, steps_per_epoch

    config = TrainConfig(dataset="mnist1d", train_examples=750, batch_size=100)
    subset = load_data(config)
    assert (subset.n_train, subset.n_val, subset.n_test) == (750, 1000, 1000)
    assert steps_per_epoch(config, subset) == 7 and load_data(config) is subset  # loaded once per process
    assert config.stack_key() != config.replace(train_examples=1500).stack_key()
    assert {info.name for info in data.available()} == BUILTIN  # nothing registered for it


# ------------------------------------------------------------------------------------------- statistics


def test_row_optimum_by_hand() -> None:
    lams = [0.1, 0.2, 0.4, 0.8]
    # symmetric neighbours: the vertex is the grid point itself
    assert T.row_optimum(lams, [3.0, 2.0, 1.0, 2.0]) == pytest.approx(0.4)
    # y = (log2 λ − log2 0.3)² sampled on the grid: the parabola recovers 0.3 exactly
    ys = [(math.log2(x) - math.log2(0.3)) ** 2 for x in lams]
    assert T.row_optimum(lams, ys) == pytest.approx(0.3)
    assert T.row_optimum(lams, [1.0, 2.0, 3.0, 4.0]) is None and T.row_optimum(lams, [4, 3, 2, 1]) is None
    assert T.row_optimum(lams, [3.0, math.nan, 1.0, math.inf]) == pytest.approx(0.4)  # diverged runs are worst


def _losses(lam_star, seeds=5, noise=0.02, sizes=(750, 1500, 3000), lrs=(1e-3, 2e-3, 4e-3),
            lams=tuple(0.1 * 2 ** i for i in range(9)), flat=False):
    """Validation losses of a quadratic bowl in log λ around lam_star(n, lr), with seed noise."""
    gen = torch.Generator().manual_seed(0)
    out = {}
    for n in sizes:
        for lr in lrs:
            for s in seeds if isinstance(seeds, range) else range(seeds):
                shift = noise * float(torch.randn(1, generator=gen))
                for lam in lams:
                    bowl = 0.0 if flat else 0.1 * (math.log(lam) - math.log(lam_star(n, lr))) ** 2
                    out[(n, lr, lam, s)] = 1.0 + bowl + shift + 1e-3 * float(torch.randn(1, generator=gen))
    return out


def test_judge_holds_when_the_optimum_keeps_tau_constant() -> None:
    j = T.judge(threshold=-0.5, losses=_losses(lambda n, lr: 2.0 / (n * lr) * 1.5))  # λ* ∝ 1/(N·lr): constant τ_epoch
    assert j.premise_failed == [] and j.held is True and j.parts == (True, True)
    assert j.slope_n.mean == pytest.approx(-1, abs=0.05) and j.slope_lr.mean == pytest.approx(-1, abs=0.05)


def test_judge_does_not_hold_when_the_optimal_lambda_stays_put() -> None:
    j = T.judge(threshold=-0.5, losses=_losses(lambda n, lr: 1.0))
    assert j.held is False and j.parts == (False, False) and abs(j.slope_n.mean) < 0.05


def test_judge_one_part_each_way() -> None:
    j = T.judge(threshold=-0.5, losses=_losses(lambda n, lr: 1000.0 / n))  # moves with N only (as measured)
    assert j.parts == (True, False) and j.held is False


def test_judge_premises() -> None:
    edge = T.judge(threshold=-0.5, losses=_losses(lambda n, lr: 50.0))  # beyond the grid's top
    assert edge.premise_failed == ["optima on an end of the λ grid"] and edge.held is None
    assert edge.premises[0].value == 45
    flat = T.judge(threshold=-0.5, losses=_losses(lambda n, lr: 1.0, flat=True, noise=0.0))
    assert "cells where decay does not matter" in flat.premise_failed and flat.held is None
    few = T.judge(threshold=-0.5, losses=_losses(lambda n, lr: 1.0, seeds=2))
    assert "seeds" in few.premise_failed and few.held is None
    with pytest.raises(ValueError, match="the grid is not complete: 1 runs missing"):
        losses = _losses(lambda n, lr: 1.0)
        losses.pop(next(iter(losses)))
        T.judge(losses, threshold=-0.5)


# ------------------------------------------------------------------------------------------- analyze


def _store(tmp_path, losses, name="reproduce-timescale"):
    from decaylab.store import SCHEMA

    path = tmp_path / "store.sqlite"
    db = sqlite3.connect(path)
    db.executescript(SCHEMA)
    db.execute("INSERT INTO sweeps VALUES (?, '', 0.0)", (name,))
    for i, ((n, lr, lam, s), loss) in enumerate(losses.items()):
        config = {"dataset": "mnist1d", "train_examples": n, "model": "mlp", "lr": lr, "weight_decay": lam,
                  "seed": s, "batch_size": 100, "epochs": 40, "decay": "decoupled", "decay_scale": "lr"}
        final = {"val_loss": loss, "val_acc": 0.55, "test_loss": loss + 0.1, "test_acc": 0.5, "train_loss": 0.3,
                 "train_acc": 0.9, "steps": 40 * n // 100}
        db.execute("INSERT INTO runs (sweep, key, config, label, status, final) VALUES (?, ?, ?, ?, 'done', ?)",
                   (name, f"k{i}", json.dumps(config), f"N={n}", json.dumps(final)))
    db.commit()
    db.close()
    return path


class _Spec:
    name = "reproduce-timescale"
    claim = {"threshold": -0.5}


@pytest.mark.parametrize("lam_star, status", [
    (lambda n, lr: 3.0 / (n * lr), "HELD"),
    (lambda n, lr: 1.0, "DID NOT HOLD"),
    (lambda n, lr: 50.0, "PREMISE NOT MET"),
])
def test_analyze_both_ways_and_premise_not_met(tmp_path, lam_star, status) -> None:
    verdict = T.analyze(_store(tmp_path, _losses(lam_star)), _Spec(), "small")
    assert verdict.status == status and verdict.line.startswith(f"timescale: {status} — ")
    numbers = verdict.numbers
    assert numbers["selection"] == "validation" and numbers["seeds"] == 5 and numbers["threshold"] == -0.5
    assert [p.name for p in verdict.premises] == ["optima on an end of the λ grid", "cells where decay does not matter"]
    assert all(set(p.plain()) >= {"name", "value", "threshold", "held"} for p in verdict.premises)
    assert len(numbers["cells"]) == 9
    # the test accuracy reported is that of the validation-selected runs (0.5 in every run here)
    assert {c["test accuracy of the selected runs"] for c in numbers["cells"]} == {"0.500 ± 0.000"}
    if status == "HELD":
        # τ*_epoch = B/(lr·λ*·N) = 100/3 epochs in every cell when λ* = 3/(N·lr) (up to the seeds' noise)
        assert [float(c["τ*_epoch"]) for c in numbers["cells"]] == pytest.approx([100 / 3] * 9, rel=0.02)
    if status == "PREMISE NOT MET":
        assert "optima on an end of the λ grid 45 ≤ 0: NOT MET" in verdict.line
    json.dumps(numbers)  # plain JSON data for verdict.json


# ------------------------------------------------------------------------------------------- specs and the run


@pytest.mark.parametrize("scale, base, sizes", [("small", "mnist1d", (750, 1500, 3000)),
                                                ("paper", "cifar10", (10000, 20000, 40000))])
def test_specs_train_on_nested_subsets(scale, base, sizes) -> None:
    spec = get("timescale").spec(scale)
    assert spec.name.startswith("reproduce-timescale") and spec_seeds(spec) >= 3
    assert {c.dataset for _, c in spec.configs()} == {base}
    assert {c.train_examples for _, c in spec.configs()} == set(sizes)
    assert {c.lr for _, c in spec.configs()} and len({c.weight_decay for _, c in spec.configs()}) == 9
    assert {info.name for info in data.available()} == BUILTIN


TINY = """
name = "reproduce-timescale-tiny"
[claim]
threshold = -0.5
[base]
model = "mlp"
optimizer = "adam"
decay = "decoupled"
epochs = 1
batch_size = 250
schedule = "constant"
[grid]
lr = [1e-3, 4e-3]
weight_decay = [0.1, 1.0, 10.0]
seed = [0, 1, 2]
[[methods]]
label = "N=750"
train_examples = 750
[[methods]]
label = "N=1500"
train_examples = 1500
[[methods]]
label = "N=3000"
train_examples = 3000
"""


def test_the_run_selects_on_validation_and_reports_test(tmp_path, monkeypatch) -> None:
    spec_file = tmp_path / "tiny.toml"
    spec_file.write_text(TINY)
    monkeypatch.setattr(core, "spec_path", lambda reproduction, scale: spec_file)
    verdict = get("timescale").run(store=tmp_path / "s.sqlite", out=tmp_path / "report", progress=False, processes=1)
    assert verdict.status in ("HELD", "DID NOT HOLD", "INCONCLUSIVE", "PREMISE NOT MET")
    record = json.loads((tmp_path / "report" / "verdict.json").read_text())
    assert record["status"] == verdict.status and record["numbers"]["selection"] == "validation"
    cells = record["numbers"]["cells"]
    assert len(cells) == 6 and all(c["test accuracy of the selected runs"] for c in cells)
