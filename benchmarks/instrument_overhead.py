"""Instrument overhead: a training loop with the cheap instruments sampled every step vs the bare loop.

Claim under test (the issue): with the cheap instruments of ``decaylab.diagnostics`` — weight
norms, effective learning rates, angular update (with its pre-step snapshot) and decay underflow,
all with their default per-group and per-tensor metrics — attached through a ``Monitor`` and
sampled on *every* step, a training step takes at most 1.05× the bare step.

The loop: a small CNN (3 conv layers of 16/32/64 channels with BatchNorm, global pooling, a
linear head; 24,458 parameters in 14 tensors) on a fixed random batch of 32 images 3×32×32,
cross-entropy, ``decaylab.optim.AdamW(lr=1e-3, weight_decay=0.1)``: forward, backward, step.
Two copies of the model and optimizer start from one seeded state: one bare, one with the
monitor. After a warmup, rounds alternate between them (the order flips every round) and each
round runs ``--steps`` steps per contender; the ratio is the ratio of the median per-step times,
and its margin the interquartile range of the per-round paired ratios.

Then the cost of each instrument's ``measure`` per call (median of ``--calls`` calls, on the
same model) — the cheap ones, ``AdamBufferMixing`` (which also does work before every step), and
the expensive ones from the sibling modules when they import (``JacobianNorm`` and
``HessianTrace`` from ``decaylab.diagnostics.curvature``, ``GradientNoiseScale`` from
``decaylab.diagnostics.noise``, ``WeightEMA.update`` from ``decaylab.diagnostics.ema``); those
run on a fixed probe batch and are meant for sampling at an interval.

Run ``python benchmarks/instrument_overhead.py --help`` for the options.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _machine import cpu_model, git_revision  # benchmarks/_machine.py
from torch import nn

import decaylab
from decaylab.diagnostics.base import Context
from decaylab.diagnostics.mixing import AdamBufferMixing
from decaylab.diagnostics.monitor import Monitor
from decaylab.diagnostics.weights import AngularUpdate, DecayUnderflow, EffectiveLR, WeightNorm
from decaylab.optim import Adam, AdamW

TARGET = 1.05


def make_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)

    def block(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]

    return nn.Sequential(
        *block(3, 16), nn.MaxPool2d(2), *block(16, 32), nn.MaxPool2d(2), *block(32, 64),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )


def cheap_instruments() -> list:
    return [WeightNorm(), EffectiveLR(), AngularUpdate(), DecayUnderflow()]


def quartiles(xs: list[float]) -> tuple[float, float]:
    if len(xs) < 2:
        return xs[0], xs[0]
    q = statistics.quantiles(xs, n=4)
    return q[0], q[2]


def time_call(fn: Callable[[], object], calls: int) -> float:
    """Median seconds per call of ``fn`` (after two warmup calls)."""
    fn()
    fn()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40, help="interleaved rounds (default 40)")
    parser.add_argument("--steps", type=int, default=3, help="steps per contender per round (default 3)")
    parser.add_argument("--warmup", type=int, default=10, help="warmup steps per contender (default 10)")
    parser.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: reproducible on a shared machine; the instruments' small "
                             "ops do not get faster with threads, so more threads raise the ratio)")
    parser.add_argument("--calls", type=int, default=20, help="calls per instrument cost (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    gen = torch.Generator().manual_seed(args.seed + 1)
    x = torch.randn(args.batch, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (args.batch,), generator=gen)
    contenders = {}
    hook_clock: dict[str, float] = {}
    hook_times: list[float] = []
    for name in ("bare", "instrumented"):
        model = make_model(args.seed)
        opt = AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
        monitor = None
        if name == "instrumented":
            # Hooks run in registration order: timing hooks on both sides of the monitor's measure
            # exactly the time its own hooks take inside each step.
            opt.register_step_pre_hook(lambda *_: hook_clock.__setitem__("pre", time.perf_counter()))
            opt.register_step_post_hook(lambda *_: hook_clock.__setitem__("post", time.perf_counter()))
            monitor = Monitor(model, opt, cheap_instruments())
            opt.register_step_pre_hook(lambda *_: hook_clock.__setitem__("pre_done", time.perf_counter()))
            opt.register_step_post_hook(lambda *_: hook_times.append(
                time.perf_counter() - hook_clock["post"] + hook_clock["pre_done"] - hook_clock["pre"]))
        contenders[name] = (model, opt, monitor)
    n_params = sum(p.numel() for p in contenders["bare"][0].parameters())
    n_tensors = len(list(contenders["bare"][0].parameters()))

    def run(name: str, steps: int) -> float:
        model, opt, _ = contenders[name]
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return (time.perf_counter() - t0) / steps

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print("# instrument overhead: training step with the cheap instruments every step / bare step")
    print(f"# date {datetime.datetime.now().isoformat(timespec='seconds')}  decaylab {decaylab.__version__} "
          f"git {git_revision()}  python {platform.python_version()}")
    busy = "  (busy machine: noisy timings)" if load > 0.5 else ""
    print(f"# torch {torch.__version__}  threads {torch.get_num_threads()}  CPU {cpu_model()} "
          f"({os.cpu_count()} logical)  load average {load:.2f}{busy}")
    print(f"# model: CNN 16/32/64 + BN, {n_params:,} parameters in {n_tensors} tensors; batch {args.batch}×3×32×32; "
          "decaylab AdamW(lr=1e-3, weight_decay=0.1)")
    print(f"# instruments every step: {', '.join(repr(i) for i in contenders['instrumented'][2].instruments)}")
    print(f"# rounds {args.rounds} × {args.steps} steps per contender, interleaved (order flips each round); "
          f"seed {args.seed}")

    for name in contenders:
        run(name, args.warmup)
    hook_times.clear()
    per_round: dict[str, list[float]] = {name: [] for name in contenders}
    for r in range(args.rounds):
        order = ("bare", "instrumented") if r % 2 == 0 else ("instrumented", "bare")
        for name in order:
            per_round[name].append(run(name, args.steps))
    bare = statistics.median(per_round["bare"])
    inst = statistics.median(per_round["instrumented"])
    paired = [i / b for i, b in zip(per_round["instrumented"], per_round["bare"], strict=True)]
    q1, q3 = quartiles(paired)
    ratio = inst / bare
    print()
    print(f"{'contender':<14}{'median step (ms)':>18}{'IQR (ms)':>20}")
    for name, times in per_round.items():
        lo, hi = quartiles(times)
        print(f"{name:<14}{statistics.median(times) * 1e3:>18.2f}{f'{lo * 1e3:.2f}-{hi * 1e3:.2f}':>20}")
    print(f"ratio instrumented/bare = {ratio:.3f}  (paired per-round ratios: median {statistics.median(paired):.3f}, "
          f"IQR {q1:.3f}-{q3:.3f})")
    monitor = contenders["instrumented"][2]
    hooks = statistics.median(hook_times)
    print(f"monitor hooks inside the instrumented steps: median {hooks * 1e3:.3f} ms per step = "
          f"{hooks / bare * 100:.1f}% of the bare step (a direct estimate of the overhead, less noisy than the ratio)")
    print(f"records per step: {len(monitor.records) // monitor.step} (kept in monitor.records)")

    # ---------------------------------------------------------------- cost per call of each instrument
    model, opt, _ = contenders["instrumented"]
    previous = {id(p): p.detach().clone() for p in opt.param_groups[0]["params"]}
    names = {id(p): n for n, p in model.named_parameters()}

    def ctx() -> Context:
        return Context(model, opt, step=1, previous=previous, names=names)

    print()
    print(f"{'instrument (per measure call)':<48}{'ms':>10}{'% of bare step':>16}")

    def report(label: str, seconds: float | None, note: str = "") -> None:
        if seconds is None:
            print(f"{label:<48}{'—':>10}{'':>16}  {note}")
        else:
            print(f"{label:<48}{seconds * 1e3:>10.3f}{seconds / bare * 100:>15.1f}%  {note}")

    cheap = cheap_instruments()
    for inst in cheap:
        report(repr(inst), time_call(lambda inst=inst: inst.measure(ctx()), args.calls), "alone")

    def sample() -> None:
        shared = ctx()  # one sample: the instruments share per-tensor norms through ctx.cache
        for inst in cheap:
            inst.measure(shared)

    report("all four, one sample (as the monitor runs them)", time_call(sample, args.calls))
    # Adam buffer mixing needs coupled L2 and works before every step as well as at samples.
    l2_model = copy.deepcopy(model)
    l2_opt = Adam(l2_model.parameters(), lr=1e-3, weight_decay=1e-4, decay="l2")
    F.cross_entropy(l2_model(x), y).backward()
    mixing = AdamBufferMixing()
    l2_ctx = Context(l2_model, l2_opt, step=1)
    mixing.attach(l2_ctx)
    report("AdamBufferMixing.before_step (every step)", time_call(lambda: mixing.before_step(l2_ctx), args.calls))
    report("AdamBufferMixing.measure", time_call(lambda: mixing.measure(l2_ctx), args.calls))

    probe = (x[:16], y[:16])
    probe2 = (x[16:32], y[16:32]) if args.batch >= 32 else probe
    expensive = [
        ("decaylab.diagnostics.curvature", "JacobianNorm", lambda cls: cls(x[:8], interval=100), "8 inputs"),
        ("decaylab.diagnostics.curvature", "HessianTrace",
         lambda cls: cls(F.cross_entropy, [probe], n_samples=10, interval=100), "1 batch of 16, 10 probes"),
        ("decaylab.diagnostics.noise", "GradientNoiseScale",
         lambda cls: cls(F.cross_entropy, [probe, probe2], interval=100), "2 batches of 16"),
    ]
    for module, cls_name, build, note in expensive:
        label = f"{module.rsplit('.', 1)[1]}.{cls_name}"
        try:
            cls = getattr(__import__(module, fromlist=[cls_name]), cls_name)
            inst = build(cls)
        except (ImportError, AttributeError, TypeError) as exc:
            report(label, None, f"not available ({type(exc).__name__}: {exc})")
            continue
        report(label, time_call(lambda inst=inst: inst.measure(ctx()), max(3, args.calls // 4)), note)
    try:
        from decaylab.diagnostics.ema import WeightEMA

        ema = WeightEMA(model, beta=0.999)
        report("ema.WeightEMA.update (every step)", time_call(ema.update, args.calls))
    except (ImportError, AttributeError, TypeError) as exc:
        report("ema.WeightEMA.update", None, f"not available ({type(exc).__name__}: {exc})")

    margin = TARGET - ratio
    verdict = "met" if ratio <= TARGET else "NOT met"
    print()
    print(f"verdict: target ≤ {TARGET:.2f}: {verdict} — ratio {ratio:.3f} (margin {margin:+.3f}; paired IQR "
          f"{q1:.3f}-{q3:.3f}; bare step {bare * 1e3:.2f} ms; hooks alone 1 + {hooks / bare:.3f})")
    contenders["instrumented"][2].close()
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
