"""The main job: ``decaylab demo``.

On MNIST-1D (generated locally), Adam+L2, AdamW in torch's convention, AdamW in the paper's
convention (``decay_scale="schedule"``), ProxAdam and the Euclidean-proximal AdamP, each over a
6×6 lr × λ grid with 2 seeds and a cosine schedule (the checked-in spec
``decaylab/sweep/specs/demo.toml``). Runs that differ only in lr, λ and seed train together as
one stacked model. Results go to a SQLite store; a second call skips every finished run.

It prints, per method, the best test accuracy and the separability of the heatmap's good region:

    separability = |G| / |rows(G) × cols(G)|,  G = {cells with test error ≤ best + 1 point}

the fraction of the smallest lr-set × λ-set rectangle containing the good region that is good
itself — 1.0 when the good region is a rectangle (lr and λ can be tuned one at a time, the
AdamW paper's "separable" claim), near 1/n for a diagonal band over n learning rates. The slope
of the best λ against lr (log–log) is printed beside it: 0 axis-aligned, −1 a diagonal along
which lr·λ is constant.
"""
from __future__ import annotations

import time
from pathlib import Path

from ._paths import check_output_dir
from .report import build_report
from .report.build import default_out_dir
from .sweep import default_processes, find_spec, load_spec, run_sweep


def run(store: str | Path = "runs/demo.sqlite", out: str | Path | None = None, stack: int = 24,
        progress: bool = True, processes: int | None = None) -> dict:
    """Run (or finish) the demo sweep, build its report and print the table; returns the summary.

    ``processes`` (default: one per core, up to 4) processes train the groups side by side, each
    with one torch thread. The store's folder and the report's are checked before anything trains
    (``ValueError`` naming ``--store`` or ``--out``): a report that cannot be written is found out
    now, not after the 360 runs.
    """
    start = time.perf_counter()
    spec = load_spec(find_spec("demo"))
    store = Path(store)
    check_output_dir(store.parent, f"--store {store}: its folder")
    if out is not None:
        check_output_dir(out, "--out")
    else:
        check_output_dir(default_out_dir(store, spec.name), "--out (default: beside the store)")
    n = len(spec.configs())
    processes = default_processes() if processes is None else processes
    print(f"decaylab demo: {spec.name} — {n} runs ({spec.description}); store {store}; "
          f"{processes} process{'es' if processes > 1 else ''}")
    run_sweep(spec, store, stack=stack, progress=progress, processes=processes)
    result = build_report(store, sweep=spec.name, out_dir=out)
    print()
    print(result.table_text)
    print()
    print("separability = |G| / |rows(G) × cols(G)| with G the cells within 1 point of the best test error:")
    print("  1.0 = the good region is a rectangle (lr and λ tune separately); ~1/n = a diagonal band.")
    print("diagonal slope = d log λ* / d log lr of the best λ per lr: 0 axis-aligned, −1 lr·λ constant.")
    print(f"report: {result.html_path}")
    print(f"wall time: {time.perf_counter() - start:.1f} s")
    return result.summary
