"""Checkpoints: state dicts move between decaylab and torch.optim, and decaylab's own forms resume exactly.

* torch → decaylab and decaylab → torch (AdamW, Adam+L2, amsgrad, SGD with momentum): train 5 steps,
  save with ``torch.save``, load with ``torch.load`` (default ``weights_only=True``) into the *other*
  library's optimizer built with default hyperparameters over a copy of the parameters, continue 5
  steps on both: equal parameters and state (float64, rounding-level tolerance).
* decaylab's forms that torch does not have (prox, prox_euclid, cautious, stable, decay toward the
  initial weights, bf16 with Kahan compensation, the "corrected" scale under an lr scheduler): save
  after k steps, load into a fresh optimizer, continue — bit-for-bit equal to an uninterrupted run.
* Schedules as ``weight_decay``: the group's step counter survives, and the ``weights_only`` rules.
* Which decay form a cross-class checkpoint resumes with.
"""
from __future__ import annotations

import copy
import math
import pickle
import subprocess
import sys

import pytest
import torch
from torch.testing import assert_close

from decaylab import optim as dl
from decaylab.schedules import SCHEDULE_CLASSES, ConstantDecay, EarlyDecay, FollowSchedule

DT = torch.float64
TOL = dict(rtol=1e-12, atol=1e-14)
FAST_BACKENDS = ("reference", "foreach")
SHAPES = [(6, 4), (6,), (3, 6), (3,)]
HP = dict(lr=3e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.3)
ADAM_KEYS = {"step", "exp_avg", "exp_avg_sq"}


# --------------------------------------------------------------------------------------- helpers


def _params(dtype=DT, seed=0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(s, generator=gen, dtype=DT) * 0.5).to(dtype).requires_grad_() for s in SHAPES]


def _clone(params) -> list[torch.Tensor]:
    return [p.detach().clone().requires_grad_() for p in params]


def _grad(step: int, i: int, p: torch.Tensor) -> torch.Tensor:
    """The gradient of param ``i`` at ``step``: depends on nothing else, so every run sees the same."""
    gen = torch.Generator().manual_seed(1000 * step + i)
    return (torch.randn(p.shape, generator=gen, dtype=DT) * (1.0 + 0.2 * step)).to(p.dtype)


def _no_skip(step):
    return ()


def _late(step):
    """Param 2 gets its first gradient at step 7 (no state in a checkpoint taken earlier)."""
    return (2,) if step < 7 else ()


def _run(opt, params, start, stop, skip=_no_skip, zero=False, scheduler=None) -> None:
    for step in range(start, stop):
        for i, p in enumerate(params):
            if i in skip(step):
                p.grad = None
            else:
                p.grad = torch.zeros_like(p) if zero else _grad(step, i, p)
        opt.step()
        if scheduler is not None:
            scheduler.step()


def _save_load(obj, tmp_path, name="ckpt.pt", **load_kw):
    path = tmp_path / name
    torch.save(obj, path)
    return torch.load(path, **load_kw)


def assert_same(opt_a, params_a, opt_b, params_b, *, exact: bool, expected_keys=None) -> None:
    """Parameters and every state entry of two optimizers agree (bit for bit when ``exact``)."""
    seen = set()
    for i, (pa, pb) in enumerate(zip(params_a, params_b, strict=True)):
        if exact:
            assert pa.dtype == pb.dtype and torch.equal(pa, pb), f"param {i} differs"
        else:
            assert_close(pb, pa, **TOL, msg=lambda m, i=i: f"param {i}: {m}")
        sa, sb = opt_a.state.get(pa, {}), opt_b.state.get(pb, {})
        assert set(sa) == set(sb), f"param {i}: state keys {sorted(sa)} != {sorted(sb)}"
        seen |= set(sa)
        for key in sa:
            a, b = sa[key], sb[key]
            if exact:
                assert a.dtype == b.dtype and torch.equal(a, b), f"param {i} state {key!r} differs: {a} vs {b}"
            else:
                assert_close(b, a, **TOL, msg=lambda m, i=i, key=key: f"param {i} state {key!r}: {m}")
    if expected_keys is not None:
        assert seen == set(expected_keys), f"state keys {sorted(seen)}, expected {sorted(expected_keys)}"


@pytest.fixture
def schedule_globals_reset():
    """Run with decaylab's schedule classes *not* allow-listed for ``weights_only`` loads; restore after."""
    saved = list(torch.serialization.get_safe_globals())
    torch.serialization.clear_safe_globals()
    torch.serialization.add_safe_globals([g for g in saved if g not in SCHEDULE_CLASSES])
    yield
    torch.serialization.clear_safe_globals()
    torch.serialization.add_safe_globals(saved)


# --------------------------------------------------------------------------------------- torch <-> decaylab

# name -> (torch class, decaylab class, hyperparameters, state keys)
TRANSFER = {
    "adamw": (torch.optim.AdamW, dl.AdamW, HP, ADAM_KEYS),
    "adam_l2": (torch.optim.Adam, dl.Adam, HP, ADAM_KEYS),
    "adamw_amsgrad": (torch.optim.AdamW, dl.AdamW, dict(HP, amsgrad=True), ADAM_KEYS | {"max_exp_avg_sq"}),
    "adam_l2_amsgrad": (torch.optim.Adam, dl.Adam, dict(HP, amsgrad=True), ADAM_KEYS | {"max_exp_avg_sq"}),
    "sgd_momentum": (
        torch.optim.SGD, dl.SGD, dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.1), {"momentum_buffer"},
    ),
    "sgd_nesterov": (
        torch.optim.SGD, dl.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1), {"momentum_buffer"},
    ),
}


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("direction", ["torch_to_decaylab", "decaylab_to_torch"])
@pytest.mark.parametrize("case", list(TRANSFER))
def test_checkpoint_moves_between_torch_and_decaylab(case, direction, backend, tmp_path):
    torch_cls, dl_cls, kw, keys = TRANSFER[case]
    if direction == "torch_to_decaylab":
        make_src = lambda ps: torch_cls(ps, **kw)
        make_dst = lambda ps: dl_cls(ps, backend=backend)  # default hyperparameters: the checkpoint's must win
    else:
        make_src = lambda ps: dl_cls(ps, backend=backend, **kw)
        make_dst = lambda ps: torch_cls(ps)
    src_params = _params()
    src = make_src(src_params)
    _run(src, src_params, 0, 5, skip=_late)

    sd = _save_load(src.state_dict(), tmp_path)  # torch.load's default weights_only=True
    dst_params = _clone(src_params)
    dst = make_dst(dst_params)
    dst.load_state_dict(sd)

    for key, value in kw.items():
        assert dst.param_groups[0][key] == value, key
    assert_same(src, src_params, dst, dst_params, exact=True, expected_keys=keys)
    assert not dst.state.get(dst_params[2]), "param 2 had no gradient yet: it has no state in the checkpoint"

    _run(src, src_params, 5, 10, skip=_late)
    _run(dst, dst_params, 5, 10, skip=_late)
    assert_same(src, src_params, dst, dst_params, exact=False, expected_keys=keys)
    assert (dst_params[2] - src_params[2].new_tensor(0)).abs().sum() > 0
    if dl_cls is not dl.SGD:
        assert src.state[src_params[2]]["step"].item() == 3 and dst.state[dst_params[2]]["step"].item() == 3


def test_old_torch_checkpoint_with_number_steps_loads(tmp_path):
    """torch < 1.12 stored Adam's per-parameter ``step`` as a plain number; torch.optim still loads those
    (``Adam.__setstate__`` turns the number into a tensor), so decaylab's Adam must as well."""
    src_params = _params()
    src = torch.optim.AdamW(src_params, **HP)
    _run(src, src_params, 0, 3)
    sd = _save_load(src.state_dict(), tmp_path)
    for entry in sd["state"].values():
        entry["step"] = int(entry["step"].item())  # the old format

    theirs_params, ours_params = _clone(src_params), _clone(src_params)
    theirs = torch.optim.AdamW(theirs_params)
    theirs.load_state_dict(copy.deepcopy(sd))  # load_state_dict is shallow: don't share exp_avg tensors
    ours = dl.AdamW(ours_params, backend="foreach")
    ours.load_state_dict(copy.deepcopy(sd))
    assert ours.param_groups[0]["step"] == 3
    _run(theirs, theirs_params, 3, 6)
    _run(ours, ours_params, 3, 6)
    assert_same(theirs, theirs_params, ours, ours_params, exact=False, expected_keys=ADAM_KEYS)
    assert ours.state[ours_params[0]]["step"].item() == 6


def test_decaylab_adam_state_dict_tells_torch_its_form():
    """decaylab writes torch's ``decoupled_weight_decay`` key so that torch.optim.Adam reads the form."""
    ps = _params()
    assert dl.AdamW(ps).state_dict()["param_groups"][0]["decoupled_weight_decay"] is True
    assert dl.Adam(ps).state_dict()["param_groups"][0]["decoupled_weight_decay"] is False
    assert dl.Adam(ps, decay="decoupled").state_dict()["param_groups"][0]["decoupled_weight_decay"] is True


# --------------------------------------------------------------------------------------- cross-class form


def test_torch_adamw_checkpoint_into_decaylab_adam_resumes_decoupled(tmp_path):
    """A torch AdamW checkpoint loaded into decaylab ``Adam`` (default decay "l2") resumes AdamW's run.

    As everywhere in torch.optim, a checkpoint's hyperparameters replace the constructing optimizer's
    (lr, betas, λ, …); the decay form is one of them. torch.optim.Adam does the same with this
    checkpoint (its group says ``decoupled_weight_decay=True``), so decaylab Adam, torch Adam and the
    original torch AdamW continue identically.
    """
    src_params = _params()
    src = torch.optim.AdamW(src_params, **HP)
    _run(src, src_params, 0, 5)
    # One loaded copy each: load_state_dict keeps the checkpoint's "step" tensors (torch does too),
    # so two optimizers loading the same dict object would share and double-count them.
    ours_params, theirs_params = _clone(src_params), _clone(src_params)
    ours = dl.Adam(ours_params, backend="foreach")
    with pytest.warns(dl.CheckpointFormWarning, match="saved with decay='decoupled'.*built with decay='l2'"):
        ours.load_state_dict(_save_load(src.state_dict(), tmp_path, "ours.pt"))
    theirs = torch.optim.Adam(theirs_params)
    theirs.load_state_dict(_save_load(src.state_dict(), tmp_path, "theirs.pt"))
    assert ours.param_groups[0]["decay"] == "decoupled"
    assert theirs.param_groups[0]["decoupled_weight_decay"] is True
    assert ours.state_dict()["param_groups"][0]["decoupled_weight_decay"] is True

    for opt, ps in ((src, src_params), (ours, ours_params), (theirs, theirs_params)):
        _run(opt, ps, 5, 10)
    assert_same(src, src_params, ours, ours_params, exact=False, expected_keys=ADAM_KEYS)
    assert_same(theirs, theirs_params, ours, ours_params, exact=False, expected_keys=ADAM_KEYS)


def test_torch_adam_l2_checkpoint_into_decaylab_adamw_resumes_l2(tmp_path):
    """The other way round the checkpoint's form wins as well: AdamW resumes an Adam+L2 run.

    Documented difference: torch.optim.AdamW.__setstate__ forces ``decoupled_weight_decay=True`` on any
    loaded state (a backward-compatibility rule for old AdamW checkpoints), so *torch* AdamW would turn
    this L2 run into an AdamW run. decaylab resumes the run that the checkpoint recorded.
    """
    src_params = _params()
    src = torch.optim.Adam(src_params, **HP)
    _run(src, src_params, 0, 5)
    sd = _save_load(src.state_dict(), tmp_path)

    ours_params = _clone(src_params)
    ours = dl.AdamW(ours_params, backend="foreach")
    with pytest.warns(dl.CheckpointFormWarning, match="saved with decay='l2'.*built with decay='decoupled'"):
        ours.load_state_dict(sd)
    assert ours.param_groups[0]["decay"] == "l2"
    _run(src, src_params, 5, 10)
    _run(ours, ours_params, 5, 10)
    assert_same(src, src_params, ours, ours_params, exact=False, expected_keys=ADAM_KEYS)

    torch_adamw = torch.optim.AdamW(_clone(src_params))
    torch_adamw.load_state_dict(sd)
    assert torch_adamw.param_groups[0]["decoupled_weight_decay"] is True  # torch's rule, see above


@pytest.mark.parametrize(
    ("src_cls", "src_kw", "dst_cls", "form"),
    [
        (dl.AdamW, {}, dl.Adam, "decoupled"),
        (dl.Adam, {}, dl.AdamW, "l2"),
        (dl.ProxAdam, {}, dl.AdamW, "prox"),
        (dl.Adam, {"decay": "cautious"}, dl.Adam, "cautious"),
    ],
)
def test_decaylab_checkpoint_keeps_its_form_across_classes(src_cls, src_kw, dst_cls, form, tmp_path):
    src_params = _params()
    src = src_cls(src_params, lr=1e-2, weight_decay=0.5, backend="foreach", **src_kw)
    _run(src, src_params, 0, 3)
    dst_params = _clone(src_params)
    dst = dst_cls(dst_params, backend="foreach")
    with pytest.warns(dl.CheckpointFormWarning, match=f"saved with decay='{form}'"):
        dst.load_state_dict(_save_load(src.state_dict(), tmp_path))
    assert dst.param_groups[0]["decay"] == form
    _run(src, src_params, 3, 6)
    _run(dst, dst_params, 3, 6)
    assert_same(src, src_params, dst, dst_params, exact=True, expected_keys=ADAM_KEYS)


def test_decaylab_adamw_checkpoint_into_torch_adam_resumes_decoupled(tmp_path):
    src_params = _params()
    src = dl.AdamW(src_params, backend="foreach", **HP)
    _run(src, src_params, 0, 5)
    dst_params = _clone(src_params)
    dst = torch.optim.Adam(dst_params)
    dst.load_state_dict(_save_load(src.state_dict(), tmp_path))
    assert dst.param_groups[0]["decoupled_weight_decay"] is True
    _run(src, src_params, 5, 10)
    _run(dst, dst_params, 5, 10)
    assert_same(src, src_params, dst, dst_params, exact=False, expected_keys=ADAM_KEYS)


# --------------------------------------------------------------------------------------- decaylab round trips

# name -> (class, kwargs, param dtype, expected state keys)
ROUND_TRIP = {
    "prox": (dl.ProxAdam, dict(lr=1e-2, weight_decay=0.5), DT, ADAM_KEYS),
    "prox_euclid": (dl.EuclidProxAdam, dict(lr=1e-2, weight_decay=0.5), DT, ADAM_KEYS),
    "cautious": (dl.Adam, dict(lr=1e-2, weight_decay=0.5, decay="cautious"), DT, ADAM_KEYS),
    "stable": (dl.AdamS, dict(lr=1e-2, weight_decay=0.5), DT, ADAM_KEYS),
    "stable_sgd": (dl.SGD, dict(lr=0.05, momentum=0.9, weight_decay=0.5, decay="stable"), DT, {"momentum_buffer"}),
    "init_adamw": (dl.AdamW, dict(lr=1e-2, weight_decay=0.5, decay_to="init"), DT, ADAM_KEYS | {"init_param"}),
    "init_sgd_l2": (
        dl.SGD, dict(lr=0.05, momentum=0.9, weight_decay=0.5, decay_to="init"), DT, {"momentum_buffer", "init_param"},
    ),
    "schedule_scale_amsgrad": (
        dl.AdamW, dict(lr=1e-2, weight_decay=5.0, decay_scale="schedule", amsgrad=True), DT,
        ADAM_KEYS | {"max_exp_avg_sq"},
    ),
    "bf16_kahan_adamw": (dl.AdamW, dict(lr=1e-3, weight_decay=0.1), torch.bfloat16, ADAM_KEYS | {"kahan_comp"}),
    "bf16_kahan_prox": (dl.ProxAdam, dict(lr=1e-3, weight_decay=0.1), torch.bfloat16, ADAM_KEYS | {"kahan_comp"}),
    "bf16_exact_adamw": (dl.AdamW, dict(lr=1e-3, weight_decay=0.1, low_precision="exact"), torch.bfloat16,
                         ADAM_KEYS | {"param_remainder"}),
    "bf16_state_lion": (dl.Lion, dict(lr=1e-3, weight_decay=0.1, state_dtype=torch.bfloat16), torch.bfloat16,
                        {"exp_avg", "kahan_comp"}),
    "bf16_kahan_sgdw": (
        dl.SGDW, dict(lr=1e-2, momentum=0.9, weight_decay=0.01), torch.bfloat16, {"momentum_buffer", "kahan_comp"},
    ),
}
K = 4  # checkpoint after this many steps
N = 10


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("case", list(ROUND_TRIP))
def test_round_trip_resumes_exactly(case, backend, tmp_path):
    cls, kw, dtype, keys = ROUND_TRIP[case]
    full_params = _params(dtype)
    full = cls(full_params, backend=backend, **kw)
    _run(full, full_params, 0, N, skip=_late)

    init = [p.detach().clone() for p in _params(dtype)]
    a_params = _params(dtype)
    a = cls(a_params, backend=backend, **kw)
    _run(a, a_params, 0, K, skip=_late)
    if dtype == torch.bfloat16 and "kahan_comp" in keys:
        comps = [a.state[p]["kahan_comp"] for p in a_params if "kahan_comp" in a.state[p]]
        assert comps and any(bool((c != 0).any()) for c in comps), "the Kahan compensation carries nothing"
    sd = _save_load(a.state_dict(), tmp_path)

    b_params = _clone(a_params)
    b = cls(b_params, backend=backend, **kw)
    b.load_state_dict(sd)
    assert b.param_groups[0]["step"] == K
    if kw.get("decay_to") == "init":
        # The decay target is the weights at the start of training, not those at the resume.
        for p, p0 in zip(b_params, init, strict=True):
            assert torch.equal(b.state[p]["init_param"], p0)
        assert not torch.equal(b_params[0], init[0])
    _run(b, b_params, K, N, skip=_late)

    assert b.param_groups[0]["step"] == N
    assert_same(full, full_params, b, b_params, exact=True, expected_keys=keys)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_round_trip_with_lr_scheduler_and_corrected_scale(backend, tmp_path):
    """AdamC divides by max_lr: the checkpoint keeps the peak lr although the scheduler lowered lr."""

    def make(params):
        opt = dl.AdamC(params, lr=5e-2, weight_decay=2.0, backend=backend)
        return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=N, eta_min=1e-3)

    full_params = _params()
    full, full_sched = make(full_params)
    _run(full, full_params, 0, N, scheduler=full_sched)

    a_params = _params()
    a, a_sched = make(a_params)
    _run(a, a_params, 0, K, scheduler=a_sched)
    ckpt = _save_load({"opt": a.state_dict(), "sched": a_sched.state_dict()}, tmp_path)

    b_params = _clone(a_params)
    b, b_sched = make(b_params)
    b.load_state_dict(ckpt["opt"])
    b_sched.load_state_dict(ckpt["sched"])
    assert b.param_groups[0]["decay_max_lr"] == 5e-2
    assert b.param_groups[0]["lr"] < 5e-2
    _run(b, b_params, K, N, scheduler=b_sched)
    assert b.param_groups[0]["lr"] == full.param_groups[0]["lr"]
    assert_same(full, full_params, b, b_params, exact=True, expected_keys=ADAM_KEYS)


# --------------------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_group_step_survives_so_early_decay_stops_at_the_same_step(backend, tmp_path, schedule_globals_reset):
    """EarlyDecay(0.1, until=3): decay on steps 0, 1, 2 only, also across a save/load after step 2.

    With zero gradients Adam's direction is 0, so each step is pure decay ``w ← w·(1 − lr·λ_t)``
    and the trajectory is known in closed form.
    """
    lr, lam = 0.1, 0.1
    make = lambda ps: dl.AdamW(ps, lr=lr, weight_decay=EarlyDecay(lam, until=3), backend=backend)
    w0 = [p.detach().clone() for p in _params()]

    full_params = _params()
    full = make(full_params)
    trajectory = []
    for step in range(5):
        _run(full, full_params, step, step + 1, zero=True)
        trajectory.append(full_params[0].detach().clone())
    for step, w in enumerate(trajectory):
        decayed = min(step + 1, 3)
        assert_close(w, w0[0] * (1 - lr * lam) ** decayed, **TOL)

    a_params = _params()
    a = make(a_params)
    _run(a, a_params, 0, 2, zero=True)
    sd = _save_load(a.state_dict(), tmp_path)
    assert sd["param_groups"][0]["step"] == 2

    b_params = _clone(a_params)
    b = make(b_params)
    b.load_state_dict(sd)
    assert b.param_groups[0]["step"] == 2
    assert b.param_groups[0]["weight_decay"] == EarlyDecay(lam, until=3)
    for step in range(2, 5):
        _run(b, b_params, step, step + 1, zero=True)
        assert torch.equal(b_params[0], trajectory[step]), f"step {step}"
    assert b.param_groups[0]["step"] == 5
    assert_same(full, full_params, b, b_params, exact=True, expected_keys=ADAM_KEYS)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_early_decay_resume_with_real_gradients(backend, tmp_path, schedule_globals_reset):
    make = lambda ps: dl.AdamW(ps, lr=3e-2, weight_decay=EarlyDecay(0.5, until=3), backend=backend)
    full_params = _params()
    full = make(full_params)
    _run(full, full_params, 0, 5)
    a_params = _params()
    a = make(a_params)
    _run(a, a_params, 0, 2)
    b_params = _clone(a_params)
    b = make(b_params)
    b.load_state_dict(_save_load(a.state_dict(), tmp_path))
    _run(b, b_params, 2, 5)
    assert_same(full, full_params, b, b_params, exact=True, expected_keys=ADAM_KEYS)
    # A run that restarts the schedule (step counter back at 0) decays two more steps and differs.
    c_params = _clone(a_params)
    c = make(c_params)
    c.load_state_dict(_save_load(a.state_dict(), tmp_path))
    c.param_groups[0]["step"] = 0
    _run(c, c_params, 2, 5)
    assert not torch.equal(c_params[0], full_params[0])


def test_torch_checkpoint_gives_group_step_from_the_state(tmp_path):
    """torch checkpoints have no group step: decaylab takes the largest per-parameter step."""
    src_params = _params()
    src = torch.optim.AdamW(src_params, **HP)
    _run(src, src_params, 0, 4, skip=lambda step: (1,) if step == 0 else ())
    dst = dl.AdamW(_clone(src_params))
    dst.load_state_dict(_save_load(src.state_dict(), tmp_path))
    assert dst.param_groups[0]["step"] == 4
    assert dst.state[dst.param_groups[0]["params"][1]]["step"].item() == 3


def test_plain_weight_decay_checkpoint_loads_with_weights_only(tmp_path, schedule_globals_reset):
    """Every value a decaylab group holds by default is weights_only-safe (plain float λ)."""
    ps = _params()
    opt = dl.Adam(ps, lr=1e-2, weight_decay=0.1, decay="decoupled", decay_scale="schedule", decay_to="init",
                  amsgrad=True, backend="foreach")
    _run(opt, ps, 0, 3)
    sd = _save_load(opt.state_dict(), tmp_path)  # would raise if anything needed an allow-list
    group = sd["param_groups"][0]
    assert group["weight_decay"] == 0.1 and group["decay_scale"] == "schedule" and group["step"] == 3
    assert group["decay_max_lr"] == 1e-2 and group["decay_to"] == "init"
    assert torch.equal(sd["state"][0]["exp_avg"], opt.state[ps[0]]["exp_avg"])


def test_schedule_weight_decay_loads_with_weights_only(tmp_path, schedule_globals_reset):
    """A decaylab schedule in ``weight_decay`` is saved as plain data: ``torch.load`` with its default
    ``weights_only=True`` reads it with no allow-list, and ``load_state_dict`` makes the schedule again."""
    ps = _params()
    opt = dl.AdamW(ps, lr=0.1, weight_decay=EarlyDecay(0.1, until=3), backend="foreach")
    _run(opt, ps, 0, 2)
    path = tmp_path / "ckpt.pt"
    torch.save(opt.state_dict(), path)
    assert opt.param_groups[0]["weight_decay"] == EarlyDecay(0.1, until=3)  # the optimizer keeps its object

    sd = torch.load(path)  # weights_only=True, nothing allow-listed
    saved = sd["param_groups"][0]["weight_decay"]
    assert saved == {"decaylab_schedule": "EarlyDecay", "module": "decaylab.optim.schedules",
                     "fields": {"weight_decay": 0.1, "until": 3}}

    b_params = _clone(ps)
    b = dl.AdamW(b_params, backend="foreach")  # default λ=0.01: the checkpoint's schedule replaces it
    b.load_state_dict(sd)
    wd = b.param_groups[0]["weight_decay"]
    assert type(wd) is EarlyDecay and wd == EarlyDecay(0.1, until=3)
    assert [wd(t) for t in range(5)] == [0.1, 0.1, 0.1, 0.0, 0.0]
    assert torch.equal(b.state[b_params[0]]["exp_avg"], opt.state[ps[0]]["exp_avg"])


def test_a_schedule_that_is_not_plain_data_stays_an_object(tmp_path, schedule_globals_reset):
    """A lambda (or a FollowSchedule of a function) cannot be plain data: it is pickled as it is, and a
    weights_only load refuses it, as torch does for any object."""
    ps = _params()
    opt = dl.AdamW(ps, lr=0.1, weight_decay=FollowSchedule(0.1, math.sqrt), backend="foreach")
    _run(opt, ps, 0, 1)
    path = tmp_path / "ckpt.pt"
    torch.save(opt.state_dict(), path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path)
    assert torch.load(path, weights_only=False)["param_groups"][0]["weight_decay"] == FollowSchedule(0.1, math.sqrt)


def test_state_dict_with_a_schedule_loads_in_a_fresh_process(tmp_path):
    """HF Trainer and Lightning resume with torch.load(weights_only=True) in a new process, before any
    decaylab schedule class is imported: the train loop's DecaySchedule too."""
    from decaylab.train.schedules import DecaySchedule

    ps = _params()
    opt = dl.AdamW(ps, lr=0.1, weight_decay=DecaySchedule(0.2, "early", 4), backend="foreach")
    _run(opt, ps, 0, 2)
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    code = (
        "import torch\n"
        f"sd = torch.load({str(tmp_path / 'opt.pt')!r})\n"
        "from decaylab.optim import AdamW\n"
        "ps = [torch.zeros(s, dtype=torch.float64, requires_grad=True) for s in [(6, 4), (6,), (3, 6), (3,)]]\n"
        "opt = AdamW(ps)\n"
        "opt.load_state_dict(sd)\n"
        "wd = opt.param_groups[0]['weight_decay']\n"
        "print(type(wd).__name__, wd(3), wd(4))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["DecaySchedule", "0.2", "0.0"]


def test_constant_decay_schedule_round_trip_equals_float(tmp_path, schedule_globals_reset):
    plain_params, sched_params = _params(), _params()
    plain = dl.AdamW(plain_params, lr=1e-2, weight_decay=0.4, backend="foreach")
    sched = dl.AdamW(sched_params, lr=1e-2, weight_decay=ConstantDecay(0.4), backend="foreach")
    _run(plain, plain_params, 0, 3)
    _run(sched, sched_params, 0, 3)
    resumed_params = _clone(sched_params)
    resumed = dl.AdamW(resumed_params, backend="foreach")
    resumed.load_state_dict(_save_load(sched.state_dict(), tmp_path))
    _run(plain, plain_params, 3, 6)
    _run(resumed, resumed_params, 3, 6)
    assert_same(plain, plain_params, resumed, resumed_params, exact=True, expected_keys=ADAM_KEYS)
