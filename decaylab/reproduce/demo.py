"""``decaylab demo``, the main job, as an entry of the reproduction registry without a claim.

On MNIST-1D (generated locally), Adam+L2, AdamW in torch's convention, AdamW in the paper's
convention (``decay_scale="schedule"``), ProxAdam and the Euclidean-proximal AdamP, each over a
6×6 lr × λ grid with 2 seeds and a cosine schedule (the checked-in sweep spec
``decaylab/sweep/specs/demo.toml``, which ``decaylab sweep demo`` runs too). It runs as every
reproduction runs (:meth:`~decaylab.reproduce.core.Reproduction.run`: folders checked before
training, the sweep, the report); it states no claim, so its status is ``REPORTED`` and what it
reports is the report's table (:mod:`decaylab.demo` prints it): per method, the test accuracy of
the cell validation selected and the separability of the good region,

    separability = |G| / |rows(G) × cols(G)|,  G = {cells with validation error ≤ best + 1 point}

the fraction of the smallest lr-set × λ-set rectangle containing the good region that is good
itself — 1.0 when the good region is a rectangle (lr and λ can be tuned one at a time, the
AdamW paper's "separable" claim), near 1/n for a diagonal band over n learning rates. The slope
of the best λ against lr (log–log) is printed beside it: 0 axis-aligned, −1 a diagonal along
which lr·λ is constant.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..sweep.spec import SPECS_DIR
from .core import Reproduction, Verdict, register

NAME = "demo"


def analyze(store_path: str | Path, spec: Any, scale: str) -> Verdict:
    """The demo states no claim: its verdict says what ran; the report's table is what it shows."""
    from ..store import load_sweep

    data = load_sweep(store_path, spec.name)
    methods = sorted({run.label for run in data.runs}, key=[label for label, _ in spec.configs()].index)
    line = (f"{NAME}: REPORTED — {len(data.runs)} finished runs of {', '.join(methods)} (the table: test accuracy "
            "of each method's validation-selected cell, separability of its good region)")
    return Verdict(NAME, None, line, {"runs": len(data.runs), "methods": methods}, claim=False)


REPRODUCTION = register(Reproduction(
    name=NAME,
    title="the main job: lr × λ for five treatments of weight decay on MNIST-1D, with the report",
    claim=None,
    source="Loshchilov & Hutter, Decoupled Weight Decay Regularization, ICLR 2019, Fig. 2 (the lr × λ landscape)",
    analyze=analyze,
    specs={"small": SPECS_DIR / "demo.toml"},
    seeds=2,
    stack=24,
    store="runs/demo.sqlite",
))
