"""Sweeps on Ray: train a spec's groups of stacked runs as Ray tasks, on a laptop or a cluster.

:func:`run_sweep_ray` is :func:`~decaylab.sweep.run_sweep` with the training sent to Ray workers.
The driver (the process that calls it, e.g. ``decaylab sweep SPEC --backend ray``) owns the
store: it claims a group of pending runs that train together (the same claim, grouping and even
split as the local backend), submits one Ray task per group, keeps one group in flight per
worker, and writes each group's runs as its task returns. Workers never open the store: the
nodes of a cluster seldom share a filesystem, and SQLite over a network filesystem (NFS, SMB) can
corrupt the file, because its locks do not work there. A task sends back only each run's final
metrics and curves (not the trained model), so the traffic is small.

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
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..store.writer import MAX_DEATHS, Store
from .runner import (
    DEFAULT_STACK,
    HEARTBEAT_EVERY_S,
    MAX_FAILED_GROUPS_IN_A_ROW,
    WRITE_RETRY_S,
    SweepSummary,
    _aborted,
    _check_arguments,
    _check_count,
    _claim,
    _confirm,
    _count,
    _describe,
    _fail_group,
    _Heartbeat,
    _preflight,
    _progress_bar,
    _register,
    _summary,
    _trainers,
    _write_results,
    train_group,
)
from .spec import Spec, load_spec

__all__ = ["run_sweep_ray", "check_reachable", "DEFAULT_MAX_RETRIES"]

DEFAULT_MAX_RETRIES = 3
CONNECT_TIMEOUT_S = 10.0


@dataclass
class FinishedRun:
    """What a Ray task sends back for one run: the trainer's result without its model."""

    config: Any
    final: dict[str, Any]
    curves: list[dict] = field(default_factory=list)


def _train_on_worker(configs: Sequence[Any], stack: int, train_fn: Callable[..., Any] | None,
                     train_stacked_fn: Callable[..., Sequence[Any]] | None, use_gpu: bool) -> list[Any]:
    """The body of a Ray task: train one group on this worker (its GPU when it was given one)."""
    results = train_group(configs, stack, train_fn, train_stacked_fn, device="cuda" if use_gpu else None)
    return [FinishedRun(getattr(result, "config", config), result.final, list(getattr(result, "curves", None) or []))
            if hasattr(result, "final") else result
            for config, result in zip(configs, results, strict=True)]


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


def _in_flight(groups: Any, shown: int = 3) -> str:
    """What the bar shows: ``A ×4, B ×4`` (the first ``shown`` groups in flight, then a count)."""
    groups = list(groups)
    text = ", ".join(_describe(group) for group in groups[:shown])
    return text + (f" and {len(groups) - shown} more" if len(groups) > shown else "")


def _error_parts(error: BaseException) -> tuple[BaseException, str | None]:
    """A failed task's exception as (the exception to name in the one-line summary, the full text
    with the worker's traceback), for the store's ``error`` column."""
    cause = getattr(error, "cause", None)  # RayTaskError: the trainer's own exception
    return (cause if isinstance(cause, BaseException) else error), str(error)


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
    """Train every run of ``spec`` not yet done in ``store`` on Ray workers; returns a :class:`SweepSummary`.

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
    _check_arguments(stack, limit, max_failed_groups, heartbeat_every)
    _check_count("workers", workers, allow_none=True)
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
    if not isinstance(spec, Spec):
        spec = load_spec(spec)
    seconds = (_preflight(spec, stack, 1, data_required=False)
               if train_fn is None and train_stacked_fn is None else None)
    _confirm(spec, yes, seconds)
    train_fn, train_stacked_fn = _trainers(stack, train_fn, train_stacked_fn)
    ray = _import_ray()
    own_store = not isinstance(store, Store)
    if own_store:
        store = Store(store)
    own_ray = False
    started = time.time()
    try:
        configs, stack_keys = _register(spec, store, retry_failed, allow_spec_change, max_deaths)
        own_ray = _connect(ray, address)
        num_gpus, workers = _task_resources(ray, num_cpus, num_gpus, workers)
        task = ray.remote(_train_on_worker).options(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=max_retries,
                                                    retry_exceptions=False, name="decaylab-sweep-group")
        skipped = _count(store, spec.name, configs, ("done",))
        bar = _progress_bar(spec.name, total=len(configs), initial=skipped, enabled=progress)
        heartbeat = _Heartbeat(store.path, heartbeat_every)
        in_flight: dict[Any, list[dict]] = {}  # task's ObjectRef -> its claimed runs
        trained = failed = failed_groups = diverged = 0
        try:
            while True:
                while len(in_flight) < workers:  # top up: one group per free worker
                    flying = sum(len(group) for group in in_flight.values())
                    if limit is not None and trained + failed + flying >= limit:
                        break
                    want = stack if limit is None else min(stack, limit - trained - failed - flying)
                    store.requeue_stale(spec.name, max_deaths=max_deaths)
                    group = _claim(store, spec.name, want, configs, stack_keys)
                    if not group:
                        break
                    ref = task.remote([configs[run["key"]][1] for run in group], stack, train_fn, train_stacked_fn,
                                      bool(num_gpus))
                    in_flight[ref] = group
                if not in_flight:
                    break
                heartbeat.ids = [run["id"] for group in in_flight.values() for run in group]
                bar.set_postfix_str(_in_flight(in_flight.values()), refresh=True)
                [ready], _ = ray.wait(list(in_flight), num_returns=1)
                group = in_flight.pop(ready)
                try:
                    results = ray.get(ready)
                except Exception as error:  # the trainer raised, or the worker died max_retries + 1 times
                    cause, text = _error_parts(error)
                    ok, bad, message = _fail_group(store, group, cause, bar, text=text, write_retry_s=write_retry_s)
                    div = 0
                else:
                    ok, bad, message, div = _write_results(store, group, [configs[run["key"]][1] for run in group],
                                                           results, bar, write_retry_s)
                trained += ok
                failed += bad
                diverged += div
                failed_groups = failed_groups + 1 if bad and not ok else 0
                bar.update(max(0, _count(store, spec.name, configs, ("done",)) - bar.n))
                if failed_groups >= max_failed_groups:
                    raise _aborted(failed_groups, message)
        finally:
            heartbeat.stop()
            bar.close()
            if in_flight:  # interrupted or aborted: stop the groups in flight and give their runs back
                for ref in in_flight:
                    try:  # (a KeyboardInterrupt in the task: its worker lives on for the next tasks)
                        ray.cancel(ref)
                    except Exception:  # already finished or gone: nothing to stop
                        pass
                try:
                    store.release(run["id"] for group in in_flight.values() for run in group)
                except Exception:  # the store cannot be written: the runs go back as stale ones
                    pass
        return _summary(store, spec, configs, skipped, trained, failed, diverged, started)
    finally:
        if own_ray:
            ray.shutdown()
        if own_store:
            store.close()
