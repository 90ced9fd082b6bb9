"""Sweep throughput: K configs trained stacked (one process, one stacked model) vs the same K
configs trained one after the other with ``train()`` in the same process.

Claim (issue 4): K = 16 MNIST-1D MLP configs (a 4 × 4 grid of lr × λ, each with its own seed)
train ≥ 5× faster stacked than one after the other on 2 CPU cores; ResNet-20 on CIFAR-sized
inputs ≥ 15× on one GPU.

    python benchmarks/sweep_throughput.py                       # MNIST-1D MLP, K=16, CPU
    python benchmarks/sweep_throughput.py --model cnn1d
    python benchmarks/sweep_throughput.py --model resnet20 --device cuda

Both sides run the same ``decaylab.train`` loop and the same number of optimizer steps per
config (evaluation only at the end). Each trial times the sequential runs and the stacked run
back to back (alternating which goes first); the speedup of a trial is
``sequential wall time / stacked wall time``, and the script prints every trial and their
median. A short warm-up of both paths runs first and is not timed (imports, data loading,
first-call allocations), so compile time of a ``--backend compiled`` optimizer *is* timed unless
the warm-up already compiled it. It also prints how far the stacked results are from the
sequential ones (fp32: equal up to summation order, so final accuracies agree closely).

ResNet-20 inputs are CIFAR-sized (3×32×32) random images with random labels — the loop's cost
does not depend on the pixel values, and the GPU machines have no network to fetch CIFAR-10
(pass ``--dataset cifar10`` to use the real data where it is cached).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch

from decaylab.data import TensorData, load
from decaylab.train import TrainConfig, train, train_stacked


def grid(k: int, base: TrainConfig) -> list[TrainConfig]:
    """K configs: lr × λ on a log grid, each with its own seed."""
    side = max(1, round(k ** 0.5))
    lrs = [base.lr * 3.0 ** (i - side // 2) for i in range(side)]
    lams = [0.0] + [1e-3 * 10.0 ** j for j in range(side - 1)]
    configs = []
    for i in range(k):
        configs.append(base.replace(lr=lrs[i % side], weight_decay=lams[(i // side) % side], seed=i))
    return configs


def synthetic_cifar(n: int, n_test: int) -> TensorData:
    g = torch.Generator().manual_seed(0)
    return TensorData(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g),
                      torch.randn(n_test, 3, 32, 32, generator=g), torch.randint(0, 10, (n_test,), generator=g),
                      10, "cifar-sized-random")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_sequential(configs, data, device, backend) -> tuple[float, list]:
    sync(device)
    start = time.perf_counter()
    results = [train(c, data=data, device=device, backend=backend) for c in configs]
    sync(device)
    return time.perf_counter() - start, results


def time_stacked(configs, data, device, backend) -> tuple[float, list]:
    sync(device)
    start = time.perf_counter()
    results = train_stacked(configs, data=data, device=device, backend=backend)
    sync(device)
    return time.perf_counter() - start, results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mlp", help="mlp | cnn1d | resnet20 | resnet20-nobn | ...")
    parser.add_argument("--dataset", default=None, help="default: mnist1d (mlp, cnn1d), CIFAR-sized random data (others)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("-k", "--models", type=int, default=16, help="configs per stack (K)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per config (default: 300 CPU MNIST-1D, 200 GPU)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    parser.add_argument("--backend", default="auto", help="optimizer backend: auto | foreach | compiled | reference")
    parser.add_argument("--precision", default="fp32", help="fp32 | bf16-autocast | bf16")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    mnist = args.model in ("mlp", "cnn1d")
    dataset = args.dataset or ("mnist1d" if mnist else "synthetic")
    if dataset == "synthetic":
        data = synthetic_cifar(n=args.batch_size * 40, n_test=1000)
    else:
        data = load(dataset)
    steps = args.steps or (300 if device.type == "cpu" else 200)
    base = TrainConfig(model=args.model, dataset=data.name, optimizer="adam", decay="decoupled", lr=1e-3,
                       steps=steps, batch_size=args.batch_size, schedule="warmup_cosine", warmup_steps=max(1, steps // 20),
                       precision=args.precision)
    configs = grid(args.models, base)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    print(f"sweep throughput: {args.models} × {args.model} on {data.name} ({data.input_shape}), {steps} steps of "
          f"batch {args.batch_size} per config, precision {args.precision}, optimizer backend {args.backend!r}")
    print(f"hardware: {device.type} {name}, {os.cpu_count()} CPU cores, torch.set_num_threads({args.threads}); "
          f"torch {torch.__version__}, python {platform.python_version()}")
    print("configs: lr ∈ {" + ", ".join(f"{lr:.3g}" for lr in sorted({c.lr for c in configs})) + "} × λ ∈ {"
          + ", ".join(f"{w:g}" for w in sorted({c.weight_decay for c in configs})) + "}, seeds 0.."
          + str(args.models - 1))

    # Warm-up: both paths, a few steps, untimed.
    warm = [c.replace(steps=min(10, steps), warmup_steps=1) for c in configs[:2]]
    time_sequential(warm[:1], data, device, args.backend)
    time_stacked(warm, data, device, args.backend)

    speedups, seq_times, stk_times = [], [], []
    for trial in range(args.trials):
        if trial % 2 == 0:
            t_seq, seq = time_sequential(configs, data, device, args.backend)
            t_stk, stk = time_stacked(configs, data, device, args.backend)
        else:
            t_stk, stk = time_stacked(configs, data, device, args.backend)
            t_seq, seq = time_sequential(configs, data, device, args.backend)
        speedups.append(t_seq / t_stk)
        seq_times.append(t_seq)
        stk_times.append(t_stk)
        print(f"trial {trial + 1}: sequential {t_seq:7.2f} s ({t_seq / args.models / steps * 1e3:6.2f} ms/step/model)   "
              f"stacked {t_stk:7.2f} s ({t_stk / steps * 1e3:6.2f} ms/step for all {args.models})   "
              f"speedup {t_seq / t_stk:5.2f}x")

    gap = max(abs(a.final["test_acc"] - b.final["test_acc"]) for a, b in zip(seq, stk, strict=True))
    loss_gap = max(abs(a.final["test_loss"] - b.final["test_loss"]) / a.final["test_loss"] for a, b in zip(seq, stk, strict=True))
    accs = [r.final["test_acc"] for r in stk]
    print(f"stacked vs sequential final metrics: max |Δ test_acc| = {gap:.4f}, max relative |Δ test_loss| = {loss_gap:.2e}; "
          f"test_acc over the grid {min(accs):.3f}..{max(accs):.3f}")
    median = statistics.median(speedups)
    target = 15.0 if device.type == "cuda" else 5.0
    verdict = "meets" if median >= target else "misses"
    print(f"speedup (median of {args.trials}): {median:.2f}x  [trials: {', '.join(f'{s:.2f}' for s in speedups)}]  "
          f"-> {verdict} the {target:g}x target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
