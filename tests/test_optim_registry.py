"""Rules and directions are objects in registries; everything reads their properties.

* Each built-in rule's ``native`` number is its ``FORM_*`` in ``_native.c`` (the C enum, parsed).
* A rule written outside the package (L1 soft-thresholding after the step) runs on reference, foreach
  and compiled with no edit to decaylab, equal in float64 with state; ``auto`` gives it an executor
  that can run it (capabilities are allow-lists: no native number, no fused lowering → neither).
* A rule that needs what a direction cannot give is refused with both names.
* The per-step shrink a rule declares is what one step of pure decay does, on every executor.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from test_optim_fast_paths import assert_same, make_params, run

import decaylab.optim.executors.native as native_executor
from decaylab.optim import DIRECTIONS, FORMS, RULES, SGD, Adam, DecayRule, Direction, register, rules
from decaylab.optim.executors import EXECUTORS, BucketSpec


@pytest.fixture
def registry():
    """Rules registered by a test are gone after it (other tests list RULES)."""
    saved = dict(RULES)
    yield RULES
    RULES.clear()
    RULES.update(saved)


class SoftThreshold(DecayRule):
    r"""L1 decay as a proximal step after the update: ``w ← w_ref + sign(d)·max(|d| − s_t·λ, 0)``, ``d = z − w_ref``."""

    name = "l1_prox"
    acts = "after"

    def apply(self, w, w_ref, *, s, lam, u=None, D=None, mean_vhat=None, eps=0.0):
        d = rules.offset(w, w_ref)
        shrunk = d.sign() * (d.abs() - s * lam).clamp_min(0)  # plain tensor methods: TensorLists take them too
        return shrunk if w_ref is None else w_ref + shrunk


def test_the_c_enum_is_the_registry():
    source = Path(native_executor.__file__).with_name("_native.c").read_text()
    enum = re.search(r"enum \{ (FORM_[^}]*)\}", source).group(1)
    numbers = {name.lower(): int(value) for name, value in re.findall(r"FORM_(\w+) = (\d+)", enum)}
    assert numbers == {name: RULES[name].native for name in FORMS}
    assert all(RULES[name].native is not None for name in FORMS)


@pytest.mark.parametrize("name", FORMS)
def test_every_rule_declares_its_properties(name):
    rule = RULES[name]
    assert rule.name == name and rule.acts in rules.PLACES and set(rule.needs) <= set(rules.NEEDS)
    assert rule.scales is None or set(rule.scales) <= set(rules.SCALES)
    assert rule.shrink in (None, "exact", "nominal")
    assert rule.__doc__ and "``" in rule.__doc__  # its equation


@pytest.mark.parametrize("backend", ["reference", "foreach", "compiled"])
def test_a_rule_from_outside_the_package_runs_on_three_executors(backend, registry, executors):
    rule = SoftThreshold()

    def make(b):
        return lambda gp: Adam([{"params": ps} for ps in gp], lr=0.05, weight_decay=0.5, decay=rule, backend=b)

    ref_opt, ref_params = run(make("reference"), [make_params()[0]])
    del executors[:]
    opt, params = run(make(backend), [make_params()[0]])
    assert_same(ref_opt, ref_params, opt, params)
    assert {name for name, _ in executors} == {backend}
    assert opt.param_groups[0]["decay"] == "l1_prox" and RULES["l1_prox"] is rule  # groups keep names
    assert opt.state_dict()["param_groups"][0]["decay"] == "l1_prox"
    # the rule did something: soft-thresholding zeroes small weights, Adam alone would not
    plain, plain_params = run(lambda gp: Adam([{"params": ps} for ps in gp], lr=0.05, backend=backend),
                              [make_params()[0]])
    assert sum(int((p == 0).sum()) for p in params) > sum(int((p == 0).sum()) for p in plain_params)


def test_auto_gives_a_user_rule_an_executor_that_runs_it(registry, executors):
    """Capabilities are allow-lists: a rule with no C loop and no fused lowering takes neither (under
    "auto" a form known only to the registry used to crash where the C enum was looked up)."""
    opt, _ = run(lambda gp: SGD([{"params": ps} for ps in gp], lr=0.05, momentum=0.9, weight_decay=0.1,
                                decay=SoftThreshold()), [make_params()[0]])
    assert {name for name, _ in executors} == {"foreach"}
    (row,) = opt.explain()
    assert row["executor"] == "foreach" and "l1_prox" in row["refused"]["native"]
    for backend, why in (("native", "has no loop in the native step"), ("fused", "has no fused lowering")):
        with pytest.raises(ValueError, match=f"backend='{backend}' cannot run this param group: .*{why}"):
            Adam([torch.nn.Parameter(torch.zeros(3))], decay=SoftThreshold(), backend=backend)


def test_a_rule_is_registered_by_name_and_a_builtin_name_is_not_taken(registry):
    register(SoftThreshold)
    assert Adam([torch.nn.Parameter(torch.zeros(2))], decay="l1_prox").param_groups[0]["decay"] == "l1_prox"

    class Impostor(SoftThreshold):
        name = "prox"

    with pytest.raises(ValueError, match="'prox' is built in"):
        Adam([torch.nn.Parameter(torch.zeros(2))], decay=Impostor())
    with pytest.raises(ValueError, match="acts must be one of"):
        register(type("Nowhere", (SoftThreshold,), {"name": "nowhere", "acts": "sideways"}))


def test_a_direction_refuses_a_rule_it_cannot_serve():
    class SignDirection(Direction):
        name = "toy-sign"
        provides = frozenset({"u"})

    for form in ("prox_euclid", "stable"):
        with pytest.raises(ValueError, match=f"decay='{form}' needs .* from the direction, which toy-sign does not"):
            SignDirection().check_rule(RULES[form])
    SignDirection().check_rule(RULES["cautious"])  # needs u only


@pytest.mark.parametrize("backend", ["reference", "foreach", "native", "fused"])
@pytest.mark.parametrize("name", [n for n in FORMS if RULES[n].shrink == "exact"])
def test_pure_decay_is_the_declared_shrink(name, backend):
    """Zero gradients: Adam's update is 0, so one step multiplies w by the rule's shrink factor."""
    lr, lam = 0.1, 0.3
    rule = RULES[name]
    adam = DIRECTIONS["adam"]
    if backend == "fused" and EXECUTORS["fused"].why_not_spec(BucketSpec(adam, rule, options=(("amsgrad", False),))):
        pytest.skip(f"{name} has no fused lowering")
    w = torch.nn.Parameter(torch.full((5,), 2.0, dtype=torch.float64))
    opt = Adam([w], lr=lr, weight_decay=lam, decay=name, backend=backend)
    w.grad = torch.zeros_like(w)
    opt.step()
    torch.testing.assert_close(w.detach(), torch.full((5,), 2.0 * rule.shrink_factor(lr * lam), dtype=torch.float64),
                               rtol=1e-15, atol=0)


@pytest.mark.parametrize("backend", ["reference", "foreach", "native", "fused"])
def test_stable_decay_never_flips_a_sign_with_zero_gradients(backend):
    """AdamS with v̂ = 0: the decay s_t·λ/(sqrt(mean v̂) + ε) is 10 here, which would make w → −9·w; the
    shrink is capped at 1, so the weights go to 0 at most, never through it."""
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64))
    opt = Adam([w], lr=1e-3, weight_decay=1e-4, decay="stable", backend=backend)
    for _ in range(3):
        w.grad = torch.zeros_like(w)
        opt.step()
        assert bool((w.detach().abs() <= torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)).all())
        assert bool((w.detach() * torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64) >= 0).all())
