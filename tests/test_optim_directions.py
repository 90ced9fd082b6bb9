"""The directions beyond Adam and SGD: Muon, Lion, Adafactor, schedule-free AdamW.

* Parity with the anchors: ``torch.optim.Muon`` (fp32; every ``adjust_lr_fn``, Nesterov on and off; tall,
  wide and square matrices), ``torch.optim.Adafactor`` (float64, state included), Lion against the
  paper's Alg. 2 written out here, ``schedulefree.AdamWScheduleFree`` (float64; the training and the
  evaluation weights).
* Each direction's fast paths equal its reference path (float64, state included), and K stacked models
  equal K separate runs.
* Every direction × every built-in rule either runs or is refused with a message naming both; the
  rules with an exact per-step shrink are that shrink under zero gradients (where the direction's
  update is zero then).
* bf16 parameters keep their decay (Kahan writes); the instruments know each direction.
"""
from __future__ import annotations

import itertools
import math

import pytest
import schedulefree
import torch
from torch.testing import assert_close

from decaylab import optim as dl
from decaylab.optim import DIRECTIONS, FORMS, OPTIMIZERS, RULES

NEW = ("lion", "muon", "adafactor", "schedule_free")
SHAPES = {"lion": [(8, 4), (5,), (3, 4, 2), ()], "muon": [(8, 4), (4, 8), (6, 6)],
          "adafactor": [(8, 4), (5,), (3, 4, 2), ()], "schedule_free": [(8, 4), (5,), (3, 4, 2), ()]}
HP = {"lion": dict(lr=1e-2), "muon": dict(lr=2e-2, ns_dtype=torch.float64), "adafactor": dict(lr=1e-2),
      "schedule_free": dict(lr=1e-2, warmup_steps=2)}


def _grads(shapes, steps, dtype, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=gen, dtype=dtype) for s in shapes] for _ in range(steps)]


def _params(shapes, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=dtype)) for s in shapes]


def _run(make, shapes, dtype=torch.float64, steps=6, lrs=None, zero=False):
    params = _params(shapes, dtype)
    opt = make(params)
    if hasattr(opt, "train"):
        opt.train()
    for t, grads in enumerate(_grads(shapes, steps, dtype)):
        for p, g in zip(params, grads, strict=True):
            p.grad = torch.zeros_like(p) if zero else g.clone()
        if lrs is not None:
            for group in opt.param_groups:
                group["lr"] = lrs[t]
        opt.step()
    return opt, params


def _assert_same(a, pa, b, pb, **tol):
    tol = tol or dict(rtol=1e-12, atol=1e-14)
    for i, (x, y) in enumerate(zip(pa, pb, strict=True)):
        assert_close(x, y, **tol, msg=lambda m, i=i: f"param {i}: {m}")
        sa, sb = a.state.get(x, {}), b.state.get(y, {})
        assert set(sa) == set(sb), (sorted(sa), sorted(sb))
        for key in sa:
            assert_close(sa[key], sb[key], **tol, msg=lambda m, i=i, key=key: f"param {i} state {key!r}: {m}")


# --------------------------------------------------------------------------- the anchors


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("adjust_lr_fn", [None, "original", "match_rms_adamw"])
def test_muon_is_torch_muon_in_fp32(adjust_lr_fn, nesterov):
    """torch runs Newton–Schulz in bf16, and so does decaylab by default: the same result in fp32 (the decay
    and the step are rounded as w − w·lr·λ − lr·r·O rather than torch's w·(1 − lr·λ) − (lr·r)·O)."""
    shapes = SHAPES["muon"]
    kw = dict(lr=0.02, weight_decay=0.1, nesterov=nesterov, adjust_lr_fn=adjust_lr_fn)
    theirs, tp = _run(lambda ps: torch.optim.Muon(ps, **kw), shapes, torch.float32)
    ours, op = _run(lambda ps: dl.Muon(ps, **kw), shapes, torch.float32)
    _assert_same(theirs, tp, ours, op, rtol=0, atol=4e-6)
    assert not any(torch.equal(p, q) for p, q in zip(_params(shapes, torch.float32), op, strict=True))


def test_muon_refuses_what_is_not_a_matrix():
    with pytest.raises(ValueError, match=r"params: Muon orthogonalizes matrices .* shape \(5,\).*preset='muon'"):
        dl.Muon([torch.nn.Parameter(torch.zeros(5))])
    lr = torch.tensor([0.1, 0.2], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"\(K, rows, cols\) for K stacked models; got one of shape \(2, 3\)"):
        dl.Muon([torch.nn.Parameter(torch.zeros(2, 3))], lr=lr)
    with pytest.raises(ValueError, match="adjust_lr_fn must be one of"):
        dl.Muon([torch.nn.Parameter(torch.zeros(2, 3))], adjust_lr_fn="bogus")


@pytest.mark.parametrize(("weight_decay", "maximize", "eps"), [(0.0, False, (None, 1e-3)), (0.1, True, (1e-20, 1e-2))])
def test_adafactor_is_torch_adafactor_in_float64(weight_decay, maximize, eps):
    shapes = SHAPES["adafactor"]
    kw = dict(lr=1e-2, weight_decay=weight_decay, maximize=maximize, eps=eps, beta2_decay=-0.7, d=1.5)
    theirs, tp = _run(lambda ps: torch.optim.Adafactor(ps, **kw), shapes, lrs=[1e-2, 5e-3, 2e-2, 1e-2, 0.0, 3e-3])
    ours, op = _run(lambda ps: dl.Adafactor(ps, **kw), shapes, lrs=[1e-2, 5e-3, 2e-2, 1e-2, 0.0, 3e-3])
    _assert_same(theirs, tp, ours, op)


def _lion_paper(params, grads_per_step, lr, beta1, beta2, lam):
    """Chen et al. 2023, Alg. 2, as written in the paper."""
    m = [torch.zeros_like(p) for p in params]
    w = [p.detach().clone() for p in params]
    for grads in grads_per_step:
        for i, g in enumerate(grads):
            c = beta1 * m[i] + (1 - beta1) * g
            w[i] = w[i] - lr * (torch.sign(c) + lam * w[i])
            m[i] = beta2 * m[i] + (1 - beta2) * g
    return w, m


@pytest.mark.parametrize("backend", ["reference", "foreach", "auto"])
def test_lion_is_the_papers_algorithm(backend):
    shapes = SHAPES["lion"]
    ours, op = _run(lambda ps: dl.Lion(ps, lr=1e-2, betas=(0.9, 0.99), weight_decay=0.3, backend=backend), shapes)
    w, m = _lion_paper(_params(shapes, torch.float64), _grads(shapes, 6, torch.float64), 1e-2, 0.9, 0.99, 0.3)
    for p, wi, mi in zip(op, w, m, strict=True):
        assert_close(p.detach(), wi, rtol=1e-12, atol=1e-14)
        assert_close(ours.state[p]["exp_avg"], mi, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(("weight_decay", "r", "warmup", "power"), [(0.0, 0.0, 0, 2.0), (0.1, 0.5, 3, 1.0)])
def test_schedule_free_is_the_schedulefree_package(weight_decay, r, warmup, power):
    """The training weights y after every step, then the evaluation weights x after eval(), and back."""
    shapes = SHAPES["schedule_free"]
    kw = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=weight_decay, warmup_steps=warmup, r=r,
              weight_lr_power=power)
    theirs, tp = _run(lambda ps: schedulefree.AdamWScheduleFree(ps, foreach=False, **kw), shapes)
    ours, op = _run(lambda ps: dl.ScheduleFreeAdamW(ps, **kw), shapes)
    _assert_same(theirs, tp, ours, op)
    theirs.eval()
    ours.eval()
    _assert_same(theirs, tp, ours, op)
    theirs.train()
    ours.train()
    _assert_same(theirs, tp, ours, op)
    with pytest.raises(RuntimeError, match=r"step\(\) in eval mode: call optimizer.train\(\)"):
        ours.eval()
        ours.step()


def test_schedule_free_decay_at_z_acts_on_the_iterate_that_steps():
    """decay_at="z" decays z itself: with zero gradients z shrinks by (1 − lr·λ) per step exactly."""
    lr, lam = 0.1, 0.5
    opt, (w,) = _run(lambda ps: dl.ScheduleFreeAdamW(ps, lr=lr, weight_decay=lam, decay_at="z"), [(4,)], zero=True,
                     steps=3)
    assert_close(opt.state[w]["z"], _params([(4,)], torch.float64)[0].detach() * (1 - lr * lam) ** 3)
    with pytest.raises(ValueError, match="decay_at='y' takes the pull of a rule that acts before the step.*'prox'"):
        dl.ScheduleFreeAdamW([torch.nn.Parameter(torch.zeros(2))], decay="prox")


# --------------------------------------------------------------------------- fast paths and stacked models


# foreach: every rule the direction takes; compiled (seconds per configuration): two rules each
FAST_CASES = [(d, "foreach", f) for d in ("lion", "schedule_free") for f in ("decoupled", "prox", "cautious", "l2")]
FAST_CASES += [(d, "compiled", f) for d in ("lion", "schedule_free") for f in ("decoupled", "cautious")]


@pytest.mark.parametrize(("direction", "backend", "form"), FAST_CASES)
def test_fast_paths_equal_the_reference(direction, backend, form, executors):
    cls = OPTIMIZERS[direction]
    extra = {"decay_at": "z"} if direction == "schedule_free" else {}

    def make(b):
        return lambda ps: cls(ps, weight_decay=0.3, decay=form, backend=b, **HP[direction], **extra)

    ref, rp = _run(make("reference"), SHAPES[direction], lrs=[1e-2, 2e-2, 5e-3, 1e-2, 3e-3, 1e-2])
    del executors[:]
    fast, fp = _run(make(backend), SHAPES[direction], lrs=[1e-2, 2e-2, 5e-3, 1e-2, 3e-3, 1e-2])
    _assert_same(ref, rp, fast, fp)
    assert {name for name, _ in executors} == {backend}


@pytest.mark.parametrize("direction", ["muon", "adafactor"])
def test_directions_that_are_not_elementwise_run_on_the_reference(direction, executors):
    opt, _ = _run(lambda ps: OPTIMIZERS[direction](ps, **HP[direction]), SHAPES[direction])
    assert {name for name, _ in executors} == {"reference"}
    (row, *_) = opt.explain()
    assert "not element-wise" in row["refused"]["foreach"] and "no native step" in row["refused"]["native"]
    with pytest.raises(ValueError, match="backend='native' cannot run this param group: the .* direction has no"):
        OPTIMIZERS[direction](_params(SHAPES[direction], torch.float64), backend="native")


STACK_SHAPES = {"lion": [(3, 4, 2), (3, 5)], "muon": [(3, 6, 4), (3, 4, 6)], "adafactor": [(3, 6, 4), (3, 5)],
                "schedule_free": [(3, 4, 2), (3, 5)]}


@pytest.mark.parametrize("direction", NEW)
def test_stacked_models_equal_separate_runs(direction):
    """K = 3 models stacked along dim 0, each with its own lr and λ (model 0: λ = 0), equal K separate runs."""
    cls = OPTIMIZERS[direction]
    lrs, lams = [1e-2, 2e-2, 5e-3], [0.0, 0.2, 0.5]
    kw = {k: v for k, v in HP[direction].items() if k != "lr"}
    shapes = STACK_SHAPES[direction]
    stacked, sp = _run(lambda ps: cls(ps, lr=torch.tensor(lrs, dtype=torch.float64),
                                      weight_decay=torch.tensor(lams, dtype=torch.float64), **kw), shapes)
    for k in range(3):
        single = [s[1:] for s in shapes]
        params = [torch.nn.Parameter(p.detach()[k].clone()) for p in _params(shapes, torch.float64)]
        opt = cls(params, lr=lrs[k], weight_decay=lams[k], **kw)
        if hasattr(opt, "train"):
            opt.train()
        for grads in _grads(shapes, 6, torch.float64):
            for p, g in zip(params, grads, strict=True):
                p.grad = g[k].clone()
            opt.step()
        for i, (p, q) in enumerate(zip(params, sp, strict=True)):
            assert p.shape == single[i]
            assert_close(p.detach(), q.detach()[k], rtol=1e-10, atol=1e-12, msg=lambda m, k=k: f"model {k}: {m}")
            for key, value in opt.state[p].items():
                if key == "step":
                    continue
                assert_close(value, stacked.state[q][key][k], rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- direction × rule


@pytest.mark.parametrize(("direction", "form"), list(itertools.product(NEW, FORMS)))
def test_every_rule_runs_or_is_refused_by_name(direction, form):
    cls, rule = OPTIMIZERS[direction], RULES[form]
    extra = {"decay_at": "z"} if direction == "schedule_free" else {}
    make = lambda ps: cls(ps, weight_decay=0.1, decay=form, **HP[direction], **extra)  # noqa: E731
    missing = set(rule.needs) - set(DIRECTIONS[direction].provides)
    if missing:
        with pytest.raises(ValueError, match=f"decay='{form}' needs .* which {direction} does not have"):
            make(_params(SHAPES[direction], torch.float64))
        return
    opt, params = _run(make, SHAPES[direction], steps=2)
    assert all(torch.isfinite(p).all() for p in params)


@pytest.mark.parametrize("scale", ["lr", "schedule", "corrected", "constant"])
@pytest.mark.parametrize("form", [f for f in FORMS if RULES[f].shrink == "exact"])
@pytest.mark.parametrize("direction", ["lion", "muon", "adafactor"])
def test_zero_gradients_give_the_rules_shrink(direction, form, scale):
    """Lion's sign(0) = 0, Muon's NS(0) = 0 and Adafactor's 0/sqrt(v̂) = 0: one step is pure decay.
    (Schedule-free is not here: after its first step y mixes z and the average x, so pure decay of y is
    not one factor per step.)"""
    lr, lam, max_lr = 0.1, 0.3, 0.2
    opt, params = _run(lambda ps: OPTIMIZERS[direction](ps, weight_decay=lam, decay=form, decay_scale=scale,
                                                         max_lr=max_lr, **{**HP[direction], "lr": lr}),
                       SHAPES[direction], steps=1, zero=True)
    s = dl.rules.decay_scale(scale, lr, max_lr)
    for p, p0 in zip(params, _params(SHAPES[direction], torch.float64), strict=True):
        assert_close(p.detach(), p0.detach() * RULES[form].shrink_factor(s * lam), rtol=1e-14, atol=1e-15)


# --------------------------------------------------------------------------- bf16, instruments, presets


@pytest.mark.parametrize("direction", NEW)
def test_bf16_parameters_keep_their_decay(direction):
    """Pure decay of lr·λ = 1e-4 per step rounds away in bf16 with round-to-nearest; the Kahan writes keep
    it (within 1 % of the fp32 trajectory after 300 steps)."""
    shapes = [(16, 16)]
    runs = {}
    for dtype in (torch.float32, torch.bfloat16):
        kw = {**HP[direction], "lr": 1e-3}
        kw.pop("ns_dtype", None)
        opt, (w,) = _run(lambda ps, kw=kw: OPTIMIZERS[direction](ps, weight_decay=0.1, **kw), shapes, dtype=dtype,
                         steps=300, zero=True)
        runs[dtype] = float(w.detach().float().norm() / _params(shapes, torch.float32)[0].detach().norm())
    assert runs[torch.float32] < 0.99  # the decay acts (schedule-free: y follows the slower average x)
    assert runs[torch.bfloat16] == pytest.approx(runs[torch.float32], rel=0.01)


def test_equilibrium_angular_update_where_it_is_known():
    from decaylab.diagnostics.weights import group_equilibrium

    lion = dl.Lion([torch.nn.Parameter(torch.zeros(3))], lr=1e-3, weight_decay=0.1, betas=(0.0, 0.99))
    assert group_equilibrium(lion, lion.param_groups[0], taken=False) == pytest.approx(math.sqrt(2 * 1e-3 * 0.1))
    lion = dl.Lion([torch.nn.Parameter(torch.zeros(3))], lr=1e-3, weight_decay=0.1)
    assert group_equilibrium(lion, lion.param_groups[0], taken=False) is None  # β₁ > 0: no closed form
    muon = dl.Muon([torch.nn.Parameter(torch.zeros(3, 3))], lr=1e-3, weight_decay=0.1, momentum=0.0)
    assert group_equilibrium(muon, muon.param_groups[0], taken=False) == pytest.approx(math.sqrt(2 * 1e-3 * 0.1))
    muon = dl.Muon([torch.nn.Parameter(torch.zeros(3, 3))], lr=1e-3, weight_decay=0.1)
    assert group_equilibrium(muon, muon.param_groups[0], taken=False) is None


@pytest.mark.parametrize("direction", NEW)
def test_state_dict_round_trip_resumes_exactly(direction, tmp_path):
    cls = OPTIMIZERS[direction]
    full, fp = _run(lambda ps: cls(ps, weight_decay=0.2, **HP[direction]), SHAPES[direction], steps=6)
    half, hp_ = _run(lambda ps: cls(ps, weight_decay=0.2, **HP[direction]), SHAPES[direction], steps=3)
    torch.save(half.state_dict(), tmp_path / "opt.pt")
    params = [torch.nn.Parameter(p.detach().clone()) for p in hp_]
    resumed = cls(params, weight_decay=0.2, **HP[direction])
    resumed.load_state_dict(torch.load(tmp_path / "opt.pt"))  # weights_only=True
    if hasattr(resumed, "train"):
        resumed.train()
    for grads in _grads(SHAPES[direction], 6, torch.float64)[3:]:
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        resumed.step()
    for p, q in zip(fp, params, strict=True):
        assert torch.equal(p, q)


def test_a_group_may_run_another_direction():
    """Muon for the matrices and Adam for the rest, in one optimizer (Keller Jordan's MuonWithAuxAdam,
    Moonlight): the Adam group is AdamW with Adam's own defaults, as if it were alone."""
    mats, vecs = _params([(6, 4), (4, 6)], torch.float64), _params([(5,), (4,)], torch.float64, seed=3)
    both = dl.Muon([{"params": mats}, {"params": vecs, "direction": "adam", "lr": 3e-3}], lr=2e-2,
                   weight_decay=0.1, ns_dtype=torch.float64)
    assert both.param_groups[1]["betas"] == (0.9, 0.999) and both.param_groups[1]["eps"] == 1e-8
    alone = dl.AdamW([torch.nn.Parameter(p.detach().clone()) for p in vecs], lr=3e-3, weight_decay=0.1)
    gen = torch.Generator().manual_seed(5)
    for _ in range(4):
        for p, q in zip(vecs, alone.param_groups[0]["params"], strict=True):
            p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            q.grad = p.grad.clone()
        for p in mats:
            p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        both.step()
        alone.step()
    for p, q in zip(vecs, alone.param_groups[0]["params"], strict=True):
        assert_close(p, q, rtol=1e-13, atol=1e-15)
    with pytest.raises(ValueError, match="direction must be one of .*got 'bogus'"):
        dl.Muon([{"params": mats}, {"params": vecs, "direction": "bogus"}])


@pytest.mark.parametrize("optimizer", [o for o in OPTIMIZERS])
def test_each_direction_trains_in_decaylab_train(optimizer):
    """``optimizer = "lion"`` (etc.) in a config or a spec: the names come from the registry; Muon takes the
    matrices and AdamW the rest; stacked runs equal single ones."""
    from decaylab.train import TrainConfig, train, train_stacked

    config = TrainConfig(model="mlp", dataset="digits", steps=6, batch_size=32, lr=1e-3, weight_decay=0.1,
                         optimizer=optimizer, schedule="constant")
    single = train(config, progress=False)
    stacked = train_stacked([config, config.replace(seed=1, lr=2e-3)], progress=False)
    assert math.isfinite(single.final["train_loss"])
    assert stacked[0].final["train_loss"] == pytest.approx(single.final["train_loss"], rel=1e-4, abs=1e-5)
