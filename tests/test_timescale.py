"""decaylab.timescale: λ conventions, timescales, λ from a timescale."""
import doctest
import math

import pytest
import torch

from decaylab import timescale as ts
from decaylab.optim.rules import SCALES
from decaylab.train.schedules import LRSchedule

LR = 1e-3


def test_doctests() -> None:
    result = doctest.testmod(ts, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 5 and result.failed == 0


# ------------------------------------------------------------------------------------------- conventions


def test_every_decaylab_scale_has_a_convention() -> None:
    assert {c.decay_scale for c in ts.CONVENTIONS.values()} - {None} == set(SCALES)
    assert list(ts.CONVENTIONS) == ["torch", "paper", "corrected", "constant", "palm"]
    assert ts.get_convention("lr").name == "torch" and ts.get_convention("schedule").name == "paper"
    assert ts.get_convention("independent").name == "constant" and ts.get_convention("LR2").name == "palm"


@pytest.mark.parametrize("name", list(ts.CONVENTIONS))
@pytest.mark.parametrize("lr_max, eta", [(1e-3, 1.0), (1e-3, 0.37), (0.3, 0.05), (2.0, 0.5)])
def test_scale_is_peak_times_eta_to_the_power(name, lr_max, eta) -> None:
    # The table's power p is what decaylab's decay_scale computes: s_t = s_peak·η_t^p.
    conv = ts.CONVENTIONS[name]
    assert conv.scale(lr_max * eta, lr_max) == pytest.approx(conv.peak(lr_max) * eta ** conv.power, rel=1e-12)


def test_peak_scales_by_hand() -> None:
    assert [ts.CONVENTIONS[n].peak(1e-3) for n in ts.CONVENTIONS] == pytest.approx([1e-3, 1.0, 1e-3, 1.0, 1e-6])


def test_palm_runs_in_decaylab_as_corrected_with_lr_max_times_lambda() -> None:
    palm, corrected = ts.CONVENTIONS["palm"], ts.CONVENTIONS["corrected"]
    lam_palm, lr_max = 0.3, 2e-2
    lam_corrected = ts.convert(lam_palm, lr=lr_max, source="palm", target="corrected")
    assert lam_corrected == pytest.approx(lr_max * lam_palm)
    for lr_t in (2e-2, 1e-2, 3e-4):  # equal at every step, whatever the schedule
        assert corrected.scale(lr_t, lr_max) * lam_corrected == pytest.approx(palm.scale(lr_t, lr_max) * lam_palm)


def test_unknown_convention_names_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="convention must be one of torch, paper, corrected, constant, palm .*'tf'"):
        ts.get_convention("tf")


# ------------------------------------------------------------------------------------------- schedules


def _schedules():
    yield ts.lr_schedule("constant", 100)
    yield ts.lr_schedule("constant", 100, warmup_steps=7)
    for steps in (1, 2, 3, 50, 1001):
        yield ts.lr_schedule("cosine", steps)
        yield ts.lr_schedule("linear", steps, final_lr_ratio=0.2)
    yield ts.lr_schedule("linear", 64)
    yield ts.lr_schedule("cosine", 333, final_lr_ratio=0.1)
    yield ts.lr_schedule("cosine", 333, warmup_steps=10, final_lr_ratio=0.1)
    yield ts.lr_schedule("warmup_cosine", 500, warmup_steps=50)
    yield ts.lr_schedule("warmup_cosine", 11, warmup_steps=10)  # one cosine step


@pytest.mark.parametrize("schedule", list(_schedules()), ids=repr)
def test_closed_forms_equal_the_sum_over_steps(schedule) -> None:
    assert ts._closed_sums(schedule) is not None  # every kind here has its closed form
    closed = ts.schedule_sums(schedule)
    summed = ts.schedule_sums(schedule, closed_form=False)
    assert closed[0] == summed[0]
    assert closed[1:] == pytest.approx(summed[1:], rel=1e-12, abs=1e-12)


def test_cosine_integrated_decay_by_hand() -> None:
    # η_u = ½(1 + cos(πu/T)), u = 0..T−1: the cosines cancel in pairs (u, T−u) but for u = 0, so Σ η = (T+1)/2,
    # half a step more than the continuous ∫ = T/2; Σ η² = 3T/8 + 1/2.
    schedule = ts.lr_schedule("cosine", 1000)
    assert ts.schedule_sums(schedule) == (1000, 500.5, 375.5)
    assert ts.integrated_decay(0.1, LR, schedule=schedule) == pytest.approx(0.1 * 1e-3 * 500.5)
    assert ts.integrated_decay(0.1, LR, schedule=schedule, convention="constant") == pytest.approx(100.0)
    assert ts.integrated_decay(0.1, LR, steps=1000) == pytest.approx(0.1)  # constant lr
    # warmup of 10 steps: Σ (t+1)/10 = 5.5, then the cosine over the remaining 990 steps
    schedule = ts.lr_schedule("warmup_cosine", 1000, warmup_steps=10)
    assert ts.schedule_sums(schedule)[1] == pytest.approx(5.5 + 991 / 2)


def test_schedule_from_the_training_loop_sums_by_steps() -> None:
    # A schedule without a closed form here (step decay) is summed as trained.
    schedule = LRSchedule("step", total_steps=100, milestones=(50, 75), gamma=0.1)
    assert ts._closed_sums(schedule) is None
    assert ts.schedule_sums(schedule) == pytest.approx((100, 50 + 2.5 + 0.25, 50 + 0.25 + 0.0025))


def test_schedule_errors() -> None:
    with pytest.raises(ValueError, match="schedule must be one of constant, cosine, warmup_cosine, linear; got 'exp'"):
        ts.lr_schedule("exp", 10)
    with pytest.raises(ValueError, match="warmup_steps must be >= 1 with schedule 'warmup_cosine'"):
        ts.lr_schedule("warmup_cosine", 10)
    with pytest.raises(ValueError, match="final_lr_ratio must be in"):
        ts.lr_schedule("cosine", 10, final_lr_ratio=2.0)
    with pytest.raises(ValueError, match="steps .* differs from the schedule's total_steps"):
        ts.integrated_decay(0.1, LR, steps=5, schedule=ts.lr_schedule("cosine", 10))
    with pytest.raises(ValueError, match="steps \\(or schedule\\) is needed"):
        ts.integrated_decay(0.1, LR)


# ------------------------------------------------------------------------------------------- conversions


def test_conversions_at_peak_by_hand() -> None:
    got = ts.conversions(0.1, lr=LR)
    assert {k: v["peak"] for k, v in got.items()} == pytest.approx(
        {"torch": 0.1, "paper": 1e-4, "corrected": 0.1, "constant": 1e-4, "palm": 100.0})
    assert all("integrated" not in row for row in got.values())


def test_conversions_integrated_over_a_cosine_by_hand() -> None:
    schedule = ts.lr_schedule("cosine", 1000)   # Σ η = 500.5, Σ η² = 375.5
    got = {k: v["integrated"] for k, v in ts.conversions(0.1, lr=LR, schedule=schedule).items()}
    assert got == pytest.approx({"torch": 0.1, "paper": 1e-4, "corrected": 0.1 * 500.5 / 375.5,
                                 "constant": 1e-4 * 500.5 / 1000, "palm": 100.0 * 500.5 / 375.5})


def test_conversions_integrated_with_a_constant_lr_equal_peak() -> None:
    got = ts.conversions(0.05, lr=3e-4, source="paper", steps=777)
    for row in got.values():
        assert row["integrated"] == pytest.approx(row["peak"], rel=1e-12)


@pytest.mark.parametrize("schedule", [ts.lr_schedule("cosine", 200, warmup_steps=20), ts.lr_schedule("linear", 99)],
                         ids=repr)
@pytest.mark.parametrize("a", list(ts.CONVENTIONS))
@pytest.mark.parametrize("b", list(ts.CONVENTIONS))
def test_round_trips_and_same_power_is_exact(schedule, a, b) -> None:
    for match in ts.MATCHES:
        there = ts.convert(0.07, lr=2e-3, source=a, target=b, match=match, schedule=schedule)
        back = ts.convert(there, lr=2e-3, source=b, target=a, match=match, schedule=schedule)
        assert back == pytest.approx(0.07, rel=1e-12)
    if ts.CONVENTIONS[a].power == ts.CONVENTIONS[b].power:  # same decay at every step: both matches agree
        assert ts.convert(0.07, lr=2e-3, source=a, target=b, match="integrated", schedule=schedule) == \
            pytest.approx(ts.convert(0.07, lr=2e-3, source=a, target=b), rel=1e-12)


def test_integrated_match_gives_equal_total_decay() -> None:
    schedule = ts.lr_schedule("cosine", 300, final_lr_ratio=0.1)
    lam_c = ts.convert(0.1, lr=LR, source="torch", target="constant", match="integrated", schedule=schedule)
    total_torch = math.fsum(LR * schedule(t) * 0.1 for t in range(300))
    assert lam_c * 300 == pytest.approx(total_torch, rel=1e-12)


# ------------------------------------------------------------------------------------------- timescales


def test_timescales_by_hand() -> None:
    assert ts.tau_iter(0.1, LR) == pytest.approx(1e4)
    assert ts.tau_iter(1e-4, None, "paper") == pytest.approx(1e4)  # the paper's λ needs no lr
    assert ts.tau_epoch(0.1, LR, batch_size=128, dataset_size=50_000) == pytest.approx(25.6)
    assert ts.tau_run_fraction(0.1, LR, steps=20_000) == pytest.approx(0.5)
    assert ts.tau_iter(0.0, LR) == math.inf
    # Kosson et al.: sqrt(2·lr·λ·(1−β1)/(1+β1)), the expression of the authors' RotationalAdamW
    assert ts.angular_update(0.1, 1e-2, beta=0.9) == pytest.approx(math.sqrt(2 * 1e-2 * 0.1 * 0.1 / 1.9))
    assert ts.angular_update(1e-3, 1e-2, convention="paper") == pytest.approx(ts.angular_update(0.1, 1e-2))


def test_equilibrium_norm_by_hand() -> None:
    # Kosson et al.: ‖w‖ = sqrt(η·C/(2λ)) for AdamW, so the RMS per coordinate is sqrt(lr/(2λ))
    assert ts.equilibrium_rms(0.1, 1e-2) == pytest.approx(math.sqrt(1e-2 / 0.2))
    assert ts.equilibrium_rms(1e-3, 1e-2, convention="paper") == pytest.approx(ts.equilibrium_rms(0.1, 1e-2))
    assert ts.equilibrium_rms(0.1, 1e-2, convention="constant") == pytest.approx(1e-2 / math.sqrt(0.2))
    assert ts.equilibrium_rms(0.0, 1e-2) == math.inf
    got = ts.timescales(0.1, lr=1e-2).to_dict()
    assert got["equilibrium_weight_rms"] == pytest.approx(math.sqrt(0.05))
    assert ts.timescales(0.0, lr=1e-2).to_dict()["equilibrium_weight_rms"] is None


@pytest.mark.parametrize("beta1", [0.9, 0.0])
def test_a_scale_invariant_weight_settles_at_the_predicted_norm_and_angle(beta1) -> None:
    """torch's AdamW on a weight whose gradient is a random walk orthogonal to it, scaled by 1/‖w‖ (a
    weight behind a normalization layer), started 4.5× too large: after a few τ_iter its RMS and its angle
    per step are the equilibrium's (the momentum lowers the angle, not the norm). β₂ = 0.99 lets v follow
    the gradient's scale as the norm settles (with 0.999 the approach takes several times longer)."""
    gen = torch.Generator().manual_seed(0)
    lr, lam, c = 1e-2, 0.1, 1000
    w = torch.nn.Parameter(torch.randn(c, generator=gen, dtype=torch.float64))
    opt = torch.optim.AdamW([w], lr=lr, weight_decay=lam, betas=(beta1, 0.99))  # τ_iter = 1000 steps
    rms, angles = [], []
    for step in range(5000):
        before = w.detach().clone()
        g = torch.randn(c, generator=gen, dtype=torch.float64)
        g -= (g @ before) / (before @ before) * before
        w.grad = g / before.norm()
        opt.step()
        if step >= 3000:
            after = w.detach()
            rms.append(float(after.norm()) / math.sqrt(c))
            angles.append(float(torch.arccos((before @ after) / (before.norm() * after.norm()))))
    assert sum(rms) / len(rms) == pytest.approx(ts.equilibrium_rms(lam, lr), rel=0.03)
    assert sum(angles) / len(angles) == pytest.approx(ts.angular_update(lam, lr, beta=beta1), rel=0.03)


@pytest.mark.parametrize("name", list(ts.CONVENTIONS))
@pytest.mark.parametrize("lam, lr", [(0.1, 1e-3), (3e-5, 0.2), (2.0, 5e-4)])
def test_round_trips_lambda_tau_lambda(name, lam, lr) -> None:
    assert ts.tau_iters(ts.tau_iter(lam, lr, name), lr=lr, convention=name) == pytest.approx(lam, rel=1e-12)
    tau_e = ts.tau_epoch(lam, lr, batch_size=64, dataset_size=12_345, convention=name)
    assert ts.tau_epochs(tau_e, lr=lr, batch_size=64, dataset_size=12_345, convention=name) == \
        pytest.approx(lam, rel=1e-12)
    frac = ts.tau_run_fraction(lam, lr, steps=4321, convention=name)
    assert ts.tau_fraction(frac, lr=lr, steps=4321, convention=name) == pytest.approx(lam, rel=1e-12)


def test_lambda_from_a_timescale_by_hand() -> None:
    assert ts.tau_epochs(5, lr=1e-3, batch_size=128, dataset_size=50_000) == pytest.approx(0.512)
    assert ts.tau_epochs(5, batch_size=128, dataset_size=50_000, convention="paper") == pytest.approx(5.12e-4)
    assert ts.tau_fraction(0.25, lr=1e-3, steps=8000, convention="palm") == pytest.approx(1 / (2000 * 1e-6))


def test_tau_epochs_is_the_optimizers_weight_decay() -> None:
    # With no gradient, AdamW only decays: w·(1 − lr·λ)^τ_iter ≈ e^{-1} after τ_iter steps.
    lam = ts.tau_iters(200, lr=0.01)
    w = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    from decaylab.optim import AdamW

    opt = AdamW([w], lr=0.01, weight_decay=lam)
    for _ in range(200):
        w.grad = torch.zeros_like(w)
        opt.step()
    assert isinstance(lam, float)
    assert w.detach() == pytest.approx(torch.full((3,), (1 - 1 / 200) ** 200, dtype=torch.float64))
    assert float(w.detach()[0]) == pytest.approx(math.exp(-1), rel=3e-3)


def test_timescales_collects_everything() -> None:
    schedule = ts.lr_schedule("cosine", 10_000)
    got = ts.timescales(0.1, lr=LR, batch_size=256, dataset_size=50_000, schedule=schedule)
    assert got.tau_iter == pytest.approx(1e4) and got.tau_epoch == pytest.approx(51.2)
    assert got.tau_fraction == pytest.approx(1.0) and got.epochs == pytest.approx(51.2)
    assert got.integrated_decay == pytest.approx(0.1 * LR * 5000.5)
    d = got.to_dict()
    assert set(d["weight_decay"]) == set(ts.CONVENTIONS) and set(d["weight_decay_integrated"]) == set(ts.CONVENTIONS)
    names = [r.name for r in ts.recommendations(got)]
    assert names == ["constant τ_epoch", "Power Lines τ", "independent decay under μP", "λ ∝ √width under μP"]
    assert "inside the guideline range [1, 51.2]" in ts.recommendations(got)[0].assessment
    far = ts.timescales(0.1, lr=LR, batch_size=256, dataset_size=50_000, steps=100)
    assert "OUTSIDE" in ts.recommendations(far)[0].assessment


@pytest.mark.parametrize("call, message", [
    (lambda: ts.tau_iter(0.1, -1e-3), "lr must be a finite number > 0, got -0.001"),
    (lambda: ts.tau_iter(-0.1, 1e-3), "weight_decay must be a finite number >= 0"),
    (lambda: ts.tau_iters(0, lr=1e-3), "tau must be a finite number > 0, got 0"),
    (lambda: ts.tau_iters(10), "lr is needed for the torch convention"),
    (lambda: ts.tau_epochs(5, lr=1e-3, batch_size=0, dataset_size=10), "batch_size must be an integer >= 1"),
    (lambda: ts.timescales(0.1, lr=1e-3, batch_size=32), "dataset_size is needed too"),
    (lambda: ts.angular_update(0.1, 1e-3, beta=1.0), "beta must be a number in \\[0, 1\\)"),
    (lambda: ts.convert(0.1, lr=1e-3, source="torch", target="paper", match="mean"), "match must be one of"),
])
def test_errors_name_the_argument(call, message) -> None:
    with pytest.raises(ValueError, match=message):
        call()
