"""Sweeps on Ray: train a spec's groups of stacked runs as Ray tasks, on a laptop or a cluster.

:class:`RayExecutor` is an executor of the one driver loop (:mod:`decaylab.sweep.driver`), and
:func:`run_sweep_ray` is :func:`~decaylab.sweep.run_sweep` with it. The driver (the process that
calls it, e.g. ``decaylab sweep SPEC --backend ray``) owns the store: it claims a group of pending
runs that train together (the same claim, grouping and even split as every executor), submits one
Ray task per group, keeps one group in flight per worker, and writes each group's runs as its task
returns. Workers never open the store: the nodes of a cluster seldom share a filesystem, and SQLite
over a network filesystem (NFS, SMB) can corrupt the file, because its locks do not work there. A
task sends back only each run's final metrics and curves (not the trained model): little traffic.

Guarantees, as with the local backend:

- a worker that dies (killed, out of memory, its node lost) loses only its group in flight: Ray
  runs the task again, up to ``max_retries`` times; if it still fails, the group's runs are
  marked ``failed`` (``retry_failed=True`` / ``--retry-failed`` runs them again). An exception
  raised by the trainer is not retried (it would fail again) and fails the group at once;
- the driver renews the leases of the runs in flight (:meth:`Store.heartbeat`), so another
  process sweeping the same store never takes them back as stale while they train;
- ``KeyboardInterrupt`` (Ctrl-C, or SIGTERM through the CLI) cancels the tasks in flight and puts
  their runs back to ``pending``; every finished run is kept. A driver that is killed outright
  leaves its runs ``running`` under its lease; the next sweep on the same host requeues them at
  once (a sweep on another host after 10 minutes without heartbeat).

Ray is an optional extra (``pip install "decaylab[ray]"``); this module imports it only when a
sweep starts.
"""
from __future__ import annotations

import logging
import signal
import socket
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..store.writer import MAX_DEATHS, Store
from .driver import (
    DEFAULT_STACK,
    HEARTBEAT_EVERY_S,
    MAX_FAILED_GROUPS_IN_A_ROW,
    WRITE_RETRY_S,
    SweepSummary,
    run_sweep,
)
from .executors import Executor, Group, GroupError, check_count, finished, train_group
from .spec import Spec

__all__ = ["run_sweep_ray", "RayExecutor", "check_reachable", "DEFAULT_MAX_RETRIES"]

DEFAULT_MAX_RETRIES = 3
CONNECT_TIMEOUT_S = 10.0


def _train_on_worker(configs: Sequence[Any], stack: int, train_fn: Callable[..., Any] | None,
                     train_stacked_fn: Callable[..., Sequence[Any]] | None, use_gpu: bool) -> list[Any]:
    """The body of a Ray task: train one group on this worker (its GPU when it was given one)."""
    return finished(configs, train_group(configs, stack, train_fn, train_stacked_fn,
                                         device="cuda" if use_gpu else None))


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as error:
        raise ModuleNotFoundError('the Ray backend needs Ray: pip install "decaylab[ray]"') from error
    return ray


def _connect(ray: Any, address: str | None) -> bool:
    """Join the Ray instance at ``address``, or this process's, or a new local one; returns
    whether this call started the connection (and so should shut it down)."""
    if ray.is_initialized():
        return False
    if address is not None:
        check_reachable(address)
    on_sigterm = signal.getsignal(signal.SIGTERM)
    ray.init(address=address, logging_level=logging.WARNING, configure_logging=True)
    if on_sigterm is not None and threading.current_thread() is threading.main_thread():
        # ray.init installs a handler that aborts the process on SIGTERM; keep the caller's (the
        # CLI's turns SIGTERM into KeyboardInterrupt, so the runs in flight go back to pending).
        signal.signal(signal.SIGTERM, on_sigterm)
    return True


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise ``ConnectionError`` at once when nothing listens at a ``HOST:PORT`` or
    ``ray://HOST:PORT`` address (``ray.init`` would retry for many minutes); other addresses
    (``auto``, ``local``) are left to Ray.

    >>> check_reachable("auto")
    """
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as error:
        raise ConnectionError(f"no Ray cluster answers at {address} ({error}); start one with "
                              f"`ray start --head` there, or check the address and port") from None


def _task_resources(ray: Any, num_cpus: float, num_gpus: float | None, workers: int | None) -> tuple[float, int]:
    """(GPUs per task, groups in flight): one GPU per task when the cluster has GPUs, and as many
    tasks in flight as the cluster's resources hold at once (at least one)."""
    resources = ray.cluster_resources()
    if num_gpus is None:
        num_gpus = 1 if resources.get("GPU", 0) >= 1 else 0
    if workers is None:
        fits = [resources.get("CPU", 0) / num_cpus] if num_cpus else []
        if num_gpus:
            fits.append(resources.get("GPU", 0) / num_gpus)
        workers = max(1, int(min(fits))) if fits else 1
    return num_gpus, workers


def _error_parts(error: BaseException) -> tuple[BaseException, str | None]:
    """A failed task's exception as (the exception to name in the one-line summary, the full text
    with the worker's traceback), for the store's ``error`` column."""
    cause = getattr(error, "cause", None)  # RayTaskError: the trainer's own exception
    return (cause if isinstance(cause, BaseException) else error), str(error)


class RayExecutor(Executor):
    """Each group is one Ray task; ``workers`` groups in flight (default: as many as the cluster's CPUs, or
    GPUs, hold). The driver keeps the store; a task sends back only each run's metrics and curves."""

    data_on_driver = False  # a cluster's workers may have data the driver's machine lacks

    def __init__(self, address: str | None = None, workers: int | None = None, num_cpus: float = 1,
                 num_gpus: float | None = None, max_retries: int = DEFAULT_MAX_RETRIES):
        check_count("workers", workers, allow_none=True)
        if isinstance(num_cpus, bool) or not isinstance(num_cpus, (int, float)) or not num_cpus >= 0:
            raise ValueError(f"num_cpus must be a number >= 0, got {num_cpus!r}")
        if num_gpus is not None and (isinstance(num_gpus, bool) or not isinstance(num_gpus, (int, float))
                                     or not num_gpus >= 0):
            raise ValueError(f"num_gpus must be a number >= 0 or None, got {num_gpus!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        if address is not None and (not isinstance(address, str) or not address.strip()):
            raise ValueError(f"address must be a Ray address such as 'auto', 'HOST:6379' or 'ray://HOST:10001', "
                             f"got {address!r}")
        self.address, self.workers, self.num_cpus, self.num_gpus = address, workers, num_cpus, num_gpus
        self.max_retries = max_retries
        self._in_flight: dict[Any, Group] = {}  # a task's ObjectRef -> its group
        self._own_ray = False

    def prepare(self) -> None:
        self._ray = _import_ray()

    def start(self, stack: int, train_fn: Callable[..., Any] | None,
              train_stacked_fn: Callable[..., Sequence[Any]] | None) -> None:
        super().start(stack, train_fn, train_stacked_fn)
        ray = self._ray
        self._own_ray = _connect(ray, self.address)
        self.num_gpus, self.slots = _task_resources(ray, self.num_cpus, self.num_gpus, self.workers)
        self._task = ray.remote(_train_on_worker).options(num_cpus=self.num_cpus, num_gpus=self.num_gpus,
                                                          max_retries=self.max_retries, retry_exceptions=False,
                                                          name="decaylab-sweep-group")

    def in_flight(self) -> list[Group]:
        return list(self._in_flight.values())

    def submit(self, group: Group) -> None:
        ref = self._task.remote(group.configs, self.stack, self.train_fn, self.train_stacked_fn, bool(self.num_gpus))
        self._in_flight[ref] = group

    def wait(self, bar: Any) -> tuple[Group, list[Any] | BaseException]:
        [ready], _ = self._ray.wait(list(self._in_flight), num_returns=1)
        group = self._in_flight.pop(ready)
        try:
            return group, self._ray.get(ready)
        except Exception as error:  # the trainer raised, or the worker died max_retries + 1 times
            cause, text = _error_parts(error)
            return group, GroupError(f"{type(cause).__name__}: {cause}", text)

    def cancel(self) -> list[Group]:
        groups = self.in_flight()
        for ref in self._in_flight:
            try:  # (a KeyboardInterrupt in the task: its worker lives on for the next tasks)
                self._ray.cancel(ref)
            except Exception:  # already finished or gone: nothing to stop
                pass
        self._in_flight.clear()
        return groups

    def close(self) -> None:
        if self._own_ray:
            self._ray.shutdown()
            self._own_ray = False


def run_sweep_ray(
    spec: Spec | str | Path,
    store: Store | str | Path,
    *,
    address: str | None = None,
    stack: int = DEFAULT_STACK,
    limit: int | None = None,
    retry_failed: bool = False,
    train_fn: Callable[..., Any] | None = None,
    train_stacked_fn: Callable[..., Sequence[Any]] | None = None,
    workers: int | None = None,
    num_cpus: float = 1,
    num_gpus: float | None = None,
    max_retries: int = DEFAULT_MAX_RETRIES,
    progress: bool = True,
    heartbeat_every: float = HEARTBEAT_EVERY_S,
    max_failed_groups: int = MAX_FAILED_GROUPS_IN_A_ROW,
    yes: bool = False,
    allow_spec_change: bool = False,
    max_deaths: int = MAX_DEATHS,
    write_retry_s: float = WRITE_RETRY_S,
) -> SweepSummary:
    """Train every run of ``spec`` not yet done in ``store`` on Ray workers: :func:`~decaylab.sweep.run_sweep`
    with a :class:`RayExecutor`; returns a :class:`SweepSummary`.

    ``spec``, ``store``, ``stack``, ``limit``, ``retry_failed``, ``train_fn``, ``train_stacked_fn``,
    ``progress``, ``heartbeat_every``, ``max_failed_groups``, ``yes``, ``allow_spec_change``,
    ``max_deaths`` and ``write_retry_s`` are as in :func:`run_sweep`; the trainers are pickled to the
    workers (decaylab must be installed there). The runs are checked on the driver before any task
    starts (a dataset that only the workers have is left to them).

    ``address``: the Ray cluster to join (``"auto"``, ``"HOST:6379"`` on a cluster node, or
    ``"ray://HOST:10001"`` through Ray Client); None: the Ray instance this process is already
    connected to, else a new local one (or the one ``ray start`` runs on this machine). A
    connection that this call opened is closed when it returns.
    ``workers``: groups in flight at once (default: as many tasks as the cluster's CPUs, or GPUs,
    hold). ``num_cpus`` / ``num_gpus``: resources of one task (Ray sets a task's torch threads
    to its CPUs); ``num_gpus`` None means 1 when the cluster has GPUs (the group then trains on
    ``cuda``), else 0. ``max_retries``: how many times Ray runs a group again after its worker died.

    Raises:
        ValueError: a bad argument (named, with what is allowed), before anything runs.
        ModuleNotFoundError: Ray is not installed.
        KeyboardInterrupt: after cancelling the tasks in flight and putting their runs back to pending.
        SweepAborted: ``max_failed_groups`` groups in a row failed.
    """
    executor = RayExecutor(address, workers, num_cpus, num_gpus, max_retries)
    return run_sweep(spec, store, executor=executor, stack=stack, limit=limit, retry_failed=retry_failed,
                     train_fn=train_fn, train_stacked_fn=train_stacked_fn, progress=progress,
                     heartbeat_every=heartbeat_every, max_failed_groups=max_failed_groups, yes=yes,
                     allow_spec_change=allow_spec_change, max_deaths=max_deaths, write_retry_s=write_retry_s)
