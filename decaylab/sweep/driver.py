"""The one driver loop of a sweep: train every pending run of a spec, several at once, writing each to the store.

:func:`run_sweep` registers the spec's runs in the store, checks them (the default trainer's
:func:`decaylab.train.preflight.check_runs`: the data loads, a batch fits its dataset, a group of
stacked runs fits in memory), then loops, top to bottom:

1. put back the runs of processes that died (:meth:`Store.requeue_stale`);
2. while the executor has a free slot, claim a group of pending runs that share a stack key (up to
   ``stack`` of them) and submit it (:mod:`decaylab.sweep.executors`: in this process, in N worker
   processes, or on Ray: :mod:`decaylab.sweep.ray_backend`);
3. wait for one group to finish, and write each of its runs at once (a run whose loss is not finite is
   stored done, diverged), or mark the group failed (the trainer raised), or count a death for its runs
   when its process died (after ``max_deaths`` the runs are failed with that reason);
4. renew the leases of the runs in flight (a heartbeat thread), and show progress.

The loop is the same for every executor, and so are its guarantees:

- a sweep that is killed and started again skips every finished run and redoes only the runs that were
  in flight (their process is gone, so :meth:`Store.requeue_stale` gives them back);
- several drivers can sweep one store at once: each claims disjoint runs;
- an exception in one group marks that group's runs ``failed`` (with the traceback) and the sweep goes
  on; ``max_failed_groups`` failures in a row stop it (:class:`SweepAborted`); ``KeyboardInterrupt``
  stops the groups in flight, puts their runs back to ``pending`` and propagates. Finished runs are
  never lost. Failed runs are retried with ``retry_failed=True``;
- a result the store cannot take at once (a full disk) is kept in memory and written again, for up to
  ``write_retry_s`` seconds; a sweep of more than :data:`~decaylab.sweep.spec.CONFIRM_RUNS` runs needs
  ``yes=True`` (or ``max_runs`` in its spec).
"""
from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from decaylab.store import divergence

from ..store.writer import MAX_DEATHS, Store, is_transient
from .executors import Executor, Group, GroupError, LocalExecutor, ProcessExecutor, WorkerDied, check_count
from .spec import CONFIRM_RUNS, Spec, load_spec
from .status import format_duration

__all__ = ["run_sweep", "SweepSummary", "SweepAborted", "SweepTooLarge", "DEFAULT_STACK", "default_processes"]

DEFAULT_STACK = 16
HEARTBEAT_EVERY_S = 30.0
MAX_FAILED_GROUPS_IN_A_ROW = 3
WRITE_RETRY_S = 600.0  # how long a trained result waits in memory for the store to take it
_FIRST_RETRY_DELAY_S = 1.0  # then doubling, up to a minute


def default_processes(limit: int = 4) -> int:
    """One training process per core this process may use, up to ``limit``."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(limit, cores))


class SweepAborted(RuntimeError):
    """Several groups in a row failed (the trainer or the spec is broken), or the store could not be
    written for ``write_retry_s`` seconds, so the sweep stops (finished runs are kept; the failed
    ones are retried with ``retry_failed=True``)."""


class SweepTooLarge(ValueError):
    """A sweep of more than :data:`~decaylab.sweep.spec.CONFIRM_RUNS` runs without a confirmation."""


@dataclass
class SweepSummary:
    """What one :func:`run_sweep` call did: runs in the spec (``total``), done before it started
    (``skipped``), trained now (``trained``, of which ``diverged`` diverged), failed now
    (``failed``), done meanwhile by other processes (``by_others``), left failed from before
    (``failed_before``: earlier sweeps, other processes, runs whose process died too often), left
    pending or running elsewhere (``remaining``), and its wall time. Every run of the spec is in
    exactly one of ``skipped``, ``trained``, ``by_others``, ``failed``, ``failed_before`` and
    ``remaining``."""

    sweep: str
    total: int
    skipped: int
    trained: int
    failed: int
    remaining: int
    wall_s: float
    failed_before: int = 0
    by_others: int = 0
    diverged: int = 0

    @property
    def left_failed(self) -> int:
        """Runs of the spec that are failed now (``decaylab sweep`` then exits with status 1)."""
        return self.failed + self.failed_before

    def __str__(self) -> str:
        trained = f"{self.trained} trained" + (f" ({self.diverged} diverged)" if self.diverged else "")
        others = f", {self.by_others} by other processes" if self.by_others else ""
        before = (f", {self.failed_before} failed before (--retry-failed trains them again)"
                  if self.failed_before else "")
        return (f"sweep {self.sweep!r}: {trained}, {self.failed} failed, {self.skipped} were already done{others}"
                f"{before}, {self.remaining} left, of {self.total} runs ({self.wall_s:.1f} s)")


class _Heartbeat:
    """Renews the leases of the runs in flight every ``every`` seconds, from its own connection."""

    def __init__(self, path: Path, every: float):
        self.path, self.every = path, every
        self.ids: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="decaylab-sweep-heartbeat", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        store = None
        while not self._stop.wait(self.every):
            ids = list(self.ids)
            if not ids:
                continue
            try:
                store = store or Store(self.path)
                store.heartbeat(ids)
            except Exception:  # a missed beat only matters after stale_after (10 min); keep going
                pass
        if store is not None:
            store.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _error_text(error: BaseException) -> str:
    return GroupError.of(error).text


def run_sweep(
    spec: Spec | str | Path,
    store: Store | str | Path,
    *,
    stack: int = DEFAULT_STACK,
    limit: int | None = None,
    retry_failed: bool = False,
    train_fn: Callable[..., Any] | None = None,
    train_stacked_fn: Callable[..., Sequence[Any]] | None = None,
    progress: bool = True,
    heartbeat_every: float = HEARTBEAT_EVERY_S,
    max_failed_groups: int = MAX_FAILED_GROUPS_IN_A_ROW,
    processes: int = 1,
    yes: bool = False,
    allow_spec_change: bool = False,
    max_deaths: int = MAX_DEATHS,
    write_retry_s: float = WRITE_RETRY_S,
    executor: Executor | None = None,
    note_spec_change: bool = True,
) -> SweepSummary:
    """Train every run of ``spec`` not yet done in ``store``; returns a :class:`SweepSummary`.

    ``spec``: a :class:`Spec` or a path to / text of one; ``store``: a :class:`Store` or its path.
    ``stack``: how many runs train together as one stacked model (1: one at a time with
    ``train_fn``); ``limit``: train at most this many runs in this call; ``retry_failed``: put
    the spec's failed runs back to pending first. ``train_fn`` / ``train_stacked_fn`` default to
    :func:`decaylab.train.train` / :func:`decaylab.train.train_stacked`, looked up when needed.
    ``progress``: show a progress bar (tqdm) with what is running and an ETA. ``processes``: train in
    this many worker processes on this machine, one torch thread each (1: in this process);
    ``executor``: where the groups train instead (:mod:`decaylab.sweep.executors`; Ray:
    :func:`decaylab.sweep.ray_backend.run_sweep_ray`). ``yes``: confirm a sweep of more than
    :data:`~decaylab.sweep.spec.CONFIRM_RUNS` runs (a spec may confirm its own size with
    ``max_runs``). ``allow_spec_change``: accept a spec that relabels runs the store holds under this
    sweep's name (:meth:`Store.register`). ``max_deaths``: a run whose process died this many times is
    marked failed. ``write_retry_s``: how long a trained result is kept in memory while the store cannot
    take it (a full disk). ``note_spec_change=False``: no note that the store holds this sweep from
    another spec text (for a caller that extends its own spec, e.g. a reproduction adding seeds).

    Raises:
        ValueError: a bad argument (named, with what is allowed), a run that cannot train here (its
            dataset is missing, its batch is larger than the dataset, its group would not fit in
            memory), a spec that relabels stored runs (:class:`~decaylab.store.SpecConflictError`)
            or an unconfirmed large sweep (:class:`SweepTooLarge`): all before anything trains.
        KeyboardInterrupt: after stopping the groups in flight and putting their runs back to pending.
        SweepAborted: ``max_failed_groups`` groups in a row failed, or the store could not be
            written for ``write_retry_s`` seconds.
    """
    _check_arguments(stack, limit, max_failed_groups, heartbeat_every)
    check_count("processes", processes)
    check_count("max_deaths", max_deaths)
    if isinstance(write_retry_s, bool) or not isinstance(write_retry_s, (int, float)) or not write_retry_s >= 0:
        raise ValueError(f"write_retry_s must be a number of seconds >= 0, got {write_retry_s!r}")
    if executor is not None and processes != 1:
        raise ValueError(f"processes must be 1 with an executor (it says where the runs train); got {processes}")
    if executor is None:
        executor = ProcessExecutor(processes) if processes > 1 else LocalExecutor()
    if not isinstance(spec, Spec):
        spec = load_spec(spec)
    default_trainers = train_fn is None and train_stacked_fn is None
    seconds = (_preflight(spec, stack, executor.processes, data_required=executor.data_on_driver)
               if default_trainers else None)
    _confirm(spec, yes, seconds)
    train_fn, train_stacked_fn = _trainers(stack, train_fn, train_stacked_fn)
    executor.prepare()
    own_store = not isinstance(store, Store)
    if own_store:
        store = Store(store)
    started = time.time()
    try:
        configs, stack_keys = _register(spec, store, retry_failed, allow_spec_change, max_deaths, note_spec_change)
        executor.start(stack, train_fn, train_stacked_fn)
        try:
            counts = _drive(spec, store, executor, configs, stack_keys, stack=stack, limit=limit, progress=progress,
                            heartbeat_every=heartbeat_every, max_failed_groups=max_failed_groups,
                            max_deaths=max_deaths, write_retry_s=write_retry_s)
        finally:
            executor.close()
        return _summary(store, spec, configs, *counts, started)
    finally:
        if own_store:
            store.close()


def _drive(spec: Spec, store: Store, executor: Executor, configs: dict[str, Any], stack_keys: dict[str, Any], *,
           stack: int, limit: int | None, progress: bool, heartbeat_every: float, max_failed_groups: int,
           max_deaths: int, write_retry_s: float) -> tuple[int, int, int, int]:
    """The loop (module docs); returns (runs done before, trained, failed, diverged) of this call."""
    def done_count() -> int:
        return _count(store, spec.name, configs, ("done",))

    skipped = done_count()
    bar = _progress_bar(spec.name, total=len(configs), initial=skipped, enabled=progress)
    heartbeat = _Heartbeat(store.path, heartbeat_every)
    trained = failed = failed_groups = diverged = 0
    writing: Group | None = None
    try:
        while True:
            while len(executor.in_flight()) < executor.slots:  # top up: one group per free slot
                flying = sum(len(group.runs) for group in executor.in_flight())
                if limit is not None and trained + failed + flying >= limit:
                    break
                want = stack if limit is None else min(stack, limit - trained - failed - flying)
                store.requeue_stale(spec.name, max_deaths=max_deaths)
                runs = store.claim(spec.name, want, group=lambda run: stack_keys[run["key"]], keys=configs)
                if not runs:
                    break
                executor.submit(Group(runs, [configs[run["key"]][1] for run in runs]))
            if not executor.in_flight():
                break
            heartbeat.ids = [run_id for group in executor.in_flight() for run_id in group.ids]
            bar.set_postfix_str(executor.describe(), refresh=True)
            writing, outcome = executor.wait(bar)
            if isinstance(outcome, WorkerDied):
                back = _write_with_retry(lambda ids=writing.ids, where=outcome.where: store.died(
                    ids, where, max_deaths=max_deaths), "the death of a group", bar, write_retry_s)
                bar.write(f"note: {writing}: {outcome}; {back} of its runs go back to pending, the others had died "
                          f"{max_deaths} times and are failed")
                failed += len(writing.runs) - back
                ok = bad = 0
                error = str(outcome)
            elif isinstance(outcome, BaseException):
                ok, bad, error = _fail_group(store, writing.runs, outcome, bar, write_retry_s=write_retry_s)
            else:
                ok, bad, error, div = _write_results(store, writing.runs, writing.configs, outcome, bar,
                                                     write_retry_s)
                diverged += div
            writing = None
            trained += ok
            failed += bad
            failed_groups = failed_groups + 1 if bad and not ok else 0
            bar.update(max(0, done_count() - bar.n))  # other drivers' runs count too
            if failed_groups >= max_failed_groups:
                raise _aborted(failed_groups, error)
    except BaseException:
        # interrupted or aborted: stop the groups in flight and give their runs back (runs already
        # written stay done or failed; if the store cannot be written, they go back as stale runs)
        groups = executor.cancel() + ([writing] if writing is not None else [])
        try:
            store.release(run_id for group in groups for run_id in group.ids)
        except Exception:
            pass
        raise
    finally:
        heartbeat.stop()
        bar.close()
    return skipped, trained, failed, diverged


def _summary(store: Store, spec: Spec, configs: dict[str, Any], skipped: int, trained: int, failed: int,
             diverged: int, started: float) -> SweepSummary:
    """The summary from the store's counts at the end, so that every run of the spec is counted once."""
    counts = dict.fromkeys(("pending", "running", "done", "failed"), 0)
    for key, status in store.statuses(spec.name).items():
        if key in configs:
            counts[status] = counts.get(status, 0) + 1
    return SweepSummary(spec.name, len(configs), skipped, trained, failed, counts["pending"] + counts["running"],
                        time.time() - started, failed_before=max(0, counts["failed"] - failed),
                        by_others=max(0, counts["done"] - skipped - trained), diverged=diverged)


def _preflight(spec: Spec, stack: int, processes: int, *, data_required: bool = True) -> float | None:
    """Check the spec's runs with the default trainer's :func:`~decaylab.train.preflight.check_runs`
    (ValueError before anything trains); returns its estimate of the sweep's wall time, or None.
    Trainers that do not offer the check (a stand-in ``decaylab.train``) skip it."""
    try:
        import decaylab.train as trainer
    except ImportError:
        return None
    check = getattr(trainer, "check_runs", None)
    if check is None:
        return None
    return check([config for _, config in spec.configs()], stack=stack, processes=processes,
                 data_required=data_required)


def _confirm(spec: Spec, yes: bool, seconds: float | None) -> None:
    """Refuse a sweep of more than CONFIRM_RUNS runs that neither ``yes`` nor its spec's ``max_runs`` confirms."""
    n = len(spec)
    if n <= CONFIRM_RUNS or yes or (spec.max_runs is not None and n <= spec.max_runs):
        return
    took = f", about {format_duration(seconds)} of training on this machine (a rough estimate)" if seconds else ""
    raise SweepTooLarge(f"sweep {spec.name!r} has {n:,} runs{took}; a sweep of more than {CONFIRM_RUNS:,} runs needs "
                        f"--yes (yes=True), or max_runs = {n} at the top of its spec")


def _check_arguments(stack: Any, limit: Any, max_failed_groups: Any, heartbeat_every: Any) -> None:
    check_count("stack", stack)
    check_count("limit", limit, allow_none=True)
    check_count("max_failed_groups", max_failed_groups)
    if isinstance(heartbeat_every, bool) or not isinstance(heartbeat_every, (int, float)) or not heartbeat_every > 0:
        raise ValueError(f"heartbeat_every must be a number of seconds > 0, got {heartbeat_every!r}")


def _trainers(stack: int, train_fn: Callable[..., Any] | None,
              train_stacked_fn: Callable[..., Sequence[Any]] | None) -> tuple[Callable | None, Callable | None]:
    """``train_fn`` / ``train_stacked_fn``, the one that ``stack`` needs defaulting to decaylab.train's."""
    if stack == 1 and train_fn is None:
        from decaylab.train import train as train_fn
    if stack > 1 and train_stacked_fn is None:
        from decaylab.train import train_stacked as train_stacked_fn
    return train_fn, train_stacked_fn


def _register(spec: Spec, store: Store, retry_failed: bool, allow_spec_change: bool = False,
              max_deaths: int = MAX_DEATHS, note: bool = True) -> tuple[dict[str, tuple[str, Any]], dict[str, Any]]:
    """Record ``spec``'s runs in ``store`` (pending), requeue runs of dead processes and, with
    ``retry_failed``, failed runs; returns ``key -> (label, config)`` and ``key -> stack key``.
    A spec that relabels stored runs raises :class:`~decaylab.store.SpecConflictError`
    unless ``allow_spec_change``."""
    configs = {c.key(): (label, c) for label, c in spec.configs()}
    stack_keys = {key: c.stack_key() for key, (_, c) in configs.items()}
    versions = store.spec_versions(spec.name)
    first = next(iter(configs.values()), (None, None))[1]
    per_model = getattr(type(first), "per_model_fields", None)  # the config class's own list (TrainConfig's)
    added = store.register(spec.name, spec.text, spec.configs(), allow_spec_change=allow_spec_change,
                           per_model=per_model() if per_model else None)
    if note and versions and all(v["spec"] != spec.text for v in versions):
        others = sum(1 for key in store.statuses(spec.name) if key not in configs)
        print(f"note: sweep {spec.name!r} is in {store.path} from a different spec text; the store keeps its "
              f"runs ({others} of them not in this spec) and every spec text it was run with (this one is version "
              f"{len(versions) + 1}), and adds this spec's {added} new runs. Give the spec a new name (or use a new "
              "store) to keep sweeps apart.", file=sys.stderr)
    store.requeue_stale(spec.name, max_deaths=max_deaths)
    if retry_failed:
        store.retry_failed(spec.name, configs)
    return configs, stack_keys


def _count(store: Store, sweep: str, configs: dict[str, Any], statuses: tuple[str, ...]) -> int:
    """How many of the spec's runs (other processes' included) are in one of ``statuses``."""
    return sum(1 for key, status in store.statuses(sweep).items() if status in statuses and key in configs)


def _claim(store: Store, sweep: str, want: int, configs: dict[str, Any], stack_keys: dict[str, Any]) -> list[dict]:
    """Claim up to ``want`` pending runs of the spec that train together (one stack key)."""
    return store.claim(sweep, want, group=lambda run: stack_keys[run["key"]], keys=configs)


def _aborted(failed_groups: int, error: str) -> SweepAborted:
    return SweepAborted(f"{failed_groups} groups in a row failed (last: {error}); finished runs are "
                        "kept, failed ones are retried with retry_failed=True (--retry-failed)")


def _write_with_retry(action: Callable[[], Any], what: str, bar: Any, retry_s: float) -> Any:
    """``action()`` (a store write), tried again while it fails in a way that may pass (a full disk,
    an I/O error, a lock held too long) for up to ``retry_s`` seconds; then :class:`SweepAborted`.
    Whatever was trained waits in memory meanwhile."""
    deadline = time.monotonic() + retry_s
    delay = _FIRST_RETRY_DELAY_S
    while True:
        try:
            return action()
        except Exception as error:
            if not is_transient(error):
                raise
            if time.monotonic() + delay > deadline:
                raise SweepAborted(f"could not write {what} to the store for {retry_s:.0f} s "
                                   f"({type(error).__name__}: {error}); free the disk (or fix the store) and run "
                                   "the same command again: the runs in flight go back to pending") from error
            bar.write(f"note: could not write {what} to the store ({error}); the result is kept in memory, "
                      f"trying again in {delay:.0f} s")
            time.sleep(delay)
            delay = min(2 * delay, 60.0)


def _fail_group(store: Store, runs: list[dict], error: BaseException, bar: Any,
                write_retry_s: float = WRITE_RETRY_S) -> tuple[int, int, str]:
    """Mark a whole group failed with ``error``'s text (a :class:`GroupError`'s, or the traceback);
    returns (0, runs failed, its one-line summary)."""
    failure = error if isinstance(error, GroupError) else GroupError.of(error)
    _write_with_retry(lambda: store.fail([run["id"] for run in runs], failure.text), "the failure of a group", bar,
                      write_retry_s)
    bar.write(f"failed: {Group(runs, [])}: {failure.summary} (marked failed; --retry-failed runs them again)")
    return 0, len(runs), failure.summary


def _write_results(store: Store, runs: list[dict], configs: list[Any], results: Sequence[Any],
                   bar: Any, write_retry_s: float = WRITE_RETRY_S) -> tuple[int, int, str, int]:
    """Write each run's result (a result the store cannot take fails only that run; a store that
    cannot take anything for a while is waited for); returns (runs done, runs failed, the last
    error's summary or "", runs that diverged)."""
    done = failed = diverged = 0
    summary = ""
    for run, config, result in zip(runs, configs, results, strict=True):
        try:
            got = getattr(result, "config", config)
            if got is not None and hasattr(got, "key") and got.key() != run["key"]:
                raise RuntimeError(f"the trainer returned a result for another config ({got!r})")
            _write_with_retry(lambda run=run, result=result: store.finish(run["id"], result),
                              f"run {run['id']}", bar, write_retry_s)
            done += 1
            final = getattr(result, "final", result)
            diverged += isinstance(final, dict) and divergence(final) is not None
        except SweepAborted:
            raise
        except Exception as error:  # a result the store cannot take: this run fails, the others stay
            _write_with_retry(lambda run=run, error=error: store.fail(run["id"], _error_text(error)),
                              f"the failure of run {run['id']}", bar, write_retry_s)
            summary = f"{type(error).__name__}: {error}"
            bar.write(f"failed: {run['label']} (run {run['id']}): {summary}")
            failed += 1
    return done, failed, summary, diverged


class _NoBar:
    """The bar's interface without a bar (``progress=False``): failures are still written to stderr."""

    n = 0
    shows_steps = False  # no per-step callback into the trainer

    def set_postfix_str(self, *args: Any, **kwargs: Any) -> None:
        pass

    def update(self, n: int = 1) -> None:
        self.n += n

    def write(self, text: str) -> None:
        print(text, file=sys.stderr)

    def close(self) -> None:
        pass


def _progress_bar(name: str, *, total: int, initial: int, enabled: bool) -> Any:
    if not enabled:
        bar = _NoBar()
        bar.n = initial
        return bar
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=name, unit="run", dynamic_ncols=True, smoothing=0.1)
