"""The compiled executor: the reference loop over chunks of tensors, compiled by ``torch.compile``.

Tensors are flattened to 1-D (or ``(K, -1)`` when K models are stacked) so that one dynamic-shape
graph serves tensors of every shape; every hyperparameter enters as a tensor, so a moving lr or a
per-model (stacked) lr does not recompile. Elementwise directions only; contiguous tensors (the
flat views are written).
"""
from __future__ import annotations

import functools
import types

import torch

from .base import Bucket, BucketSpec, Executor
from .reference import reference_moments, reference_step, reference_update

# Tensors per compiled call. One graph (dynamic shapes) serves every full chunk; compile time
# grows with the chunk, per-call overhead shrinks with it.
COMPILE_CHUNK = 8


def _entry_step(params, grads, states, hp, pp, spec=None):
    reference_step(spec, params, grads, states, hp, pp)


def _entry_moments(params, grads, states, hp, pp, spec=None):
    return reference_moments(spec, params, grads, states, hp, pp)


def _entry_update(params, states, hp, pp, spec=None):
    reference_update(spec, params, states, hp, pp)


_COMPILED_NAMES: list[str] = []


@functools.cache
def _compiled(kind: str, spec: BucketSpec):
    """A compiled entry point for ``(kind, spec)``.

    Dynamo keeps its cache, and its recompile limit, per code object. Each spec gets a copy of
    the entry's code object with the spec bound as a default argument, so many specs in one
    process (forms, flags, dtypes) never push each other out of the cache.
    """
    base = {"step": _entry_step, "moments": _entry_moments, "update": _entry_update}[kind]
    code = base.__code__.replace(co_name=f"{base.__name__}_{len(_COMPILED_NAMES)}")
    _COMPILED_NAMES.append(code.co_name)
    fn = types.FunctionType(code, base.__globals__, code.co_name, (spec,))
    # Kahan compensation is `w − round(w)`: inductor must not fold the round trip to bf16 away.
    return torch.compile(fn, fullgraph=True, dynamic=True, options={"emulate_precision_casts": True})


@functools.cache
def compiler_available(device_type: str) -> str | None:
    """Why ``torch.compile`` cannot build kernels for ``device_type``, or None when it can."""
    try:
        if device_type == "cuda":
            from torch.utils._triton import has_triton

            return None if has_triton() else "Triton is not installed"
        if device_type == "cpu":
            from torch._inductor import cpp_builder

            return None if cpp_builder.get_cpp_compiler() else "no C++ compiler for inductor"
    except Exception as exc:  # no compiler, an unsupported platform: use the uncompiled paths
        return f"torch.compile cannot run here ({type(exc).__name__}: {exc})"
    return f"torch.compile has no backend for {device_type} tensors here"


def _flat(spec: BucketSpec, tensors):
    return [t.view(t.shape[0], -1) if spec.stacked else t.view(-1) for t in tensors]


def _chunks(n: int):
    return [slice(i, min(i + COMPILE_CHUNK, n)) for i in range(0, n, COMPILE_CHUNK)]


class Compiled(Executor):
    name = "compiled"

    def why_not_spec(self, spec):
        if not spec.direction.elementwise:
            return f"the {spec.direction.name} direction is not element-wise (the compiled step flattens tensors)"
        return None

    def why_not(self, bucket: Bucket):
        why = self.why_not_spec(bucket.spec)
        if why:
            return why
        # compiled chunks work on flat views: every written tensor must be contiguous
        if not all(p.is_contiguous() for p in bucket.params):
            return "a parameter is not contiguous"
        if not all(t.is_contiguous() for v in bucket.states.values() for t in v):
            return "a state tensor is not contiguous"
        return compiler_available(bucket.params[0].device.type)

    def _views(self, bucket: Bucket):
        spec = bucket.spec
        P = _flat(spec, bucket.params)
        S = {k: _flat(spec, v) for k, v in bucket.states.items()}
        return P, S

    def step(self, bucket: Bucket) -> None:
        fn = _compiled("step", bucket.spec)
        P, S = self._views(bucket)
        G = [g.reshape(p.shape) for g, p in zip(bucket.grads, P, strict=False)]
        for c in _chunks(len(P)):
            fn(P[c], G[c], {k: v[c] for k, v in S.items()}, bucket.hp, {k: v[c] for k, v in bucket.pp.items()})

    def moments(self, bucket: Bucket):
        fn = _compiled("moments", bucket.spec)
        P, S = self._views(bucket)
        G = [g.reshape(p.shape) for g, p in zip(bucket.grads, P, strict=False)]
        total = 0
        for c in _chunks(len(P)):
            total = total + fn(P[c], G[c], {k: v[c] for k, v in S.items()}, bucket.hp,
                               {k: v[c] for k, v in bucket.pp.items()})
        return total

    def update(self, bucket: Bucket) -> None:
        fn = _compiled("update", bucket.spec)
        P, S = self._views(bucket)
        for c in _chunks(len(P)):
            fn(P[c], {k: v[c] for k, v in S.items()}, bucket.hp, {k: v[c] for k, v in bucket.pp.items()})
