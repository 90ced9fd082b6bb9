"""decaylab's native Adam step (``_native.c`` through ctypes) equals the reference executor.

The native step is the default (``backend="auto"``) for the decay forms torch's fused kernel cannot
express (prox_euclid, cautious, stable) and for stacked models. Like every fast path it is checked
against the reference executor in float64, optimizer state included: every form × scale × amsgrad ×
maximize, stacked models against K separate runs, the stable form's carried sums against writes
they must notice, thread counts, float32, and the library's build (cache, a broken compiler, the
switch that turns it off).
"""

from __future__ import annotations

import ctypes
import itertools
import os
import stat
import warnings

import pytest
import torch
from test_optim_fast_paths import (
    LRS,
    SGD_VARIANTS,
    assert_same,
    make_params,
    run,
    sgd_factory,
)
from test_optim_stacked import adam, check_stacked_equals_separate, initial, sgd
from torch.testing import assert_close

from decaylab.optim import FORMS, SCALES, SGD, Adam, AdamW
from decaylab.optim.executors import EXECUTORS
from decaylab.optim.executors import native as native_executor
from decaylab.optim.executors.native import build as native


@pytest.fixture(autouse=True)
def _library():
    if not native.available():  # the machines this project targets have a C compiler: this is a failure
        pytest.fail(f"the native library is not available: {native.why_not()}")


def factory(backend, form, scale="lr", **kw):
    def make(groups_params):
        return Adam([{"params": ps} for ps in groups_params], lr=LRS[0], betas=(0.9, 0.99), weight_decay=0.3,
                    decay=form, decay_scale=scale, max_lr=0.1, backend=backend, **kw)

    return make


def _cases():
    for form in FORMS:
        for scale in ("lr",) if form == "l2" else SCALES:
            for amsgrad, maximize in itertools.product([False, True], repeat=2):
                yield pytest.param(form, scale, amsgrad, maximize, id=f"{form}-{scale}-ams{amsgrad:d}-max{maximize:d}")


@pytest.mark.parametrize(("form", "scale", "amsgrad", "maximize"), list(_cases()))
def test_native_equals_reference(form, scale, amsgrad, maximize, executors):
    ref_opt, ref_params = run(factory("reference", form, scale, amsgrad=amsgrad, maximize=maximize),
                              list(make_params()))
    del executors[:]
    opt, params = run(factory("native", form, scale, amsgrad=amsgrad, maximize=maximize), list(make_params()))
    assert_same(ref_opt, ref_params, opt, params)
    # the contiguous group (non-contiguous gradients, a 0-dim tensor) ran native; the transposed parameter did not
    assert ("native", ((4, 3), (7,), (2, 3, 2), ())) in executors, executors
    assert not any(name == "native" and (5, 3) in shapes for name, shapes in executors)


@pytest.mark.parametrize("form", ["decoupled", "prox_euclid", "cautious", "stable"])
def test_native_float32_close_to_reference(form):
    def params32():
        return [[p.detach().float().requires_grad_() for p in make_params()[0]]]

    def make(backend):
        return lambda gp: Adam([{"params": ps} for ps in gp], lr=LRS[0], weight_decay=0.3, decay=form, backend=backend)

    grads64 = None
    out = {}
    for backend in ("reference", "native"):
        ps = params32()[0]
        opt = make(backend)([ps])
        gen = torch.Generator().manual_seed(3)
        for t in range(6):
            for p in ps:
                p.grad = torch.randn(p.shape, generator=gen)
            opt.param_groups[0]["lr"] = LRS[t]
            opt.step()
        out[backend] = (opt, ps)
    del grads64
    assert_same(*out["reference"], *out["native"], rtol=2e-6, atol=1e-7)
    assert out["native"][1][0].dtype == torch.float32


@pytest.mark.parametrize("flags", [{}, dict(amsgrad=True, maximize=True)], ids=["plain", "amsgrad-maximize"])
@pytest.mark.parametrize("form", FORMS)
def test_native_stacked_equals_separate(form, flags):
    """One call for all K models, each with its own lr and λ (model 0 has λ = 0), equals K separate runs."""
    calls = []
    original = EXECUTORS["native"].step, EXECUTORS["native"].update
    EXECUTORS["native"].step = lambda bucket: (calls.append(1), original[0](bucket))[1]
    EXECUTORS["native"].update = lambda bucket: (calls.append(1), original[1](bucket))[1]
    try:
        check_stacked_equals_separate(*adam("native", form, **flags))
    finally:
        del EXECUTORS["native"].step, EXECUTORS["native"].update
    assert calls


def test_auto_runs_stacked_models_native(executors):
    stacked, _ = adam("auto", "decoupled")
    params = [torch.nn.Parameter(w.clone()) for w in initial()]
    opt = stacked(params, torch.tensor([0.01, 0.03, 0.05, 0.02], dtype=torch.float64))
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    assert {name for name, _ in executors} == {"native"}


def test_native_zero_lr_with_constant_decay():
    """With lr_t = 0 the decay still acts (nothing is folded into the lr on this path)."""
    lrs = (0.05, 0.0, 0.0, 0.03, 0.0, 0.01)

    def make(backend):
        return lambda gp: Adam([{"params": ps} for ps in gp], lr=0.05, weight_decay=0.1, decay="cautious",
                               decay_scale="constant", backend=backend)

    ref_opt, ref_params = run(make("reference"), list(make_params()), lrs=lrs)
    opt, params = run(make("native"), list(make_params()), lrs=lrs)
    assert_same(ref_opt, ref_params, opt, params)


def test_native_several_groups_and_stable_mean_spans_them():
    def make(backend):
        def build(gp):
            groups = [{"params": gp[0], "weight_decay": 0.3, "decay": "stable"},
                      {"params": gp[1], "weight_decay": 1.5, "decay": "stable", "lr_mult": 0.5}]
            return Adam(groups, lr=LRS[0], backend=backend)

        return build

    contiguous, _ = make_params()
    groups = [contiguous[:2], contiguous[2:]]
    ref_opt, ref_params = run(make("reference"), groups)
    opt, params = run(make("native"), [[p.detach().clone().requires_grad_() for p in g] for g in
                                       [make_params()[0][:2], make_params()[0][2:]]])
    assert_same(ref_opt, ref_params, opt, params)


def test_stable_carried_sums_notice_outside_writes():
    """Σv is carried between native steps; a write to v by anyone else makes the next step read it afresh."""

    def step_both(opts, params_sets, seed):
        gen = torch.Generator().manual_seed(seed)
        grads = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params_sets[0]]
        for opt, ps in zip(opts, params_sets, strict=True):
            for p, g in zip(ps, grads, strict=True):
                p.grad = g.clone()
            opt.step()

    sets = [make_params()[0], make_params()[0]]
    opts = [Adam(sets[0], lr=0.01, weight_decay=0.5, decay="stable", backend="reference"),
            Adam(sets[1], lr=0.01, weight_decay=0.5, decay="stable", backend="native")]
    step_both(opts, sets, 0)
    step_both(opts, sets, 1)
    for opt, ps in zip(opts, sets, strict=True):  # an outside write: in place, and a new tensor
        opt.state[ps[0]]["exp_avg_sq"].mul_(4.0)
        opt.state[ps[1]]["exp_avg_sq"] = opt.state[ps[1]]["exp_avg_sq"] * 9.0
    step_both(opts, sets, 2)
    # and a round trip through a state dict
    for opt in opts:
        opt.load_state_dict(opt.state_dict())
    step_both(opts, sets, 3)
    assert_same(opts[0], sets[0], opts[1], sets[1])


def test_thread_count_does_not_change_the_result():
    """Chunks are shared among threads, partial sums are added in chunk order: bitwise equal results."""
    gen = torch.Generator().manual_seed(0)
    shapes = ((600_000,), (3, 7))
    start = [torch.randn(s, generator=gen) for s in shapes]
    grads = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(3)]
    results = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            ps = [torch.nn.Parameter(w.clone()) for w in start]
            opt = Adam(ps, lr=0.01, weight_decay=0.5, decay="stable", backend="native")
            for step_grads in grads:
                for p, g in zip(ps, step_grads, strict=True):
                    p.grad = g.clone()
                opt.step()
            results.append([p.detach().clone() for p in ps] + [opt.state[ps[0]]["exp_avg_sq"].clone()])
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_native_bumps_versions_like_an_in_place_op():
    """Autograd must see the write: a graph that saved the parameter refuses to backpropagate."""
    w = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))
    opt = AdamW([w], lr=0.1, backend="native")
    loss = (w * w).sum()  # saves w
    w.grad = torch.ones_like(w)
    version = w._version
    opt.step()
    assert w._version > version
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_adamw_native_equals_torch_adamw():
    gen = torch.Generator().manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(6, 5, generator=gen, dtype=torch.float64))]
    b = [torch.nn.Parameter(a[0].detach().clone())]
    ta = torch.optim.AdamW(a, lr=0.02, weight_decay=0.1, amsgrad=True)
    tb = AdamW(b, lr=0.02, weight_decay=0.1, amsgrad=True, backend="native")
    for _ in range(5):
        g = torch.randn(6, 5, generator=gen, dtype=torch.float64)
        a[0].grad, b[0].grad = g.clone(), g.clone()
        ta.step()
        tb.step()
    assert_close(a[0], b[0], rtol=1e-13, atol=1e-15)
    for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        assert_close(ta.state[a[0]][key], tb.state[b[0]][key], rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize(("build", "why"), [
    (lambda: SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1, decay_to="init", backend="native"), "decay_to='init'"),
    (lambda: Adam([torch.nn.Parameter(torch.zeros(2))], lr=0.1, decay_to="init", backend="native"), "decay_to='init'"),
    (lambda: Adam([torch.nn.Parameter(torch.zeros(2, dtype=torch.bfloat16))], lr=0.1, backend="native"), "16-bit"),
])
def test_explicit_native_rejects_what_it_cannot_run(build, why):
    with pytest.raises(ValueError, match=r"backend='native' cannot run this param group: .*" + why):
        build()


# --------------------------------------------------------------------------- the library's build


@pytest.fixture
def fresh_native(monkeypatch, tmp_path):
    """A fresh build state: an empty cache directory; restored afterwards."""
    monkeypatch.setenv("DECAYLAB_CACHE_DIR", str(tmp_path / "cache"))
    native.reset()
    yield tmp_path
    monkeypatch.undo()
    native.reset()


def test_build_is_cached_per_machine(fresh_native):
    assert native.available()
    built = list((fresh_native / "cache" / "native").glob("decaylab_native_*.so"))
    assert len(built) == 1
    mtime = built[0].stat().st_mtime_ns
    native.reset()
    assert native.available()  # loads the cached library, does not build again
    assert built[0].stat().st_mtime_ns == mtime
    assert ctypes.CDLL(str(built[0])).decaylab_native_abi() == native.ABI


def test_broken_compiler_falls_back_with_one_warning(fresh_native, monkeypatch, executors):
    fake = fresh_native / "cc"
    fake.write_text("#!/bin/sh\necho 'cc: error: no such compiler' >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("CC", str(fake))
    monkeypatch.setenv("PATH", str(fresh_native))  # no other compiler to be found
    with pytest.warns(UserWarning, match="building or loading the native step failed.*no such compiler"):
        assert not native.available()
    assert "no such compiler" in native.why_not()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reported once, not on every step
        ref_opt, ref_params = run(factory("reference", "cautious"), list(make_params()))
        del executors[:]
        opt, params = run(factory("auto", "cautious"), list(make_params()))
    assert_same(ref_opt, ref_params, opt, params)
    assert "native" not in {name for name, _ in executors}
    with pytest.raises(ValueError, match="backend='native'.*no such compiler"):
        Adam([torch.nn.Parameter(torch.zeros(2))], lr=0.1, backend="native")


def test_switched_off_by_environment(fresh_native, monkeypatch):
    monkeypatch.setenv("DECAYLAB_NATIVE", "0")
    assert not native.available()
    assert "DECAYLAB_NATIVE=0" in native.why_not()
    assert not os.path.exists(fresh_native / "cache")


def test_unwritable_cache_builds_in_the_temp_directory(fresh_native, monkeypatch):
    blocker = fresh_native / "a-file"
    blocker.write_text("not a directory")  # no directory can be made under it, not even by root
    monkeypatch.setenv("DECAYLAB_CACHE_DIR", str(blocker / "cache"))
    monkeypatch.setattr(native.tempfile, "gettempdir", lambda: str(fresh_native / "tmp"))
    native.reset()
    assert native.available()
    assert list((fresh_native / "tmp").glob("decaylab-*/decaylab_native_*.so"))


@pytest.mark.parametrize("form", ["decoupled", "stable", "prox_euclid"])
def test_native_with_an_empty_parameter(form):
    gen = torch.Generator().manual_seed(0)
    start = [torch.zeros(0, 3, dtype=torch.float64), torch.randn(4, generator=gen, dtype=torch.float64)]
    runs = {}
    for backend in ("reference", "native"):
        ps = [torch.nn.Parameter(w.clone()) for w in start]
        opt = Adam(ps, lr=0.1, weight_decay=0.1, decay=form, backend=backend)
        g = torch.Generator().manual_seed(1)
        for _ in range(3):
            for p in ps:
                p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64)
            opt.step()
        runs[backend] = (opt, ps)
    assert_same(*runs["reference"], *runs["native"])


# Lengths that reach every part of the pre-pass's sum: below one 512-block, whole blocks, the four
# interleaved quarters (from 2048 elements) with a block and a scalar tail after them, more than one
# chunk (65536 elements) with a partial last one.
SUM_LENGTHS = (1, 37, 511, 512, 2047, 2048, 2085, 5000, 65536, 67621, 200_003)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pre_pass_sums_every_square_once(dtype):
    """Σg² of the stable form's pre-pass, called directly: exact on small integers (every partial sum is
    representable), so an element skipped or counted twice anywhere shows."""
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randint(-7, 8, (n,), generator=gen).to(dtype) for n in SUM_LENGTHS]
    grads.append(torch.randint(-7, 8, (3, 4099), generator=gen).to(dtype))  # 3 stacked models
    models = [1] * len(SUM_LENGTHS) + [3]
    n = len(grads)
    ptrs = (ctypes.c_void_p * (3 * n))()
    ptrs[0::3] = [g.data_ptr() for g in grads]
    per_model = (ctypes.c_int64 * n)(*(g.numel() // k for g, k in zip(grads, models, strict=True)))
    rows_out = list(itertools.accumulate([0, *models[:-1]]))
    sums = (ctypes.c_double * sum(models))()
    coef = (ctypes.c_double * native.NCOEF)(1.0, 1.0, 0.1, 0.999, 0.001, 1e-8, 1.0)
    fn = native_executor._fn("sums", dtype)
    for threads in (1, 2):
        status = fn(n, ptrs, per_model, (ctypes.c_int64 * n)(*models), (ctypes.c_int64 * n)(*([0] * n)), coef,
                    (ctypes.c_int * n)(*([0] * n)), sums, (ctypes.c_int64 * n)(*rows_out), threads)
        assert status == 0
        want = [int((g.long() ** 2).sum()) for g in grads[:-1]]
        want += [int((row.long() ** 2).sum()) for row in grads[-1]]
        assert list(sums) == want, threads
        for i in range(len(sums)):
            sums[i] = 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_stable_on_long_tensors_equals_reference(dtype):
    """The stable form on tensors long enough for every part of the pre-pass and for several chunks."""
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(n, generator=gen, dtype=dtype) for n in (67621, 5000, 2085, 37)]
    grads = [[torch.randn(w.shape, generator=gen, dtype=dtype) for w in start] for _ in range(3)]
    runs = {}
    for backend in ("reference", "native"):
        ps = [torch.nn.Parameter(w.clone()) for w in start]
        opt = Adam(ps, lr=0.01, weight_decay=0.5, decay="stable", backend=backend)
        for step_grads in grads:
            for p, g in zip(ps, step_grads, strict=True):
                p.grad = g.clone()
            opt.step()
        runs[backend] = (opt, ps)
    # float32: both paths sum in float64, in another order, and the mean enters a float32 step
    tol = dict(rtol=1e-6, atol=1e-7) if dtype == torch.float32 else {}
    assert_same(*runs["reference"], *runs["native"], **tol)


# --------------------------------------------------------------------------- SGD


@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("variant", [*SGD_VARIANTS, "dampening"])
@pytest.mark.parametrize("form", FORMS)
def test_native_sgd_equals_reference(form, variant, maximize, executors):
    def factory(backend):
        if variant != "dampening":
            return sgd_factory(backend, form, variant, maximize=maximize)

        def make(groups_params):
            return SGD([{"params": ps} for ps in groups_params], lr=LRS[0], momentum=0.9, dampening=0.3,
                       weight_decay=0.3, decay=form, maximize=maximize, backend=backend)

        return make

    ref_opt, ref_params = run(factory("reference"), list(make_params()))
    del executors[:]
    opt, params = run(factory("native"), list(make_params()))
    assert_same(ref_opt, ref_params, opt, params)
    assert ("native", ((4, 3), (7,), (2, 3, 2), ())) in executors, executors


def test_auto_runs_sgd_native(executors):
    ref_opt, ref_params = run(sgd_factory("reference", "decoupled"), list(make_params()))
    del executors[:]
    opt, params = run(sgd_factory("auto", "decoupled"), list(make_params()))
    assert_same(ref_opt, ref_params, opt, params)
    assert {name for name, _ in executors} == {"native", "foreach"}  # the transposed parameter: foreach


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("form", FORMS)
def test_native_sgd_stacked_equals_separate(form, nesterov):
    check_stacked_equals_separate(*sgd("native", form, nesterov=nesterov))
