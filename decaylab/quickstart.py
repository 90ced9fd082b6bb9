"""A short end-to-end run of the optimizer family on real data (scikit-learn's digits).

Each method trains the same MLP (64-128-128-10) on the 8×8 digits with a cosine learning-rate
schedule, over several seeds; biases are not decayed (:mod:`decaylab.groups`). The table shows
test accuracy (mean ± std over seeds) and the final norm of the decayed weights — where the
decay forms differ visibly even when accuracy does not.

The λ values are each method's own convention: torch's for ``decay_scale="lr"``
(``λ_torch``), the AdamW paper's for ``"schedule"`` (``λ_paper = λ_torch · lr_max``).
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from . import optim
from .groups import split_parameters

LR = 3e-3


@dataclass
class Method:
    name: str
    make: Any  # (param_groups) -> optimizer
    note: str = ""


def methods(weight_decay: float = 0.5) -> list[Method]:
    """The optimizers compared, each at the same decay strength per step at the peak lr."""
    lam = weight_decay
    return [
        Method("Adam (no decay)", lambda g: optim.Adam(g, lr=LR)),
        Method("Adam + L2", lambda g: optim.Adam(g, lr=LR, weight_decay=lam * LR), "λ_L2 = λ·lr"),
        Method("AdamW (torch)", lambda g: optim.AdamW(g, lr=LR, weight_decay=lam)),
        Method(
            "AdamW (paper)",
            lambda g: optim.AdamW(g, lr=LR, weight_decay=lam * LR, decay_scale="schedule"),
            "λ_paper = λ·lr",
        ),
        Method("ProxAdam", lambda g: optim.ProxAdam(g, lr=LR, weight_decay=lam)),
        Method("Euclid-prox Adam", lambda g: optim.EuclidProxAdam(g, lr=LR, weight_decay=lam * 1e-3), "λ·1e-3: /D"),
        Method("AdamS (stable)", lambda g: optim.AdamS(g, lr=LR, weight_decay=lam * 1e-3), "λ·1e-3: /√mean v̂"),
        Method("Cautious AdamW", lambda g: optim.CautiousAdamW(g, lr=LR, weight_decay=lam)),
        Method("SGDW (momentum 0.9)", lambda g: optim.SGDW(g, lr=0.05, momentum=0.9, weight_decay=lam)),
    ]


def load_digits(seed: int = 0, test_fraction: float = 0.3):
    """scikit-learn's 8×8 digits (1,797 images, shipped with the package), standardized."""
    from sklearn.datasets import load_digits as sk_load_digits

    x, y = sk_load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32) / 16.0
    y = torch.tensor(y)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = int(len(x) * test_fraction)
    test, train = perm[:n_test], perm[n_test:]
    mean, std = x[train].mean(0), x[train].std(0) + 1e-3
    x = (x - mean) / std
    return (x[train], y[train]), (x[test], y[test])


def mlp(width: int = 128) -> nn.Module:
    return nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))


@dataclass
class Result:
    accuracy: list[float] = field(default_factory=list)
    weight_norm: list[float] = field(default_factory=list)


def train_one(method: Method, data, seed: int, epochs: int, batch_size: int,
              verbose: bool = False) -> tuple[float, float]:
    (x_train, y_train), (x_test, y_test) = data
    torch.manual_seed(seed)
    model = mlp()
    split = split_parameters(model)
    if verbose:
        print(split.summary())
    opt = method.make(_groups(split))
    steps = epochs * math.ceil(len(x_train) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(x_train), generator=gen).split(batch_size):
            loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
        norm = torch.sqrt(sum((p.double() ** 2).sum() for _, p in split.decay)).item()
    return accuracy, norm


def _groups(split) -> list[dict]:
    """Decayed weights in the first group; biases in a second group with weight_decay=0."""
    groups = [{"params": [p for _, p in split.decay]}]
    if split.no_decay:
        groups.append({"params": [p for _, p in split.no_decay], "weight_decay": 0.0})
    return groups


def run(seeds: int = 3, epochs: int = 20, batch_size: int = 64, weight_decay: float = 0.5) -> dict[str, Result]:
    """Train every method over ``seeds`` seeds; returns the results and prints a table."""
    data = load_digits()
    ms = methods(weight_decay)
    results = {m.name: Result() for m in ms}
    start = time.perf_counter()
    print(f"digits: {len(data[0][0])} train / {len(data[1][0])} test images; MLP 64-128-128-10; "
          f"{epochs} epochs, batch {batch_size}, cosine lr, λ = {weight_decay} (torch convention)")
    with tqdm(total=len(ms) * seeds, desc="training", unit="run") as bar:
        for i, method in enumerate(ms):
            for seed in range(seeds):
                bar.set_postfix_str(f"{method.name}, seed {seed}")
                acc, norm = train_one(method, data, seed, epochs, batch_size, verbose=(i == 0 and seed == 0))
                results[method.name].accuracy.append(acc)
                results[method.name].weight_norm.append(norm)
                bar.update()
    print(table(results, ms))
    print(f"{len(ms) * seeds} runs in {time.perf_counter() - start:.1f} s")
    return results


def _mean_std(xs: list[float]) -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.4f} ± {sd:.4f}"


def table(results: dict[str, Result], ms: list[Method]) -> str:
    rows = [("method", "test accuracy", "‖w‖ (decayed)", "note")]
    for m in ms:
        r = results[m.name]
        rows.append((m.name, _mean_std(r.accuracy), _mean_std(r.weight_norm), m.note))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
