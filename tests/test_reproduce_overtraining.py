"""decaylab reproduce overtraining ("Why WD", vision): the statistic, the verdict both ways, each premise, the specs."""
from __future__ import annotations

import doctest

import pytest
from _stores import fill_store

from decaylab.reproduce import get
from decaylab.reproduce import overtraining as O
from decaylab.reproduce.core import spec_seeds

pytestmark = pytest.mark.usefixtures("one_thread")

LARGE_ERR = {0.0: 0.30, 0.0005: 0.27, 0.001: 0.25, 0.002: 0.24, 0.004: 0.26, 0.01: 0.38}
SMALL_ERR = {0.0: 0.34, 0.0005: 0.33, 0.001: 0.32, 0.002: 0.32, 0.004: 0.33, 0.01: 0.40}


def world(*, small=None, large=None, val_best=None, jac_rising=False, train_acc=1.0, fit_up_to=0.002, noise=0.01,
          own=0.002):
    """Made-up runs: test error per (lr, λ) plus a per-seed offset shared by every cell (paired) and a little
    of each cell's own; validation error = test error + 0.02 (so validation selects the test optimum unless
    ``val_best`` moves it); ‖J‖_F falls with λ (rises with ``jac_rising``); runs with λ ≤ ``fit_up_to`` reach
    ``train_acc``, the others 70 %."""
    errs = {O.SMALL: {**SMALL_ERR, **(small or {})}, O.LARGE: {**LARGE_ERR, **(large or {})}}

    def result(label, c):
        lam = c.weight_decay
        if label == O.EMA:  # the large-lr phase alone: the iterate 3 points worse, its EMA 0.5 point worse
            err = errs[O.LARGE][lam] + noise * ((c.seed * 7) % 5 - 2) / 2
            return {"train_acc": 0.9, "test_acc": 1 - err - 0.03, "val_acc": 0.7, "train_loss": 0.3, "test_loss": 1.0,
                    "weight_norm": 10.0, "ema_test_acc": 1 - err - 0.005, "ema_val_acc": 0.7, "steps": c.steps}, []
        shared = noise * ((c.seed * 7) % 5 - 2) / 2
        mine = own * (((c.seed + round(lam * 1e4) % 7) * 3) % 5 - 2) / 2
        err = errs[label][lam] + shared + mine
        val = err + 0.02 - (0.2 if val_best is not None and lam == val_best and label == O.LARGE else 0.0)
        jac = 100.0 * (1 + 100 * lam) ** (1 if jac_rising else -1) + c.seed
        fit = train_acc if lam <= fit_up_to else 0.7
        final = {"train_acc": fit, "test_acc": 1 - err, "val_acc": 1 - val, "train_loss": 0.01, "test_loss": 1.0,
                 "weight_norm": 10.0, "jacobian_norm": jac, "steps": c.steps}
        return final, [{"step": c.steps // 2, "train_loss": 0.3}, {"step": c.steps, "train_loss": 0.01}]

    return result


def _verdict(tmp_path, store="s.sqlite", **kw):
    spec = get("overtraining").spec()
    return O.analyze(fill_store(tmp_path / store, spec, world(**kw)), spec, "small")


def test_doctests():
    assert doctest.testmod(O).failed == 0


def test_held(tmp_path):
    v = _verdict(tmp_path)
    assert v.status == "HELD", v.line
    assert v.line.startswith("overtraining: HELD — test error large lr + λ*=0.002")
    assert v.numbers["lambda_star_large"] == 0.002 and v.numbers["lambda_star_small"] in (0.001, 0.002)
    assert all(p["result"] == "held" for p in v.numbers["parts"].values()) and len(v.numbers["parts"]) == 5
    assert v.seeds == 5 and all(p.held for p in v.premises) and v.sections[0].table
    ema = v.numbers["ema_at_the_drop"]["λ=0.002"]["ema_minus_final"]  # reported: EMA at the drop − final
    assert ema["mean"] == pytest.approx(0.005, abs=1e-9) and ema["n"] == 5


@pytest.mark.parametrize("case", ["small lr ties", "jacobian rises", "flat top"])
def test_did_not_hold(tmp_path, case):
    kw = {"small lr ties": {"small": {0.001: 0.24, 0.002: 0.245}},
          "jacobian rises": {"jac_rising": True},
          "flat top": {"large": {0.01: 0.24}}}[case]
    v = _verdict(tmp_path, **kw)
    assert v.status == "DID NOT HOLD", v.line
    failed = [name for name, p in v.numbers["parts"].items() if p["result"] == "did not hold"]
    assert len(failed) == 1 and {"small lr ties": "below small lr", "jacobian rises": "‖J‖_F falls",
                                 "flat top": "below large lr, λ=0.01"}[case] in failed[0]


def test_undecided_when_the_seeds_disagree(tmp_path):
    v = _verdict(tmp_path, small={0.001: 0.25, 0.002: 0.25}, own=0.02)  # 1 point better, per-seed spread ±2
    assert v.status == "INCONCLUSIVE", v.line


@pytest.mark.parametrize("case, premise", [("underfit", "train accuracy of the compared cells"),
                                           ("edge", "selected λ inside the large-lr grid")])
def test_premises(tmp_path, case, premise):
    v = _verdict(tmp_path, **({"train_acc": 0.95} if case == "underfit" else {"val_best": 0.01, "fit_up_to": 1}))
    assert v.status == "PREMISE NOT MET", v.line
    assert [p.name for p in v.premises if not p.held] == [premise]
    assert v.line.startswith(f"overtraining: PREMISE NOT MET — {premise}")


@pytest.mark.parametrize("scale", ["small", "paper"])
def test_specs(scale):
    spec = get("overtraining").spec(scale)
    assert set(O.CLAIM_KEYS) <= set(spec.claim) and spec.claim["max_seeds"] >= spec_seeds(spec) >= 5
    lams = {label: sorted({c.weight_decay for lb, c in spec.configs() if lb == label}) for label in (O.SMALL, O.LARGE)}
    assert set(lams[O.SMALL]) <= set(lams[O.LARGE]) and lams[O.LARGE][0] == lams[O.SMALL][0] == 0.0
    assert len(lams[O.LARGE]) >= 5 and len(lams[O.SMALL]) >= 3


def test_selection_keeps_to_the_regime(tmp_path):
    # the large lr's λ = 4e-3 is best on validation but does not fit: λ*_large is the best cell that fits
    v = _verdict(tmp_path, val_best=0.004)
    assert v.numbers["lambda_star_large"] == 0.002 and v.status == "HELD", v.line
    v = _verdict(tmp_path, "t.sqlite", val_best=0.004, fit_up_to=0.004)
    assert v.numbers["lambda_star_large"] == 0.004


def test_a_diverged_run_is_a_verdict_not_a_crash(tmp_path):
    """The store writes a diverged run's metrics as null: the analysis reads it as classifying nothing
    (accuracy 0, never selected) and says which premise that breaks."""
    good = world()

    def result(label, c):
        final, curves = good(label, c)
        if label == O.LARGE and c.weight_decay == 0.004 and c.seed == 0:  # a cell no comparison uses
            final = dict.fromkeys(final, float("nan"))
        return final, curves

    spec = get("overtraining").spec()
    v = O.analyze(fill_store(tmp_path / "d.sqlite", spec, result), spec, "small")
    assert v.numbers["lambda_star_large"] == 0.002  # validation did not select the diverged cell
    assert v.status == "HELD", v.line
    assert v.numbers["parts"]["‖J‖_F falls with λ: −ρ ="]["interval"]["n"] == 4  # its ‖J‖ is unknown
