"""A finished store of made-up results, for the tests of the reproductions' analyses.

``fill_store(path, spec, result)`` runs the real sweep driver over every run of ``spec`` with a
trainer that makes each run's results up: ``result(label, config)`` returns the final metrics, or
``(final, curves)``; or ``curves_of(label, config)`` gives the curves. Returns ``path``."""
from __future__ import annotations

from decaylab.sweep import run_sweep
from decaylab.train import RunResult


def fill_store(path, spec, result, curves_of=None):
    label_of = {c.key(): label for label, c in spec.configs()}

    def fake_stacked(configs, **_):
        out = []
        for c in configs:
            made = result(label_of[c.key()], c)
            final, curves = made if isinstance(made, tuple) else (made, [])
            if curves_of is not None:
                curves = curves_of(label_of[c.key()], c)
            out.append(RunResult(c, final, curves))
        return out

    summary = run_sweep(spec, path, stack=64, train_stacked_fn=fake_stacked, progress=False)
    assert summary.failed == 0 and summary.remaining == 0
    return path
