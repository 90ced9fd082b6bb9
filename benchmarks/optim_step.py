"""Optimizer step time: every decaylab decay form against ``torch.optim.AdamW(fused=True)``.

Claim under test (the issue): on one 10M-parameter fp32 set, each decay form's step time divided
by torch's fused AdamW step time is ≤ 1.10 with the default backend (``"auto"``).

What is timed is ``optimizer.step()`` alone: gradients are fixed random tensors set once, there
is no forward or backward pass. Every contender owns its own copy of the parameters, gradients
and state, all built from one seeded set. After a warmup (the first call of a compiled step
compiles for seconds; warmup continues until the step time settles), the contenders are timed
*interleaved*: in every round each contender runs ``--steps`` steps, in a shuffled order, so
that machine noise lands on all of them alike. The table reports the median over rounds and the
ratio of medians to the anchor's, with the interquartile range of the per-round (paired) ratios
as its margin.

On CUDA the same table also gives the achieved memory bandwidth, counting the least traffic a
step needs (Adam: read p, g, m, v and write p, m, v = 28 bytes per fp32 parameter; SGD with
momentum: read p, g, b and write p, b = 20 bytes), against the GPU's peak.

Run ``python benchmarks/optim_step.py --help`` for the options; see ``benchmarks/README.md``.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import random
import resource
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from _machine import cpu_model, git_revision  # benchmarks/_machine.py

import decaylab
from decaylab.optim import FORMS, SGDW, Adafactor, Adam, Lion, Muon, dispatch
from decaylab.optim.executors import compiled

TARGET = 1.10
LR = 1e-3
WEIGHT_DECAY = 1e-2
MOMENTUM = 0.9
# The least memory traffic of one step, bytes per fp32 parameter (4 bytes per tensor read or written).
BYTES_ADAM = 4 * 7  # read p, g, m, v; write p, m, v
BYTES_SGD_MOMENTUM = 4 * 5  # read p, g, b; write p, b
BYTES_LION = 4 * 5  # read p, g, m; write p, m
BYTES_ADAFACTOR = 4 * 3  # read p, g; write p (the factored moments are a row and a column)
BYTES_MUON = 4 * 5  # read p, g, B; write p, B (and Newton-Schulz's matmuls, which bound it)
# Peak memory bandwidth (bytes/s) by substring of torch.cuda.get_device_name(), first match wins
# (vendor datasheets). An "H100 80GB HBM3" is the SXM part.
GPU_PEAK_BANDWIDTH = (
    ("H200", 4.8e12),
    ("H100 NVL", 3.9e12),
    ("H100 PCIe", 2.0e12),
    ("H100", 3.35e12),
    ("A100 80GB PCIe", 1.935e12),
    ("A100-SXM4-80GB", 2.039e12),
    ("A100", 1.555e12),  # the 40 GB parts
)


# --------------------------------------------------------------------------- the parameter set


def gpt_shapes(d: int = 512, blocks: int = 2, vocab: int = 8192) -> list[tuple[int, ...]]:
    """A small GPT: token embedding (tied with the head), ``blocks`` transformer blocks, final LayerNorm.

    With the defaults: 10,500,096 parameters in 27 tensors, from 512 to 4.2M elements each (the
    embedding is 40% of the parameters, as in small language models).
    """
    shapes: list[tuple[int, ...]] = [(vocab, d)]
    for _ in range(blocks):
        shapes += [
            (d,), (d,),  # ln_1 weight, bias
            (3 * d, d), (3 * d,),  # attention qkv
            (d, d), (d,),  # attention output projection
            (d,), (d,),  # ln_2 weight, bias
            (4 * d, d), (4 * d,),  # mlp fc
            (d, 4 * d), (d,),  # mlp projection
        ]
    shapes += [(d,), (d,)]  # ln_f weight, bias
    return shapes


def uniform_shapes() -> list[tuple[int, ...]]:
    """Ten 1000×1000 matrices: exactly 10M parameters."""
    return [(1000, 1000)] * 10


SHAPES = {"gpt": gpt_shapes, "uniform": uniform_shapes}


def make_set(
    shapes: list[tuple[int, ...]], device: torch.device, seed: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Weights ~ N(0, 0.02²) (LayerNorm-like 1-D tensors ~ 1 + N(0, 0.02²)) and gradients ~ N(0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    weights, grads = [], []
    for shape in shapes:
        w = torch.randn(shape, generator=gen) * 0.02
        if len(shape) == 1:
            w += 1.0
        weights.append(w.to(device))
        grads.append(torch.randn(shape, generator=gen).to(device))
    return weights, grads


# --------------------------------------------------------------------------- contenders


@dataclass
class Contender:
    """One optimizer configuration in the table."""

    name: str
    section: str  # "adam" | "sgd": which anchor its ratio is taken against
    backend: str  # what runs the step, as shown in the table
    build: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]
    bytes_per_param: int
    anchor: bool = False
    counted: bool = False  # one of the forms the target is about (default backend)
    compiles: bool = False
    select: Callable[[list[torch.nn.Parameter]], list[torch.nn.Parameter]] = list  # which parameters it steps
    numel: int = 0  # of the parameters it steps
    # filled in by the run
    opt: torch.optim.Optimizer | None = None
    params: list[torch.nn.Parameter] = field(default_factory=list)
    first_step_s: float = float("nan")
    warmup_steps: int = 0
    warmup_s: float = 0.0
    steps: int = 1  # per timed measurement
    notes: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)  # seconds per step, one entry per round
    faults: list[float] = field(default_factory=list)  # minor page faults per step, one entry per round


class PlainLion:
    """Lion (Chen et al. 2023, Alg. 2) as a plain per-tensor loop of torch ops, the way the public
    implementations write it: the anchor of decaylab's Lion."""

    def __init__(self, params: list[torch.nn.Parameter], lr: float, weight_decay: float, betas=(0.9, 0.99)):
        self.params, self.lr, self.wd, self.betas = params, lr, weight_decay, betas
        self.exp_avg = [torch.zeros_like(p) for p in params]

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = self.betas
        for p, m in zip(self.params, self.exp_avg, strict=True):
            g = p.grad
            p.mul_(1 - self.lr * self.wd)
            update = m.mul(beta1).add_(g, alpha=1 - beta1).sign_()
            p.add_(update, alpha=-self.lr)
            m.mul_(beta2).add_(g, alpha=1 - beta2)


def hidden_matrices(params: list[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    """The 2-D parameters but the first (the token embedding): what Muon takes in a GPT."""
    return [p for p in params[1:] if p.dim() == 2]


def direction_contenders(directions: list[str], numel: int, device: torch.device) -> list[Contender]:
    """Lion against a plain loop, Muon against torch.optim.Muon (the hidden matrices), Adafactor against
    torch.optim.Adafactor: their default rules, decaylab's default backend."""
    rows = []
    if "lion" in directions:
        lion = dict(lr=LR / 10, weight_decay=WEIGHT_DECAY * 10)
        rows.append(Contender("plain Lion loop", "lion", "for-loop", lambda ps: PlainLion(ps, **lion), BYTES_LION,
                              anchor=True))
        for backend in ("auto", "foreach"):
            make = lambda ps, backend=backend: Lion(ps, backend=backend, **lion)  # noqa: E731
            label, compiles = decaylab_backend(make, numel, device)
            rows.append(Contender("decaylab Lion", "lion", label, make, BYTES_LION, counted=backend == "auto",
                                  compiles=compiles))
    if "muon" in directions:
        muon = dict(lr=0.02, weight_decay=0.1)
        rows.append(Contender("torch Muon", "muon", "for-loop",
                              lambda ps: torch.optim.Muon(hidden_matrices(ps), **muon), BYTES_MUON, anchor=True,
                              select=hidden_matrices))
        rows.append(Contender("decaylab Muon", "muon", "reference",
                              lambda ps: Muon(hidden_matrices(ps), **muon), BYTES_MUON, select=hidden_matrices))
    if "adafactor" in directions:
        adafactor = dict(lr=1e-2, weight_decay=WEIGHT_DECAY)
        rows.append(Contender("torch Adafactor", "adafactor", "for-loop",
                              lambda ps: torch.optim.Adafactor(ps, foreach=False, **adafactor), BYTES_ADAFACTOR,
                              anchor=True))
        rows.append(Contender("decaylab Adafactor", "adafactor", "reference",
                              lambda ps: Adafactor(ps, **adafactor), BYTES_ADAFACTOR))
    return rows


class AdamWThenReadGrads:
    """torch's fused AdamW step after one read of every gradient by torch (``sum``, its fastest reduction).

    The least traffic an exact ``stable`` step has, built from torch's own kernels: its decay needs
    ``mean(v̂_t)``, so ``Σg_t²`` over all parameters, before any weight moves, and every gradient is
    read once before the update and once in it (32 bytes per fp32 parameter against AdamW's 28).
    This row measures what that costs on the machine at hand, side by side with the others.
    """

    def __init__(self, params: list[torch.nn.Parameter], **adamw):
        self.inner = torch.optim.AdamW(params, fused=True, **adamw)
        self.grads = [p.grad for p in params]

    def step(self) -> None:
        for g in self.grads:
            g.sum()
        self.inner.step()


def torch_sgd_fused_works(device: torch.device) -> bool:
    """Whether this torch has a fused SGD for ``device`` (CPU support came later than CUDA's)."""
    p = torch.nn.Parameter(torch.zeros(4, device=device))
    p.grad = torch.ones(4, device=device)
    try:
        torch.optim.SGD([p], lr=0.1, momentum=MOMENTUM, fused=True).step()
    except (RuntimeError, ValueError, TypeError):
        return False
    return True


def decaylab_backend(make: Callable, numel: int, device: torch.device) -> tuple[str, bool]:
    """What decaylab's dispatcher runs for one fp32 bucket of ``numel`` elements (it says so itself:
    ``optimizer.explain()``), and whether that compiles."""
    p = torch.nn.Parameter(torch.empty(numel, device=device))
    p.grad = torch.empty_like(p)
    opt = make([p])
    (row,) = opt.explain()
    requested, chosen = opt.param_groups[0]["backend"], row["executor"]
    return (chosen if requested == chosen else f"{requested}→{chosen}"), chosen == "compiled"


def contenders(forms: list[str], backends: list[str], numel: int, device: torch.device) -> list[Contender]:
    adamw = dict(lr=LR, weight_decay=WEIGHT_DECAY)
    rows = [
        Contender("torch AdamW fused", "adam", "fused", lambda ps: torch.optim.AdamW(ps, fused=True, **adamw),
                  BYTES_ADAM, anchor=True),
        Contender("torch AdamW foreach", "adam", "foreach", lambda ps: torch.optim.AdamW(ps, foreach=True, **adamw),
                  BYTES_ADAM),
        Contender("torch AdamW for-loop", "adam", "for-loop",
                  lambda ps: torch.optim.AdamW(ps, foreach=False, fused=False, **adamw), BYTES_ADAM),
    ]
    if "stable" in forms:
        rows.append(Contender("torch AdamW + read of g", "adam", "fused+sum(g)",
                              lambda ps: AdamWThenReadGrads(ps, **adamw), BYTES_ADAM + 4))
    for backend in backends:
        for form in forms:
            make = lambda ps, form=form, backend=backend: Adam(  # noqa: E731
                ps, lr=LR, weight_decay=WEIGHT_DECAY, decay=form, backend=backend)
            label, compiles = decaylab_backend(make, numel, device)
            rows.append(Contender(f"decaylab Adam {form}", "adam", label, make, BYTES_ADAM,
                                  counted=backend == "auto", compiles=compiles))
    if "foreach" not in backends:
        rows.append(Contender(
            "decaylab Adam decoupled", "adam", "foreach",
            lambda ps: Adam(ps, lr=LR, weight_decay=WEIGHT_DECAY, decay="decoupled", backend="foreach"), BYTES_ADAM,
        ))
    sgd_fused = torch_sgd_fused_works(device)
    sgd = dict(lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    rows.append(Contender(
        f"torch SGD {'fused' if sgd_fused else 'foreach'}", "sgd", "fused" if sgd_fused else "foreach",
        lambda ps: torch.optim.SGD(ps, **({"fused": True} if sgd_fused else {"foreach": True}), **sgd),
        BYTES_SGD_MOMENTUM, anchor=True,
    ))
    for backend in dict.fromkeys(["auto", "foreach", *(b for b in backends if b not in ("fused", "native"))]):
        make = lambda ps, backend=backend: SGDW(ps, backend=backend, **sgd)  # noqa: E731
        label, compiles = decaylab_backend(make, numel, device)
        rows.append(Contender("decaylab SGDW", "sgd", label, make, BYTES_SGD_MOMENTUM, compiles=compiles))
    return rows


# --------------------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(opt: torch.optim.Optimizer, steps: int, device: torch.device) -> float:
    """Seconds per step over ``steps`` back-to-back steps."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        for _ in range(steps):
            opt.step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / steps
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.step()
    return (time.perf_counter() - t0) / steps


def minor_faults() -> int:
    """Minor page faults of this process so far: a CPU step that faults allocates fresh memory every step."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def warm_up(c: Contender, device: torch.device, min_calls: int, max_calls: int, max_s: float, settle: float) -> float:
    """First step (includes compiling) timed alone; then single steps until the last three agree.

    "Agree" means max/min ≤ ``settle``: later calls no longer compile a new graph (a short tail
    chunk, the second phase of the stable form, ...) or warm a cache. Gives up after
    ``max_calls`` calls or ``max_s`` seconds past the first. Returns the settled step time.
    """
    assert c.opt is not None
    t_start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", DeprecationWarning)  # torch's own, raised while compiling
        sync(device)
        t0 = time.perf_counter()
        c.opt.step()
        sync(device)
        c.first_step_s = time.perf_counter() - t0
        recent: list[float] = []
        calls, settled = 1, False
        while calls < max_calls and (calls < min_calls or time.perf_counter() - t0 - c.first_step_s < max_s):
            recent.append(time_steps(c.opt, 1, device))
            calls += 1
            last = recent[-3:]
            if calls >= min_calls and len(last) == 3 and max(last) <= settle * min(last):
                settled = True
                break
        if not settled:
            c.notes.append(f"step time had not settled (within {settle:.2f}x over 3 calls) after {calls} warmup calls")
    c.warmup_steps = calls
    c.warmup_s = time.perf_counter() - t_start
    for w in caught:
        message = str(w.message).splitlines()[0]
        if "compiled step failed" in message:
            c.backend += " (compile failed → foreach)"
        note = f"{w.category.__name__}: {message[:200]}"
        if note not in c.notes:
            c.notes.append(note)
    return statistics.median(recent[-3:])


def quartiles(xs: list[float]) -> tuple[float, float]:
    if len(xs) < 2:
        return xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]


# --------------------------------------------------------------------------- what it ran on


def inductor_cache_state() -> str:
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    path = cache_dir()
    entries = len(os.listdir(path)) if os.path.isdir(path) else 0
    return f"{path} ({'empty: cold compiles' if entries == 0 else f'{entries} entries: compiles may hit it'})"


def gpu_peak_bandwidth(device: torch.device) -> tuple[str, float | None]:
    name = torch.cuda.get_device_name(device)
    for key, peak in GPU_PEAK_BANDWIDTH:
        if key in name:
            return name, peak
    return name, None


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="cpu or cuda (default: cuda if available, else cpu)")
    ap.add_argument("--shapes", choices=sorted(SHAPES), default="gpt",
                    help="gpt: a small GPT, 10.5M params in 27 tensors (default); uniform: 10 x (1000, 1000)")
    ap.add_argument("--forms", default=",".join(FORMS), help=f"comma-separated subset of {','.join(FORMS)}")
    ap.add_argument("--backends", default="auto",
                    help="comma-separated decaylab backends to run every form with (default: auto; "
                         "a foreach row of decoupled and of SGDW is always added)")
    ap.add_argument("--steps", type=int, default=None,
                    help="steps per contender per round, the same for all (default: per contender, enough steps\n"
                         "for --min-time seconds, at least 1 on CPU and 10 on CUDA)")
    ap.add_argument("--min-time", type=float, default=None,
                    help="seconds per timed measurement when --steps is not given (default: 0.1 on CPU, 0.05 on CUDA)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default: 20; 3 with --quick)")
    ap.add_argument("--quick", action="store_true", help="a smoke test: 3 rounds of short measurements")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--cold-compile", action="store_true",
                    help="compile into a fresh, empty inductor cache, so that first-step times are cold compiles\n"
                         "(default: the usual cache, which earlier runs and other processes may have filled)")
    ap.add_argument("--directions", default="lion,muon,adafactor",
                    help="comma-separated directions to time beside Adam and SGD, each against its anchor\n"
                         "(lion: a plain Lion loop; muon: torch.optim.Muon; adafactor: torch.optim.Adafactor);\n"
                         "'none' for none")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="PATH", help="also write the results here as JSON")
    args = ap.parse_args(argv)
    args.forms = [f.strip() for f in args.forms.split(",") if f.strip()]
    bad = [f for f in args.forms if f not in FORMS]
    if bad:
        ap.error(f"--forms: unknown form(s) {bad}; choose from {FORMS}")
    args.directions = [d.strip() for d in args.directions.split(",") if d.strip() and d.strip() != "none"]
    bad = [d for d in args.directions if d not in DIRECTION_SECTIONS]
    if bad:
        ap.error(f"--directions: unknown direction(s) {bad}; choose from {', '.join(DIRECTION_SECTIONS)} or none")
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    bad = [b for b in args.backends if b not in dispatch.BACKENDS]
    if bad:
        ap.error(f"--backends: unknown backend(s) {bad}; choose from {dispatch.BACKENDS}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available")
    cuda = args.device.startswith("cuda")
    if args.min_time is None:
        args.min_time = (0.05 if cuda else 0.1) / (4 if args.quick else 1)
    if args.rounds is None:
        args.rounds = 3 if args.quick else 20
    return args


DIRECTION_SECTIONS = {"lion": "Lion", "muon": "Muon (the hidden matrices)", "adafactor": "Adafactor"}


def fmt_ms(s: float) -> str:
    return f"{s * 1e3:8.2f}"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cold_compile:
        # Read by inductor whenever it looks up its cache, so setting it before the first compile suffices.
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="optim_step_inductor_")
    device = torch.device(args.device)
    shapes = SHAPES[args.shapes]()
    weights, grads = make_set(shapes, device, args.seed)
    numel = sum(w.numel() for w in weights)
    rows = contenders(args.forms, args.backends, numel, device)
    rows += direction_contenders(args.directions, numel, device)

    run_info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "decaylab": getattr(decaylab, "__version__", "?"),
        "git": git_revision(),
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "shapes": args.shapes,
        "parameters": numel,
        "tensors": len(shapes),
        "largest_tensor": max(w.numel() for w in weights),
        "dtype": "float32",
        "lr": LR, "weight_decay": WEIGHT_DECAY, "momentum": MOMENTUM,
        "steps_per_round": args.steps or f"calibrated to {args.min_time} s", "rounds": args.rounds, "seed": args.seed,
        "load_average_start": os.getloadavg(),
        "inductor_cache": inductor_cache_state(),
        "auto_compile_min_numel": dispatch.AUTO_COMPILE_MIN_NUMEL, "compile_chunk": compiled.COMPILE_CHUNK,
    }
    peak = None
    if device.type == "cuda":
        run_info["gpu"], peak = gpu_peak_bandwidth(device)
        run_info["gpu_peak_bandwidth"] = peak

    print("# decaylab optimizer step benchmark")
    for key in ("date", "command", "git", "python", "torch", "decaylab", "cpu", "cpu_cores", "threads", "device"):
        print(f"{key:>10}: {run_info[key]}")
    if device.type == "cuda":
        print(f"{'gpu':>10}: {run_info['gpu']} (peak {peak / 1e12:.2f} TB/s)" if peak
              else f"{'gpu':>10}: {run_info['gpu']} (peak bandwidth unknown)")
    print(f"{'params':>10}: {numel:,} fp32 in {len(shapes)} tensors ({args.shapes}; "
          f"largest {run_info['largest_tensor']:,}), one param group, seed {args.seed}")
    print(f"{'hparams':>10}: lr={LR}, weight_decay={WEIGHT_DECAY} for every contender; SGD momentum={MOMENTUM}")
    steps = f"{args.steps} steps" if args.steps else f"~{args.min_time:g} s of steps"
    print(f"{'timing':>10}: {args.rounds} interleaved rounds x {steps} per contender, order shuffled each round")
    print(f"{'decaylab':>10}: auto picks per bucket (decaylab.optim.dispatch; the table's backend column says what "
          f"it picked); it compiles buckets >= {dispatch.AUTO_COMPILE_MIN_NUMEL:,} elements, "
          f"{compiled.COMPILE_CHUNK} tensors per compiled call; inductor cache {run_info['inductor_cache']}")
    load = run_info["load_average_start"]
    print(f"{'load':>10}: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (1/5/15 min) at start", end="")
    busy = device.type == "cpu" and load[0] > 0.5
    print("  <- other processes are using the CPU: expect noise" if busy else "")
    print()

    # Build and warm up one contender at a time, so each first-step time is its own.
    print(f"warming up {len(rows)} contenders (compiled steps compile on their first call) ...", flush=True)
    settle = 1.15 if device.type == "cpu" else 1.10
    for c in rows:
        c.params = [torch.nn.Parameter(w.clone()) for w in weights]
        for p, g in zip(c.params, grads, strict=True):
            p.grad = g.clone()
        c.opt = c.build(c.params)
        c.numel = sum(p.numel() for p in c.select(c.params))
        step_s = warm_up(c, device, min_calls=3, max_calls=50, max_s=20.0, settle=settle)
        c.steps = args.steps or max(10 if device.type == "cuda" else 1, math.ceil(args.min_time / step_s))
        extra = f"first step {c.first_step_s:6.2f} s" + ("  (compiles)" if c.compiles else "")
        print(f"  {c.name:<26} {c.backend:<16} {c.warmup_steps:3d} calls in {c.warmup_s:6.2f} s; {extra}", flush=True)
    print()

    rng = random.Random(args.seed)
    t_measure = time.perf_counter()
    for _ in range(args.rounds):
        order = list(rows)
        rng.shuffle(order)
        gc.collect()
        for c in order:
            faults = minor_faults()
            c.times.append(time_steps(c.opt, c.steps, device))
            c.faults.append((minor_faults() - faults) / c.steps)
    t_measure = time.perf_counter() - t_measure
    run_info["load_average_end"] = os.getloadavg()

    anchors = {c.section: c for c in rows if c.anchor}
    results = []
    for c in rows:
        a = anchors[c.section]
        med = statistics.median(c.times)
        paired = [t / ta for t, ta in zip(c.times, a.times, strict=True)]
        lo, hi = quartiles(c.times)
        plo, phi = quartiles(paired)
        r = {
            "name": c.name, "section": c.section, "backend": c.backend, "anchor": a.name,
            "median_s": med, "iqr_s": [lo, hi], "ratio": med / statistics.median(a.times),
            "paired_ratio_iqr": [plo, phi], "first_step_s": c.first_step_s, "compiles": c.compiles,
            "warmup_calls": c.warmup_steps, "steps_per_round": c.steps, "counted": c.counted,
            "bytes_per_param": c.bytes_per_param,
            "achieved_bandwidth": c.bytes_per_param * c.numel / med, "notes": c.notes, "times_s": c.times,
            "page_faults_per_step": statistics.median(c.faults),
        }
        results.append(r)

    cuda = device.type == "cuda"
    head = (f"{'contender':<26} {'backend':<16} {'ms/step':>8} {'IQR ms':>17} {'ratio':>6} {'paired IQR':>13}"
            f" {'steps':>5} {'1st step s':>10} {'GB/s':>7}" + (f" {'% peak':>7}" if cuda else f" {'faults':>7}"))
    sections = [("adam", "Adam family"), ("sgd", "SGD with momentum")]
    sections += [(d, DIRECTION_SECTIONS[d]) for d in args.directions]
    for section, title in sections:
        a = anchors[section]
        print(f"## {title} — ratio = median step time / {a.name}'s median step time")
        print(head)
        print("-" * len(head))
        for r in results:
            if r["section"] != section:
                continue
            first = f"{r['first_step_s']:10.2f}" if r["compiles"] else f"{'—':>10}"
            line = (f"{r['name']:<26} {r['backend']:<16} {fmt_ms(r['median_s'])}"
                    f" [{fmt_ms(r['iqr_s'][0]).strip():>7}, {fmt_ms(r['iqr_s'][1]).strip():>7}]"
                    f" {r['ratio']:6.2f} [{r['paired_ratio_iqr'][0]:5.2f}, {r['paired_ratio_iqr'][1]:5.2f}]"
                    f" {r['steps_per_round']:5d} {first} {r['achieved_bandwidth'] / 1e9:7.1f}")
            if cuda:
                line += f" {100 * r['achieved_bandwidth'] / peak:6.1f}%" if peak else f" {'unknown':>7}"
            else:
                line += f" {r['page_faults_per_step']:7.0f}"
            if r["counted"] and r["ratio"] > TARGET:
                line += "  > target"
            print(line)
        print()
    load = run_info["load_average_end"]
    print(f"GB/s counts the least traffic of a step: {BYTES_ADAM} bytes/param for Adam, {BYTES_SGD_MOMENTUM} for SGD "
          f"with momentum. IQR: over rounds; paired IQR: of the per-round ratios."
          + ("" if cuda else " faults: minor page faults per step (memory allocated afresh each step)."))
    print(f"Measuring took {t_measure:.0f} s after warmup; load average at the end {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f}.")
    for r in results:
        for note in r["notes"]:
            print(f"note: {r['name']} ({r['backend']}): {note}")

    for section in args.directions:
        for r in results:
            if r["section"] == section and not r["name"].startswith(("torch", "plain")):
                print(f"{r['name']} ({r['backend']}): {r['ratio']:.2f} x {anchors[section].name} "
                      f"(paired IQR {r['paired_ratio_iqr'][0]:.2f}–{r['paired_ratio_iqr'][1]:.2f})"
                      + (f"; target ≤ {TARGET:.2f} for element-wise directions" if r["counted"] else ""))
    counted = [r for r in results if r["counted"] and r["section"] == "adam"]
    met = [r for r in counted if r["ratio"] <= TARGET]
    worst = max(counted, key=lambda r: r["ratio"]) if counted else None
    verdict = f"target ≤ {TARGET:.2f}: met for {len(met)}/{len(counted)} forms"
    verdict += f" (decaylab Adam, backend 'auto', {device}, {args.shapes} shapes)"
    if worst is not None:
        verdict += (f"; worst {worst['name'].split()[-1]} at {worst['ratio']:.2f} "
                    f"(margin {TARGET - worst['ratio']:+.2f}, paired IQR "
                    f"{worst['paired_ratio_iqr'][0]:.2f}–{worst['paired_ratio_iqr'][1]:.2f})")
    floor = next((r for r in results if r["name"] == "torch AdamW + read of g"), None)
    stable = next((r for r in counted if r["name"].endswith(" stable")), None)
    if floor is not None and stable is not None:
        verdict += (f"\nstable's least traffic (32 bytes/param: torch's AdamW step after one read of every gradient) "
                    f"costs {floor['ratio']:.2f} here; decaylab stable at {stable['ratio']:.2f} is "
                    f"{stable['ratio'] / floor['ratio']:.2f}x that")
    print()
    print(verdict)

    report = {"run": run_info, "target": TARGET, "verdict": verdict, "met": len(met), "forms": len(counted),
              "results": results}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
