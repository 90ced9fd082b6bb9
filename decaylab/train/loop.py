"""The training loop: :func:`train` (one model) and :func:`train_stacked` (K models as one).

Both run the same loop, top to bottom, once per step ``t`` (0-based):

1. ``group["lr"] = lr·η_t`` for every param group (``lr`` a number, or a ``(K,)`` tensor);
2. the batch of step ``t`` (each model's own data order), forward (under ``torch.autocast`` for
   ``precision="bf16-autocast"``), the mean cross-entropy per model, summed over models;
3. ``backward`` (the sum gives each model its own gradient), gradient clipping per model,
   ``optimizer.step()``, then the callbacks' ``after_step`` (the weight EMA);
4. every ``eval_every`` steps and after the last one: an evaluation (one curve point per model);
   every ``checkpoint_every`` steps: a checkpoint.

The optimizer is :class:`decaylab.optim.Adam` or :class:`decaylab.optim.SGD` over the decay /
no-decay split of :func:`decaylab.groups.split_parameters` (biases and normalization parameters
not decayed when ``no_decay_bias_norm``). Stacked, its ``lr``, ``max_lr`` and ``weight_decay`` are
``(K,)`` tensors, and K stacked runs equal K separate :func:`train` runs (tested in float64).

What a run needs beyond this loop (EMA weights, a loss scale, a probe, a weight-decay window, an lr
curve) is a named callback in ``config.callbacks`` (:mod:`decaylab.train.callbacks`), called at fixed
points of it.

Checkpoints hold the model, the optimizer, the callbacks' state (the weight EMA), the data order
(generators and the current epoch's permutation), torch's RNG states, the step and the curves, so a
run resumed from one continues bit for bit as if it had never stopped.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from decaylab.data import TensorData, TextData
from decaylab.diagnostics import Monitor, WeightEMA, recompute_batchnorm
from decaylab.groups import split_parameters
from decaylab.optim import DIRECTIONS, OPTIMIZERS

from .config import RunResult, TrainConfig
from .data import Prepared, Sampler, build_model, check_fits, lm_eval_batches, load_data, prepare, steps_per_epoch
from .engines import SingleModel, StackedModels, clip_grad_norm_per_model, cross_entropy_per_model
from .schedules import lr_schedule

__all__ = ["train", "train_stacked", "total_steps", "stack_groups", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = 1
_EVAL_CHUNK = 4096  # examples × models per evaluation forward pass


# ---------------------------------------------------------------------------------------------- API


def train(
    config: TrainConfig,
    *,
    data: TensorData | TextData | None = None,
    progress: bool | None = None,
    device: str | torch.device | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    instruments: Sequence[Any] = (),
    sinks: Sequence[Any] = (),
    backend: str = "auto",
    on_step: Callable[[int], Any] | None = None,
) -> RunResult:
    """Train one model as ``config`` says; return its final metrics and curves.

    Args:
        config: the run.
        data: the dataset (default: ``decaylab.data.load(config.dataset)``, cached per process).
        progress: show a tqdm bar (step, loss, ETA). ``None``: no bar.
        device: where to train (default CPU). The model is initialized on CPU, so a seed gives
            the same initial weights everywhere.
        checkpoint_dir: where checkpoints go, one file per run named by :meth:`TrainConfig.key`.
        checkpoint_every: steps between checkpoints (0: only when the run ends).
        resume: continue from the run's checkpoint in ``checkpoint_dir`` if there is one.
        instruments, sinks: :mod:`decaylab.diagnostics` instruments and sinks, attached with a
            :class:`~decaylab.diagnostics.Monitor`; its records come back in ``RunResult.records``.
        backend: the optimizer's ``backend`` (``"auto"``, ``"foreach"``, ``"compiled"``, ``"reference"``).
        on_step: called with the number of steps taken after every step (and its checkpoint).

    Returns:
        A :class:`RunResult`; ``result.model`` is the trained module.

    Raises:
        ValueError: the data does not fit the model, ``batch_size`` exceeds the training set,
            ``warmup_steps`` is not below the run's steps, or a bad keyword.
    """
    if not isinstance(config, TrainConfig):
        raise ValueError(f"config must be a TrainConfig; got {type(config).__name__}")
    return _run([config], data=data, progress=progress, device=device, checkpoint_dir=checkpoint_dir,
                checkpoint_every=checkpoint_every, resume=resume, instruments=instruments, sinks=sinks,
                backend=backend, on_step=on_step, stacked=False)[0]


def train_stacked(
    configs: Sequence[TrainConfig],
    *,
    data: TensorData | TextData | None = None,
    progress: bool | None = None,
    device: str | torch.device | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    instruments: Sequence[Any] = (),
    sinks: Sequence[Any] = (),
    backend: str = "auto",
    on_step: Callable[[int], Any] | None = None,
) -> list[RunResult]:
    """Train K configs that share :meth:`TrainConfig.stack_key` as one stacked model.

    Each config keeps its own ``lr``, ``weight_decay`` and ``seed`` (initial weights and data
    order), and its result equals that of ``train(config)`` (up to floating-point summation
    order; tested in float64). ``final["wall_s"]`` is the stacked wall time divided by K.
    Keywords as in :func:`train`; instruments see the stacked parameters (``model`` index in
    their records is split into the K results). With ``backend="auto"`` the optimizer's
    dispatcher (:mod:`decaylab.optim.dispatch`) is told the run's length: Adam and SGD on CPU run
    decaylab's native step (all K models in one call), and elsewhere a long run compiles the step.

    Raises:
        ValueError: no configs, or configs whose stack keys differ (the message names a field).
    """
    configs = list(configs)
    if not configs:
        raise ValueError("configs: need at least one TrainConfig")
    for c in configs:
        if not isinstance(c, TrainConfig):
            raise ValueError(f"configs must be TrainConfig objects; got {type(c).__name__}")
    first = configs[0].to_dict()
    for c in configs[1:]:
        if c.stack_key() != configs[0].stack_key():
            per_model = configs[0].per_model
            diff = sorted(k for k, v in c.to_dict().items() if v != first[k] and k not in per_model)
            raise ValueError(
                f"configs: stacked configs may differ only in {', '.join(per_model)}; these differ too: {diff}"
            )
    return _run(configs, data=data, progress=progress, device=device, checkpoint_dir=checkpoint_dir,
                checkpoint_every=checkpoint_every, resume=resume, instruments=instruments, sinks=sinks,
                backend=backend, on_step=on_step, stacked=True)


def total_steps(config: TrainConfig, data: TensorData | TextData | None = None) -> int:
    """The number of optimizer steps ``config`` runs for (``steps``, else ``round(epochs·steps_per_epoch)``)."""
    if config.steps is not None:
        return config.steps
    return max(1, round(config.epochs * steps_per_epoch(config, load_data(config, data))))


def stack_groups(configs: Sequence[TrainConfig], max_models: int | None = None) -> list[list[int]]:
    """Indices of ``configs`` grouped by :meth:`TrainConfig.stack_key` (in order of first
    appearance), each group at most ``max_models`` long: the calls of :func:`train_stacked` a
    sweep needs.

    >>> cs = [TrainConfig(lr=lr, model=m) for m in ("mlp", "cnn1d") for lr in (1e-3, 1e-2)]
    >>> stack_groups(cs)
    [[0, 1], [2, 3]]
    """
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(configs):
        groups.setdefault(c.stack_key(), []).append(i)
    out = []
    for idx in groups.values():
        step = max_models or len(idx)
        out.extend(idx[i:i + step] for i in range(0, len(idx), step))
    return out


# ---------------------------------------------------------------------------------------------- the loop


def _run(configs, *, data, progress, device, checkpoint_dir, checkpoint_every, resume, instruments, sinks,
         backend, on_step, stacked, replica=None) -> list[RunResult]:
    started = time.perf_counter()
    config = configs[0]
    k = len(configs)
    if not isinstance(checkpoint_every, int) or isinstance(checkpoint_every, bool) or checkpoint_every < 0:
        raise ValueError(f"checkpoint_every must be an int >= 0 (steps between checkpoints); got {checkpoint_every!r}")
    if (checkpoint_every or resume) and checkpoint_dir is None:
        raise ValueError("checkpoint_dir: checkpoint_every and resume need a checkpoint_dir")
    device = torch.device(device if device is not None else "cpu")
    data = load_data(config, data)
    check_fits(config, data)
    steps = total_steps(config, data)
    per_epoch = steps_per_epoch(config, data)
    schedule = lr_schedule(config, steps)

    # --- models: each initialized from its own seed, exactly as a single run does
    modules = []
    for c in configs:
        torch.manual_seed(c.seed)
        m = build_model(c, data).to(device)
        if c.precision == "bf16":
            m = m.to(torch.bfloat16)
        modules.append(m)
    engine = StackedModels(modules) if stacked else SingleModel(modules[0])
    del modules
    param_dtype = next(p.dtype for p in engine.parameters() if p.is_floating_point())
    prepared = prepare(data, device, param_dtype)
    sampler = Sampler(prepared, config, [c.seed for c in configs], device)
    if replica is not None:  # a DDP rank (decaylab.train.distributed): its engine and its slice of each batch
        engine, sampler = replica.wrap(engine, sampler)

    # --- optimizer over the decay / no-decay split; per-model hyperparameters as (K,) tensors
    callbacks = config.parsed_callbacks  # the knobs beyond the loop (decaylab.train.callbacks), in name order
    optimizer, base_lrs = _optimizer(engine, configs, steps, device, backend, stacked, schedule, callbacks)
    if stacked and hasattr(optimizer, "dispatcher"):
        # the run's length tells the dispatcher when compiling a small stacked step pays off
        optimizer.dispatcher.expected_steps = steps
    run = RunState(config, engine, optimizer, prepared, device)
    for callback in callbacks:
        callback.start(run)
    loss_scale = 1.0
    for callback in callbacks:
        loss_scale *= callback.loss_scale()

    curves: list[list[dict]] = [[] for _ in range(k)]
    records: list[dict] = []
    start, wall_before = 0, 0.0
    path = _checkpoint_path(checkpoint_dir, configs, stacked) if checkpoint_dir is not None else None
    if resume and path is not None and path.exists():
        ckpt = _load_checkpoint(path)
        if ckpt.get("keys") != [c.key() for c in configs]:
            raise ValueError(f"checkpoint {path} belongs to other configs")
        engine.state_module.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        sampler.load_state_dict(ckpt["sampler"])
        # a checkpoint written before callbacks holds the EMA under "ema"
        states = ckpt.get("callbacks") or ({"ema": ckpt["ema"]} if ckpt.get("ema") is not None else {})
        for callback in callbacks:
            if callback.name in states:
                callback.load_state_dict(states[callback.name])
        _set_rng_state(ckpt["rng"])
        start, curves, records, wall_before = ckpt["step"], ckpt["curves"], ckpt["records"], ckpt["wall_s"]

    monitor = None
    if instruments or sinks:
        monitor = Monitor(engine.state_module, optimizer, instruments, sinks, stacked=k if stacked else None)
    autocast = _autocast(config.precision, device)
    evaluator = run.evaluator = _Evaluator(engine, prepared, config, device, autocast)
    bar = _progress_bar(progress, steps, start, configs, stacked, engine)
    engine.train(True)
    # schedule-free optimizers hold y while training and the average x for evaluation (train()/eval())
    swaps = callable(getattr(optimizer, "train", None)) and callable(getattr(optimizer, "eval", None))
    if swaps:
        optimizer.train()
    last_loss: Tensor | None = None
    grad_norm: Tensor | None = None
    try:
        for t in range(start, steps):
            eta = schedule(t)
            for callback in callbacks:
                eta *= callback.lr_factor(t, steps)
            for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
                group["lr"] = base * eta
            x, y = sampler.batch(t)
            with autocast():
                logits = engine.forward(x)
            per_model = cross_entropy_per_model(logits, y).mean(1)
            optimizer.zero_grad(set_to_none=True)
            (per_model.sum() * loss_scale).backward()
            if config.grad_clip is not None:
                grad_norm = clip_grad_norm_per_model(engine.parameters(), config.grad_clip, stacked)
            optimizer.step()
            for callback in callbacks:
                callback.after_step(run)
            done = t + 1
            last_loss = per_model.detach()
            if done == steps or (config.eval_every and done % config.eval_every == 0):
                lr_now = _per_model_floats(base_lrs[0] * eta, k)
                if swaps:
                    optimizer.eval()
                for i, point in enumerate(evaluator.curve_points(done, done / per_epoch, lr_now, grad_norm)):
                    curves[i].append(point)
                engine.train(True)
                if swaps and done < steps:  # the last evaluation leaves the model at x, as it is returned
                    optimizer.train()
            writes = path is not None and (replica is None or replica.writes)
            if writes and (done == steps or (checkpoint_every and done % checkpoint_every == 0)):
                wall = wall_before + time.perf_counter() - started
                _save_checkpoint(path, configs, done, engine, optimizer, sampler, callbacks, curves,
                                 _records(monitor, records), wall)
            if bar is not None:
                bar.update(1)
                if done % bar.every == 0 or done == steps:
                    bar.set_postfix(loss=f"{float(last_loss.mean()):.4f}", refresh=False)
            if on_step is not None:
                on_step(done)
    finally:
        if bar is not None:
            bar.close()
        if monitor is not None:
            monitor.close()

    # --- final metrics (from the last evaluation, then the callbacks'), per-model modules
    wall = (wall_before + time.perf_counter() - started) / k
    all_records = _records(monitor, records)
    trained = run.trained = engine.modules()
    extra: list[dict[str, float]] = [{} for _ in range(k)]
    for callback in callbacks:
        for i, metrics in enumerate(callback.final(run) or []):
            extra[i].update(metrics)
    results = []
    for i, c in enumerate(configs):
        last = curves[i][-1]
        final = {name: value for name, value in last.items()
                 if name not in ("step", "epoch", "lr", "effective_lr", "grad_norm")}
        final["wall_s"] = wall
        final["steps"] = float(steps)
        final.update(extra[i])
        mine = [{key: v for key, v in r.items() if key != "model"} for r in all_records
                if not stacked or r.get("model") in (i, None)]
        results.append(RunResult(c, final, curves[i], mine, model=trained[i]))
    return results


@dataclass
class RunState:
    """What a callback (:mod:`decaylab.train.callbacks`) sees of the run it serves: its config (the
    first of a stack), the engine, the optimizer, the data on the device, the evaluator (from
    :meth:`~decaylab.train.callbacks.Callback.after_step` on) and the trained per-model modules (in
    :meth:`~decaylab.train.callbacks.Callback.final`)."""

    config: TrainConfig
    engine: Any
    optimizer: Any
    prepared: Prepared
    device: torch.device
    evaluator: Any = None
    trained: list[nn.Module] | None = None


def _per_model_floats(value: Any, k: int) -> list[float]:
    if isinstance(value, Tensor):
        return [float(v) for v in value.reshape(-1).tolist()] if value.numel() == k else [float(value)] * k
    return [float(value)] * k


def _records(monitor: Monitor | None, before: list[dict]) -> list[dict]:
    return before + (monitor.records if monitor is not None else [])


def _autocast(precision: str, device: torch.device) -> Callable[[], Any]:
    """A factory of the forward pass's context: bf16 autocast, or nothing."""
    if precision == "bf16-autocast":
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


# ---------------------------------------------------------------------------------------------- optimizer


def _optimizer(engine, configs, steps, device, backend, stacked, schedule, callbacks):
    """The decaylab optimizer and each group's base lr (a float, or a (K,) float64 tensor); the decayed
    group's λ as the callbacks shape it (a decay window)."""
    config = configs[0]
    flag = config.no_decay_bias_norm
    # Muon takes the hidden matrices, AdamW (a group of the same optimizer) the rest: the groups' "muon" preset
    by_role = {"preset": "muon", "batch_dims": 1 if stacked else 0} if config.optimizer == "muon" else {}
    split = split_parameters(engine.state_module, no_decay_bias=flag, no_decay_norm=flag, **by_role)
    if stacked:
        lr = torch.tensor([c.lr for c in configs], dtype=torch.float64, device=device)
        wd = torch.tensor([c.weight_decay for c in configs], dtype=torch.float64, device=device)
    else:
        lr, wd = config.lr, config.weight_decay
    for callback in callbacks:
        wd = callback.weight_decay(wd, steps=steps, lr_schedule=schedule, decay_scale=config.decay_scale)
    groups = split.to_param_groups(wd, with_names=False)
    for g in groups:
        g["max_lr"] = lr.clone() if stacked else lr  # the peak lr of decay_scale="schedule"/"corrected"
        if g.get("direction") == "adam":  # Muon's AdamW groups: the config's Adam hyperparameters
            g.update(betas=config.betas, eps=config.eps)
    if config.optimizer == "torch-adamw":  # torch's own AdamW: one lr and λ per group (stacks only seeds)
        groups = split.to_param_groups(config.weight_decay, with_names=False)
        optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps)
        return optimizer, [config.lr for _ in optimizer.param_groups]
    common = dict(lr=lr, weight_decay=0.0, decay=config.decay, decay_scale=config.decay_scale, backend=backend)
    for callback in callbacks:  # e.g. optimizer_state:bf16 — the constructor checks them like its own arguments
        common.update(callback.optimizer_options())
    cls = OPTIMIZERS[config.optimizer]
    # the direction's own hyperparameters (Adam's betas and eps, SGD's momentum, …): the config fields its
    # constructor takes by name, where the types agree (Adafactor's eps is a pair, the config's a number)
    fields = {f.name for f in dataclasses.fields(config)}
    own = {}
    for name, parameter in inspect.signature(cls).parameters.items():
        if name in fields and name not in common and name != "params":
            value = getattr(config, name)
            if parameter.default is inspect.Parameter.empty or isinstance(value, type(parameter.default)):
                own[name] = value
    if config.optimizer == "muon":
        own["adjust_lr_fn"] = "match_rms_adamw"  # one lr and λ for both groups (Liu et al. 2025)
    optimizer = cls(groups, **own, **common)
    base_lrs = [lr for _ in optimizer.param_groups]
    return optimizer, base_lrs


# ---------------------------------------------------------------------------------------------- evaluation


class _Evaluator:
    """Loss and accuracy of every model on a fixed training subset, the validation split and the test split
    (language models: loss on fixed windows of each)."""

    def __init__(self, engine, prepared: Prepared, config: TrainConfig, device, autocast):
        self.engine, self.prepared, self.config, self.device, self.autocast = engine, prepared, config, device, autocast
        if prepared.is_text:
            self.sets = {split: lm_eval_batches(prepared.data, split, config, device)
                         for split in prepared.data.splits}
        else:
            # A fixed random subset (the same for every run): the training set may be sorted by class.
            n = min(config.train_eval_size, prepared.data.n_train)
            subset = torch.randperm(prepared.data.n_train, generator=torch.Generator().manual_seed(0))[:n]
            subset = subset.sort().values.to(prepared.x_train.device)
            self.sets = {"train": (prepared.x_train.index_select(0, subset), prepared.y_train.index_select(0, subset))}
            if prepared.x_val is not None:
                self.sets["val"] = (prepared.x_val, prepared.y_val)
            self.sets["test"] = (prepared.x_test, prepared.y_test)

    @torch.no_grad()
    def _scores(self, forward, x: Tensor, y: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Per-example losses and correctness, each ``(k, N)``, in chunks."""
        chunk = max(1, _EVAL_CHUNK // k)
        losses, correct = [], []
        for i in range(0, len(x), chunk):
            with self.autocast():
                logits = forward(x[i:i + chunk])
            losses.append(cross_entropy_per_model(logits, y[i:i + chunk]))
            correct.append((logits.argmax(-1) == y[i:i + chunk]).reshape(k, -1))
        return torch.cat(losses, 1), torch.cat(correct, 1)

    @torch.no_grad()
    def metrics(self, forward, k: int) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        if self.prepared.is_text:
            for split, batches in self.sets.items():
                losses = [self._scores(forward, x, y, k)[0].double().mean(1) for x, y in batches]
                out[f"{split}_loss"] = torch.stack(losses).mean(0).tolist()
            if "test" not in self.sets:  # text made without a test split: its held-out text is val
                out["test_loss"] = out["val_loss"]
            return out
        for split, (x, y) in self.sets.items():
            losses, correct = self._scores(forward, x, y, k)
            out[f"{split}_loss"] = losses.double().mean(1).tolist()
            out[f"{split}_acc"] = correct.double().mean(1).tolist()
        return out

    def curve_points(self, step: int, epoch: float, lr: list[float], grad_norm: Tensor | None) -> list[dict]:
        """One curve point per model: the evaluation after ``step`` steps (leaves eval mode on)."""
        self.engine.train(False)
        metrics = self.metrics(self.engine.forward_shared, self.engine.num_models)
        norms = self.engine.weight_norms().tolist()
        direction = DIRECTIONS.get(self.config.optimizer)  # torch-adamw: Adam's
        power = 1 if direction is None or direction.normalized else 2  # lr/‖w‖ (Adam, Lion, …), lr/‖w‖² (SGD)
        points = []
        for i in range(self.engine.num_models):
            point = {"step": step, "epoch": epoch, "lr": lr[i]}
            point.update({name: values[i] for name, values in metrics.items()})
            point["weight_norm"] = norms[i]
            point["effective_lr"] = lr[i] / norms[i] ** power if norms[i] > 0 else math.inf
            if grad_norm is not None:
                point["grad_norm"] = float(grad_norm[i])
            points.append(point)
        return points

    def evaluate_ema(self, ema: WeightEMA, config: TrainConfig) -> list[dict[str, float]]:
        """Metrics of each model's weight average, BatchNorm statistics recomputed on the training set."""
        engine = self.engine
        params = dict(zip(ema.param_names, ema.params, strict=True))
        buffers = dict(zip(ema.buffer_names, ema.buffers, strict=True))
        if engine.stacked:
            modules = [engine.module_at(i, params, buffers) for i in range(engine.num_models)]
        else:
            modules = [ema.ema_model()]
        out = []
        for module in modules:
            has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())
            if has_bn and not self.prepared.is_text:
                x = self.prepared.x_train
                batches = [x[i:i + config.batch_size] for i in range(0, len(x), config.batch_size)]
                with self.autocast():
                    recompute_batchnorm(module, batches)
            module.eval()
            one = SingleModel(module)
            metrics = self.metrics(one.forward_shared, 1)
            # an LM's EMA is not scored on its training windows (as before callbacks)
            splits = ("val", "test") if self.prepared.is_text else ("val", "test", "train")
            names = [f"{split}_{what}" for split in splits for what in ("loss", "acc")]
            row = {f"ema_{name}": metrics[name][0] for name in names if name in metrics}
            row["ema_weight_norm"] = float(one.weight_norms()[0])
            out.append(row)
        return out


# ---------------------------------------------------------------------------------------------- checkpoints


def _checkpoint_path(directory, configs, stacked) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if not stacked:
        return directory / f"{configs[0].key()}.pt"
    digest = hashlib.sha1(",".join(c.key() for c in configs).encode()).hexdigest()
    return directory / f"stacked-{digest}.pt"


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint this loop wrote: tensors, numbers, strings and containers only.

    ``weights_only=True``: a file that names any other object (a crafted pickle that would run code)
    is refused before anything in it is called.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as problem:  # UnpicklingError (code, foreign objects), EOFError / zip errors (truncated)
        first = (str(problem).strip().splitlines() or [type(problem).__name__])[0]
        raise ValueError(f"checkpoint {path} cannot be loaded safely ({type(problem).__name__}: {first}); it is "
                         "truncated, damaged or not a decaylab checkpoint: delete it to start the run over") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint {path} is not a decaylab checkpoint of format {CHECKPOINT_FORMAT}; delete it "
                         "to start the run over")
    return ckpt


def _save_checkpoint(path: Path, configs, step, engine, optimizer, sampler, callbacks, curves, records,
                     wall) -> None:
    state = {
        "format": CHECKPOINT_FORMAT,
        "keys": [c.key() for c in configs],
        "configs": [c.to_dict() for c in configs],
        "step": step,
        "model": engine.state_module.state_dict(),
        "optimizer": optimizer.state_dict(),
        "sampler": sampler.state_dict(),
        "callbacks": {cb.name: cb.state_dict() for cb in callbacks if cb.state_dict() is not None},
        "rng": _rng_state(),
        "curves": curves,
        "records": records,
        "wall_s": wall,
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a crash while saving leaves the previous checkpoint intact


# ---------------------------------------------------------------------------------------------- progress


def _progress_bar(progress, steps, start, configs, stacked, engine):
    if not progress:
        return None
    from tqdm.auto import tqdm

    c = configs[0]
    desc = f"{c.model}/{c.dataset}" + (f" ×{len(configs)}" if stacked else f" lr={c.lr:g} λ={c.weight_decay:g}")
    bar = tqdm(total=steps, initial=start, desc=desc, unit="step", dynamic_ncols=True)
    flag = c.no_decay_bias_norm
    split = split_parameters(engine.state_module, no_decay_bias=flag, no_decay_norm=flag)
    bar.write(f"{desc}: {split.summary()}" + (" (stacked: counts include the model dim)" if stacked else ""),
              file=sys.stderr)
    bar.every = max(1, steps // 200)
    return bar
