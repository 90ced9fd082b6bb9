"""The foreach executor: the specification once per bucket, on :class:`TensorList` objects.

``a * b + c`` on TensorLists is a handful of multi-tensor (``torch._foreach_*``) kernels instead of a
Python loop over tensors, so the reference's own code (:mod:`.reference`) runs here unchanged, for
every direction and every rule, a user's included. Elementwise only; any device and dtype.
"""
from __future__ import annotations

from ..tensorlist import TensorList
from .base import Bucket, Executor
from .reference import moments_from_state, tensor_moments, tensor_update


def _lists(bucket: Bucket):
    return (TensorList(bucket.params), {k: TensorList(v) for k, v in bucket.states.items()},
            {k: TensorList(v) for k, v in bucket.pp.items()})


class Foreach(Executor):
    name = "foreach"

    def why_not_spec(self, spec):
        if not spec.direction.elementwise:
            return f"the {spec.direction.name} direction is not element-wise"
        return None

    def step(self, bucket: Bucket) -> None:
        spec, hp = bucket.spec, bucket.hp
        P, S, PP = _lists(bucket)
        tensor_update(spec, P, S, tensor_moments(spec, P, TensorList(bucket.grads), S, hp, PP), hp, PP)

    def moments(self, bucket: Bucket):
        spec = bucket.spec
        P, S, PP = _lists(bucket)
        new = tensor_moments(spec, P, TensorList(bucket.grads), S, bucket.hp, PP)
        return spec.direction.vhat_sum(spec, new, PP) if spec.global_statistic else 0

    def update(self, bucket: Bucket) -> None:
        spec = bucket.spec
        P, S, PP = _lists(bucket)
        tensor_update(spec, P, S, moments_from_state(spec, S), bucket.hp, PP)
