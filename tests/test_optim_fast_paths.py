"""Every fast path (foreach, compiled, fused, auto) equals the reference executor, optimizer state included.

The reference executor (one Python loop over tensors) is the specification; these tests run the
same float64 gradients through each backend and compare every parameter and every state entry.
The parameters cover a 2-D, a 1-D, a 3-D and a 0-dim tensor, non-contiguous gradients, and a
non-contiguous (transposed) parameter, which the compiled backend cannot flatten and must hand
to foreach. The learning rate moves every step; with the compiled backend that must not recompile.

The compiled backend costs seconds per distinct configuration, so it runs a hand-picked set that
covers every decay form and both directions at least once (flags spread over them) instead of the
full cross product that foreach runs.

Everything runs with torch's default compile caches, as users get them;
``test_compiled_hyperparameters_not_taken_from_another_graph`` checks that those caches never
hand one optimizer's graph (and its constants) to another.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch._functorch.config
import torch._inductor.config
from torch._dynamo.utils import counters
from torch._inductor.utils import fresh_cache
from torch.testing import assert_close

from decaylab.optim import FORMS, RULES, SGD, Adam
from decaylab.optim.executors import EXECUTORS, BucketSpec

STEPS = 6
LRS = (0.05, 0.03, 0.08, 0.02, 0.04, 0.01)  # a new lr every step
TOL = dict(rtol=1e-13, atol=1e-15)
SGD_VARIANTS = {
    "plain": dict(momentum=0.0),
    "momentum": dict(momentum=0.9),
    "nesterov": dict(momentum=0.9, nesterov=True),
}


# --------------------------------------------------------------------------- helpers


def make_params(seed: int = 0) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """(contiguous params, non-contiguous params), float64, deterministic."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    contiguous = [
        torch.nn.Parameter(rnd(4, 3)),  # 2-D
        torch.nn.Parameter(rnd(7)),  # 1-D
        torch.nn.Parameter(rnd(2, 3, 2)),  # 3-D
        torch.nn.Parameter(rnd(())),  # 0-dim scalar
    ]
    transposed = torch.nn.Parameter(rnd(3, 5).t())  # shape (5, 3), strides (1, 5)
    assert not transposed.is_contiguous()
    return contiguous, [transposed]


def make_grads(params: list[torch.Tensor], seed: int = 1) -> list[list[torch.Tensor]]:
    """STEPS lists of gradients; the ones of 2-D and 3-D params are non-contiguous."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(STEPS):
        grads = []
        for p in params:
            if p.dim() == 2:
                g = torch.randn(p.shape[1], p.shape[0], generator=gen, dtype=torch.float64).t()
            elif p.dim() == 3:
                g = torch.randn(p.shape[2], p.shape[1], p.shape[0], generator=gen, dtype=torch.float64).permute(2, 1, 0)
            else:
                g = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            grads.append(g)
        out.append(grads)
    assert all(not g.is_contiguous() for p, g in zip(params, out[0], strict=True) if p.dim() >= 2)
    return out


def run(make_optimizer, groups_params, steps=STEPS, lrs=LRS, grad_none=(), on_step=None):
    """Run ``steps`` steps; ``groups_params`` is a list of lists of params (one per group).

    ``grad_none`` holds (group, index) pairs whose param never gets a gradient.
    Returns (optimizer, flat list of params).
    """
    flat = [p for ps in groups_params for p in ps]
    grads = make_grads(flat)
    opt = make_optimizer(groups_params)
    skip = {id(groups_params[g][i]) for g, i in grad_none}
    for t in range(steps):
        for p, g in zip(flat, grads[t], strict=True):
            p.grad = None if id(p) in skip else g.clone()
        for group in opt.param_groups:
            group["lr"] = lrs[t] * group.get("lr_mult", 1.0)
        opt.step()
        if on_step is not None:
            on_step(t)
    return opt, flat


def assert_same(opt_a, params_a, opt_b, params_b, **tol):
    """Params equal and every state entry (same keys, dtype and values) equal."""
    tol = tol or TOL
    assert len(params_a) == len(params_b)
    for i, (pa, pb) in enumerate(zip(params_a, params_b, strict=True)):
        assert_close(pa, pb, **tol, msg=lambda m, i=i: f"param {i}: {m}")
        sa, sb = opt_a.state.get(pa, {}), opt_b.state.get(pb, {})
        assert set(sa) == set(sb), (i, sorted(sa), sorted(sb))
        for key in sa:
            assert_close(sa[key], sb[key], **tol, msg=lambda m, i=i, key=key: f"param {i} state {key!r}: {m}")
    for ga, gb in zip(opt_a.param_groups, opt_b.param_groups, strict=True):
        assert ga["step"] == gb["step"]


def adam_factory(backend, form, decay_to="zero", amsgrad=False, maximize=False):
    def make(groups_params):
        return Adam(
            [{"params": ps} for ps in groups_params], lr=LRS[0], betas=(0.9, 0.99), weight_decay=0.3, decay=form,
            decay_to=decay_to, amsgrad=amsgrad, maximize=maximize, backend=backend,
        )

    return make


def sgd_factory(backend, form, variant="momentum", decay_to="zero", maximize=False):
    def make(groups_params):
        return SGD(
            [{"params": ps} for ps in groups_params], lr=LRS[0], weight_decay=0.3, decay=form, decay_to=decay_to,
            maximize=maximize, backend=backend, **SGD_VARIANTS[variant],
        )

    return make


def compare_backend(factory, backend, executors=None):
    """Reference vs ``backend`` with a contiguous group and a non-contiguous one."""
    ref_opt, ref_params = run(factory("reference"), list(make_params()))
    opt, params = run(factory(backend), list(make_params()))
    assert_same(ref_opt, ref_params, opt, params)
    return opt


# --------------------------------------------------------------------------- foreach: full cross product


@pytest.mark.parametrize("amsgrad,maximize", list(itertools.product([False, True], repeat=2)))
@pytest.mark.parametrize("decay_to", ["zero", "init"])
@pytest.mark.parametrize("form", FORMS)
def test_adam_foreach_equals_reference(form, decay_to, amsgrad, maximize, executors):
    def factory(backend):
        return adam_factory(backend, form, decay_to, amsgrad, maximize)

    compare_backend(factory, "foreach")
    used = {name for name, _ in executors}
    assert used == {"reference", "foreach"}


@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("variant", list(SGD_VARIANTS))
@pytest.mark.parametrize("decay_to", ["zero", "init"])
@pytest.mark.parametrize("form", FORMS)
def test_sgd_foreach_equals_reference(form, decay_to, variant, maximize, executors):
    def factory(backend):
        return sgd_factory(backend, form, variant, decay_to, maximize)

    opt = compare_backend(factory, "foreach")
    used = {name for name, _ in executors}
    assert used == {"reference", "foreach"}
    if variant != "plain":
        for p in opt.param_groups[0]["params"]:
            assert opt.state[p]["momentum_buffer"].shape == p.shape


def test_decay_actually_acts():
    """Guard against a vacuous comparison: the decay changes the result (and the forms differ)."""
    finals = {}
    for form in ("decoupled", "prox", "stable"):
        opt, params = run(adam_factory("foreach", form), list(make_params()))
        finals[form] = torch.cat([p.detach().reshape(-1) for p in params])
    no_decay_opt, no_decay = run(
        lambda gp: Adam([{"params": ps} for ps in gp], lr=LRS[0], betas=(0.9, 0.99), backend="foreach"),
        list(make_params()),
    )
    base = torch.cat([p.detach().reshape(-1) for p in no_decay])
    for form, final in finals.items():
        assert (final - base).abs().max() > 1e-3, form
    assert (finals["decoupled"] - finals["prox"]).abs().max() > 1e-6


# --------------------------------------------------------------------------- compiled: chosen configurations

# Every form and both directions at least once; flags and targets spread over them.
COMPILED_CASES = [
    ("adam", "l2", dict(decay_to="zero")),
    ("adam", "decoupled", dict(decay_to="init", amsgrad=True)),
    ("adam", "prox", dict(decay_to="zero", maximize=True)),
    ("adam", "prox_euclid", dict(decay_to="init", amsgrad=True, maximize=True)),
    ("adam", "cautious", dict(decay_to="init", maximize=True)),
    ("adam", "stable", dict(decay_to="zero", amsgrad=True)),
    ("sgd", "l2", dict(variant="nesterov", decay_to="zero")),
    ("sgd", "decoupled", dict(variant="momentum", decay_to="init", maximize=True)),
    ("sgd", "stable", dict(variant="nesterov", decay_to="init")),
]


def _unique_graphs() -> int:
    return counters["stats"]["unique_graphs"]


@pytest.mark.parametrize("direction,form,flags", COMPILED_CASES, ids=[f"{d}-{f}" for d, f, _ in COMPILED_CASES])
def test_compiled_equals_reference(direction, form, flags, executors):
    base = adam_factory if direction == "adam" else sgd_factory

    def factory(backend):
        return base(backend, form, **flags)

    ref_opt, ref_params = run(factory("reference"), list(make_params()))
    del executors[:]
    graphs = []
    opt, params = run(factory("compiled"), list(make_params()), on_step=lambda t: graphs.append(_unique_graphs()))
    assert_same(ref_opt, ref_params, opt, params)

    # The contiguous group really ran compiled; the transposed parameter's group fell back to foreach.
    contiguous_shapes = ((4, 3), (7,), (2, 3, 2), ())
    assert ("compiled", contiguous_shapes) in executors
    assert ("foreach", ((5, 3),)) in executors
    assert all(name != "reference" for name, _ in executors)
    assert not any(name == "compiled" and (5, 3) in shapes for name, shapes in executors)
    # A new lr every step (a new value for the lr tensor) does not recompile after the first step.
    assert graphs[1:] == [graphs[0]] * (STEPS - 1), graphs


def test_compiled_lr_changes_do_not_recompile():
    """Twenty more steps with a new lr each (and a λ schedule): the graph count does not move."""
    contiguous, _ = make_params()
    opt = Adam(contiguous, lr=0.01, weight_decay=lambda t: 0.1 / (1 + t), decay="decoupled", decay_to="init",
               amsgrad=True, betas=(0.9, 0.99), backend="compiled")
    gen = torch.Generator().manual_seed(3)
    counts = []
    for t in range(20):
        for p in contiguous:
            p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        opt.param_groups[0]["lr"] = 0.01 * (1 + t) ** -0.5
        opt.step()
        counts.append(_unique_graphs())
    assert counts == [counts[0]] * 20, counts


@pytest.mark.parametrize("backend", ["foreach", "compiled"])
def test_several_groups_different_forms(backend, executors):
    """Groups with different forms, λ, lr multipliers and flags in one optimizer; one param without grad."""

    def make(groups_params, backend):
        a, b, c, d = groups_params
        return Adam(
            [
                {"params": a, "decay": "l2"},  # (4, 3), (7,)
                {"params": b, "decay": "decoupled", "decay_to": "init", "amsgrad": True, "weight_decay": 0.5},
                {"params": c, "decay": "stable", "lr_mult": 0.5},
                {"params": d, "decay": "prox", "maximize": True, "weight_decay": 0.05},
            ],
            lr=LRS[0], betas=(0.9, 0.99), weight_decay=0.3, backend=backend,
        )

    def groups():
        (p2, p1, p3, p0), (pt,) = make_params()
        extra = torch.nn.Parameter(torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(9)))
        return [[p2, p1], [p3, p0], [extra, torch.nn.Parameter(p1.detach() * 2)], [pt]]

    ref_opt, ref_params = run(lambda gp: make(gp, "reference"), groups(), grad_none=[(0, 1)])
    del executors[:]
    opt, params = run(lambda gp: make(gp, backend), groups(), grad_none=[(0, 1)])
    assert_same(ref_opt, ref_params, opt, params)
    # The param without a gradient is untouched and has no state.
    p1_ref = make_params()[0][1]
    assert torch.equal(params[1], p1_ref)
    assert params[1] not in opt.state
    assert [g["step"] for g in opt.param_groups] == [STEPS] * 4
    if backend == "compiled":
        assert any(name == "compiled" for name, _ in executors)
        assert not any(name == "compiled" and (5, 3) in shapes for name, shapes in executors)


def test_auto_picks_foreach_for_a_small_model(executors):
    for direction in ("adam", "sgd"):
        del executors[:]
        factory = adam_factory if direction == "adam" else sgd_factory
        ref_opt, ref_params = run(factory("reference", "decoupled", decay_to="init"), list(make_params()))
        assert {name for name, _ in executors} == {"reference"}
        del executors[:]
        opt, params = run(factory("auto", "decoupled", decay_to="init"), list(make_params()))
        assert_same(ref_opt, ref_params, opt, params)
        assert executors and {name for name, _ in executors} == {"foreach"}, executors


def test_plain_sgd_l2_equals_decoupled():
    """methods.md §1: without momentum, l2 and decoupled (scale lr) are the same update."""
    a_opt, a = run(sgd_factory("reference", "l2", "plain"), list(make_params()))
    b_opt, b = run(sgd_factory("foreach", "decoupled", "plain"), list(make_params()))
    for pa, pb in zip(a, b, strict=True):
        assert_close(pa, pb, **TOL)


def test_compiled_hyperparameters_not_taken_from_another_graph():
    """Optimizers that differ only in beta2 or eps, compiled one after the other in one process.

    With torch's default caches each must still use its own hyperparameters. (Regression: when
    betas were floats in the compiled spec, dynamo lifted β2 to a graph input while inductor baked
    its first value into ``β2 ** step``; the FX graph cache, keyed on the graph without that value,
    then gave the second optimizer the first one's bias correction, off by 10x for β2 = 0.99.)
    """
    def factory(backend, betas, eps):
        def make(groups_params):
            return Adam([{"params": ps} for ps in groups_params], lr=LRS[0], betas=betas, eps=eps,
                        weight_decay=0.3, decay="prox_euclid", backend=backend)

        return make

    # Start from a clean dynamo state and an empty cache (as a fresh process on a fresh machine
    # does): what earlier compiles leave behind can change how dynamo treats float arguments.
    # torch's caches switched on the way torch's config modules intend: their own ``patch`` context
    # managers restore every entry on exit. (monkeypatch.setattr on a config module is not undone
    # cleanly: with pytest 9 it left ``enable_autograd_cache`` hidden for the rest of the process.)
    torch._dynamo.reset()
    with (
        torch._inductor.config.patch(fx_graph_cache=True),
        torch._functorch.config.patch(enable_autograd_cache=True),
        fresh_cache(),
    ):
        # eps = 3e-8 and 1e-3 keep these specs apart from every other test's compiled graphs.
        for betas, eps in (((0.9, 0.999), 3e-8), ((0.9, 0.99), 3e-8), ((0.9, 0.99), 1e-3)):
            ref_opt, ref_params = run(factory("reference", betas, eps), [make_params()[0]])
            opt, params = run(factory("compiled", betas, eps), [make_params()[0]])
            assert_same(ref_opt, ref_params, opt, params)


# --------------------------------------------------------------------------- fused: torch's kernels, rule folded in


def fused_forms() -> list[str]:
    """The rules the fused executor takes for Adam (their fused lowering), read from the registry."""
    adam = Adam([torch.nn.Parameter(torch.zeros(1))]).direction
    return [name for name, rule in RULES.items()
            if EXECUTORS["fused"].why_not_spec(BucketSpec(adam, rule, options=(("amsgrad", False),))) is None]


def _fused_cases():
    for form in fused_forms():
        for scale in (("lr",) if form == "l2" else ("lr", "schedule", "corrected", "constant")):
            for amsgrad, maximize in itertools.product([False, True], repeat=2):
                if form == "stable" and amsgrad:
                    continue
                yield pytest.param(form, scale, amsgrad, maximize, id=f"{form}-{scale}-ams{amsgrad:d}-max{maximize:d}")


@pytest.mark.parametrize(("form", "scale", "amsgrad", "maximize"), list(_fused_cases()))
def test_fused_equals_reference(form, scale, amsgrad, maximize, executors):
    """Each rule the fused path takes (lr', wd' folded into torch's AdamW kernel) is the rule as written."""

    def factory(backend):
        def make(groups_params):
            return Adam([{"params": ps} for ps in groups_params], lr=LRS[0], betas=(0.9, 0.99), weight_decay=0.3,
                        decay=form, decay_scale=scale, max_lr=0.1, amsgrad=amsgrad, maximize=maximize, backend=backend)

        return make

    ref_opt, ref_params = run(factory("reference"), list(make_params()))
    del executors[:]
    opt, params = run(factory("fused"), list(make_params()))
    assert_same(ref_opt, ref_params, opt, params)
    # the contiguous group (with non-contiguous gradients) ran fused; the transposed parameter did not
    assert ("fused", ((4, 3), (7,), (2, 3, 2), ())) in executors, executors
    assert not any(name == "fused" and (5, 3) in shapes for name, shapes in executors)


def test_fused_stable_mean_spans_groups():
    """The stable form's mean v̂ covers every group; the fused pre-pass reads it before the step."""

    def factory(backend):
        def make(groups_params):
            groups = [{"params": groups_params[0], "weight_decay": 0.3},
                      {"params": groups_params[1], "weight_decay": 1.5}]
            return Adam(groups, lr=LRS[0], decay="stable", backend=backend)

        return make

    ref_opt, ref_params = run(factory("reference"), list(make_params()))
    opt, params = run(factory("fused"), list(make_params()))
    assert_same(ref_opt, ref_params, opt, params)


def test_fused_zero_lr_with_constant_decay_still_decays():
    """lr_t = 0 leaves no lr to fold the decay into: the step runs the rule as written."""
    lrs = (0.05, 0.0, 0.0, 0.03, 0.0, 0.01)

    def factory(backend):
        def make(groups_params):
            return Adam([{"params": ps} for ps in groups_params], lr=0.05, weight_decay=0.1, decay="decoupled",
                        decay_scale="constant", backend=backend)

        return make

    ref_opt, ref_params = run(factory("reference"), list(make_params()), lrs=lrs)
    opt, params = run(factory("fused"), list(make_params()), lrs=lrs)
    assert_same(ref_opt, ref_params, opt, params)
    assert not torch.equal(ref_params[0], make_params()[0][0])


def test_auto_picks_fused_only_where_it_is_exact(executors):
    def used(**kw):
        del executors[:]
        run(lambda gp: Adam([{"params": ps} for ps in gp], lr=0.05, weight_decay=0.1, **kw), list(make_params()))
        return {name for name, _ in executors}

    assert used(decay="decoupled") == {"fused", "foreach"}  # the transposed parameter's group: foreach
    assert used(decay="prox", decay_scale="schedule") == {"fused", "foreach"}
    assert used(decay="decoupled", decay_to="init") == {"foreach"}
    # the forms torch's kernel cannot express run on decaylab's native step (tests/test_optim_native.py)
    assert used(decay="cautious") == {"native", "foreach"}
    assert used(decay="prox_euclid") == {"native", "foreach"}
    assert used(decay="stable", amsgrad=True) == {"native", "foreach"}


@pytest.mark.parametrize(("kwargs", "why"), [
    (dict(decay="cautious"), "decay='cautious'"),
    (dict(decay="decoupled", decay_to="init"), "decay_to='init'"),
    (dict(decay="stable", amsgrad=True), "amsgrad"),
    (dict(decay="stable", lr=torch.tensor([0.1, 0.2])), "per-model"),
])
def test_explicit_fused_rejects_what_it_cannot_run(kwargs, why):
    p = torch.nn.Parameter(torch.zeros(2, 3))
    kwargs = dict(dict(lr=0.1, weight_decay=0.1), **kwargs)
    with pytest.raises(ValueError, match=r"backend='fused'.*" + why.replace("(", r"\(")):
        Adam([p], backend="fused", **kwargs)


def test_explicit_fused_rejects_sgd_and_bf16():
    with pytest.raises(ValueError, match="backend='fused'.*not Adam"):
        SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1, backend="fused")
    with pytest.raises(ValueError, match="backend='fused'.*16-bit"):
        Adam([torch.nn.Parameter(torch.zeros(2, dtype=torch.bfloat16))], lr=0.1, decay="decoupled", backend="fused")
