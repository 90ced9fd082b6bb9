"""decaylab reproduce scale-free: the exact iterate test, the BN half's paired gap and equivalence test,
premises, the verdict both ways, and the specs."""
from __future__ import annotations

import doctest
import math

import pytest
from _stores import fill_store

from decaylab.reproduce import get
from decaylab.reproduce import scale_free as SF
from decaylab.reproduce.core import SPEC_DIR, claim_numbers, spec_seeds
from decaylab.sweep import load_spec

pytestmark = pytest.mark.usefixtures("one_thread")


def test_doctests() -> None:
    result = doctest.testmod(SF)
    assert result.attempted >= 8 and result.failed == 0


# ------------------------------------------------------------------------------------------- specs


@pytest.mark.parametrize("scale", ["small", "paper"])
def test_specs_load_with_their_claim_keys(scale):
    spec = get("scale-free").spec(scale)
    assert spec_seeds(spec) >= 3
    claim = spec.claim
    assert set(SF.CLAIM_KEYS) <= set(claim) and claim["max_seeds"] >= spec_seeds(spec)
    assert all(claim[k] > 0 for k in SF.CLAIM_KEYS)
    assert claim_numbers(spec, SF.CLAIM_KEYS, positive=True)  # the analysis accepts it
    configs = [c for _, c in spec.configs()]
    assert {SF.has_batchnorm(model) for model in {c.model for c in configs}} == {False, True}
    assert {c.decay for c in configs} == {"l2", "decoupled"}
    assert all(0.0 in {c.weight_decay for _, c in spec.configs() if _ == label} for label in {lab for lab, _ in
                                                                                              spec.configs()})


@pytest.mark.parametrize("scale", ["small", "paper"])
def test_iterate_specs_pair_every_run_with_its_unscaled_twin(scale):
    spec = load_spec(SPEC_DIR / SF.ITERATE_SPECS[scale])
    assert spec_seeds(spec) >= 3
    runs = spec.configs()
    scales = {SF.loss_scale(c) for _, c in runs}
    assert 1.0 in scales and len(scales) >= 2 and all(SF.is_power_of_two(c) for c in scales)
    assert all(c.eps <= 1e-20 for _, c in runs)
    assert spec.claim["changed"] > 0
    expected = {label: SF.expected_scale_free(c) for label, c in runs}
    assert expected == {"Adam": True, "AdamW": True, "ProxAdam": True, "Adam+L2": False,
                        "AdamP (Euclidean prox)": False}


def test_the_deep_mlp_has_gradients_of_many_scales_and_its_bn_twin_does_not():
    deep, twin = SF.gradient_spread("mlp-deep"), SF.gradient_spread("mlp-deep-bn")
    assert deep >= 10 * twin and twin < 10
    assert SF.has_batchnorm("mlp-deep-bn") and not SF.has_batchnorm("mlp-deep")


# ------------------------------------------------------------------------------------------- claim 1


def _it_runs(free_abs: float, other_final: float) -> dict:
    runs = {}
    for seed in range(3):
        for c in (16.0, 128.0):
            runs[("AdamW", c, seed)] = {"max_abs": free_abs if seed == 2 else 0.0, "final": 0.0, "scale_free": True}
            runs[("Adam+L2", c, seed)] = {"max_abs": 0.5, "final": other_final, "scale_free": False}
        runs[("AdamW", 1.0, seed)] = {"max_abs": 0.0, "final": 0.0, "scale_free": True}
    return runs


@pytest.mark.parametrize("free_abs, other_final, held", [
    (0.0, 0.3, True), (1e-9, 0.3, False), (0.0, 0.005, False), (1e-9, 0.005, False)])
def test_judge_iterates_is_exact(free_abs, other_final, held):
    got, numbers = SF.judge_iterates(_it_runs(free_abs, other_final), changed=0.01)
    assert got is held
    assert numbers["identical"] is (free_abs == 0.0) and numbers["others_moved"] is (other_final >= 0.01)
    assert numbers["runs_scale_free"] == 6 and numbers["runs_others"] == 6  # c = 1 is the reference, not judged


def test_iterate_premises():
    ok = SF.iterate_premises({"scales": [16.0, 128.0], "eps_ratio": 1e-22})
    assert all(p.held for p in ok)
    bad = SF.iterate_premises({"scales": [10.0, 128.0], "eps_ratio": 1e-6})
    assert [p.held for p in bad] == [False, False]


# ------------------------------------------------------------------------------------------- claim 2


def test_judge_batchnorm_both_ways_and_undecided():
    beats, tie = 0.01, 0.01
    held, numbers = SF.judge_batchnorm([0.03, 0.025, 0.035, 0.03], [0.0, 0.0, 0.0, 0.0], beats=beats, tie=tie)
    assert held is True and numbers["tie_with_bn"] is True  # identical cells: an exact tie
    held, numbers = SF.judge_batchnorm([0.002, 0.0, -0.002], [0.0, 0.001, -0.001], beats=beats, tie=tie)
    assert held is False and numbers["beats_without_bn"] is False
    held, numbers = SF.judge_batchnorm([0.03, 0.025, 0.035], [0.03, 0.035, 0.04], beats=beats, tie=tie)
    assert held is False and numbers["tie_with_bn"] is False  # AdamW wins with BN too: no tie
    # a gap whose interval merely contains 0 is not a tie
    held, numbers = SF.judge_batchnorm([0.03, 0.025, 0.035], [0.03, -0.03, 0.01], beats=beats, tie=tie)
    assert held is None and numbers["tie_with_bn"] is None


def _world(no_bn_gain: float, bn_gain: float, decay_helps: float = 0.03):
    """Accuracy over each arm's grid: a bowl in log lr around the middle lr, decay helping by
    ``decay_helps`` at the middle λ; AdamW gains ``no_bn_gain`` / ``bn_gain`` over Adam+L2."""
    def final_of(label, c):
        bn = "BN)" in label and "no BN" not in label
        lrs = sorted({x.lr for lab, x in SPEC.configs() if lab == label})
        lams = sorted({x.weight_decay for lab, x in SPEC.configs() if lab == label})
        i, j = lrs.index(c.lr), lams.index(c.weight_decay)
        acc = 0.6 - 0.05 * abs(i - 1) + (decay_helps if j == 1 else 0.0) - (0.05 if j == len(lams) - 1 else 0.0)
        if c.decay == "decoupled":
            acc += bn_gain if bn else no_bn_gain
        noise = 0.002 * ((c.seed * 7) % 5 - 2)
        return {"val_acc": acc + noise, "test_acc": acc + noise + 0.001 * (c.seed % 2), "train_acc": acc + 0.2,
                "test_loss": 1.0, "val_loss": 1.0, "train_loss": 0.5}

    return final_of


SPEC = get("scale-free").spec("small")

TINY_ITERATES = """
name = "tiny-iterates"
[claim]
changed = 0.01
[base]
dataset = "mnist1d"
model = "mlp"
optimizer = "adam"
eps = 1e-30
lr = 0.01
steps = 20
batch_size = 64
[grid]
callbacks = [[], ["loss_scale:16"]]
seed = [0, 1, 2]
[[methods]]
label = "AdamW"
decay = "decoupled"
weight_decay = 0.3
[[methods]]
label = "Adam+L2"
decay = "l2"
weight_decay = 5e-4
"""


@pytest.fixture
def tiny_iterates(tmp_path, monkeypatch):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_ITERATES)
    monkeypatch.setitem(SF.ITERATE_SPECS, "small", path)  # an absolute path replaces SPEC_DIR's
    return path


@pytest.mark.parametrize("no_bn_gain, bn_gain, decay_helps, status", [
    (0.03, 0.0, 0.03, "HELD"),
    (0.0, 0.0, 0.03, "DID NOT HOLD"),  # no gain without BN
    (0.03, 0.03, 0.03, "DID NOT HOLD"),  # AdamW also wins with BN: no tie
    (0.03, 0.0, 0.0, "PREMISE NOT MET"),  # decay does not matter: nothing for its form to win
])
def test_analyze_both_ways_and_a_premise(tmp_path, tiny_iterates, no_bn_gain, bn_gain, decay_helps, status):
    store = tmp_path / "s.sqlite"
    fill_store(store, SPEC, _world(no_bn_gain, bn_gain, decay_helps))
    verdict = SF.analyze(store, SPEC, "small")
    assert verdict.numbers["iterates"]["held"] is True  # real training: AdamW bitwise unchanged, Adam+L2 moved
    assert verdict.status == status, verdict.line
    assert verdict.line.startswith(f"scale-free: {status}")
    if status == "PREMISE NOT MET":
        assert "decay matters without BN" in verdict.line and "judged where its premises held: iterates held" in \
            verdict.line and "AdamW − Adam+L2" not in verdict.line  # the BN half is not judged
    else:
        assert "bitwise identical" in verdict.line and f"inside ±{100 * SPEC.claim['tie']:g}" in verdict.line
    names = [p.name for p in verdict.premises]
    assert names == ["ε / smallest nonzero √v", "loss scales powers of two", "gradient scales without BN",
                     "selected cells on a grid edge", "decay matters without BN"]
    assert verdict.seeds == spec_seeds(SPEC) and verdict.numbers["selection"] == "validation"
    assert len(verdict.sections) == 2 and all(s.figures and s.table for s in verdict.sections)


def test_an_optimum_on_the_lr_edge_is_a_premise_not_met(tmp_path, tiny_iterates):
    store = tmp_path / "s.sqlite"
    base = _world(0.03, 0.0)

    def final_of(label, c):  # the largest lr is best everywhere
        out = base(label, c)
        bump = 0.2 if c.lr == max(x.lr for lab, x in SPEC.configs() if lab == label) else 0.0
        return {**out, "val_acc": out["val_acc"] + bump, "test_acc": out["test_acc"] + bump}

    fill_store(store, SPEC, final_of)
    verdict = SF.analyze(store, SPEC, "small")
    assert verdict.status == "PREMISE NOT MET" and "selected cells on a grid edge 4" in verdict.line


def test_select_cell_uses_validation_not_test():
    cells = {(0.1, 0.0): {0: {"val_acc": 0.6, "test_acc": 0.9}, 1: {"val_acc": 0.6, "test_acc": 0.9}},
             (0.1, 1.0): {0: {"val_acc": 0.7, "test_acc": 0.5}, 1: {"val_acc": 0.7, "test_acc": 0.5}}}
    assert SF.select_cell(cells) == (0.1, 1.0)
    cells[(0.1, 1.0)][1]["val_acc"] = math.nan  # a diverged seed makes the cell worst
    assert SF.select_cell(cells) == (0.1, 0.0)


def test_runs_of_an_older_spec_text_in_the_store_are_ignored(tmp_path, tiny_iterates):
    text = (SF.SPEC_DIR / "scale-free.toml").read_text()
    wider = load_spec(text.replace("lr = [1e-2, 3e-2, 1e-1, 3e-1]", "lr = [1e-2, 3e-2, 1e-1, 3e-1, 1.0]"))
    assert len(wider.configs()) > len(SPEC.configs())
    base = _world(0.03, 0.0)

    def final_of(label, c):  # lr 1.0 (not in SPEC) would be selected, on the grid's edge, if it were read
        if c.lr == 1.0:
            return {"val_acc": 0.99, "test_acc": 0.99, "train_acc": 1.0, "test_loss": 0.1, "val_loss": 0.1,
                    "train_loss": 0.1}
        return base(label, c)

    store = tmp_path / "s.sqlite"
    fill_store(store, wider, final_of)
    verdict = SF.analyze(store, SPEC, "small")
    assert verdict.status == "HELD", verdict.line
