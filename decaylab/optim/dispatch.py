"""Which executor runs a bucket: the one ``auto`` policy, and the fallback when a compile fails.

``backend="auto"`` takes the first executor of this list that can run the bucket
(:meth:`~decaylab.optim.executors.Executor.why_not` is None):

1. ``fused`` — for one model (not stacked) and a rule without a global statistic: torch's own
   kernel, which computes the rule exactly (AdamW is then torch's fused AdamW bit for bit);
2. ``native`` — decaylab's C step: every built-in rule, Adam and SGD, K stacked models in one call;
3. ``compiled`` — for K stacked models where compiling pays off (one graph for all K, where torch's
   kernels would take one call per model);
4. ``fused`` — the rest of what torch's kernels can run (``stable`` for one model, stacked models);
5. ``compiled`` — where compiling pays off: a bucket of at least :data:`AUTO_COMPILE_MIN_NUMEL`
   elements, or at least :data:`COMPILE_MIN_WORK` elements × the steps the run is expected to take
   (:attr:`Dispatcher.expected_steps`, which the stacked trainer sets), and no compile failed before;
6. ``foreach``, then ``reference``.

An explicit backend runs where it can and otherwise takes the same chain from step 5 (a
non-contiguous or sharded parameter, a CUDA tensor on ``native``). While ``torch.compile`` traces the
caller's step, every bucket takes ``reference``: plain tensor code for dynamo.
"""
from __future__ import annotations

import warnings

import torch

from .executors import EXECUTORS, Bucket

BACKENDS = ("auto", *EXECUTORS)
"""The values of ``backend=``."""
# Below this many elements in a bucket, `auto` prefers foreach: the step is dominated by
# per-kernel overhead there and a compile (seconds) would not pay for itself.
AUTO_COMPILE_MIN_NUMEL = 1 << 20
# Elements × expected steps from which a compile pays for itself even for a small bucket (stacked
# models trained for many steps). Measured (benchmarks/sweep_throughput.py, 2 CPU threads, 16 stacked
# MNIST-1D MLPs = 243k entries): a step takes 4.9-5.4 ms compiled vs 6.4-7.9 ms foreach, so compiling
# saves about 6-10 ns per element-step, and costs about 3.5 s once per process and rule (with a warm
# inductor cache; 10 s or more cold): 2^29 element-steps (K=16 MLPs: 2,200 steps) is where it breaks even.
COMPILE_MIN_WORK = 1 << 29


class Dispatcher:
    """The executor for each bucket of an optimizer (one per optimizer: it remembers a compile failure)."""

    def __init__(self) -> None:
        self.compile_failed = False
        self.expected_steps: int | None = None  # a hint: how many steps the run will take

    def _worth_compiling(self, bucket: Bucket) -> bool:
        if self.compile_failed:
            return False
        numel = bucket.numel
        if numel >= AUTO_COMPILE_MIN_NUMEL:
            return True
        return self.expected_steps is not None and numel * self.expected_steps >= COMPILE_MIN_WORK

    def _can(self, name: str, bucket: Bucket) -> bool:
        return EXECUTORS[name].why_not(bucket) is None

    def _generic(self, bucket: Bucket) -> str:
        if self._worth_compiling(bucket) and self._can("compiled", bucket):
            return "compiled"
        return "foreach" if self._can("foreach", bucket) else "reference"

    def choose(self, requested: str, bucket: Bucket) -> str:
        """The executor that runs ``bucket`` for ``backend=requested``."""
        if torch.compiler.is_compiling():
            return "reference"  # the caller compiles the whole step: give dynamo plain tensor code
        if requested == "auto":
            spec = bucket.spec
            if not spec.stacked and not spec.global_statistic and self._can("fused", bucket):
                return "fused"
            if self._can("native", bucket):
                return "native"
            if spec.stacked and self._worth_compiling(bucket) and self._can("compiled", bucket):
                return "compiled"
            if self._can("fused", bucket):
                return "fused"
            return self._generic(bucket)
        if requested == "reference" or self._can(requested, bucket):
            return requested
        return self._generic(bucket) if requested in ("fused", "native") else (
            "foreach" if self._can("foreach", bucket) else "reference")

    def step(self, name: str, requested: str, bucket: Bucket) -> None:
        """Run ``bucket`` on ``name``; a compile failure under ``auto`` falls back to foreach, loudly, once."""
        try:
            EXECUTORS[name].step(bucket)
        except Exception as exc:
            if name != "compiled" or requested != "auto":
                raise
            self.compile_failed = True
            warnings.warn(f"decaylab: the compiled step failed ({type(exc).__name__}: {exc}); "
                          "using foreach from now on", stacklevel=4)
            EXECUTORS["foreach"].step(bucket)


def why_not_backend(backend: str, spec, params) -> str | None:
    """Why an explicit ``backend`` can never run a param group (checked when the group is added), or None."""
    if backend in ("auto", "reference", "foreach", "compiled"):
        return EXECUTORS[backend].why_not_spec(spec) if backend != "auto" else None
    executor = EXECUTORS[backend]
    why = executor.why_not_spec(spec)
    for p in params:
        why = why or executor.why_not_param(p)
    return why
