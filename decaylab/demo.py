"""The main job: ``decaylab demo`` — the ``demo`` entry of the reproduction registry
(:mod:`decaylab.reproduce.demo`), run and its table printed.

Runs that differ only in lr, λ and seed train together as one stacked model. Results go to a SQLite
store; a second call skips every finished run.
"""
from __future__ import annotations

import time
from pathlib import Path


def run(store: str | Path = "runs/demo.sqlite", out: str | Path | None = None, stack: int = 48,
        progress: bool = True, processes: int | None = None) -> dict:
    """Run (or finish) the demo sweep, build its report and print the table; returns the report's summary.

    ``processes`` (default: one per core, up to 4) worker processes train the groups side by side, each
    with one torch thread. The store's folder and the report's are checked before anything trains
    (``ValueError`` naming ``--store`` or ``--out``): a report that cannot be written is found out
    now, not after the runs.
    """
    from .reproduce import get
    from .sweep import default_processes

    start = time.perf_counter()
    entry = get("demo")
    spec = entry.spec()
    processes = default_processes() if processes is None else processes
    print(f"decaylab demo: {spec.name} — {len(spec)} runs ({spec.description}); store {store}; "
          f"{processes} process{'es' if processes > 1 else ''}")
    verdict = entry.run(store=store, out=out, stack=stack, progress=progress, processes=processes)
    print()
    print(verdict.table_text)
    print()
    selects = verdict.summary["metric"].replace("_", " ").replace("val ", "validation ")  # an older store: test
    print(f"Each method's best cell has the lowest {selects} (mean over seeds); the table shows its test accuracy.")
    print()
    print("How the best λ moves with the learning rate (the statistic of `decaylab reproduce decoupling`):")
    print(verdict.numbers["slope_table"])
    print("λ* = each seed's validation-loss minimum over λ, refined by a parabola in log λ, in every lr row where λ")
    print("matters; slope = least-squares d log λ* / d log lr per seed, mean ± 95% t-interval over the seeds.")
    print("  0 = the best λ does not move with lr (tune lr and λ one at a time); −1 = lr·λ is what matters.")
    print(f"report: {verdict.report}")
    print(f"wall time: {time.perf_counter() - start:.1f} s")
    return verdict.summary
