"""Training under ``torchrun``: one run, data-parallel over processes (DDP).

::

    torchrun --nproc_per_node 2 -m decaylab.cli train run.toml --steps 500 --out result.json
    torchrun --nproc_per_node 2 -m decaylab.cli train --model mlp --lr 3e-3 --weight_decay 0.1 --steps 500

Every rank builds the same model (same seed) and draws the same batch of step ``t`` from the run's
sampler; rank ``r`` of ``W`` trains on its slice ``r`` of it (``batch_size / W`` examples) and
``DistributedDataParallel`` averages the gradients, so a step sees the mean gradient of the
whole batch, as the single-process :func:`~decaylab.train.train` does: the same run, up to
floating-point summation order (tested: ``tests/test_distributed.py``). Everything after the
backward pass (clipping, the optimizer, the EMA, evaluations) runs on every rank on identical
parameters; rank 0 alone writes checkpoints, sink files and the result. Resuming reads the
checkpoint on every rank.

With ``WORLD_SIZE`` unset or 1 this is :func:`~decaylab.train.train`. Processes use CUDA device
``LOCAL_RANK`` with NCCL where CUDA is available, else the CPU with gloo. BatchNorm layers
normalize with each rank's own slice (DDP's usual behaviour), so a model with BatchNorm is not
the single-process run; the models without it are.

For sharded (FSDP2) training, :mod:`decaylab.optim` and the cheap instruments of
:mod:`decaylab.diagnostics` accept ``DTensor`` parameters directly (see
:mod:`decaylab.optim.sharded`).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .config import RunResult, TrainConfig

__all__ = ["train_distributed", "world", "Replica"]


def world() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment (``(0, 1, 0)`` without it)."""
    def env(name: str, default: int) -> int:
        text = os.environ.get(name, str(default))
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"environment variable {name} must be an integer; got {text!r}") from None

    return env("RANK", 0), env("WORLD_SIZE", 1), env("LOCAL_RANK", 0)


class _DDPEngine:
    """A :class:`~decaylab.train.engines.SingleModel` whose training forward runs through DDP.

    Evaluation (``forward_shared``), the parameters, ``state_module`` and the rest are the plain
    module's, so checkpoints and instruments are those of a single-process run.
    """

    def __init__(self, engine, ddp):
        self._engine, self._ddp = engine, ddp

    def forward(self, x: Tensor) -> Tensor:
        from .engines import _logits

        return _logits(self._ddp(x[0])).unsqueeze(0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


class _RankBatches:
    """The run's sampler, giving rank ``r`` its slice ``r`` of every batch (dim 1: examples)."""

    def __init__(self, sampler, rank: int, world_size: int):
        self._sampler, self.rank, self.world_size = sampler, rank, world_size

    def batch(self, step: int) -> tuple[Tensor, Tensor]:
        x, y = self._sampler.batch(step)
        n = x.shape[1] // self.world_size
        part = slice(self.rank * n, (self.rank + 1) * n)
        return x[:, part], y[:, part]

    def state_dict(self) -> dict[str, Any]:
        return self._sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._sampler.load_state_dict(state)


class Replica:
    """What :func:`decaylab.train.loop._run` needs to be one DDP replica: the wrapped engine and
    sampler (:meth:`wrap`), and whether this rank writes checkpoints (:attr:`writes`)."""

    def __init__(self, rank: int, world_size: int, device: torch.device):
        self.rank, self.world_size, self.device = rank, world_size, device
        self.writes = rank == 0

    def wrap(self, engine, sampler):
        from torch.nn.parallel import DistributedDataParallel

        if engine.stacked:
            raise ValueError("train_distributed trains one model; stacked runs (train_stacked) are not data-parallel")
        ids = [self.device.index] if self.device.type == "cuda" else None
        ddp = DistributedDataParallel(engine.state_module, device_ids=ids)
        return _DDPEngine(engine, ddp), _RankBatches(sampler, self.rank, self.world_size)


def train_distributed(
    config: TrainConfig,
    *,
    data: Any = None,
    progress: bool | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    instruments: Sequence[Any] = (),
    sinks: Sequence[Any] = (),
    backend: str = "auto",
    on_step: Callable[[int], Any] | None = None,
) -> RunResult:
    """Train ``config`` as this rank of a ``torchrun`` job (see the module docs); every rank
    returns the same result (rank 0's sinks and checkpoints only are written).

    Keywords as :func:`~decaylab.train.train`; ``progress`` and ``sinks`` apply on rank 0. Joins
    the default process group (initializing it from torchrun's environment if needed).

    Raises:
        ValueError: ``config.batch_size`` is not a multiple of the world size, or bad keywords.
    """
    from .loop import _run, train

    if not isinstance(config, TrainConfig):
        raise ValueError(f"config must be a TrainConfig; got {type(config).__name__}")
    rank, world_size, local_rank = world()
    started_here = False
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    if world_size == 1:
        return train(config, data=data, progress=progress, checkpoint_dir=checkpoint_dir,
                     checkpoint_every=checkpoint_every, resume=resume, instruments=instruments, sinks=sinks,
                     backend=backend, on_step=on_step)
    if config.batch_size % world_size:
        raise ValueError(f"batch_size must be a multiple of the world size {world_size} (each rank trains on "
                         f"batch_size/{world_size} examples of every batch); got {config.batch_size}")
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
        started_here = True
    try:
        replica = Replica(rank, world_size, device)
        result = _run([config], data=data, progress=progress if replica.writes else None, device=device,
                      checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every, resume=resume,
                      instruments=instruments, sinks=sinks if replica.writes else (), backend=backend,
                      on_step=on_step, stacked=False, replica=replica)[0]
        if started_here:
            dist.barrier()  # every rank done before any closes its connections (gloo aborts a peer mid-send)
        return result
    finally:
        if started_here:
            dist.destroy_process_group()
