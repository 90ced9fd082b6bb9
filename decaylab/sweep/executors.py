"""Where a sweep's groups train: the executors of the one driver loop (:func:`decaylab.sweep.run_sweep`).

An executor takes a :class:`Group` of claimed runs (:meth:`Executor.submit`) and gives back finished
groups one at a time (:meth:`Executor.wait`): each with its results, or the error that ended it (a
:class:`GroupError` the trainer raised, or :class:`WorkerDied` when the process training it died).
Everything else — claims, leases and their heartbeat, writing each run at once, retries, deaths,
resume, the progress bar, Ctrl-C — is the driver's, written once for every executor:

- :class:`LocalExecutor` trains one group at a time in this process (the bar shows its steps);
- :class:`ProcessExecutor` trains up to N groups at once in N worker processes (spawned once, one torch
  thread each: on a machine with N cores that is faster than one process with N threads for the small
  models of a sweep); a worker that dies (the out-of-memory killer) is started again, and the runs of
  its group count a death;
- :class:`decaylab.sweep.ray_backend.RayExecutor` sends each group to a Ray worker.

Workers never open the store: they get configs and send back each run's final metrics and curves
(:class:`FinishedRun`, not the trained model).
"""
from __future__ import annotations

import contextlib
import inspect
import multiprocessing
import multiprocessing.connection
import os
import signal
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Executor", "FinishedRun", "Group", "GroupError", "LocalExecutor", "ProcessExecutor", "WorkerDied",
           "check_count", "train_group"]


@dataclass
class Group:
    """Claimed runs that train together: their store rows and their configs, in the same order."""

    runs: list[dict]
    configs: list[Any]

    @property
    def ids(self) -> list[int]:
        return [run["id"] for run in self.runs]

    def __str__(self) -> str:
        """``label ×k`` (the label alone for one run)."""
        label = self.runs[0]["label"]
        return f"{label} ×{len(self.runs)}" if len(self.runs) > 1 else label


class GroupError(Exception):
    """The trainer raised while training a group (in this process or a worker): ``summary`` is one line
    (``ValueError: ...``), ``text`` the full traceback for the store."""

    def __init__(self, summary: str, text: str):
        super().__init__(summary)
        self.summary, self.text = summary, text

    @classmethod
    def of(cls, error: BaseException, text: str | None = None) -> GroupError:
        full = text or "".join(traceback.format_exception(type(error), error, error.__traceback__)).rstrip()
        return cls(f"{type(error).__name__}: {error}", full)


class WorkerDied(Exception):
    """The process training a group died (killed, out of memory) before it answered; ``where`` says which."""

    def __init__(self, where: str):
        super().__init__(f"the process training the group died ({where})")
        self.where = where


@dataclass
class FinishedRun:
    """What a worker sends back for one run: the trainer's result without its model."""

    config: Any
    final: dict[str, Any]
    curves: list[dict] = field(default_factory=list)


def check_count(name: str, value: Any, *, allow_none: bool = False) -> None:
    """``ValueError`` naming ``name`` unless ``value`` is an integer >= 1 (or None with ``allow_none``)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        extra = " or None" if allow_none else ""
        raise ValueError(f"{name} must be an integer >= 1{extra}, got {value!r}")


def train_group(configs: Sequence[Any], stack: int, train_fn: Callable[..., Any] | None,
                train_stacked_fn: Callable[..., Sequence[Any]] | None,
                on_step: Callable[[int], None] | None = None, **kwargs: Any) -> list[Any]:
    """Train one group: as one stacked model with ``train_stacked_fn`` (``stack > 1``) or one config
    at a time with ``train_fn``; returns one result per config (checked). ``on_step`` and
    ``kwargs`` go to trainers that take them (``decaylab.train`` takes ``on_step`` and ``device``)."""
    fn = train_fn if stack == 1 else train_stacked_fn
    accepted = _accepted(fn, {"on_step": on_step, **kwargs})
    if stack == 1:
        results = [train_fn(config, **accepted) for config in configs]
    else:
        results = list(train_stacked_fn(list(configs), **accepted))
    if len(results) != len(configs):
        raise RuntimeError(f"the trainer returned {len(results)} results for {len(configs)} configs")
    return results


def finished(configs: Sequence[Any], results: Sequence[Any]) -> list[Any]:
    """The results a worker sends back: each run's config, final metrics and curves (no model)."""
    return [FinishedRun(getattr(result, "config", config), result.final, list(getattr(result, "curves", None) or []))
            if hasattr(result, "final") else result
            for config, result in zip(configs, results, strict=True)]


def _accepted(fn: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The ``kwargs`` that are not None and that ``fn`` takes (the training contract requires none of them)."""
    kwargs = {name: value for name, value in kwargs.items() if value is not None}
    if not kwargs:
        return {}
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {}
    return {name: value for name, value in kwargs.items() if name in parameters}


# ---------------------------------------------------------------------------------------------- the protocol


class Executor:
    """Trains the groups the driver submits. ``slots``: groups it trains at once; ``processes``: the
    training processes on this machine (memory estimates); ``data_on_driver``: this machine must have the
    data (checked before anything trains)."""

    slots: int = 1
    processes: int = 1
    data_on_driver: bool = True

    def prepare(self) -> None:
        """Before the store is opened: fail early (a missing optional dependency)."""

    def start(self, stack: int, train_fn: Callable[..., Any] | None,
              train_stacked_fn: Callable[..., Sequence[Any]] | None) -> None:
        """Before the first group: the trainers, and whatever the executor starts (processes, a cluster)."""
        self.stack, self.train_fn, self.train_stacked_fn = stack, train_fn, train_stacked_fn

    def in_flight(self) -> list[Group]:
        raise NotImplementedError

    def submit(self, group: Group) -> None:
        raise NotImplementedError

    def wait(self, bar: Any) -> tuple[Group, list[Any] | BaseException]:
        """One finished group and its results, or the error that ended it."""
        raise NotImplementedError

    def cancel(self) -> list[Group]:
        """Stop every group in flight (interrupted, aborted); returns them."""
        return self.in_flight()

    def close(self) -> None:
        """After the last group (or after :meth:`cancel`)."""

    def describe(self) -> str:
        """What the bar shows: the groups in flight."""
        groups = self.in_flight()
        text = ", ".join(str(group) for group in groups[:3])
        return text + (f" and {len(groups) - 3} more" if len(groups) > 3 else "")


class LocalExecutor(Executor):
    """One group at a time, trained in this process when the driver waits for it."""

    def __init__(self) -> None:
        self._group: Group | None = None

    def in_flight(self) -> list[Group]:
        return [self._group] if self._group is not None else []

    def submit(self, group: Group) -> None:
        self._group = group

    def wait(self, bar: Any) -> tuple[Group, list[Any] | BaseException]:
        group = self._group
        try:
            results = train_group(group.configs, self.stack, self.train_fn, self.train_stacked_fn,
                                  on_step=_step_progress(bar, str(group)))
        except Exception as error:  # the trainer failed this group; KeyboardInterrupt goes to the driver
            outcome: list[Any] | BaseException = GroupError.of(error)
        else:
            outcome = results
        self._group = None
        return group, outcome


def _step_progress(bar: Any, what: str) -> Callable[[int], None] | None:
    """An ``on_step`` callback (decaylab.train's trainers take it) that shows the step of the group in
    flight on the bar, twice a second at most; None without a bar."""
    if not getattr(bar, "shows_steps", True):
        return None
    import time

    last = [0.0]

    def on_step(step: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.5:
            last[0] = now
            bar.set_postfix_str(f"{what}, step {step}", refresh=True)

    return on_step


# ---------------------------------------------------------------------------------------------- processes


@dataclass
class _Worker:
    process: Any
    conn: Any
    group: Group | None = None


class ProcessExecutor(Executor):
    """``processes`` worker processes on this machine, one group each at a time, one torch thread each."""

    def __init__(self, processes: int):
        self.processes = self.slots = processes
        self._workers: list[_Worker] = []

    def start(self, stack: int, train_fn: Callable[..., Any] | None,
              train_stacked_fn: Callable[..., Sequence[Any]] | None) -> None:
        super().start(stack, train_fn, train_stacked_fn)
        self._context = multiprocessing.get_context("spawn")  # a fresh interpreter: no fork of torch's threads
        self._workers = [self._spawn() for _ in range(self.processes)]

    def _spawn(self) -> _Worker:
        parent, child = self._context.Pipe()
        with _one_thread_environment():  # read by torch's thread pools when the worker imports it
            process = self._context.Process(target=_worker_main, name="decaylab-sweep-worker", daemon=True,
                                            args=(child, self.stack, self.train_fn, self.train_stacked_fn))
            process.start()
        child.close()
        return _Worker(process, parent)

    def in_flight(self) -> list[Group]:
        return [w.group for w in self._workers if w.group is not None]

    def submit(self, group: Group) -> None:
        worker = next(w for w in self._workers if w.group is None)
        try:
            worker.conn.send(group.configs)
        except OSError:  # it died while idle: start another in its place
            worker.process.join(timeout=5)
            worker = self._workers[self._workers.index(worker)] = self._spawn()
            worker.conn.send(group.configs)
        worker.group = group

    def wait(self, bar: Any) -> tuple[Group, list[Any] | BaseException]:
        busy = [w for w in self._workers if w.group is not None]
        ready = multiprocessing.connection.wait([w.conn for w in busy] + [w.process.sentinel for w in busy])
        worker = next(w for w in busy if w.conn in ready or w.process.sentinel in ready)
        group, worker.group = worker.group, None
        try:
            kind, payload = worker.conn.recv()
        except (EOFError, OSError):  # it died before answering: start another in its place
            worker.process.join(timeout=5)
            where = f"pid {worker.process.pid}, exit code {worker.process.exitcode}"
            self._workers[self._workers.index(worker)] = self._spawn()
            return group, WorkerDied(where)
        return group, (payload if kind == "ok" else GroupError(*payload))

    def cancel(self) -> list[Group]:
        groups = self.in_flight()
        for worker in self._workers:
            if worker.group is not None:  # it is training: stop it (its runs go back to pending)
                worker.process.terminate()
                worker.group = None
        return groups

    def close(self) -> None:
        for worker in self._workers:
            with contextlib.suppress(OSError):
                worker.conn.send(None)  # done: an idle worker returns, a stopped one is gone already
        for worker in self._workers:
            worker.process.join(timeout=10)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()
        self._workers = []


@contextlib.contextmanager
def _one_thread_environment() -> Iterator[None]:
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
    before = {name: os.environ.get(name) for name in names}
    os.environ.update(dict.fromkeys(names, "1"))
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _worker_main(conn: Any, stack: int, train_fn: Callable[..., Any] | None,
                 train_stacked_fn: Callable[..., Sequence[Any]] | None) -> None:
    """A worker process: train each group the driver sends, answer with its results or its error, until
    the driver sends None or goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's: it stops its workers itself
    import torch

    torch.set_num_threads(1)
    while True:
        try:
            configs = conn.recv()
        except (EOFError, OSError):  # the driver is gone (killed): so are its runs' leases
            return
        if configs is None:
            return
        try:
            answer: tuple[str, Any] = ("ok", finished(configs, train_group(configs, stack, train_fn, train_stacked_fn)))
        except Exception as error:
            failure = GroupError.of(error)
            answer = ("error", (failure.summary, failure.text))
        conn.send(answer)
