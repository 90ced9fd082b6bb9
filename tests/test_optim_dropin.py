"""decaylab's optimizers as drop-ins for torch.optim: what HF Trainer, Lightning, timm and a nanoGPT loop need.

* ``AdamW`` in fp32 on the CPU is ``torch.optim.AdamW(fused=True)`` bit for bit, with and without an lr
  scheduler (the fused kernel gets the group's own floats, never copies rounded to fp32).
* ``torch.compile(opt.step)`` runs with an lr that moves every step.
* A scheduler that writes its own group keys (``OneCycleLR``: ``max_lr``) does not change the decay.
* torch's keywords: ``foreach``, ``fused``, ``capturable``, ``differentiable``,
  ``Adam(decoupled_weight_decay=True)``; presets have real signatures and errors that name them;
  ``WarmRestarts(T_0=, T_mult=)``.
* Cross-loading: a torch AdamW checkpoint into ProxAdam warns; a ProxAdam checkpoint into torch's
  AdamW warns at its first step.
* The fused executor on CUDA equals the reference (where there is CUDA).
"""
from __future__ import annotations

import inspect
import warnings

import pytest
import torch
from torch.testing import assert_close

from decaylab import optim as dl
from decaylab.schedules import WarmRestarts

SHAPES = [(8, 5), (5,), (3, 4, 2)]


def _params(dtype=torch.float32, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=dtype).to(device)) for s in SHAPES]


def _grads(params, step):
    gen = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) for p in params]


def _train(opt, params, steps, scheduler=None):
    for t in range(steps):
        for p, g in zip(params, _grads(params, t), strict=True):
            p.grad = g
        opt.step()
        if scheduler is not None:
            scheduler.step()


# --------------------------------------------------------------------------- bit for bit


@pytest.mark.parametrize("schedule", [None, "cosine", "onecycle"])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_adamw_fp32_is_torch_fused_adamw_bit_for_bit(schedule, amsgrad):
    hp = dict(lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, amsgrad=amsgrad)
    runs = []
    for make in (lambda ps: torch.optim.AdamW(ps, fused=True, **hp), lambda ps: dl.AdamW(ps, **hp)):
        params = _params()
        opt = make(params)
        scheduler = None
        if schedule == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=20, eta_min=1e-4)
        elif schedule == "onecycle":
            scheduler = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=25)
        _train(opt, params, 20, scheduler)
        runs.append((opt, params))
    (torch_opt, torch_params), (ours, our_params) = runs
    assert ours.explain()[0]["executor"] == "fused"
    for p, q in zip(torch_params, our_params, strict=True):
        assert torch.equal(p, q)
        for key, value in torch_opt.state[p].items():
            assert torch.equal(value, ours.state[q][key]), key


# --------------------------------------------------------------------------- torch.compile of the step


def test_torch_compile_of_the_step_with_a_moving_float_lr():
    lrs = [1e-2 * (0.9 ** t) for t in range(6)]
    runs = []
    for compiled in (False, True):
        torch._dynamo.reset()
        params = _params(torch.float64)
        opt = dl.AdamW(params, lr=lrs[0], weight_decay=0.1)
        step = torch.compile(opt.step) if compiled else opt.step
        for t, lr in enumerate(lrs):
            opt.param_groups[0]["lr"] = lr  # a float, as torch's schedulers write it
            for p, g in zip(params, _grads(params, t), strict=True):
                p.grad = g
            step()
        runs.append((opt, params))
    (eager, eager_params), (comp, comp_params) = runs
    for p, q in zip(eager_params, comp_params, strict=True):
        assert_close(p, q, rtol=1e-12, atol=1e-14)
        for key in ("exp_avg", "exp_avg_sq"):
            assert_close(eager.state[p][key], comp.state[q][key], rtol=1e-12, atol=1e-14)
    assert comp.param_groups[0]["step"] == len(lrs)


# --------------------------------------------------------------------------- scheduler keys


def test_onecycle_writes_its_max_lr_and_the_decay_keeps_its_own():
    """OneCycleLR writes group["max_lr"] = 1e-2; AdamC's decay divides by the max_lr given to it (1e-3)."""
    w = torch.nn.Parameter(torch.ones(4, dtype=torch.float64))
    opt = dl.AdamC([w], lr=1e-3, max_lr=1e-3, weight_decay=10.0)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=10)
    assert opt.param_groups[0]["max_lr"] == 1e-2 and opt.param_groups[0]["decay_max_lr"] == 1e-3
    lr = opt.param_groups[0]["lr"]
    w.grad = torch.zeros_like(w)  # pure decay: w·(1 − (lr²/max_lr)·λ)
    opt.step()
    scheduler.step()
    assert_close(w.detach(), torch.full((4,), 1 - lr * lr / 1e-3 * 10.0, dtype=torch.float64), rtol=1e-14, atol=0)


def test_an_old_checkpoint_with_max_lr_loads_into_decay_max_lr():
    ps = [torch.nn.Parameter(torch.ones(3, dtype=torch.float64))]
    sd = dl.AdamC(ps, lr=0.1).state_dict()
    group = sd["param_groups"][0]
    group["max_lr"] = group.pop("decay_max_lr") * 2  # as decaylab wrote it before the key had its own name
    opt = dl.AdamC([torch.nn.Parameter(torch.ones(3, dtype=torch.float64))], lr=0.1)
    opt.load_state_dict(sd)
    assert opt.param_groups[0]["decay_max_lr"] == pytest.approx(0.2)


# --------------------------------------------------------------------------- torch's keywords


def test_foreach_and_fused_choose_those_executors(executors):
    for kw, name in ((dict(foreach=True), "foreach"), (dict(fused=True), "fused"), (dict(foreach=False), "fused"),
                     (dict(fused=None, foreach=None), "fused")):
        del executors[:]
        params = _params()
        opt = dl.AdamW(params, lr=1e-3, **kw)
        _train(opt, params, 1)
        assert {n for n, _ in executors} == {name}, kw


@pytest.mark.parametrize(("kw", "pattern"), [
    (dict(capturable=True), r"^AdamW: capturable=True is not supported.*use capturable=False"),
    (dict(differentiable=True), r"^AdamW: differentiable=True is not supported.*differentiable=False"),
    (dict(foreach=True, fused=True), r"^AdamW: foreach=True and fused=True are two executors"),
    (dict(fused=True, backend="native"), r"^AdamW: fused=True and backend='native' disagree"),
    (dict(foreach="yes"), r"^AdamW: foreach must be None, False or True"),
])
def test_torch_keywords_decaylab_cannot_honour_name_themselves(kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        dl.AdamW(_params(), **kw)
    dl.AdamW(_params(), capturable=False, differentiable=False, foreach=None, fused=None)  # torch's defaults


def test_adam_decoupled_weight_decay_true_is_adamw():
    a, b = _params(torch.float64), _params(torch.float64)
    oa = dl.Adam(a, lr=1e-2, weight_decay=0.2, decoupled_weight_decay=True)
    ob = dl.AdamW(b, lr=1e-2, weight_decay=0.2)
    assert oa.param_groups[0]["decay"] == "decoupled"
    _train(oa, a, 3)
    _train(ob, b, 3)
    for p, q in zip(a, b, strict=True):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="decoupled_weight_decay=True .* disagrees with decay='prox'"):
        dl.Adam(_params(), decay="prox", decoupled_weight_decay=True)


def test_presets_have_real_signatures_and_name_themselves():
    sig = inspect.signature(dl.AdamW)
    assert list(sig.parameters)[:6] == ["params", "lr", "betas", "eps", "weight_decay", "amsgrad"]
    assert sig.parameters["weight_decay"].default == 0.01 and sig.parameters["decay"].default == "decoupled"
    assert "decoupled_weight_decay" not in sig.parameters
    assert inspect.signature(dl.SGDW).parameters["decay"].default == "decoupled"
    assert inspect.signature(dl.AdamS).parameters["weight_decay"].default == 1e-4
    with pytest.raises(TypeError, match=r"^AdamW\(\) got an unexpected keyword argument 'bogus'"):
        dl.AdamW(_params(), bogus=1)
    with pytest.raises(TypeError, match=r"^ProxAdam\(\) "):
        dl.ProxAdam()
    # positional arguments in torch's order
    opt = dl.AdamW(_params(), 1e-3, (0.8, 0.9), 1e-6, 0.2, True)
    group = opt.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"], group["amsgrad"]) == (
        1e-3, (0.8, 0.9), 1e-6, 0.2, True)


def test_warm_restarts_takes_torchs_spellings():
    def lrs(**kw):
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        scheduler = WarmRestarts(opt, **kw)
        out = []
        for _ in range(8):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            scheduler.step()
        return out

    assert lrs(T_0=2, T_mult=2) == lrs(t_0=2, t_mult=2)
    with pytest.raises(ValueError, match="t_0 and T_0 are the same argument"):
        lrs(t_0=2, T_0=2)
    with pytest.raises(ValueError, match="t_0 .* is required"):
        lrs()


# --------------------------------------------------------------------------- cross-loading


def test_torch_adamw_checkpoint_into_proxadam_warns():
    src = _params(torch.float64)
    torch_opt = torch.optim.AdamW(src, lr=1e-2)
    _train(torch_opt, src, 2)
    ours = dl.ProxAdam(_params(torch.float64))
    with pytest.warns(dl.CheckpointFormWarning, match=r"saved with decay='decoupled'.*ProxAdam was built with "
                                                      r"decay='prox'.*param_groups\[0\]\['decay'\] = 'prox'"):
        ours.load_state_dict(torch_opt.state_dict())


def test_a_decaylab_only_form_loaded_into_torch_adamw_warns_at_its_first_step():
    src = _params(torch.float64)
    ours = dl.ProxAdam(src, lr=1e-2)
    _train(ours, src, 2)
    theirs_params = _params(torch.float64)
    theirs = torch.optim.AdamW(theirs_params)
    theirs.load_state_dict(ours.state_dict())
    with pytest.warns(dl.CheckpointFormWarning, match=r"AdamW: param group 0 was loaded from a decaylab state dict "
                                                      r"with decay='prox'.*torch runs decay='decoupled'"):
        _train(theirs, theirs_params, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per optimizer
        _train(theirs, theirs_params, 1)
    # a torch AdamW with an AdamW checkpoint of decaylab's: the same rule, no warning
    same = torch.optim.AdamW(_params(torch.float64))
    same.load_state_dict(dl.AdamW(_params(torch.float64)).state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _train(same, same.param_groups[0]["params"], 1)


# --------------------------------------------------------------------------- CUDA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("form", ["l2", "decoupled", "prox", "stable"])
def test_fused_on_cuda_equals_the_reference(form, executors):
    runs = {}
    for backend in ("reference", "fused"):
        params = _params(torch.float64, device="cuda")
        opt = dl.Adam(params, lr=1e-2, weight_decay=0.3, decay=form, backend=backend)
        _train(opt, params, 4)
        runs[backend] = (opt, params)
    assert ("fused", tuple(SHAPES)) in executors
    (ref, ref_params), (fused, fused_params) = runs["reference"], runs["fused"]
    for p, q in zip(ref_params, fused_params, strict=True):
        assert_close(p, q, rtol=1e-12, atol=1e-14)
        for key in ("exp_avg", "exp_avg_sq"):
            assert_close(ref.state[p][key], fused.state[q][key], rtol=1e-12, atol=1e-14)
