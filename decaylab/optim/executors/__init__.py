"""Executors: the ways a bucket's step can run, one module each, behind one interface.

* ``reference`` — one Python loop over tensors: the specification (:mod:`.reference`);
* ``foreach`` — the same code on lists of tensors, multi-tensor kernels (:mod:`.foreach`);
* ``compiled`` — the reference loop compiled by ``torch.compile``, dynamic shapes (:mod:`.compiled`);
* ``fused`` — torch's fused Adam kernels with the rule folded into their constants (:mod:`.fused`);
* ``native`` — decaylab's own C step, Adam and SGD, every built-in rule (:mod:`.native`).

Each answers ``why_not(bucket)`` (a reason, or None) and runs ``step`` (or ``moments`` then
``update`` when the rule needs a global statistic). Which one runs a bucket is decided in one place,
:mod:`decaylab.optim.dispatch`.
"""
from __future__ import annotations

from .base import Bucket, BucketSpec, CarriedSums, Executor
from .compiled import Compiled
from .foreach import Foreach
from .fused import Fused
from .native import Native
from .reference import Reference

EXECUTORS: dict[str, Executor] = {e.name: e for e in (Reference(), Foreach(), Compiled(), Fused(), Native())}
"""Every executor by name (the ``backend=`` values besides ``"auto"``)."""

__all__ = ["EXECUTORS", "Bucket", "BucketSpec", "CarriedSums", "Executor"]
