"""decaylab reproduce undertraining: the statistic both ways, the premises, the spec."""
from __future__ import annotations

import pytest
from _stores import fill_store

from decaylab.reproduce import get
from decaylab.reproduce import undertraining as U

pytestmark = pytest.mark.usefixtures("one_thread_per_module")


def _result(mid_shift=0.05, end_shift=-0.05, narrowing=0.0, const_tail=0.02):
    """Synthetic curves: the cosine runs fall linearly from 3.0 to 2.0; a decayed run is ``mid_shift``
    higher at mid-run and ``end_shift`` at the end (interpolated between); its val − train gap is
    0.05 − narrowing (λ = 0: 0.05); the constant-lr run falls 3.0 → 2.3 by mid-run and ``const_tail``
    more by the end. Seeds add a small offset of their own to every arm."""
    def result(label, c):
        decayed = c.weight_decay > 0
        noise = 0.003 * ((c.seed * 7) % 5)
        jitter = 0.002 * ((c.seed * 3) % 4) if decayed else 0.0
        curves = []
        for step in range(c.eval_every, c.steps + 1, c.eval_every):
            frac = step / c.steps
            if label == U.CONSTANT:
                val = 3.0 - 0.7 * min(frac, 0.5) / 0.5 - const_tail * max(frac - 0.5, 0) / 0.5
            else:
                val = 3.0 - frac
                if decayed:
                    val += (mid_shift * frac / 0.5 if frac <= 0.5 else
                            mid_shift + (end_shift - mid_shift) * (frac - 0.5) / 0.5) + jitter
            val += noise
            gap = 0.05 - (narrowing if decayed else 0.0)
            curves.append({"step": step, "val_loss": val, "train_loss": val - gap, "weight_norm": 1.0,
                           "effective_lr": c.lr})
        last = curves[-1]
        return {"train_loss": last["train_loss"], "val_loss": last["val_loss"], "test_loss": last["val_loss"],
                "weight_norm": 1.0}, curves

    return result


def _verdict(tmp_path, **kwargs):
    spec = get("undertraining").spec()
    return get("undertraining").analyze(fill_store(tmp_path / "s.sqlite", spec, _result(**kwargs)), spec, "small")


def test_held(tmp_path):
    v = _verdict(tmp_path)
    assert v.held is True and v.status == "HELD", v.line
    assert all(p.held for p in v.premises)
    assert v.numbers["effects"]["mid"]["mean"] == pytest.approx(0.05 + (0.0 + 0.006 + 0.004) / 3)
    assert v.numbers["judged_weight_decay"] == 0.05 and v.numbers["lr_lambda_T"]["0.05"] == pytest.approx(3.0)
    assert v.seeds == 3 and v.numbers["passes"] < 1


@pytest.mark.parametrize("kwargs, part", [
    ({"mid_shift": -0.05}, "mid"),            # decay lowers the mid-run loss too
    ({"end_shift": 0.03}, "end"),             # decay does not lower the final loss
    ({"narrowing": 0.05}, "narrowing"),       # decay closes the generalization gap: it regularizes
])
def test_did_not_hold(tmp_path, kwargs, part):
    v = _verdict(tmp_path, **kwargs)
    assert v.held is False and v.status == "DID NOT HOLD", v.line
    assert v.numbers["parts"][part] == "did not hold"


def test_premise_not_met_when_the_constant_lr_loss_still_falls(tmp_path):
    v = _verdict(tmp_path, const_tail=0.5)  # 0.5 after mid-run against 0.7 before: ratio > 0.25
    assert v.status == "PREMISE NOT MET", v.line
    assert [p.name for p in v.premises_failed] == ["constant-lr loss still falling after mid-run"]
    assert "constant-lr loss still falling" in v.line


def test_judge_undecided_with_noisy_seeds():
    rows = {s: {"mid0": 2.0, "mid": 2.0 + d, "end0": 1.5, "end": 1.45, "gap0": 0.0, "gap": 0.0,
                "const_first": 3.0, "const_mid": 2.0, "const_end": 1.95} for s, d in enumerate([0.1, -0.08, 0.05])}
    claim = {"mid_threshold": 0.01, "end_threshold": 0.01, "gap_threshold": 0.01, "plateau_ratio": 0.25,
             "min_efolds": 1.0}
    j = U.judge(rows, claim, passes=0.5, efolds=1.6)
    assert j.held is None and j.parts["mid"] is None and j.parts["end"] is True
    j = U.judge(rows, claim, passes=1.5, efolds=0.5)
    assert [p.held for p in j.premises] == [True, False, False]


def test_plateau_ratio():
    assert U.plateau_ratio(3.0, 2.0, 1.5) == pytest.approx(0.5)
    assert U.plateau_ratio(2.0, 2.0, 1.5) == float("inf")


@pytest.mark.parametrize("scale", ["small", "paper"])
def test_spec_has_its_claim_and_arms(scale):
    spec = get("undertraining").spec(scale)
    assert set(U.CLAIM_KEYS) <= set(spec.claim) and spec.claim["max_seeds"] >= 3
    labels = {label for label, _ in spec.configs()}
    assert labels == {U.METHOD, U.CONSTANT}
    cosine = [c for label, c in spec.configs() if label == U.METHOD]
    doses = sorted({round(c.lr * c.weight_decay * c.steps, 3) for c in cosine})
    assert doses[0] == 0 and spec.claim["judged_lr_lambda_T"] in doses
    assert all(c.schedule == "constant" and c.weight_decay == 0 for label, c in spec.configs() if label == U.CONSTANT)
    if scale == "small":
        assert doses == [0, 1, 3] and cosine[0].model == "gpt-nano"
        assert cosine[0].steps >= 2000
