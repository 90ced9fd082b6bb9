"""The reference executor: the specification of a step, one tensor at a time.

:func:`tensor_moments` and :func:`tensor_update` are the step for one tensor: the direction's state
update, then the decay rule and the step, composed from the :class:`~decaylab.optim.directions.Direction`
and the :class:`~decaylab.optim.rules.DecayRule` of the bucket's spec. They use arithmetic only, so
the same code runs tensor by tensor here (readable; every fast path is tested against it in float64,
state included), on :class:`~decaylab.optim.tensorlist.TensorList` objects in the foreach executor,
and compiled by ``torch.compile`` in the compiled executor.
"""
from __future__ import annotations

from .. import precision
from .base import Bucket, BucketSpec, Executor, compute, expand_all


def tensor_moments(spec: BucketSpec, p, g, st: dict, hp: dict, pp: dict) -> dict:
    """Phase 1: the direction's state after gradient ``g``; writes and returns the new state.

    ``st`` maps state keys to stored tensors, ``pp`` holds per-tensor values (Adam's bias
    corrections; SGD's first-step coefficients ``keep``/``gain``). Returns the new state in compute
    dtype, plus ``"g"``: the gradient after ``maximize`` and a rule that acts on the gradient.
    """
    hp = expand_all(hp, p)
    g = compute(g)
    if spec.maximize:
        g = -g
    rule = spec.rule
    if rule.acts == "gradient":
        g = rule.gradient(g, precision.read_param(p, st, spec), compute(st.get("init_param")), hp["lam"])
    keys = spec.direction.state_keys(spec)
    current = {k: compute(st[k]) for k in keys}
    new = spec.direction.moments(spec, g, current, hp, pp)
    for key in keys:
        if key in new:
            precision.write_state(st[key], new[key], spec)
    return dict(new, g=g)


def moments_from_state(spec: BucketSpec, st: dict) -> dict:
    """The moments as :func:`tensor_moments` returned them, read back from the (updated) state.

    (Two-phase steps only: their directions compute the update from the state alone.)
    """
    return {k: compute(st[k]) for k in spec.direction.state_keys(spec)} | {"g": None}


def tensor_update(spec: BucketSpec, p, st: dict, new: dict, hp: dict, pp: dict) -> None:
    """Phase 2: direction × decay rule; writes the parameter (and its Kahan compensation).

    ``new`` is what :func:`tensor_moments` returned; ``hp["mean_vhat"]`` is there for rules that
    need it.
    """
    hp = expand_all(hp, p)
    w = precision.read_param(p, st, spec)
    w_ref = compute(st.get("init_param"))
    direction = spec.direction
    u, D = direction.update(spec, new["g"], new, hp, pp, w=w)
    w, updates = direction.step(spec, w, w_ref, u, D, new, hp, pp)
    for key, value in updates.items():
        precision.write_state(st[key], value, spec)
    precision.write_param(p, st, w, spec)


def _select(items: dict, i: int) -> dict:
    return {k: v[i] for k, v in items.items()}


def reference_moments(spec: BucketSpec, params, grads, states, hp, pp):
    """Phase 1 tensor by tensor (writes the state); returns the sum of ``v̂`` the rule needs."""
    total = 0
    for i, (p, g) in enumerate(zip(params, grads, strict=False)):
        pi = _select(pp, i)
        new = tensor_moments(spec, p, g, _select(states, i), hp, pi)
        if spec.global_statistic:
            total = total + spec.direction.vhat_sum(spec, new, pi)
    return total


def reference_update(spec: BucketSpec, params, states, hp, pp) -> None:
    """Phase 2 tensor by tensor, reading the moments that phase 1 stored."""
    for i, p in enumerate(params):
        st = _select(states, i)
        tensor_update(spec, p, st, moments_from_state(spec, st), hp, _select(pp, i))


def reference_step(spec: BucketSpec, params, grads, states, hp, pp) -> None:
    """Both phases, tensor by tensor (steps without a global statistic)."""
    for i, (p, g) in enumerate(zip(params, grads, strict=False)):
        st, pi = _select(states, i), _select(pp, i)
        tensor_update(spec, p, st, tensor_moments(spec, p, g, st, hp, pi), hp, pi)


class Reference(Executor):
    """Runs every direction and rule: the specification. Never refuses a bucket."""

    name = "reference"

    def step(self, bucket: Bucket) -> None:
        reference_step(bucket.spec, bucket.params, bucket.grads, bucket.states, bucket.hp, bucket.pp)

    def moments(self, bucket: Bucket):
        return reference_moments(bucket.spec, bucket.params, bucket.grads, bucket.states, bucket.hp, bucket.pp)

    def update(self, bucket: Bucket) -> None:
        reference_update(bucket.spec, bucket.params, bucket.states, bucket.hp, bucket.pp)
