"""decaylab's optimizers equal torch.optim in float64, parameters and optimizer state included.

Every case runs a decaylab optimizer and its torch counterpart side by side for about ten steps on
identical float64 parameters and identical gradients (either drawn from a seeded generator or
back-propagated through a small float64 ``nn.Sequential`` on random data) and compares, after every
step, the parameters and every state entry (``step``, ``exp_avg``, ``exp_avg_sq``,
``max_exp_avg_sq``, ``momentum_buffer``) at a tolerance that only rounding can meet.

The three backends ("reference", "foreach", "compiled") are all checked; the compiled one only on
the main configurations, because each distinct configuration costs a compile (seconds on CPU).
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from decaylab import optim as dl

DT = torch.float64
TOL = dict(rtol=1e-12, atol=1e-14)
BACKENDS = ("reference", "foreach", "compiled")
FAST_BACKENDS = ("reference", "foreach")
STEPS = 10


# --------------------------------------------------------------------------------------- fixtures


def _model(seed: int = 0) -> nn.Sequential:
    """A small float64 MLP whose weights come from a seeded generator (not the global RNG)."""
    model = nn.Sequential(nn.Linear(4, 6, dtype=DT), nn.Tanh(), nn.Linear(6, 3, dtype=DT))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=DT) * 0.5)
    return model


class Twin:
    """The same float64 model twice — one copy per optimizer — fed identical gradients.

    ``source="random"``: gradients drawn from a seeded generator (identical bit for bit on both);
    ``source="model"``: real gradients of an MSE loss on a random batch (the same batch for both).
    """

    def __init__(self, source: str, seed: int = 0):
        assert source in ("random", "model")
        self.source = source
        self.torch_model, self.dl_model = _model(seed), _model(seed)
        self.gen = torch.Generator().manual_seed(seed + 1)
        self.initial = [p.detach().clone() for p in self.torch_model.parameters()]

    @property
    def torch_params(self) -> list[nn.Parameter]:
        return list(self.torch_model.parameters())

    @property
    def dl_params(self) -> list[nn.Parameter]:
        return list(self.dl_model.parameters())

    def batch(self):
        return torch.randn(8, 4, generator=self.gen, dtype=DT), torch.randn(8, 3, generator=self.gen, dtype=DT)

    @staticmethod
    def loss(model, x, y):
        return nn.functional.mse_loss(model(x), y)

    def set_grads(self, step: int, skip=()) -> None:
        if self.source == "random":
            for i, (pt, pd) in enumerate(zip(self.torch_params, self.dl_params, strict=True)):
                g = torch.randn(pt.shape, generator=self.gen, dtype=DT) * (1.0 + 0.3 * step) + 0.1 * i
                pt.grad, pd.grad = g.clone(), g.clone()
        else:
            x, y = self.batch()
            for model in (self.torch_model, self.dl_model):
                model.zero_grad(set_to_none=True)
                self.loss(model, x, y).backward()
        for i in skip:
            self.torch_params[i].grad = None
            self.dl_params[i].grad = None


def assert_same(opt_t, opt_d, params_t, params_d, expected_keys=None) -> None:
    """Parameters and every optimizer state entry agree; state entries exist on the same params."""
    for i, (pt, pd) in enumerate(zip(params_t, params_d, strict=True)):
        assert_close(pd, pt, **TOL, msg=lambda m, i=i: f"param {i}: {m}")
        st, sd = opt_t.state.get(pt, {}), opt_d.state.get(pd, {})
        assert set(sd) == set(st), f"param {i}: decaylab state keys {sorted(sd)} != torch's {sorted(st)}"
        for key in st:
            assert_close(sd[key], st[key], **TOL, msg=lambda m, i=i, key=key: f"param {i} state {key!r}: {m}")
    if expected_keys is not None:
        seen = set().union(*(set(opt_t.state.get(p, {})) for p in params_t))
        assert seen == set(expected_keys), f"torch state keys {sorted(seen)}, expected {sorted(expected_keys)}"


def run_side_by_side(twin, opt_t, opt_d, *, steps=STEPS, schedulers=(), skip=lambda step: (), expected_keys=None):
    for step in range(steps):
        twin.set_grads(step, skip(step))
        opt_t.step()
        opt_d.step()
        for sched in schedulers:
            sched.step()
        assert [g["lr"] for g in opt_d.param_groups] == pytest.approx([g["lr"] for g in opt_t.param_groups], rel=1e-15)
        assert_same(opt_t, opt_d, twin.torch_params, twin.dl_params, expected_keys)
    # The run did something: every trained parameter moved well beyond the tolerance.
    for p, p0 in zip(twin.dl_params, twin.initial, strict=True):
        if p.grad is not None:
            assert (p - p0).abs().max() > 1e-6


def _adam_keys(amsgrad: bool) -> set[str]:
    return {"step", "exp_avg", "exp_avg_sq"} | ({"max_exp_avg_sq"} if amsgrad else set())


# --------------------------------------------------------------------------------------- defaults


def test_adamw_defaults_equal_torch():
    p = [torch.zeros(3, dtype=DT, requires_grad=True)]
    ours, theirs = dl.AdamW(p).defaults, torch.optim.AdamW(p).defaults
    for key in ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize"):
        assert ours[key] == theirs[key], key
    assert ours["weight_decay"] == 0.01 and ours["lr"] == 1e-3
    assert ours["betas"] == (0.9, 0.999) and ours["eps"] == 1e-8
    assert ours["decay"] == "decoupled" and ours["decay_scale"] == "lr"


def test_adam_and_sgd_defaults_equal_torch():
    p = [torch.zeros(3, dtype=DT, requires_grad=True)]
    ours, theirs = dl.Adam(p).defaults, torch.optim.Adam(p).defaults
    for key in ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize"):
        assert ours[key] == theirs[key], key
    assert ours["decay"] == "l2"
    ours, theirs = dl.SGD(p).defaults, torch.optim.SGD(p).defaults
    for key in ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize"):
        assert ours[key] == theirs[key], key
    assert ours["decay"] == "l2"


# --------------------------------------------------------------------------------------- Adam / AdamW

HP = dict(lr=3e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.3)

# name -> (torch class, torch kwargs, decaylab class, decaylab kwargs)
ADAM_CASES = {
    "adamw": (torch.optim.AdamW, HP, dl.AdamW, HP),
    "adam_l2": (torch.optim.Adam, HP, dl.Adam, HP),
    "adamw_amsgrad": (torch.optim.AdamW, dict(HP, amsgrad=True), dl.AdamW, dict(HP, amsgrad=True)),
    "adam_l2_amsgrad": (torch.optim.Adam, dict(HP, amsgrad=True), dl.Adam, dict(HP, amsgrad=True)),
    "adamw_maximize": (torch.optim.AdamW, dict(HP, maximize=True), dl.AdamW, dict(HP, maximize=True)),
    "adam_l2_maximize": (torch.optim.Adam, dict(HP, maximize=True), dl.Adam, dict(HP, maximize=True)),
    "adamw_amsgrad_maximize": (
        torch.optim.AdamW, dict(HP, amsgrad=True, maximize=True), dl.AdamW, dict(HP, amsgrad=True, maximize=True),
    ),
    "adam_decoupled": (torch.optim.Adam, dict(HP, decoupled_weight_decay=True), dl.Adam, dict(HP, decay="decoupled")),
    "adamw_torch_defaults": (torch.optim.AdamW, {}, dl.AdamW, {}),
}
ADAM_COMPILED = ("adamw", "adam_l2", "adamw_amsgrad_maximize")


def _adam_params():
    cases = []
    for name in ADAM_CASES:
        for backend in BACKENDS + ("fused", "native"):  # every Adam case maps onto the fused and native steps
            sources = ("random", "model") if backend != "compiled" else ("model",)
            if backend == "compiled" and name not in ADAM_COMPILED:
                continue
            cases += [pytest.param(name, backend, source, id=f"{name}-{backend}-{source}") for source in sources]
    return cases


@pytest.mark.parametrize(("case", "backend", "source"), _adam_params())
def test_adam_family_equals_torch(case, backend, source):
    torch_cls, torch_kw, dl_cls, dl_kw = ADAM_CASES[case]
    twin = Twin(source)
    opt_t = torch_cls(twin.torch_params, **torch_kw)
    opt_d = dl_cls(twin.dl_params, backend=backend, **dl_kw)
    run_side_by_side(twin, opt_t, opt_d, expected_keys=_adam_keys(dl_kw.get("amsgrad", False)))


def test_decoupled_and_l2_differ_so_parity_is_not_vacuous():
    """Adam+L2 and AdamW with the same λ give clearly different iterates at this scale."""
    twin = Twin("random")
    opt_t = torch.optim.Adam(twin.torch_params, **HP)
    opt_d = dl.AdamW(twin.dl_params, backend="reference", **HP)
    for step in range(STEPS):
        twin.set_grads(step)
        opt_t.step()
        opt_d.step()
    diff = max((a - b).abs().max().item() for a, b in zip(twin.torch_params, twin.dl_params, strict=True))
    assert diff > 1e-4


# --------------------------------------------------------------------------------------- SGD

SGD_CASES = {
    "plain": dict(lr=0.05),
    "l2": dict(lr=0.05, weight_decay=0.1),
    "momentum": dict(lr=0.05, momentum=0.9),
    "momentum_l2": dict(lr=0.05, momentum=0.9, weight_decay=0.1),
    "dampening_l2": dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.1),
    "nesterov_l2": dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1),
    "maximize_l2": dict(lr=0.05, weight_decay=0.1, maximize=True),
    "maximize_momentum_l2": dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.1, maximize=True),
}
SGD_COMPILED = ("momentum_l2", "nesterov_l2")


def _sgd_params():
    cases = []
    for name in SGD_CASES:
        for backend in BACKENDS:
            if backend == "compiled" and name not in SGD_COMPILED:
                continue
            sources = ("random", "model") if backend != "compiled" else ("model",)
            cases += [pytest.param(name, backend, source, id=f"{name}-{backend}-{source}") for source in sources]
    return cases


@pytest.mark.parametrize(("case", "backend", "source"), _sgd_params())
def test_sgd_equals_torch(case, backend, source):
    kw = SGD_CASES[case]
    twin = Twin(source)
    opt_t = torch.optim.SGD(twin.torch_params, **kw)
    opt_d = dl.SGD(twin.dl_params, backend=backend, **kw)
    expected = {"momentum_buffer"} if kw.get("momentum", 0) else set()
    run_side_by_side(twin, opt_t, opt_d, expected_keys=expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sgdw_without_momentum_equals_torch_sgd_l2(backend):
    """Without momentum, decoupled decay at decay_scale="lr" is the same map as L2 in the gradient."""
    twin = Twin("model")
    opt_t = torch.optim.SGD(twin.torch_params, lr=0.05, weight_decay=0.2)
    opt_d = dl.SGDW(twin.dl_params, lr=0.05, weight_decay=0.2, backend=backend)
    assert opt_d.param_groups[0]["decay"] == "decoupled"
    run_side_by_side(twin, opt_t, opt_d, expected_keys=set())


def test_sgdw_with_momentum_differs_from_torch_sgd_l2():
    """The coincidence above is specific to momentum 0: with momentum the two forms part ways."""
    twin = Twin("random")
    opt_t = torch.optim.SGD(twin.torch_params, lr=0.05, momentum=0.9, weight_decay=0.2)
    opt_d = dl.SGDW(twin.dl_params, lr=0.05, momentum=0.9, weight_decay=0.2, backend="reference")
    for step in range(STEPS):
        twin.set_grads(step)
        opt_t.step()
        opt_d.step()
    diff = max((a - b).abs().max().item() for a, b in zip(twin.torch_params, twin.dl_params, strict=True))
    assert diff > 1e-4


# --------------------------------------------------------------------------------------- param groups


def _adam_groups(ps):
    return [
        {"params": [ps[0]], "lr": 1e-2, "weight_decay": 0.2},
        {"params": [ps[1], ps[3]], "weight_decay": 0.0},
        {"params": [ps[2]], "lr": 5e-3, "weight_decay": 0.7, "betas": (0.5, 0.9)},
    ]


def _sgd_groups(ps):
    return [
        {"params": [ps[0]], "lr": 0.1, "weight_decay": 0.2},
        {"params": [ps[1], ps[3]], "weight_decay": 0.0, "momentum": 0.0},
        {"params": [ps[2]], "lr": 0.02, "weight_decay": 0.5, "nesterov": True},
    ]


GROUP_CASES = {
    "adamw": (torch.optim.AdamW, dl.AdamW, _adam_groups, dict(lr=3e-2, eps=1e-7, weight_decay=0.05), _adam_keys(False)),
    "adam_l2": (torch.optim.Adam, dl.Adam, _adam_groups, dict(lr=3e-2, weight_decay=0.05), _adam_keys(False)),
    "adam_l2_amsgrad": (
        torch.optim.Adam, dl.Adam, _adam_groups, dict(lr=3e-2, weight_decay=0.05, amsgrad=True), _adam_keys(True),
    ),
    "sgd": (torch.optim.SGD, dl.SGD, _sgd_groups, dict(lr=0.05, momentum=0.9, weight_decay=0.1), {"momentum_buffer"}),
}


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("source", ["random", "model"])
@pytest.mark.parametrize("case", list(GROUP_CASES))
def test_param_groups_with_different_lr_and_weight_decay(case, source, backend):
    torch_cls, dl_cls, groups, kw, keys = GROUP_CASES[case]
    twin = Twin(source)
    opt_t = torch_cls(groups(twin.torch_params), **kw)
    opt_d = dl_cls(groups(twin.dl_params), backend=backend, **kw)
    assert [g["weight_decay"] for g in opt_d.param_groups] == [g["weight_decay"] for g in opt_t.param_groups]
    assert 0.0 in [g["weight_decay"] for g in opt_d.param_groups]
    run_side_by_side(twin, opt_t, opt_d, expected_keys=keys)


# --------------------------------------------------------------------------------------- lr schedulers


def _cosine(opt):
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS, eta_min=1e-4)


def _warmup(opt):
    # Starts at lr = 0 on the first step, reaches the base lr after 4 steps.
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, step / 4))


SCHEDULERS = {"cosine": _cosine, "warmup": _warmup}
SCHED_OPTS = {
    "adamw": (torch.optim.AdamW, dl.AdamW, HP, _adam_keys(False)),
    "adam_l2": (torch.optim.Adam, dl.Adam, HP, _adam_keys(False)),
    "sgd_momentum": (torch.optim.SGD, dl.SGD, dict(lr=0.05, momentum=0.9, weight_decay=0.1), {"momentum_buffer"}),
}


def _sched_params():
    cases = []
    for sched in SCHEDULERS:
        for opt in SCHED_OPTS:
            for backend in BACKENDS:
                if backend == "compiled" and opt != "adamw":
                    continue
                cases.append(pytest.param(sched, opt, backend, id=f"{sched}-{opt}-{backend}"))
    return cases


@pytest.mark.parametrize(("sched", "opt", "backend"), _sched_params())
def test_lr_scheduler_moves_both_optimizers_alike(sched, opt, backend):
    torch_cls, dl_cls, kw, keys = SCHED_OPTS[opt]
    twin = Twin("model")
    opt_t = torch_cls(twin.torch_params, **kw)
    opt_d = dl_cls(twin.dl_params, backend=backend, **kw)
    schedulers = (SCHEDULERS[sched](opt_t), SCHEDULERS[sched](opt_d))
    lrs = []
    for step in range(STEPS):
        lrs.append(opt_d.param_groups[0]["lr"])
        twin.set_grads(step)
        opt_t.step()
        opt_d.step()
        for s in schedulers:
            s.step()
        assert opt_d.param_groups[0]["lr"] == pytest.approx(opt_t.param_groups[0]["lr"], rel=1e-15)
        assert_same(opt_t, opt_d, twin.torch_params, twin.dl_params, keys)
    assert len(set(lrs)) >= 4, "the scheduler did not move the lr"
    if sched == "warmup":
        assert lrs[0] == 0.0


# --------------------------------------------------------------------------------------- grad None


def _skip(step):
    """Param 1 skips every third step, param 2 never gets a gradient, param 3 starts at step 5."""
    skip = [2]
    if step % 3 == 1:
        skip.append(1)
    if step < 5:
        skip.append(3)
    return skip


SKIP_CASES = {
    "adamw": (torch.optim.AdamW, dl.AdamW, HP),
    "adam_l2_amsgrad": (torch.optim.Adam, dl.Adam, dict(HP, amsgrad=True)),
    "sgd_momentum": (torch.optim.SGD, dl.SGD, dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.1)),
    "sgd_nesterov": (torch.optim.SGD, dl.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1)),
}


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("source", ["random", "model"])
@pytest.mark.parametrize("case", list(SKIP_CASES))
def test_params_without_grad_are_skipped_like_torch(case, source, backend):
    torch_cls, dl_cls, kw = SKIP_CASES[case]
    twin = Twin(source)
    opt_t = torch_cls(twin.torch_params, **kw)
    opt_d = dl_cls(twin.dl_params, backend=backend, **kw)
    for step in range(STEPS):
        twin.set_grads(step, _skip(step))
        opt_t.step()
        opt_d.step()
        assert_same(opt_t, opt_d, twin.torch_params, twin.dl_params)
    ps = twin.dl_params
    # The never-updated parameter is untouched (no decay either) and has no state.
    assert torch.equal(ps[2], twin.initial[2])
    assert not opt_d.state.get(ps[2])
    assert torch.equal(twin.torch_params[2], twin.initial[2])
    if dl_cls is not dl.SGD:
        assert opt_d.state[ps[0]]["step"].item() == STEPS
        assert opt_d.state[ps[1]]["step"].item() == STEPS - sum(1 for s in range(STEPS) if s % 3 == 1)
        assert opt_d.state[ps[3]]["step"].item() == STEPS - 5


# --------------------------------------------------------------------------------------- closure

CLOSURE_CASES = {
    "adamw": (torch.optim.AdamW, dl.AdamW, HP),
    "sgd_momentum": (torch.optim.SGD, dl.SGD, dict(lr=0.05, momentum=0.9, weight_decay=0.1)),
}


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("case", list(CLOSURE_CASES))
def test_closure_returns_the_loss_and_drives_the_step(case, backend):
    torch_cls, dl_cls, kw = CLOSURE_CASES[case]
    twin = Twin("model")
    opt_t = torch_cls(twin.torch_params, **kw)
    opt_d = dl_cls(twin.dl_params, backend=backend, **kw)
    calls = {"torch": 0, "dl": 0}

    def closure_for(model, opt, key, x, y):
        def closure():
            calls[key] += 1
            opt.zero_grad()
            loss = twin.loss(model, x, y)
            loss.backward()
            return loss

        return closure

    losses = []
    for step in range(STEPS):
        x, y = twin.batch()
        expected = twin.loss(twin.dl_model, x, y).item()  # the loss at the params before this step
        loss_t = opt_t.step(closure_for(twin.torch_model, opt_t, "torch", x, y))
        loss_d = opt_d.step(closure_for(twin.dl_model, opt_d, "dl", x, y))
        assert isinstance(loss_d, torch.Tensor)
        assert loss_d.item() == pytest.approx(expected, rel=1e-13)
        assert_close(loss_d, loss_t, **TOL)
        assert calls["dl"] == step + 1 and calls["torch"] == step + 1
        assert_same(opt_t, opt_d, twin.torch_params, twin.dl_params)
        losses.append(loss_d.item())
    assert math.isfinite(losses[-1]) and len(set(losses)) == STEPS
    for p, p0 in zip(twin.dl_params, twin.initial, strict=True):
        assert (p - p0).abs().max() > 1e-6


def test_step_without_closure_returns_none():
    twin = Twin("random")
    opt = dl.AdamW(twin.dl_params, backend="reference")
    twin.set_grads(0)
    assert opt.step() is None
