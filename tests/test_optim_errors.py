"""Bad input raises ValueError naming the argument and what is allowed, and leaves the optimizer usable."""

from __future__ import annotations

import copy
import math
import re

import pytest
import torch

from decaylab.optim import FORMS, SCALES, SGD, SGDW, TARGETS, Adam, AdamC, AdamW, ProxAdam

BACKEND_NAMES = ("auto", "reference", "foreach", "compiled", "fused", "native")
LOW_PRECISION_NAMES = ("kahan", "stochastic", "exact", "none")


def param(*shape, dtype=torch.float64):
    return torch.nn.Parameter(torch.ones(*shape or (3,), dtype=dtype))


def one_of(name: str, allowed) -> str:
    """The message of an unknown name: it names the argument and lists every allowed value."""
    listed = ", ".join(repr(a) for a in allowed) + (", or a DecayRule" if name == "decay" else "")
    return rf"^{name} must be one of " + re.escape(listed) + r"; got 'bogus'$"


# --------------------------------------------------------------------------- constructor arguments

NUMBER_CASES = [
    # (optimizer, kwargs, pattern)
    (Adam, dict(lr=-0.1), r"^lr must be a number >= 0.*got -0\.1$"),
    (Adam, dict(lr=math.nan), r"^lr must be a number >= 0.*got nan$"),
    (Adam, dict(lr=math.inf), r"^lr must be a number >= 0.*got inf$"),
    (SGD, dict(lr=-1.0), r"^lr must be a number >= 0"),
    (Adam, dict(lr=torch.tensor(-0.1)), r"^lr must be a number >= 0.*got -0\.1"),
    (
        Adam,
        dict(lr=torch.tensor([[0.1], [0.2]])),
        r"^lr must be .*tensor of shape \(\) or \(K,\).*got a tensor of shape \(2, 1\)",
    ),
    (Adam, dict(lr=torch.tensor([1, 2])), r"^lr must be .*got a tensor of shape \(2,\) and dtype torch\.int64"),
    (Adam, dict(weight_decay=-0.01), r"^weight_decay must be a number >= 0.*or a schedule.*got -0\.01$"),
    (AdamW, dict(weight_decay=math.nan), r"^weight_decay must be a number >= 0.*got nan$"),
    (Adam, dict(weight_decay=torch.tensor([0.1, -0.1])), r"^weight_decay must be a number >= 0"),
    (SGD, dict(weight_decay=-0.5), r"^weight_decay must be a number >= 0"),
    (Adam, dict(betas=(1.0, 0.999)), r"^betas\[0\] must be a number in \[0, 1\); got 1\.0$"),
    (Adam, dict(betas=(-0.1, 0.999)), r"^betas\[0\] must be a number in \[0, 1\); got -0\.1$"),
    (Adam, dict(betas=(0.9, 1.0)), r"^betas\[1\] must be a number in \[0, 1\); got 1\.0$"),
    (Adam, dict(betas=(0.9, -1e-3)), r"^betas\[1\] must be a number in \[0, 1\); got -0\.001$"),
    (Adam, dict(betas=(0.9, math.nan)), r"^betas\[1\] must be a number in \[0, 1\); got nan$"),
    (Adam, dict(betas=(0.9, "0.999")), r"^betas\[1\] must be a number in \[0, 1\)"),
    (Adam, dict(betas=(0.9,)), r"^betas must be a pair \(beta1, beta2\) with each in \[0, 1\); got \(0\.9,\)$"),
    (Adam, dict(betas=(0.9, 0.99, 0.999)), r"^betas must be a pair"),
    (Adam, dict(betas=0.9), r"^betas must be a pair"),
    (Adam, dict(eps=-1e-8), r"^eps must be a finite number >= 0; got -1e-08$"),
    (Adam, dict(eps=math.nan), r"^eps must be a finite number >= 0; got nan$"),
    (Adam, dict(max_lr=-1.0, decay="decoupled", decay_scale="schedule"), r"^max_lr must be a number >= 0"),
    (SGD, dict(momentum=1.0), r"^momentum must be a number in \[0, 1\); got 1\.0$"),
    (SGD, dict(momentum=-0.1), r"^momentum must be a number in \[0, 1\); got -0\.1$"),
    (SGD, dict(momentum=math.nan), r"^momentum must be a number in \[0, 1\)"),
    (SGD, dict(momentum=0.9, dampening=1.5), r"^dampening must be a number in \[0, 1\]; got 1\.5$"),
    (SGD, dict(nesterov=True), r"^nesterov=True requires momentum > 0"),
    (SGDW, dict(nesterov=True, momentum=0.0), r"^nesterov=True requires momentum > 0"),
    (SGD, dict(nesterov=True, momentum=0.9, dampening=0.1), r"^nesterov=True requires .*dampening = 0"),
    (SGD, dict(momentum=0.9, dampening=1.0, decay="stable"), r"^dampening must be < 1 with decay='stable'"),
]


@pytest.mark.parametrize("cls,kwargs,pattern", NUMBER_CASES, ids=[f"{c.__name__}-{k}" for c, k, _ in NUMBER_CASES])
def test_bad_number_raises(cls, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        cls([param()], **{"lr": 0.1, **kwargs})


NAME_CASES = [
    ("decay", FORMS),
    ("decay_scale", SCALES),
    ("decay_to", TARGETS),
    ("backend", BACKEND_NAMES),
    ("low_precision", LOW_PRECISION_NAMES),
]


@pytest.mark.parametrize("cls", [Adam, SGD])
@pytest.mark.parametrize("name,allowed", NAME_CASES)
def test_unknown_name_raises_and_lists_the_choices(cls, name, allowed):
    with pytest.raises(ValueError, match=one_of(name, allowed)):
        cls([param()], lr=0.1, **{name: "bogus"})


@pytest.mark.parametrize("name,allowed", NAME_CASES)
def test_every_listed_choice_is_accepted(name, allowed):
    """The error lists exactly what the optimizer takes: each listed value constructs."""
    for value in allowed:
        kwargs = {name: value}
        if name == "decay_scale" and value != "lr":
            kwargs["decay"] = "decoupled"  # l2 takes only the lr scale
        Adam([param()], lr=0.1, **kwargs)


@pytest.mark.parametrize("scale", ["schedule", "corrected"])
@pytest.mark.parametrize("cls", [Adam, SGD])
def test_scale_dividing_by_a_zero_peak_lr_names_max_lr(cls, scale):
    with pytest.raises(ValueError, match=rf"^max_lr: decay_scale={scale!r} divides by the peak learning rate.*max_lr="):
        cls([param()], lr=0.0, weight_decay=0.1, decay="decoupled", decay_scale=scale)
    with pytest.raises(ValueError, match=r"^max_lr:"):
        cls([param()], lr=0.0, max_lr=0.0, weight_decay=0.1, decay="decoupled", decay_scale=scale)
    with pytest.raises(ValueError, match=r"^max_lr:"):  # one zero among K stacked peaks
        cls(
            [param(2, 3)],
            lr=torch.tensor([0.1, 0.0], dtype=torch.float64),
            weight_decay=0.1,
            decay="decoupled",
            decay_scale=scale,
        )
    # with a peak lr given, a warmup from 0 is fine
    cls([param()], lr=0.0, max_lr=0.1, weight_decay=0.1, decay="decoupled", decay_scale=scale)


@pytest.mark.parametrize("scale", ["schedule", "corrected", "constant"])
@pytest.mark.parametrize("cls", [Adam, SGD])
def test_l2_with_a_decoupled_scale_has_no_effect(cls, scale):
    with pytest.raises(ValueError, match=rf"^decay_scale={scale!r} has no effect with decay='l2'"):
        cls([param()], lr=0.1, weight_decay=0.1, decay="l2", decay_scale=scale)


def test_preset_defaults_are_validated_like_arguments():
    with pytest.raises(ValueError, match=r"^decay_scale='corrected' has no effect with decay='l2'"):
        AdamC([param()], lr=0.1, decay="l2")  # AdamC's default scale is "corrected"
    with pytest.raises(ValueError, match=one_of("decay", FORMS)):
        ProxAdam([param()], decay="bogus")


def test_complex_parameters_are_rejected():
    with pytest.raises(ValueError, match=r"^params: complex parameters are not supported.*view_as_real"):
        Adam([param(dtype=torch.complex128)], lr=0.1)


def test_stochastic_rounding_rejects_float16():
    with pytest.raises(ValueError, match=r"^low_precision='stochastic' works on bf16 .*only.*'kahan' or 'none'"):
        Adam([param(dtype=torch.float16)], lr=0.1, low_precision="stochastic")
    Adam([param(dtype=torch.bfloat16)], lr=0.1, low_precision="stochastic")  # bf16 is fine


# --------------------------------------------------------------------------- stacked (per-model) hyperparameters


def test_stacked_k_must_match_dim_0():
    lr = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^params: with per-model hyperparameters of length 3 .*shape \(2, 4\)"):
        Adam([param(3, 4), param(2, 4)], lr=lr)
    with pytest.raises(ValueError, match=r"^params: with per-model hyperparameters of length 3 .*shape \(\)"):
        Adam([torch.nn.Parameter(torch.tensor(1.0, dtype=torch.float64))], lr=lr)
    with pytest.raises(ValueError, match=r"^params: with per-model hyperparameters of length 2"):
        Adam([param(3, 4)], lr=0.1, weight_decay=torch.tensor([0.1, 0.2], dtype=torch.float64), decay="decoupled")
    with pytest.raises(ValueError, match=r"^lr, weight_decay and max_lr must have the same length K"):
        Adam([param(3, 4)], lr=lr, weight_decay=torch.tensor([0.1, 0.2], dtype=torch.float64), decay="decoupled")
    Adam([param(3, 4), param(3)], lr=lr)  # matching K constructs


# --------------------------------------------------------------------------- errors at step time


def test_sparse_gradient_raises_at_step_and_changes_nothing():
    emb = torch.nn.Embedding(5, 3, sparse=True).double()
    opt = Adam(emb.parameters(), lr=0.1, weight_decay=0.1, decay="decoupled", backend="reference")
    emb(torch.tensor([1, 2])).sum().backward()
    before = emb.weight.detach().clone()
    with pytest.raises(
        ValueError, match=r"^params: decaylab optimizers need dense gradients.*shape \(5, 3\).*SparseAdam"
    ):
        opt.step()
    assert torch.equal(emb.weight.detach(), before)
    assert opt.param_groups[0]["step"] == 0 and len(opt.state) == 0


@pytest.mark.parametrize("backend", ["reference", "foreach"])
@pytest.mark.parametrize("value", [-0.1, math.nan, "0.1"])
def test_weight_decay_schedule_returning_a_bad_value_raises_at_step(value, backend):
    w = param()
    opt = AdamW([w], lr=0.1, weight_decay=lambda step: 0.1 if step < 2 else value, backend=backend)
    for _ in range(2):
        w.grad = torch.ones_like(w)
        opt.step()
    before = w.detach().clone()
    state_before = copy.deepcopy(opt.state[w])
    w.grad = torch.ones_like(w)
    with pytest.raises(ValueError, match=r"^weight_decay \(the value its schedule returned\) must be a number >= 0"):
        opt.step()
    # nothing moved: the weights, the moments, the step counters
    assert torch.equal(w.detach(), before)
    for key, value in state_before.items():
        assert torch.equal(opt.state[w][key], value), key
    assert opt.param_groups[0]["step"] == 2


@pytest.mark.parametrize("backend", ["reference", "foreach"])
def test_a_failing_step_does_not_step_the_other_groups(backend):
    """A step that raises must not have half-happened: earlier param groups stay where they were.

    Otherwise retrying the step (after fixing the bad group) moves the first group twice.
    """
    a, b = param(), param()
    opt = Adam(
        [{"params": [a]}, {"params": [b], "weight_decay": lambda step: -1.0, "decay": "decoupled"}],
        lr=0.1,
        backend=backend,
    )
    a.grad, b.grad = torch.ones_like(a), torch.ones_like(b)
    with pytest.raises(ValueError, match=r"^weight_decay \(the value its schedule returned\)"):
        opt.step()
    assert torch.equal(a.detach(), torch.ones_like(a))
    assert opt.param_groups[0]["step"] == 0
    assert float(opt.state[a].get("step", 0)) == 0


# --------------------------------------------------------------------------- errors leave the optimizer intact

BAD_GROUPS = [
    ({"lr": -1.0}, r"^lr must be"),
    ({"weight_decay": -1.0}, r"^weight_decay must be"),
    ({"decay": "bogus"}, r"^decay must be one of"),
    ({"decay_to": "bogus"}, r"^decay_to must be one of"),
    ({"decay": "l2", "decay_scale": "schedule"}, r"has no effect with decay='l2'"),
    ({"betas": (0.9, 1.0)}, r"^betas\[1\]"),
    ({"lr": torch.tensor([0.1, 0.2], dtype=torch.float64)}, r"^params: with per-model hyperparameters of length 2"),
    ({"lr": 0.0, "decay": "decoupled", "decay_scale": "corrected"}, r"^max_lr:"),
]


@pytest.mark.parametrize("bad,pattern", BAD_GROUPS, ids=[str(b) for b, _ in BAD_GROUPS])
def test_add_param_group_with_a_bad_group_changes_nothing(bad, pattern):
    w = param()
    opt = Adam([w], lr=0.1, weight_decay=0.1, decay="decoupled", backend="reference")
    w.grad = torch.ones_like(w)
    opt.step()
    groups_before = [dict(g) for g in opt.param_groups]
    state_before = opt.state_dict()
    extra = param(3, 2)
    with pytest.raises(ValueError, match=pattern):
        opt.add_param_group({"params": [extra], "decay_to": "init", **bad})
    assert len(opt.param_groups) == 1
    assert opt.param_groups[0].keys() == groups_before[0].keys()
    assert all(opt.param_groups[0][k] is groups_before[0][k] for k in groups_before[0])
    assert extra not in opt.state
    assert repr(opt.state_dict()) == repr(state_before)
    # the optimizer still steps, and the rejected tensor can join in a good group
    opt.add_param_group({"params": [extra], "lr": 0.05, "decay_to": "init"})
    extra.grad = torch.ones_like(extra)
    opt.step()
    assert len(opt.param_groups) == 2 and torch.equal(
        opt.state[extra]["init_param"], torch.ones(3, 2, dtype=torch.float64)
    )
    assert opt.param_groups[0]["step"] == 2 and opt.param_groups[1]["step"] == 1


def test_constructor_error_is_raised_for_a_later_group():
    """The second group of the constructor is validated like the first."""
    with pytest.raises(ValueError, match=r"^eps must be a finite number >= 0"):
        Adam([{"params": [param()]}, {"params": [param()], "eps": -1.0}], lr=0.1)
    with pytest.raises(ValueError, match=r"^momentum must be a number in \[0, 1\)"):
        SGD([{"params": [param()]}, {"params": [param()], "momentum": 2.0}], lr=0.1)
