"""Sharded parameters: the local shards a step runs on, and sums over whole parameters.

Under FSDP2 (``torch.distributed.fsdp.fully_shard``) or tensor parallelism every parameter is a
``DTensor``: each rank holds one shard of it. The optimizer's update is elementwise, so it runs
on each rank's *local* shard as plain tensors, with every executor (reference, foreach,
compiled) and no collective: :func:`local_shards`. (DTensor dispatch itself has no sharding rule
for ``_foreach_copy_`` and cannot flatten an unevenly sharded tensor, which the foreach and
compiled paths need.)

What is not elementwise is a reduction: the stable form's mean of ``v̂`` and the instruments'
norms. A sum over a local shard is a partial sum; :func:`global_sums` completes it over the mesh
dimensions the tensor is sharded on (a replicated mesh dimension already holds the whole sum),
so every rank gets the value an unsharded run computes. A ``DTensor``'s ``numel()`` is already
the whole parameter's. Plain tensors (DDP, one process) pass through both unchanged.

>>> import torch
>>> x = torch.ones(3)
>>> local_shard(x) is x, global_sums(torch.tensor([3.0]), [x])
(True, tensor([3.]))
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

try:  # builds without torch.distributed have no DTensor, and then no sharded parameters
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover - such builds are not tested
    DTensor = None

__all__ = ["is_dtensor", "local_shard", "local_shards", "shard_key", "global_sum", "global_sums"]


def is_dtensor(t: Any) -> bool:
    """Is ``t`` a ``torch.distributed.tensor.DTensor`` (a sharded or replicated parameter)?"""
    return DTensor is not None and isinstance(t, DTensor)


def local_shard(t: Tensor) -> Tensor:
    """This rank's shard of a DTensor (an alias: writes to it update the DTensor), else ``t``."""
    return t.to_local() if is_dtensor(t) else t


def local_shards(params: Sequence[Tensor], grads: Sequence[Tensor], states: dict[str, list[Tensor]]):
    """:func:`local_shard` of a bucket's parameters, gradients and state lists.

    A bucket holds either only DTensors or none (the optimizer buckets by :func:`shard_key`), so its
    first parameter answers for all.
    """
    if not params or not is_dtensor(params[0]):
        return params, grads, states
    return (
        [local_shard(p) for p in params],
        [local_shard(g) for g in grads],
        {k: [local_shard(t) for t in v] for k, v in states.items()},
    )


def shard_key(t: Tensor) -> tuple | None:
    """``(mesh, mesh dims t is split over)`` for a DTensor, ``None`` for a plain tensor.

    Tensors with the same key complete their partial sums with the same collectives.
    """
    if not is_dtensor(t):
        return None
    # Shard (and _StridedShard) split the tensor over a mesh dim; Replicate copies it there.
    dims = tuple(i for i, pl in enumerate(t.placements) if not pl.is_replicate())
    return (t.device_mesh, dims)


def global_sums(values: Tensor, tensors: Sequence[Tensor]) -> Tensor:
    """Sums over whole tensors from sums over their local shards.

    ``values[i]`` (any trailing shape) is a sum over ``tensors[i]``'s local shard; the answer is
    the sum over all of ``tensors[i]``, the same on every rank: one ``all_reduce`` per distinct
    :func:`shard_key` and sharded mesh dim. Every rank must call this with the same tensors (it
    is a collective when any of them is sharded). Returns ``values`` itself when none is.
    """
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        key = shard_key(t)
        if key is not None and key[1]:
            groups.setdefault(key, []).append(i)
    if not groups:
        return values
    import torch.distributed as dist

    out = values.clone()
    for (mesh, dims), idx in groups.items():
        whole = len(idx) == len(tensors)
        index = None if whole else torch.tensor(idx, device=values.device)
        part = out if whole else out.index_select(0, index)
        for d in dims:
            dist.all_reduce(part, group=mesh.get_group(d))
        if not whole:
            out.index_copy_(0, index, part)
    return out


def global_sum(value: Tensor, like: Tensor) -> Tensor:
    """A sum over the local shards of tensors sharded like ``like``, completed over whole tensors.

    One ``all_reduce`` per mesh dim ``like`` is split over (a collective: every rank calls it);
    ``value`` itself when ``like`` is not sharded.
    """
    key = shard_key(like)
    if key is None or not key[1]:
        return value
    import torch.distributed as dist

    mesh, dims = key
    out = value.clone()
    for d in dims:
        dist.all_reduce(out, group=mesh.get_group(d))
    return out
