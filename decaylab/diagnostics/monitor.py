r"""The monitor: attach instruments to a model and optimizer, sample them, keep and write records.

::

    with Monitor(model, opt, instruments=[WeightNorm(), AngularUpdate(10)], sinks=[JSONLSink("run.jsonl")]) as mon:
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(); loss.backward()
            mon.log(loss=loss)          # attached to the records of the coming step
            opt.step()                  # the monitor's optimizer hooks do the rest
    mon.history("weight_norm/total")    # [(step, value), ...]

The monitor registers two hooks on the optimizer (``register_step_pre_hook`` and
``register_step_post_hook``), so the loop calls nothing else:

* before a step that some ``needs_previous`` instrument will sample, it copies the parameters
  into buffers it keeps (``ctx.previous``; one copy of the parameters' memory, allocated once);
  before *every* step it calls ``before_step`` of the ``every_step`` instruments;
* after every step it counts the step, calls ``after_step`` of the ``every_step`` instruments,
  and samples each instrument whose ``interval`` divides the step count, turning all values into
  records with one host transfer.

A record is a plain dict ``{"step": int, "metric": str, "value": float, "model": int | None}``.
``step`` counts optimizer steps (1 after the first; a monitor attached mid-run starts from the
steps the optimizer has already taken). With stacked training (``stacked=K``, or inferred from
per-model ``lr``/``weight_decay`` tensors of shape ``(K,)``) a value of shape ``(K,)`` becomes K
records with ``model = 0..K−1``; a scalar value stays one record with ``model = None``.

The monitor never changes the trajectory: instruments only read, snapshots go to the monitor's
own buffers, and instruments not marked ``cheap`` (which may draw random numbers, e.g. Hutchinson
probes) run inside ``torch.random.fork_rng`` so the training's random stream is untouched.
"""
from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from decaylab.optim.sharded import local_shard

from .base import Context, Instrument, Values
from .sinks import Sink

__all__ = ["Monitor"]

Record = dict[str, Any]
Chunk = tuple[Any, Any, str]  # (metric, value, source), or (names, tensor, source) for a Values


def infer_stacked(optimizer: torch.optim.Optimizer) -> int | None:
    """K when some group's ``lr``, ``weight_decay`` or peak lr (``decay_max_lr``) is a tensor of shape ``(K,)``."""
    ks = {
        v.numel() for g in optimizer.param_groups for key in ("lr", "weight_decay", "decay_max_lr")
        if isinstance(v := g.get(key), Tensor) and v.dim() == 1
    }
    if len(ks) > 1:
        raise ValueError(f"stacked: per-model hyperparameters of different lengths {sorted(ks)}; pass stacked=K")
    return ks.pop() if ks else None


def steps_taken(optimizer: torch.optim.Optimizer) -> int:
    """Optimizer steps taken so far: decaylab's ``group["step"]``, else torch's per-parameter ``state["step"]``."""
    steps = [int(g["step"]) for g in optimizer.param_groups if isinstance(g.get("step"), int)]
    if steps:
        return max(steps)
    steps = [int(float(st["step"])) for st in optimizer.state.values() if "step" in st]
    return max(steps) if steps else 0


class Monitor:
    """Attach ``instruments`` and ``sinks`` to ``optimizer`` (and ``model``, for names and forward passes).

    Args:
        model: the module being trained (parameter names for per-tensor metrics; instruments that
            run the model use it); may be ``None``.
        optimizer: any ``torch.optim.Optimizer``; its hooks drive the sampling.
        instruments: :class:`~decaylab.diagnostics.base.Instrument` objects, each with its interval.
        sinks: where records go as they are made (:mod:`decaylab.diagnostics.sinks`).
        stacked: K when every parameter stacks K models along dim 0; ``None`` infers it from
            per-model ``(K,)`` hyperparameters (no such tensor: not stacked).
        keep_records: keep records in :attr:`records` (turn off for long runs that only write sinks).

    Example:
        >>> import torch
        >>> from decaylab.optim import AdamW
        >>> from decaylab.diagnostics.weights import WeightNorm
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = AdamW(model.parameters(), lr=0.1)
        >>> with Monitor(model, opt, [WeightNorm(interval=2, per_tensor=False)]) as mon:
        ...     for _ in range(4):
        ...         model(torch.ones(1, 3)).sum().backward(); mon.log(loss=1.0); opt.step()
        >>> [step for step, _ in mon.history("weight_norm/total")], len(mon.history("loss"))
        ([2, 4], 4)
    """

    def __init__(
        self,
        model: nn.Module | None,
        optimizer: torch.optim.Optimizer,
        instruments: Sequence[Instrument] = (),
        sinks: Sequence[Sink] = (),
        stacked: int | None = None,
        *,
        keep_records: bool = True,
    ):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"optimizer must be a torch.optim.Optimizer; got {type(optimizer).__name__}")
        if model is not None and not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module or None; got {type(model).__name__}")
        instruments = list(instruments)
        for inst in instruments:
            if not isinstance(inst, Instrument):
                raise ValueError(f"instruments must be Instrument objects; got {type(inst).__name__}")
        for sink in sinks:
            if not (callable(getattr(sink, "write", None)) and callable(getattr(sink, "close", None))):
                raise ValueError(f"sinks must have write(records) and close(); got {type(sink).__name__}")
        self.model, self.optimizer = model, optimizer
        self.instruments, self.sinks = instruments, list(sinks)
        self.stacked = self._check_stacked(infer_stacked(optimizer) if stacked is None else stacked)
        self.keep_records = keep_records
        self.records: list[Record] = []
        self.step = steps_taken(optimizer)
        self._names = {id(p): n for n, p in model.named_parameters()} if model is not None else {}
        self._pending: dict[str, Any] = {}
        self._snapshot: dict[int, Tensor] = {}
        self._snapshot_step: int | None = None
        self._needs_previous = [i for i in instruments if i.needs_previous]
        self._every_step = [i for i in instruments if i.every_step]
        self._handles: list[Any] = []
        self._closed = False
        attached: list[Instrument] = []
        try:
            for inst in instruments:
                inst.attach(self._context(self.step))
                attached.append(inst)
        except Exception:
            for inst in attached:
                inst.detach()
            raise
        if self._needs_previous or self._every_step:
            self._handles.append(optimizer.register_step_pre_hook(self._before_step))
        self._handles.append(optimizer.register_step_post_hook(self._after_step))

    # ------------------------------------------------------------------ setup helpers

    def _params(self) -> list[Tensor]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def _check_stacked(self, stacked: int | None) -> int | None:
        if stacked is None:
            return None
        if not isinstance(stacked, int) or isinstance(stacked, bool) or stacked < 1:
            raise ValueError(f"stacked must be None or a positive int (the number of stacked models); got {stacked!r}")
        for p in self._params():
            if p.dim() == 0 or p.shape[0] != stacked:
                raise ValueError(
                    f"stacked={stacked}: every parameter must stack {stacked} models along dim 0; "
                    f"got a parameter of shape {tuple(p.shape)}"
                )
        return stacked

    def _context(self, step: int, previous: dict[int, Tensor] | None = None) -> Context:
        return Context(
            self.model, self.optimizer, step, self.stacked, previous if previous is not None else {},
            dict(self._pending), self._names,
        )

    # ------------------------------------------------------------------ hooks

    def _before_step(self, optimizer, args, kwargs) -> None:
        upcoming = self.step + 1
        if any(inst.due(upcoming) for inst in self._needs_previous):
            self._take_snapshot(upcoming)
        if self._every_step:
            ctx = self._context(upcoming)
            for inst in self._every_step:
                inst.before_step(ctx)

    @torch.no_grad()
    def _take_snapshot(self, step: int) -> None:
        params = self._params()
        # Sharded parameters (DTensor, FSDP2): this rank's shards; the instruments read shards.
        values = [local_shard(p.detach()) for p in params]
        buffers = []
        for p, x in zip(params, values, strict=True):
            buf = self._snapshot.get(id(p))
            if buf is None or buf.shape != x.shape or buf.dtype != x.dtype or buf.device != x.device:
                buf = self._snapshot[id(p)] = torch.empty_like(x, memory_format=torch.preserve_format)
            buffers.append(buf)
        torch._foreach_copy_(buffers, values)
        self._snapshot_step = step

    def _after_step(self, optimizer, args, kwargs) -> None:
        self.step += 1
        step = self.step
        previous = self._snapshot if self._snapshot_step == step else {}
        if self._every_step:
            ctx = self._context(step, previous)
            for inst in self._every_step:
                inst.after_step(ctx)
        due = [inst for inst in self.instruments if inst.due(step)]
        if not due and not self._pending:
            return
        ctx = self._context(step, previous)
        chunks: list[Chunk] = [(k, v, "log") for k, v in self._pending.items()]
        self._pending = {}
        for inst in due:
            if inst.needs_previous and not previous:
                raise RuntimeError(f"{inst!r} needs the weights before step {step} and the monitor has no snapshot")
            source = type(inst).__name__
            result = self._measure(inst, ctx)
            if isinstance(result, Values):
                chunks.append((result.names, result.values, source))
                result = result.extra
            chunks.extend((metric, value, source) for metric, value in result.items())
        self._emit(step, chunks)

    def _measure(self, inst: Instrument, ctx: Context) -> dict[str, Any]:
        if inst.cheap:
            return inst.measure(ctx)
        devices = sorted({p.device.index or 0 for p in self._params() if p.device.type == "cuda"})
        with torch.random.fork_rng(devices=devices):
            return inst.measure(ctx)

    # ------------------------------------------------------------------ records

    def _emit(self, step: int, chunks: list[Chunk]) -> None:
        """Turn measured values into records; a chunk is ``(metric, value, source)`` or, for a
        :class:`Values`, ``(names, tensor, source)``."""
        records: list[Record] = []
        for (metric, value, source), rows in zip(chunks, self._to_floats(chunks), strict=True):
            if isinstance(metric, str):
                shape = tuple(value.shape) if isinstance(value, Tensor) else ()
                self._records(records, step, [metric], shape, rows, source)
            else:
                self._records(records, step, metric, tuple(value.shape[1:]), rows, source)
        if self.keep_records:
            self.records.extend(records)
        for sink in self.sinks:
            sink.write(records)

    def _records(self, out: list[Record], step: int, metrics: list[str], shape: tuple, rows: list[list[float]],
                 source: str) -> None:
        if len(shape) == 0:
            out.extend({"step": step, "metric": m, "value": row[0], "model": None}
                       for m, row in zip(metrics, rows, strict=True))
        elif self.stacked and shape == (self.stacked,):
            for m, row in zip(metrics, rows, strict=True):
                out.extend({"step": step, "metric": m, "value": v, "model": k} for k, v in enumerate(row))
        else:
            want = f"a number, a 0-dim tensor or a tensor of shape ({self.stacked},)" if self.stacked else \
                "a number or a 0-dim tensor (not stacked)"
            raise ValueError(f"{source} gave {metrics[0]!r} a value of shape {shape}; expected {want}")

    @staticmethod
    def _to_floats(chunks: list[Chunk]) -> list[list[list[float]]]:
        """Each chunk's values as rows of floats, with one ``tolist()`` per device (one host
        transfer) for every tensor of the sample, not one ``.item()`` each: single tensors of one
        device and shape are stacked, :class:`Values` tensors are used as they are."""
        out: list[list[list[float]] | None] = [None] * len(chunks)
        segments: dict[torch.device, list[tuple[list[int], Tensor]]] = {}
        singles: dict[tuple, list[int]] = {}
        for i, (metric, value, source) in enumerate(chunks):
            if not isinstance(metric, str):
                segments.setdefault(value.device, []).append(([i], value.detach().reshape(value.shape[0], -1)))
            elif isinstance(value, Tensor):
                singles.setdefault((value.device, value.shape), []).append(i)
            else:
                try:
                    out[i] = [[float(value)]]
                except (TypeError, ValueError):
                    raise ValueError(f"{source} gave {metric!r} a value of type {type(value).__name__}; "
                                     "expected a number or a tensor") from None
        for (device, _), idx in singles.items():
            stacked = torch.stack([chunks[i][1].detach() for i in idx]).reshape(len(idx), -1)
            segments.setdefault(device, []).append((idx, stacked))
        for parts in segments.values():
            flat = torch.cat([t.reshape(-1).to(torch.float64) for _, t in parts]).tolist()
            start = 0
            for idx, t in parts:
                width = t.shape[1] if t.dim() > 1 else 1
                rows = [flat[start + r * width:start + (r + 1) * width] for r in range(t.shape[0])]
                start += t.shape[0] * width
                if len(idx) == 1 and not isinstance(chunks[idx[0]][0], str):  # a Values block
                    out[idx[0]] = rows
                else:
                    for i, row in zip(idx, rows, strict=True):
                        out[i] = [row]
        return out

    def log(self, **scalars: Any) -> None:
        """Attach scalars (the loss, accuracy, …) to the next step's records.

        Values are numbers or tensors (0-dim, or ``(K,)`` when stacked; read when the records are
        made, so a loss tensor costs no extra sync here). Instruments see them in ``ctx.extra``.
        A later ``log`` of the same name before the step replaces the value.
        """
        if self._closed:
            raise RuntimeError("log: this monitor is closed")
        for key, value in scalars.items():
            self._pending[key] = value.detach() if isinstance(value, Tensor) else value

    @property
    def metrics(self) -> list[str]:
        """The metric names recorded so far, sorted."""
        return sorted({r["metric"] for r in self.records})

    def history(self, metric: str, model: int | None = None) -> list[tuple[int, float]]:
        """``[(step, value), ...]`` of one metric (and, for stacked records, one ``model``)."""
        rows = [r for r in self.records if r["metric"] == metric]
        if not rows:
            known = self.metrics
            close = difflib.get_close_matches(metric, known, n=3)
            hint = f"; did you mean {close}?" if close else f"; recorded: {known[:10]}" if known else ""
            raise KeyError(f"no records of metric {metric!r}{hint}")
        models = {r["model"] for r in rows}
        if model is None and models != {None}:
            ks = sorted(models - {None})
            raise ValueError(f"{metric!r} has one value per stacked model; pass model=k for k in {ks}")
        return [(r["step"], r["value"]) for r in rows if r["model"] == model]

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Write pending logged scalars, remove the hooks, detach instruments, close sinks. Idempotent."""
        if self._closed:
            return
        try:
            if self._pending:
                chunks: list[Chunk] = [(k, v, "log") for k, v in self._pending.items()]
                self._pending = {}
                self._emit(self.step, chunks)
        finally:
            self._closed = True
            for handle in self._handles:
                handle.remove()
            self._handles = []
            self._snapshot = {}
            for inst in self.instruments:
                inst.detach()
            for sink in self.sinks:
                sink.close()

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"step {self.step}"
        return f"Monitor({len(self.instruments)} instruments, {len(self.sinks)} sinks, stacked={self.stacked}, {state})"
