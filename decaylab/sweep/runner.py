"""Run a sweep: train every pending run of a spec, several at once, writing each to the store.

:func:`run_sweep` registers the spec's runs in the store, then repeatedly claims a group of
pending runs that share a :meth:`TrainConfig.stack_key` (up to ``stack`` of them), trains them
as one stacked model (``train_stacked_fn``; with ``stack=1``, one at a time with ``train_fn``)
and writes every finished run at once. So:

- a sweep that is killed and started again skips every finished run and redoes only the runs
  that were in flight (their process is gone, so :meth:`Store.requeue_stale` gives them back);
- several processes can sweep one store at once: each claims disjoint runs;
- an exception in one group marks that group's runs ``failed`` (with the traceback) and the
  sweep goes on; ``KeyboardInterrupt`` puts the group back to ``pending`` and stops. Finished
  runs are never lost. Failed runs are retried with ``retry_failed=True``.
"""
from __future__ import annotations

import inspect
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .spec import Spec, load_spec
from .store import Store

__all__ = ["run_sweep", "SweepSummary", "SweepAborted", "DEFAULT_STACK"]

DEFAULT_STACK = 16
HEARTBEAT_EVERY_S = 30.0
MAX_FAILED_GROUPS_IN_A_ROW = 3


class SweepAborted(RuntimeError):
    """Several groups in a row failed: the trainer or the spec is broken, so the sweep stops
    (finished runs are kept; the failed ones are retried with ``retry_failed=True``)."""


@dataclass
class SweepSummary:
    """What one :func:`run_sweep` call did: runs in the spec (``total``), done before it started
    (``skipped``), trained now (``trained``), failed now (``failed``), left pending or running
    elsewhere (``remaining``), and its wall time."""

    sweep: str
    total: int
    skipped: int
    trained: int
    failed: int
    remaining: int
    wall_s: float

    def __str__(self) -> str:
        return (f"sweep {self.sweep!r}: {self.trained} trained, {self.failed} failed, {self.skipped} were already "
                f"done, {self.remaining} left, of {self.total} runs ({self.wall_s:.1f} s)")


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


def _check_count(name: str, value: Any, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        extra = " or None" if allow_none else ""
        raise ValueError(f"{name} must be an integer >= 1{extra}, got {value!r}")


def _error_text(error: BaseException) -> str:
    return "".join(traceback.format_exception(type(error), error, error.__traceback__)).rstrip()


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
) -> SweepSummary:
    """Train every run of ``spec`` not yet done in ``store``; returns a :class:`SweepSummary`.

    ``spec``: a :class:`Spec` or a path to / text of one; ``store``: a :class:`Store` or its path.
    ``stack``: how many runs train together as one stacked model (1: one at a time with
    ``train_fn``); ``limit``: train at most this many runs in this call; ``retry_failed``: put
    the spec's failed runs back to pending first. ``train_fn`` / ``train_stacked_fn`` default to
    :func:`decaylab.train.train` / :func:`decaylab.train.train_stacked`, looked up when needed.
    ``progress``: show a progress bar (tqdm) with what is running and an ETA.

    Raises:
        ValueError: a bad argument (named, with what is allowed), before anything runs.
        KeyboardInterrupt: after putting the runs in flight back to pending.
        SweepAborted: ``max_failed_groups`` groups in a row failed.
    """
    _check_count("stack", stack)
    _check_count("limit", limit, allow_none=True)
    _check_count("max_failed_groups", max_failed_groups)
    if not heartbeat_every > 0:
        raise ValueError(f"heartbeat_every must be a number of seconds > 0, got {heartbeat_every!r}")
    if not isinstance(spec, Spec):
        spec = load_spec(spec)
    if stack == 1 and train_fn is None:
        from decaylab.train import train as train_fn
    if stack > 1 and train_stacked_fn is None:
        from decaylab.train import train_stacked as train_stacked_fn
    own_store = not isinstance(store, Store)
    if own_store:
        store = Store(store)

    started = time.time()
    configs = {c.key(): (label, c) for label, c in spec.configs()}
    stack_keys = {key: c.stack_key() for key, (_, c) in configs.items()}
    try:
        before = {sweep["name"]: sweep["spec"] for sweep in store.sweeps()}
        if spec.name in before and before[spec.name] != spec.text:
            others = sum(1 for key in store.statuses(spec.name) if key not in configs)
            print(f"note: sweep {spec.name!r} is in {store.path} from a different spec text; the store keeps its "
                  f"runs ({others} of them not in this spec), adds this spec's new runs and now holds this spec's "
                  "text. Give the spec a new name (or use a new store) to keep sweeps apart.", file=sys.stderr)
        store.register(spec.name, spec.text, spec.configs())
        store.requeue_stale(spec.name)
        if retry_failed:
            store.retry_failed(spec.name, configs)

        def done_count() -> int:
            return sum(1 for key, status in store.statuses(spec.name).items() if status == "done" and key in configs)

        skipped = done_count()
        bar = _progress_bar(spec.name, total=len(configs), initial=skipped, enabled=progress)
        heartbeat = _Heartbeat(store.path, heartbeat_every)
        trained = failed = failed_groups = 0
        try:
            while limit is None or trained + failed < limit:
                want = stack if limit is None else min(stack, limit - trained - failed)
                store.requeue_stale(spec.name)
                group = store.claim(spec.name, want, group=lambda run: stack_keys[run["key"]], keys=configs)
                if not group:
                    break
                label = group[0]["label"]
                bar.set_postfix_str(f"{label} ×{len(group)}" if len(group) > 1 else label, refresh=True)
                heartbeat.ids = [run["id"] for run in group]
                ok, bad, error = _train_group(store, group, [configs[run["key"]][1] for run in group],
                                              stack, train_fn, train_stacked_fn, bar)
                heartbeat.ids = []
                trained += ok
                failed += bad
                failed_groups = failed_groups + 1 if bad and not ok else 0
                bar.update(max(0, done_count() - bar.n))  # other processes' runs count too
                if failed_groups >= max_failed_groups:
                    raise SweepAborted(f"{failed_groups} groups in a row failed (last: {error}); finished runs are "
                                       "kept, failed ones are retried with retry_failed=True (--retry-failed)")
        finally:
            heartbeat.stop()
            bar.close()
        remaining = sum(1 for key, status in store.statuses(spec.name).items()
                        if key in configs and status in ("pending", "running"))
        return SweepSummary(spec.name, len(configs), skipped, trained, failed, remaining, time.time() - started)
    finally:
        if own_store:
            store.close()


def _train_group(store: Store, runs: list[dict], configs: list[Any], stack: int,
                 train_fn: Callable[..., Any] | None, train_stacked_fn: Callable[..., Sequence[Any]] | None,
                 bar: Any) -> tuple[int, int, str]:
    """Train one claimed group and write each run; returns (runs done, runs failed, the last
    error's one-line summary or "")."""
    pending = {run["id"] for run in runs}
    done = failed = 0
    summary = ""
    what = f"{runs[0]['label']} ×{len(runs)}" if len(runs) > 1 else runs[0]["label"]
    try:
        try:
            if stack == 1:
                results = [train_fn(config, **_step_progress(train_fn, bar, what)) for config in configs]
            else:
                results = list(train_stacked_fn(configs, **_step_progress(train_stacked_fn, bar, what)))
            if len(results) != len(configs):
                raise RuntimeError(f"the trainer returned {len(results)} results for {len(configs)} configs")
        except Exception as error:
            store.fail(pending, _error_text(error))
            summary = f"{type(error).__name__}: {error}"
            bar.write(f"failed: {what}: {summary} (marked failed; --retry-failed runs them again)")
            failed, pending = len(pending), set()
            return done, failed, summary
        for run, config, result in zip(runs, configs, results, strict=True):
            try:
                got = getattr(result, "config", config)
                if got is not None and hasattr(got, "key") and got.key() != run["key"]:
                    raise RuntimeError(f"the trainer returned a result for another config ({got!r})")
                store.finish(run["id"], result)
                done += 1
            except Exception as error:  # a result the store cannot take: this run fails, the others stay
                store.fail(run["id"], _error_text(error))
                summary = f"{type(error).__name__}: {error}"
                bar.write(f"failed: {run['label']} (run {run['id']}): {summary}")
                failed += 1
            pending.discard(run["id"])
        return done, failed, summary
    finally:
        if pending:  # interrupted (KeyboardInterrupt, SystemExit): give the runs in flight back
            store.release(pending)


def _step_progress(fn: Callable[..., Any], bar: Any, what: str) -> dict[str, Any]:
    """``on_step=`` for trainers that take it (decaylab.train does; the contract does not require
    it): the bar then shows the step of the group in flight, twice a second at most."""
    if isinstance(bar, _NoBar):
        return {}
    try:
        if "on_step" not in inspect.signature(fn).parameters:
            return {}
    except (TypeError, ValueError):
        return {}
    last = [0.0]

    def on_step(step: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.5:
            last[0] = now
            bar.set_postfix_str(f"{what}, step {step}", refresh=True)

    return {"on_step": on_step}


class _NoBar:
    n = 0

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
