"""decaylab reproduce decoupling: the slope statistic, the verdict both ways, each premise, the spec, the demo."""
from __future__ import annotations

import math

import pytest
from _stores import fill_store

from decaylab.reproduce import decoupling as D
from decaylab.reproduce import demo, get
from decaylab.reproduce.core import spec_seeds

pytestmark = pytest.mark.usefixtures("one_thread")

CLAIM = {"threshold": 0.5, "min_gain": 0.05, "train_acc": 0.99, "min_efolds": 2.0}
LRS = [0.005, 0.01, 0.02, 0.04, 0.08, 0.16]
L2_LAMS = [10 ** (-5 + k / 2) for k in range(10)]
W_LAMS = [10 ** (-3.5 + k / 2) for k in range(7)]


def optimum(kind: str, lr: float, seed: int, center: float) -> float:
    """λ* (``center`` at lr 0.04): ``flat`` does not move with lr, ``diagonal`` falls as lr^-1.3 (each
    seed's slope off by ±0.1)."""
    tilt = 0.1 * (seed % 3 - 1)
    return center * (lr / 0.04) ** (tilt if kind == "flat" else -1.3 + tilt)


def val_loss(kind: str, lr: float, lam: float, seed: int, center: float = 1e-3) -> float:
    return 0.8 + 0.04 * (math.log10(lam / optimum(kind, lr, seed, center))) ** 2 + 0.1 * math.log10(lr / 0.04) ** 2


def world(l2: str, paper: str, *, train_acc: float = 1.0, paper_lams=W_LAMS, lrs=LRS, seeds=(0, 1, 2)):
    losses = {D.COUPLED: {(lr, lam, s): val_loss(l2, lr, lam, s) for lr in lrs for lam in L2_LAMS for s in seeds},
              D.DECOUPLED: {(lr, lam, s): val_loss(paper, lr, lam, s, 0.007) for lr in lrs for lam in paper_lams
                            for s in seeds}}
    accs = {label: {k: train_acc for k in grid} for label, grid in losses.items()}
    efolds = {(lr, lam): 465 * lam for lr in lrs for lam in paper_lams}  # cosine over 930 steps
    return losses, accs, efolds


def test_method_slopes_reads_a_diagonal_and_a_flat_row_set():
    losses, _, _ = world("diagonal", "flat")
    l2 = D.method_slopes(D.COUPLED, losses[D.COUPLED], min_gain=0.05)
    w = D.method_slopes(D.DECOUPLED, losses[D.DECOUPLED], min_gain=0.05)
    assert l2.rows == LRS and not l2.edges and l2.best[0] == 0.04
    assert l2.slopes == pytest.approx([-1.4, -1.3, -1.2], abs=0.08)  # the parabola recovers λ* between grid points
    assert w.slopes == pytest.approx([-0.1, 0.0, 0.1], abs=0.08)
    assert l2.optima[0.04][1] == pytest.approx(1e-3, rel=0.15)
    torch_view = w.in_torch_convention()
    assert torch_view.slopes == pytest.approx([s - 1 for s in w.slopes]) and torch_view.derived_from == D.DECOUPLED


def test_rows_where_lambda_does_not_matter_are_left_out():
    losses, _, _ = world("diagonal", "flat")
    flat_row = {k: (0.9 if k[0] == 0.005 else v) for k, v in losses[D.COUPLED].items()}  # λ changes nothing at 0.005
    m = D.method_slopes(D.COUPLED, flat_row, min_gain=0.05)
    assert m.rows == LRS[1:] and m.gains[0.005] == pytest.approx(0.0)


@pytest.mark.parametrize("l2, paper, held", [("diagonal", "flat", True), ("flat", "diagonal", False),
                                             ("diagonal", "diagonal", False)])
def test_judge_both_ways(l2, paper, held):
    j = D.judge(*world(l2, paper), CLAIM)
    assert not j.premise_failed, [p.text() for p in j.premises]
    assert j.held is held and j.effect.n == 3
    expected = {("diagonal", "flat"): 1.3, ("flat", "diagonal"): -1.3, ("diagonal", "diagonal"): 0.0}[(l2, paper)]
    assert j.effect.mean == pytest.approx(expected, abs=0.1)


def test_judge_is_undecided_when_the_seeds_disagree():
    losses, accs, efolds = world("diagonal", "flat")
    # seed 2's Adam+L2 grid is flat: effects ≈ 1.4, 1.3, 0 → an interval across the threshold
    losses[D.COUPLED].update({(lr, lam, 2): val_loss("flat", lr, lam, 2) for lr in LRS for lam in L2_LAMS})
    j = D.judge(losses, accs, efolds, CLAIM)
    assert not j.premise_failed and j.held is None and j.effect.low < 0.5 < j.effect.high


@pytest.mark.parametrize("case, failed", [
    ("train accuracy", "train accuracy without decay at the best lr"),
    ("edge", "λ* on an end of the λ grid in the rows used"),
    ("best lr", "best lr inside the lr grid (Adam+L2)"),
    ("strong smallest λ", "integrated decay at the smallest λ (AdamW (paper), e-folds)"),
    ("two seeds", "seeds"),
])
def test_a_premise_not_met_gives_no_verdict(case, failed):
    kwargs = {"train accuracy": {"train_acc": 0.95}, "edge": {"paper_lams": W_LAMS[:3]},
              "best lr": {"lrs": LRS[:4]}, "strong smallest λ": {"paper_lams": W_LAMS[2:]},
              "two seeds": {"seeds": (0, 1)}}[case]
    j = D.judge(*world("diagonal", "flat", **kwargs), CLAIM)
    assert j.held is None and failed in j.premise_failed and j.effect is None


def test_judge_needs_both_methods():
    losses, accs, efolds = world("diagonal", "flat")
    del losses[D.DECOUPLED]
    with pytest.raises(ValueError, match="compares 'Adam\\+L2' and 'AdamW \\(paper\\)'"):
        D.judge(losses, accs, efolds, CLAIM)


def test_integrated_decay_counts_the_schedule():
    config = {"lr": 0.04, "weight_decay": 0.01, "decay": "decoupled", "decay_scale": "schedule",
              "schedule": "cosine", "dataset": "mnist1d", "epochs": 30, "batch_size": 128}
    assert D.integrated_decay(config) == pytest.approx(0.01 * 930 / 2, rel=0.01)  # Σ cosine multipliers ≈ T/2
    assert D.integrated_decay({**config, "decay_scale": "lr"}) == pytest.approx(0.04 * 0.01 * 930 / 2, rel=0.01)


# ------------------------------------------------------------------------------------------- the spec and a store


def test_the_spec_loads_with_its_claim():
    spec = get("decoupling").spec("small")
    assert set(D.CLAIM_KEYS) <= set(spec.claim) and spec.claim["max_seeds"] >= spec_seeds(spec) >= 3
    assert spec.methods == [D.COUPLED, D.DECOUPLED]
    assert {c.model for _, c in spec.configs()} == {"mlp-bn"}
    paper = get("decoupling").spec("paper")
    assert set(D.CLAIM_KEYS) <= set(paper.claim) and spec_seeds(paper) >= 3


@pytest.mark.parametrize("l2, paper, status", [("diagonal", "flat", "HELD"), ("flat", "diagonal", "DID NOT HOLD")])
def test_analyze_on_a_store(tmp_path, l2, paper, status):
    spec = get("decoupling").spec("small")
    kind = {D.COUPLED: (l2, 1e-3), D.DECOUPLED: (paper, 0.007)}

    def final_of(label, c):
        loss = val_loss(kind[label][0], c.lr, c.weight_decay, c.seed, kind[label][1])
        return {"val_loss": loss, "test_acc": 1 - loss / 4, "train_acc": 1.0, "val_acc": 0.7, "test_loss": loss,
                "train_loss": 0.01, "weight_norm": 10.0}

    fill_store(tmp_path / "d.sqlite", spec, final_of)
    verdict = D.analyze(tmp_path / "d.sqlite", spec, "small")
    assert verdict.status == status, verdict.line
    assert verdict.line.startswith(f"decoupling: {status} — |slope| of log λ* against log lr")
    assert {p["name"] for p in [p.plain() for p in verdict.premises]} >= {"train accuracy without decay at the best lr"}
    methods = verdict.numbers["methods"]
    assert methods[D.TORCH]["derived_from"] == D.DECOUPLED  # AdamW (torch): the same runs, λ/lr
    assert methods[D.TORCH]["slope"]["mean"] == pytest.approx(methods[D.DECOUPLED]["slope"]["mean"] - 1)
    assert verdict.sections and verdict.sections[0].table and verdict.sections[0].figures


# ------------------------------------------------------------------------------------------- the demo


def test_the_demo_spec_has_a_scale_invariant_model_and_three_seeds():
    spec = demo.REPRODUCTION.spec()
    assert {c.model for _, c in spec.configs()} == {"mlp-bn"} and spec_seeds(spec) >= 3
    assert spec.methods == ["Adam+L2", "AdamW (torch)", "AdamW (paper)", "ProxAdam", "AdamP (Euclidean prox)"]


def test_the_demo_reports_the_slope_of_every_method(tmp_path):
    spec = demo.REPRODUCTION.spec()

    def final_of(label, c):
        if c.decay in ("l2", "prox_euclid"):  # through Adam's denominator: a diagonal
            loss = val_loss("diagonal", c.lr, c.weight_decay, c.seed, 1e-3)
        else:  # decoupled: the best decay per step η_t·λ_paper = (lr_t/lr)·λ_torch·lr does not move with lr
            loss = val_loss("flat", c.lr, c.weight_decay * (c.lr if c.decay_scale == "lr" else 1.0), c.seed, 0.02)
        return {"val_loss": loss, "test_acc": 1 - loss / 4, "train_acc": 1.0, "val_acc": 0.7, "test_loss": loss,
                "train_loss": 0.01, "weight_norm": 10.0}

    fill_store(tmp_path / "demo.sqlite", spec, final_of)
    verdict = demo.analyze(tmp_path / "demo.sqlite", spec, "small")
    assert verdict.status == "REPORTED" and not verdict.claim and verdict.seeds == 3
    slopes = {label: m["slope"]["mean"] for label, m in verdict.numbers["methods"].items()}
    assert list(slopes) == spec.methods
    assert slopes["Adam+L2"] == pytest.approx(-1.3, abs=0.1) and slopes["AdamP (Euclidean prox)"] < -1
    assert abs(slopes["AdamW (paper)"]) < 0.1 and slopes["AdamW (torch)"] == pytest.approx(-1, abs=0.1)
    assert "slope of log λ* vs log lr" in verdict.numbers["slope_table"] and "AdamW (paper)" in verdict.line
    assert verdict.sections and verdict.sections[0].figures
