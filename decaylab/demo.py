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
    from .reproduce.demo import table_text
    from .sweep import default_processes

    start = time.perf_counter()
    entry = get("demo")
    spec = entry.spec()
    processes = default_processes() if processes is None else processes
    print(f"decaylab demo: {spec.name} — {len(spec)} runs ({spec.description}); store {store}; "
          f"{processes} process{'es' if processes > 1 else ''}")
    verdict = entry.run(store=store, out=out, stack=stack, progress=progress, processes=processes)
    print()
    print(table_text(verdict.summary, verdict.numbers))
    print()
    selects = verdict.summary["metric"].replace("_", " ").replace("val ", "validation ")  # an older store: test
    print(f"best: the cell with the lowest {selects} (mean over seeds); its test accuracy, mean ± std over seeds.")
    print("slope: how each learning rate's best λ moves with lr. In every lr row where λ matters, each seed's λ* is")
    print("its validation-loss minimum over λ (refined by a parabola in log λ); the slope is the least-squares")
    print("d log λ*/d log lr per seed, mean ± 95% t-interval over the seeds. 0: the best λ does not move with lr")
    print("(tune lr and λ one at a time: the AdamW paper's claim, `decaylab reproduce decoupling`); −1: lr·λ fixed.")
    print("Each λ is in its method's own convention (AdamW (torch) λ = AdamW (paper) λ / lr: one slope lower).")
    print(f"report: {verdict.report}")
    print(f"wall time: {time.perf_counter() - start:.1f} s")
    return verdict.summary
