"""The reproduction framework: a claim from the weight-decay literature as a command that runs it.

A :class:`Reproduction` names a claim, its source, the checked-in sweep specs that test it (one per
scale: ``"small"`` runs on the embedded data on 2 CPU cores in minutes, ``"paper"`` is the paper's
setup for a GPU or a cluster) and an ``analyze`` function that reads the finished runs from the store
and returns a :class:`Verdict`: held / did not hold / inconclusive, one line with the numbers and the
margin over seeds, and the report sections that show it.

``decaylab reproduce NAME [--scale paper]`` calls :meth:`Reproduction.run`; ``decaylab reproduce
--list`` prints :func:`describe` (:mod:`decaylab.cli.reproduce`).

Notes for the authors of reproductions (the API above is unchanged; these are additions):

- ``analyze(store_path, spec, scale)`` may also take a keyword ``progress`` (bool): :meth:`run`
  passes it when the signature has it, so extra training done inside analyze (scale-free's iterate
  check) shows a bar unless ``--quiet``.
- :func:`verdict_line` formats the one line (``"NAME: HELD — text"``); :func:`mean_std` gives the
  mean and the sample standard deviation (ddof 1) over seeds, :func:`pm` formats them as
  ``"0.83 ± 0.10"``; :func:`spec_seeds` counts a spec's seeds (``run`` refuses a spec with fewer
  than ``Reproduction.seeds``).
- :meth:`run` writes ``verdict.json`` (name, scale, status, line, numbers, wall time) beside
  ``report.html``.
- ``Reproduction(stack=K)``: how many runs train together when ``--stack`` is not given (larger
  stacks are cheaper per run on CPU; None: the sweep runner's default).
"""
from __future__ import annotations

import inspect
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..report.build import Section

__all__ = ["SCALES", "Verdict", "Reproduction", "REGISTRY", "register", "get", "describe", "spec_path",
           "verdict_line", "mean_std", "pm", "spec_seeds"]

SCALES = ("small", "paper")
SPEC_DIR = Path(__file__).resolve().parent / "specs"


@dataclass
class Verdict:
    """What a reproduction found.

    ``held`` is True (the claim held here), False (it did not) or None (inconclusive: the margin is
    inside the seeds' spread). ``line`` is one line a person reads first, e.g.
    ``"decoupling: HELD — separability AdamW 0.83 ± 0.10 vs Adam+L2 0.31 ± 0.05 (3 seeds)"``.
    ``numbers`` are the values behind it (plain JSON data); ``sections`` go into the report.
    """

    name: str
    held: bool | None
    line: str
    numbers: dict[str, Any] = field(default_factory=dict)
    sections: list[Section] = field(default_factory=list)
    wall_s: float = 0.0
    report: Path | None = None

    @property
    def status(self) -> str:
        return {True: "HELD", False: "DID NOT HOLD", None: "INCONCLUSIVE"}[self.held]


# analyze(store_path, spec, scale) -> Verdict (wall_s and report are filled in by Reproduction.run)
Analyze = Callable[[Path, Any, str], Verdict]


@dataclass
class Reproduction:
    """A claim, its source, its sweep specs per scale and the analysis that judges it."""

    name: str
    title: str
    claim: str
    source: str
    specs: dict[str, str]  # scale -> spec file name in decaylab/reproduce/specs/
    analyze: Analyze
    seeds: int = 3  # the verdict needs >= 3 seeds
    stack: int | None = None  # runs trained together by default (None: the sweep runner's default)

    def spec(self, scale: str = "small"):
        from ..sweep import load_spec

        return load_spec(spec_path(self, scale))

    def run(self, *, scale: str = "small", store: str | Path | None = None, out: str | Path | None = None,
            stack: int | None = None, progress: bool = True, report: bool = True,
            processes: int | None = None, retry_failed: bool = False) -> Verdict:
        """Run (or finish) the sweep of ``scale`` into ``store`` (default ``runs/reproduce-NAME[-paper].sqlite``),
        judge it, and write the report with the verdict's sections (into ``out``, default
        ``report-<sweep>`` beside the store) and ``verdict.json``. A second call skips finished runs.
        ``processes`` train side by side on the store (default: one per core, up to 4);
        ``retry_failed`` trains the runs that failed in an earlier call again."""
        from ..report import build_report
        from ..sweep import DEFAULT_STACK, default_processes, run_sweep

        start = time.perf_counter()
        spec = self.spec(scale)
        seeds = spec_seeds(spec)
        if seeds < self.seeds:
            raise ValueError(f"the {scale} spec of {self.name!r} has {seeds} seed(s) per method; a verdict needs "
                             f"at least {self.seeds}")
        store = Path(store) if store is not None else default_store(self.name, scale)
        store.parent.mkdir(parents=True, exist_ok=True)
        processes = default_processes() if processes is None else processes
        run_sweep(spec, store, stack=stack or self.stack or DEFAULT_STACK, progress=progress, processes=processes,
                  retry_failed=retry_failed)
        extra = {"progress": progress} if "progress" in inspect.signature(self.analyze).parameters else {}
        verdict = self.analyze(store, spec, scale, **extra)
        if report:
            sections = [Section(title=f"Verdict: {verdict.status}", prose=verdict.line), *verdict.sections]
            result = build_report(store, sweep=spec.name, out_dir=out, sections=sections)
            verdict.report = result.html_path
        verdict.wall_s = time.perf_counter() - start
        if verdict.report is not None:
            record = {"name": self.name, "scale": scale, "status": verdict.status, "held": verdict.held,
                      "line": verdict.line, "numbers": verdict.numbers, "wall_s": round(verdict.wall_s, 1),
                      "store": str(store)}
            path = verdict.report.parent / "verdict.json"
            path.write_text(json.dumps(record, indent=2, ensure_ascii=False, default=_json_default) + "\n",
                            encoding="utf-8")
        return verdict


def default_store(name: str, scale: str) -> Path:
    """``runs/reproduce-NAME.sqlite`` (small) or ``runs/reproduce-NAME-SCALE.sqlite``."""
    suffix = "" if scale == "small" else f"-{scale}"
    return Path("runs") / f"reproduce-{name}{suffix}.sqlite"


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    raise TypeError(f"verdict numbers must be plain JSON data; got {type(value).__name__}")


REGISTRY: dict[str, Reproduction] = {}


def register(reproduction: Reproduction) -> Reproduction:
    if reproduction.name in REGISTRY:
        raise ValueError(f"a reproduction named {reproduction.name!r} is already registered")
    for scale in reproduction.specs:
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {', '.join(SCALES)}; got {scale!r} in {reproduction.name!r}")
    REGISTRY[reproduction.name] = reproduction
    return reproduction


def get(name: str) -> Reproduction:
    if name not in REGISTRY:
        import difflib

        close = difflib.get_close_matches(name, REGISTRY, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"name must be one of {', '.join(sorted(REGISTRY))}; got {name!r}{hint}")
    return REGISTRY[name]


def spec_path(reproduction: Reproduction, scale: str) -> Path:
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}; got {scale!r}")
    if scale not in reproduction.specs:
        raise ValueError(f"scale {scale!r} is not available for {reproduction.name!r}; "
                         f"it has {', '.join(reproduction.specs)}")
    return SPEC_DIR / reproduction.specs[scale]


def describe(names: Sequence[str] | None = None) -> str:
    """The text of ``decaylab reproduce --list``."""
    lines = []
    for name in names or list(REGISTRY):
        r = REGISTRY[name]
        lines.append(f"{r.name} — {r.title}")
        lines.append(f"    claim:  {r.claim}")
        lines.append(f"    source: {r.source}")
        lines.append(f"    scales: {', '.join(r.specs)}")
    return "\n".join(lines)


# ---------------------------------------------------------------------- helpers for analyze functions


def verdict_line(name: str, held: bool | None, text: str) -> str:
    """The verdict's one line: ``"NAME: HELD — text"`` (``DID NOT HOLD``, ``INCONCLUSIVE``)."""
    status = {True: "HELD", False: "DID NOT HOLD", None: "INCONCLUSIVE"}[held]
    return f"{name}: {status} — {text}"


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; ``nan`` for one value) of finite ``values``.

    >>> mean_std([1.0, 2.0, 3.0])
    (2.0, 1.0)
    """
    xs = [float(v) for v in values]
    if not xs:
        return math.nan, math.nan
    mean = sum(xs) / len(xs)
    if len(xs) < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))


def pm(mean: float, std: float, spec: str = ".2f") -> str:
    """``"mean ± std"`` in the format ``spec`` (the mean alone when the std is nan; a ``+`` in
    ``spec`` signs the mean only).

    >>> pm(0.8312, 0.1), pm(0.5, 0.25, "+.1f")
    ('0.83 ± 0.10', '+0.5 ± 0.2')
    """
    if std is None or not math.isfinite(std):
        return format(mean, spec)
    return f"{format(mean, spec)} ± {format(std, spec.replace('+', ''))}"


def spec_seeds(spec: Any) -> int:
    """The fewest distinct seeds any (method, everything-but-seed) cell of a spec has."""
    cells: dict[tuple, set[int]] = {}
    for label, config in spec.configs():
        d = config.to_dict()
        seed = d.pop("seed")
        cells.setdefault((label, json.dumps(d, sort_keys=True)), set()).add(seed)
    return min((len(s) for s in cells.values()), default=0)
