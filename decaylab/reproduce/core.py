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
- measure the regime the claim needs and return it as ``Verdict.premises`` (:class:`~.stats.Premise`:
  name, value, threshold, held); one not met makes the status PREMISE NOT MET, never a verdict;
- judge against thresholds fixed in advance in the spec's ``[claim]`` table (with a comment on why),
  on paired per-seed effects (:func:`~.stats.interval`, :func:`~.stats.against`);
- :meth:`run` checks the store's folder and the report's before anything trains, refuses a spec with
  fewer seeds than ``Reproduction.seeds``, adds seeds while the verdict is undecided (``max_seeds``
  and ``seed_step`` in ``[claim]``; each look is recorded), and writes ``verdict.json``
  (:meth:`Verdict.record`: status, premises, selection, seeds, numbers, wall time) beside
  ``report.html``; :func:`verdict_table` renders those files as the README's table;
- ``Reproduction(stack=K)``: how many runs train together when ``--stack`` is not given (larger
  stacks are cheaper per run on CPU; None: the sweep driver's default).
"""
from __future__ import annotations

import importlib
import inspect
import json
import math
import os
import pkgutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..report.build import Section
from . import stats

__all__ = ["SCALES", "Verdict", "Reproduction", "REGISTRY", "register", "get", "describe", "discover", "spec_path",
           "claim_numbers", "spec_seeds", "claims"]

SCALES = ("small", "paper")
SPEC_DIR = Path(__file__).resolve().parent / "specs"


@dataclass
class Verdict:
    """What a reproduction found.

    ``held`` is True (the claim held here), False (it did not) or None (inconclusive: the margin is
    inside the seeds' spread). ``line`` is what a person reads first, e.g.
    ``"decoupling: HELD — |slope| … = +1.27 ± 0.37 (95% t-interval, 3 seeds) against 0.5"``.
    ``numbers`` are the values behind it (plain JSON data); ``sections`` go into the report.
    ``premises``: the measured conditions of the regime the claim needs (:class:`~.stats.Premise`);
    one not met makes the status ``PREMISE NOT MET``: the claim was not
    judged. ``seeds``: how many seeds per cell the verdict read; ``selection``: the split that chose
    the cells (``"validation"``). ``claim``: False for an entry that states no claim (its status is
    ``REPORTED``). :meth:`Reproduction.run` fills in ``wall_s``, ``report`` (the HTML file), ``looks``
    (the seed counts judged on the way to a decided verdict) and the report's method table
    (``table_text``, ``summary``).
    """

    name: str
    held: bool | None
    line: str
    numbers: dict[str, Any] = field(default_factory=dict)
    sections: list[Section] = field(default_factory=list)
    wall_s: float = 0.0
    report: Path | None = None
    claim: bool = True
    table_text: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    premises: list[stats.Premise] = field(default_factory=list)
    seeds: int = 0
    selection: str = "validation"
    looks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def premises_failed(self) -> list[stats.Premise]:
        return [p for p in self.premises if not p.held]

    @property
    def status(self) -> str:
        if not self.claim:
            return stats.REPORTED
        if self.premises_failed:
            return stats.PREMISE_NOT_MET
        return stats.status(self.held)

    @property
    def decided(self) -> bool:
        """Whether the verdict is final: a claim held or did not, a premise failed, or no claim."""
        return self.status != stats.status(None)

    def record(self, scale: str, store: Path | str | None = None) -> dict[str, Any]:
        """What ``verdict.json`` holds (plain JSON data): name, scale, status, the line, premises,
        selection, seeds, the seed counts judged (``looks``), the numbers, wall time and store."""
        return {"name": self.name, "scale": scale, "status": self.status, "held": self.held, "line": self.line,
                "premises": [p.plain() for p in self.premises], "selection": self.selection,
                "seeds": self.seeds, "looks": self.looks, "numbers": self.numbers,
                "wall_s": round(self.wall_s, 1), "store": None if store is None else str(store),
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "cores": os.cpu_count()}


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
        side (default: one per core, up to 4); ``retry_failed`` trains the runs that failed before again.

        While the verdict is undecided (INCONCLUSIVE) and the spec's ``[claim]`` allows more seeds
        (``max_seeds``), ``seed_step`` more seeds of every cell train and the verdict is judged again;
        the seed counts judged are ``Verdict.looks``. The steps are fixed in advance in the spec, so
        the number of looks is bounded and stated with the verdict."""
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
        max_seeds, seed_step = self.sequential(spec)
        extra = {"progress": progress} if "progress" in inspect.signature(self.analyze).parameters else {}
        looks: list[dict[str, Any]] = []
        while True:  # seeds are added in steps fixed in advance until the verdict is decided (or max_seeds)
            run_sweep(spec, store, stack=stack or self.stack or DEFAULT_STACK, progress=progress,
                      processes=processes, retry_failed=retry_failed,
                      note_spec_change=not looks)  # seeds it adds itself are no news
            verdict = self.analyze(store, spec, scale, **extra)
            verdict.seeds = verdict.seeds or _finished_seeds(store, spec.name)
            looks.append({"seeds": verdict.seeds, "status": verdict.status})
            now = spec.seeds()
            if verdict.decided or len(now) >= max_seeds:
                break
            more = list(range(max(now) + 1, max(now) + 1 + min(seed_step, max_seeds - len(now))))
            if progress:
                print(f"{self.name}: undecided with {len(now)} seeds; adding seeds {more[0]}–{more[-1]} "
                      f"(at most {max_seeds}, fixed in the spec)", file=sys.stderr)
            spec = spec.with_seeds([*now, *more])
        verdict.looks = looks
        if report:
            sections = list(verdict.sections)
            if verdict.claim:
                prose = verdict.line
                if verdict.premises:
                    prose += "\n\nPremises: " + "; ".join(p.text() for p in verdict.premises) + "."
                if len(looks) > 1:
                    prose += ("\n\nSeeds were added until the verdict was decided: " +
                              ", ".join(f"{look['seeds']} seeds {look['status']}" for look in looks) + ".")
                sections.insert(0, Section(title=f"Verdict: {verdict.status}", prose=prose))
            result = build_report(store, sweep=spec.name, out_dir=out, sections=sections)
            verdict.report, verdict.table_text, verdict.summary = result.html_path, result.table_text, result.summary
        verdict.wall_s = time.perf_counter() - start
        if verdict.report is not None:
            path = verdict.report.parent / "verdict.json"
            path.write_text(json.dumps(verdict.record(scale, store), indent=2, ensure_ascii=False,
                                       default=_json_default) + "\n", encoding="utf-8")
        return verdict

    def sequential(self, spec: Any) -> tuple[int, int]:
        """``(max_seeds, seed_step)`` from the spec's ``[claim]`` table: an undecided verdict gets
        ``seed_step`` more seeds (default: as many as the spec has) until it is decided or has
        ``max_seeds`` (default: the spec's own count, i.e. no seeds added)."""
        have = len(spec.seeds())
        claim = getattr(spec, "claim", {}) or {}
        where = f"[claim] of the spec {spec.name!r}"
        max_seeds = claim.get("max_seeds", have)
        seed_step = claim.get("seed_step", have)
        for key, value, low in (("max_seeds", max_seeds, have), ("seed_step", seed_step, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{key} in {where} must be an integer >= {low}, got {value!r}")
        return max_seeds, seed_step


def _finished_seeds(store: Path, sweep: str) -> int:
    from ..store import load_sweep

    return len({run.config.get("seed") for run in load_sweep(store, sweep).runs})


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
        if not module.name.startswith("_") and module.name not in ("core", "stats", "verdicts"):
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


def claim_numbers(spec: Any, keys: Sequence[str], *, positive: bool = False) -> dict[str, float]:
    """The numbers ``keys`` of ``spec``'s ``[claim]`` table (the thresholds a reproduction fixed in
    advance), as floats. ``ValueError`` names the spec and every key that is missing or not a number
    (or not > 0 with ``positive``), with what it holds."""
    claim = getattr(spec, "claim", None) or {}
    bad = {k: claim.get(k) for k in keys
           if isinstance(claim.get(k), bool) or not isinstance(claim.get(k), int | float)
           or not math.isfinite(claim[k]) or (positive and not claim[k] > 0)}
    if bad:
        what = "numbers > 0" if positive else "numbers"
        raise ValueError(f"the spec {spec.name!r} needs [claim] {', '.join(bad)} = {what} (see the spec's "
                         f"comments); got {bad!r}")
    return {k: float(claim[k]) for k in keys}


def spec_seeds(spec: Any) -> int:
    """The fewest distinct seeds any (method, everything-but-seed) cell of a spec has."""
    cells: dict[tuple, set[int]] = {}
    for label, config in spec.configs():
        d = config.to_dict()
        seed = d.pop("seed")
        cells.setdefault((label, json.dumps(d, sort_keys=True)), set()).add(seed)
    return min((len(s) for s in cells.values()), default=0)
