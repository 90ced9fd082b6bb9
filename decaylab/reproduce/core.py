"""The reproduction framework: a claim from the weight-decay literature as a command that runs it.

A :class:`Reproduction` names a claim, its source, the checked-in sweep specs that test it (one per
scale: ``"small"`` runs on the embedded data on 2 CPU cores in minutes, ``"paper"`` is the paper's
setup for a GPU or a cluster) and an ``analyze`` function that reads the finished runs from the store
and returns a :class:`Verdict`: held / did not hold / inconclusive (:mod:`decaylab.reproduce.stats`
holds the statistics, margins and status words), one line with the numbers and the margin over seeds,
and the report sections that show it. An entry without a claim (the demo) runs the same way and
reports its table.

Every reproduction is one module of this package with ``REPRODUCTION = register(Reproduction(...))``,
found on import (:func:`discover`: no list to add it to), and its specs in ``specs/`` named after it
(``NAME.toml`` for the small scale, ``NAME-paper.toml`` for the paper's). ``decaylab reproduce NAME
[--scale paper]`` calls :meth:`Reproduction.run`; ``decaylab reproduce --list`` prints :func:`describe`
(:mod:`decaylab.cli.reproduce`).

Notes for the authors of reproductions:

- ``analyze(store_path, spec, scale)`` may also take a keyword ``progress`` (bool): :meth:`run`
  passes it when the signature has it, so extra training done inside analyze (scale-free's iterate
  check) shows a bar unless ``--quiet``;
- select on validation (the report's :func:`~decaylab.report.analysis.choose_metric` does) and report
  test for what was selected;
- :meth:`run` checks the store's folder and the report's before anything trains, refuses a spec with
  fewer seeds than ``Reproduction.seeds``, and writes ``verdict.json`` (name, scale, status, line,
  numbers, wall time) beside ``report.html``;
- ``Reproduction(stack=K)``: how many runs train together when ``--stack`` is not given (larger
  stacks are cheaper per run on CPU; None: the sweep driver's default).
"""
from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..report.build import Section
from . import stats

__all__ = ["SCALES", "Verdict", "Reproduction", "REGISTRY", "register", "get", "describe", "discover", "spec_path",
           "spec_seeds", "claims"]

SCALES = ("small", "paper")
SPEC_DIR = Path(__file__).resolve().parent / "specs"


@dataclass
class Verdict:
    """What a reproduction found.

    ``held`` is True (the claim held here), False (it did not) or None (inconclusive: the margin is
    inside the seeds' spread). ``line`` is what a person reads first, e.g.
    ``"decoupling: HELD — separability AdamW 0.83 ± 0.10 vs Adam+L2 0.31 ± 0.05 (3 seeds)"``.
    ``numbers`` are the values behind it (plain JSON data); ``sections`` go into the report.
    ``premise_not_met``: a premise of the test failed, so the claim was not judged; ``claim``: False
    for an entry that states no claim (its status is ``REPORTED``). :meth:`Reproduction.run` fills in
    ``wall_s``, ``report`` (the HTML file), and the report's method table (``table_text``, ``summary``).
    """

    name: str
    held: bool | None
    line: str
    numbers: dict[str, Any] = field(default_factory=dict)
    sections: list[Section] = field(default_factory=list)
    wall_s: float = 0.0
    report: Path | None = None
    premise_not_met: bool = False
    claim: bool = True
    table_text: str = ""
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        if not self.claim:
            return stats.REPORTED
        return stats.PREMISE_NOT_MET if self.premise_not_met else stats.status(self.held)


# analyze(store_path, spec, scale) -> Verdict (wall_s and report are filled in by Reproduction.run)
Analyze = Callable[[Path, Any, str], Verdict]


@dataclass
class Reproduction:
    """A claim (None for an entry that reports without one: the demo), its source, its sweep specs per
    scale (default: ``specs/NAME.toml`` and ``specs/NAME-paper.toml``, those that exist) and the analysis
    that judges it. ``store``: its default store at the small scale (default ``runs/reproduce-NAME.sqlite``)."""

    name: str
    title: str
    claim: str | None
    source: str
    analyze: Analyze
    specs: dict[str, str | Path] | None = None  # scale -> spec file (in decaylab/reproduce/specs/ unless absolute)
    seeds: int = 3  # the verdict needs >= 3 seeds
    stack: int | None = None  # runs trained together by default (None: the sweep driver's default)
    store: str | None = None

    def __post_init__(self) -> None:
        if self.specs is None:  # found by name: NAME.toml (small), NAME-SCALE.toml (the others)
            found = {scale: f"{self.name}{'' if scale == 'small' else '-' + scale}.toml" for scale in SCALES}
            self.specs = {scale: file for scale, file in found.items() if (SPEC_DIR / file).is_file()}

    def spec(self, scale: str = "small"):
        from ..sweep import load_spec

        return load_spec(spec_path(self, scale))

    def default_store(self, scale: str) -> Path:
        """``runs/reproduce-NAME.sqlite`` (small; or the entry's own ``store``) or
        ``runs/reproduce-NAME-SCALE.sqlite``."""
        if scale == "small" and self.store is not None:
            return Path(self.store)
        suffix = "" if scale == "small" else f"-{scale}"
        return Path("runs") / f"reproduce-{self.name}{suffix}.sqlite"

    def run(self, *, scale: str = "small", store: str | Path | None = None, out: str | Path | None = None,
            stack: int | None = None, progress: bool = True, report: bool = True,
            processes: int | None = None, retry_failed: bool = False) -> Verdict:
        """Run (or finish) the sweep of ``scale`` into ``store`` (default :meth:`default_store`), judge it,
        and write the report with the verdict's sections (into ``out``, default ``report-<sweep>`` beside
        the store) and ``verdict.json``. The folders are checked before anything trains (``ValueError``
        naming ``--store`` or ``--out``). A second call skips finished runs. ``processes`` train side by
        side (default: one per core, up to 4); ``retry_failed`` trains the runs that failed before again."""
        from .._paths import check_output_dir
        from ..report import build_report
        from ..report.build import default_out_dir
        from ..sweep import DEFAULT_STACK, default_processes, run_sweep

        start = time.perf_counter()
        spec = self.spec(scale)
        seeds = spec_seeds(spec)
        if self.claim is not None and seeds < self.seeds:
            raise ValueError(f"the {scale} spec of {self.name!r} has {seeds} seed(s) per method; a verdict needs "
                             f"at least {self.seeds}")
        store = Path(store) if store is not None else self.default_store(scale)
        # found before the runs train, not after: a folder that cannot be written, a report folder that is a file
        check_output_dir(store.parent, f"--store {store}: its folder")
        if report:
            check_output_dir(out if out is not None else default_out_dir(store, spec.name),
                             "--out" if out is not None else "--out (default: beside the store)")
        processes = default_processes() if processes is None else processes
        run_sweep(spec, store, stack=stack or self.stack or DEFAULT_STACK, progress=progress, processes=processes,
                  retry_failed=retry_failed)
        extra = {"progress": progress} if "progress" in inspect.signature(self.analyze).parameters else {}
        verdict = self.analyze(store, spec, scale, **extra)
        if report:
            sections = list(verdict.sections)
            if verdict.claim:
                sections.insert(0, Section(title=f"Verdict: {verdict.status}", prose=verdict.line))
            result = build_report(store, sweep=spec.name, out_dir=out, sections=sections)
            verdict.report, verdict.table_text, verdict.summary = result.html_path, result.table_text, result.summary
        verdict.wall_s = time.perf_counter() - start
        if verdict.report is not None:
            record = {"name": self.name, "scale": scale, "status": verdict.status, "held": verdict.held,
                      "line": verdict.line, "numbers": verdict.numbers, "wall_s": round(verdict.wall_s, 1),
                      "store": str(store)}
            path = verdict.report.parent / "verdict.json"
            path.write_text(json.dumps(record, indent=2, ensure_ascii=False, default=_json_default) + "\n",
                            encoding="utf-8")
        return verdict


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
    if not reproduction.specs:
        raise ValueError(f"reproduction {reproduction.name!r} has no spec: put {reproduction.name}.toml in "
                         f"{SPEC_DIR} (or give specs=)")
    REGISTRY[reproduction.name] = reproduction
    return reproduction


def discover() -> dict[str, Reproduction]:
    """Import every module of this package that is not private or the framework (each registers its
    reproduction on import); returns :data:`REGISTRY`, its entries in the order of their names."""
    package = __name__.rpartition(".")[0]
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if not module.name.startswith("_") and module.name not in ("core", "stats"):
            importlib.import_module(f"{package}.{module.name}")
    for name in sorted(REGISTRY):  # the order of --list and `all`, whatever order the modules loaded in
        REGISTRY[name] = REGISTRY.pop(name)
    return REGISTRY


def claims() -> list[str]:
    """The names of the entries that state a claim (what ``decaylab reproduce all`` runs)."""
    return [name for name, r in REGISTRY.items() if r.claim is not None]


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
        lines.append(f"    claim:  {r.claim if r.claim is not None else '(none: it reports a table)'}")
        lines.append(f"    source: {r.source}")
        lines.append(f"    scales: {', '.join(r.specs)}")
    return "\n".join(lines)


def spec_seeds(spec: Any) -> int:
    """The fewest distinct seeds any (method, everything-but-seed) cell of a spec has."""
    cells: dict[tuple, set[int]] = {}
    for label, config in spec.configs():
        d = config.to_dict()
        seed = d.pop("seed")
        cells.setdefault((label, json.dumps(d, sort_keys=True)), set()).add(seed)
    return min((len(s) for s in cells.values()), default=0)
