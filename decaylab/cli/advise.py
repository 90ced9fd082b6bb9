"""``decaylab advise``: what a λ means, in every convention and timescale, and λ from a timescale.

::

    decaylab advise --lr 1e-3 --weight-decay 0.1 [--convention torch] [--steps T] [--batch-size B]
                    [--dataset-size N] [--schedule cosine] [--warmup-steps W] [--final-lr-ratio r] [--json]
    decaylab advise --lr 1e-3 --tau-epochs 5 --batch-size 256 --dataset-size 50000     # λ from a timescale
    decaylab advise --from-store runs/sweep.sqlite [--sweep NAME] [--metric M] [--lr ... target sizes]

The first prints the timescales of λ (``τ_iter``, ``τ_epoch``, ``τ`` as a fraction of the run, the
integrated decay in e-folds, the equilibrium angular update) and λ in every convention, equal at peak
lr and, with a run length, equal in integrated decay; then the rules of the literature that apply.
With ``--tau-iters``/``--tau-epochs``/``--tau-fraction`` instead of ``--weight-decay`` it first finds
the λ of that timescale. ``--from-store`` reads a sweep's finished runs and finds the timescale that
was best per seed, on validation where the runs record a validation metric (else on what they record,
and says so); with a target ``--lr`` and sizes it gives the λ that keeps that timescale there.
Formulas: :mod:`decaylab.timescale`. Bad input: one line naming the argument on stderr, exit status 2.
"""
from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from ._args import error as error_line

__all__ = ["add_parser", "run", "fit_store", "StoreFit", "AdviseError"]

TIMESCALE_FLAGS = ("--tau-iters", "--tau-epochs", "--tau-fraction")


class AdviseError(ValueError):
    """Bad input to ``decaylab advise``; the message names the argument."""


HELP = "what a λ means: timescales, every library's convention, λ from a timescale"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``advise`` on an ``add_subparsers()`` object; ``args.handler(args)`` runs it."""
    from ..timescale import CONVENTIONS, SCHEDULE_KINDS

    parser = subparsers.add_parser(
        "advise", help=HELP,
        description="Print the timescales a weight decay sets (τ_iter, τ_epoch, τ as a fraction of the run, "
                    "integrated decay, equilibrium angular update), λ in every convention, and the rules of the "
                    "literature with their sources; or λ from a target timescale; or the best timescale of a "
                    "sweep store. Formulas: docs/methods.md.")
    # Numbers are read as text and checked in run(), so that bad input is one line naming the argument.
    # argparse takes "-1" for a value but "-1e-3" for an unknown option; this pattern (argparse's own, with
    # an exponent) lets every negative number reach that check.
    parser._negative_number_matcher = re.compile(r"^-\d+(?:[eE][+-]?\d+)?$|^-\d*\.\d+(?:[eE][+-]?\d+)?$")
    parser.add_argument("--lr", metavar="LR", help="peak learning rate (the optimizer's lr)")
    parser.add_argument("--weight-decay", metavar="λ", help="the weight decay, in --convention")
    parser.add_argument("--convention", default="torch", metavar="NAME",
                        help=f"the convention of --weight-decay and of λ from a timescale: {', '.join(CONVENTIONS)} "
                             "(or decaylab's decay_scale names lr, schedule); default torch")
    parser.add_argument("--tau-iters", metavar="STEPS", help="target τ_iter = 1/(s_peak·λ), in optimizer steps")
    parser.add_argument("--tau-epochs", metavar="EPOCHS", help="target τ_epoch = τ_iter·B/N (needs --batch-size "
                                                                "and --dataset-size)")
    parser.add_argument("--tau-fraction", metavar="F", help="target τ as a fraction of the run, τ_iter/steps "
                                                            "(Power Lines; needs --steps)")
    parser.add_argument("--steps", metavar="T", help="optimizer steps of the run")
    parser.add_argument("--batch-size", metavar="B", help="examples per step")
    parser.add_argument("--dataset-size", metavar="N", help="training examples")
    parser.add_argument("--schedule", metavar="KIND", default=None,
                        help=f"lr schedule over --steps: {', '.join(SCHEDULE_KINDS)} (default: a constant lr)")
    parser.add_argument("--warmup-steps", metavar="W", default=None, help="linear warmup steps (default 0)")
    parser.add_argument("--final-lr-ratio", metavar="R", default=None,
                        help="the schedule's final lr / peak lr (default 0)")
    parser.add_argument("--beta1", metavar="β1", default=None,
                        help="momentum β₁ (AdamW) or μ (SGDW) of the equilibrium angular update (default 0.9)")
    parser.add_argument("--from-store", metavar="STORE", help="a sweep's run store: report its best timescale")
    parser.add_argument("--sweep", metavar="NAME", help="which sweep of --from-store (default: the only one)")
    parser.add_argument("--metric", metavar="M",
                        help="what selects the best run of --from-store (default: val_acc, val_loss, else test_acc, "
                             "test_loss: the first the runs record); *_acc is higher-better, the rest lower-better")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.set_defaults(handler=run)
    return parser


# ------------------------------------------------------------------------------------------- reading arguments


def _number(args: argparse.Namespace, attr: str, *, positive: bool = True) -> float | None:
    text = getattr(args, attr)
    if text is None:
        return None
    flag = "--" + attr.replace("_", "-")
    what = "a number > 0" if positive else "a number >= 0"
    try:
        value = float(text)
    except ValueError:
        raise AdviseError(f"{flag} must be {what}, got {text!r}") from None
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise AdviseError(f"{flag} must be {what}, got {text}")
    return value


def _integer(args: argparse.Namespace, attr: str, *, low: int = 1) -> int | None:
    text = getattr(args, attr)
    if text is None:
        return None
    flag = "--" + attr.replace("_", "-")
    try:
        value = int(text)
    except ValueError:
        raise AdviseError(f"{flag} must be an integer >= {low}, got {text!r}") from None
    if value < low:
        raise AdviseError(f"{flag} must be an integer >= {low}, got {value}")
    return value


@dataclass
class _Setting:
    lr: float | None
    convention: Any
    steps: int | None
    batch_size: int | None
    dataset_size: int | None
    schedule: Any
    schedule_text: str
    beta1: float


def _setting(args: argparse.Namespace) -> _Setting:
    from .. import timescale as ts

    try:
        conv = ts.get_convention(args.convention)
    except ValueError as error:
        raise AdviseError(f"--{error}") from None
    lr = _number(args, "lr")
    steps = _integer(args, "steps")
    batch_size, dataset_size = _integer(args, "batch_size"), _integer(args, "dataset_size")
    warmup = _integer(args, "warmup_steps", low=0)
    ratio = _number(args, "final_lr_ratio", positive=False)
    beta1 = _number(args, "beta1", positive=False)
    if beta1 is not None and beta1 >= 1:
        raise AdviseError(f"--beta1 must be a number in [0, 1), got {args.beta1}")
    if ratio is not None and ratio > 1:
        raise AdviseError(f"--final-lr-ratio must be a number in [0, 1], got {args.final_lr_ratio}")
    if (batch_size is None) != (dataset_size is None):
        have, need = ("--batch-size", "--dataset-size") if dataset_size is None else ("--dataset-size", "--batch-size")
        raise AdviseError(f"{need} is needed with {have}: τ_epoch = τ_iter·batch_size/dataset_size needs both")
    schedule, text = None, "a constant lr"
    if args.schedule is not None or warmup is not None or ratio is not None:
        if steps is None:
            raise AdviseError("--steps is needed with --schedule, --warmup-steps or --final-lr-ratio: the "
                              "schedule runs over the run's steps")
        kind = args.schedule or "constant"
        if kind not in ts.SCHEDULE_KINDS:
            raise AdviseError(f"--schedule must be one of {', '.join(ts.SCHEDULE_KINDS)}, got {kind!r}")
        if kind == "warmup_cosine" and not warmup:
            raise AdviseError("--warmup-steps must be an integer >= 1 with --schedule warmup_cosine")
        if warmup is not None and warmup >= steps:
            raise AdviseError(f"--warmup-steps must be smaller than --steps ({steps}), got {warmup}")
        schedule = ts.lr_schedule(kind, steps, warmup_steps=warmup or 0, final_lr_ratio=ratio or 0.0)
        text = kind + (f" with {warmup} warmup steps" if warmup else "") + (f", final ratio {ratio:g}" if ratio else "")
    return _Setting(lr, conv, steps, batch_size, dataset_size, schedule, text, 0.9 if beta1 is None else beta1)


def _weight_decay(args: argparse.Namespace, s: _Setting) -> tuple[float, str | None]:
    """λ in ``s.convention`` from ``--weight-decay`` or a target timescale, and which timescale it came from."""
    from .. import timescale as ts

    given = [flag for flag in ("--weight-decay", *TIMESCALE_FLAGS) if getattr(args, flag[2:].replace("-", "_"))]
    if len(given) > 1:
        raise AdviseError(f"give one of --weight-decay, {', '.join(TIMESCALE_FLAGS)}; got {' and '.join(given)}")
    if not given:
        raise AdviseError(f"--weight-decay (or a target timescale: {', '.join(TIMESCALE_FLAGS)}) is required")
    if s.lr is None:
        raise AdviseError("--lr is required: every timescale of λ depends on the peak learning rate")
    if given[0] == "--weight-decay":
        return _number(args, "weight_decay", positive=False), None
    if given[0] == "--tau-iters":
        return ts.tau_iters(_number(args, "tau_iters"), lr=s.lr, convention=s.convention), "--tau-iters"
    if given[0] == "--tau-epochs":
        tau = _number(args, "tau_epochs")
        if s.batch_size is None:
            raise AdviseError("--batch-size and --dataset-size are needed with --tau-epochs: "
                              "λ = batch_size/(τ_epoch·dataset_size·s_peak)")
        return ts.tau_epochs(tau, lr=s.lr, batch_size=s.batch_size, dataset_size=s.dataset_size,
                             convention=s.convention), "--tau-epochs"
    tau = _number(args, "tau_fraction")
    if s.steps is None:
        raise AdviseError("--steps is needed with --tau-fraction: λ = 1/(fraction·steps·s_peak)")
    return ts.tau_fraction(tau, lr=s.lr, steps=s.steps, convention=s.convention), "--tau-fraction"


# ------------------------------------------------------------------------------------------- the advice


def _fmt(x: float | None, spec: str = ".5g") -> str:
    if x is None:
        return "—"
    return "∞" if math.isinf(x) else format(x, spec)


def advice(args: argparse.Namespace) -> dict[str, Any]:
    """The advice as plain data (what ``--json`` prints)."""
    from .. import timescale as ts

    s = _setting(args)
    lam, source = _weight_decay(args, s)
    got = ts.timescales(lam, lr=s.lr, convention=s.convention, steps=s.steps, batch_size=s.batch_size,
                        dataset_size=s.dataset_size, schedule=s.schedule, beta=s.beta1)
    out = got.to_dict()
    out.update({"from_timescale": source, "steps": s.steps, "batch_size": s.batch_size,
                "dataset_size": s.dataset_size, "schedule": s.schedule_text if s.steps else None,
                "libraries": {name: list(c.libraries) for name, c in ts.CONVENTIONS.items()},
                "per_step": {name: c.per_step for name, c in ts.CONVENTIONS.items()},
                "recommendations": [vars(r) for r in ts.recommendations(got)]})
    return out


def format_advice(a: dict[str, Any]) -> str:
    """The readable table of :func:`advice`."""
    from .. import timescale as ts

    conv = ts.CONVENTIONS[a["convention"]]
    head = f"λ = {a['weight_decay_given']:.6g} in the {conv.name} convention (decay per step {conv.per_step}), " \
           f"peak lr {a['lr']:g}"
    if a["from_timescale"]:
        head += f"  [from {a['from_timescale']}]"
    lines = [head]
    if a["steps"]:
        lines.append(f"run: {a['steps']} steps, {a['schedule']}"
                     + (f", batch {a['batch_size']}, {a['dataset_size']} examples ({a['epochs']:.4g} epochs)"
                        if a["batch_size"] else ""))
    lines += ["", "timescales (at peak lr)"]
    rows = [("τ_iter", f"{_fmt(a['tau_iter'])} steps", "1/(s_peak·λ): the weights' EMA timescale (Wang & Aitchison)")]
    if a["tau_epoch"] is not None:
        rows.append(("τ_epoch", f"{_fmt(a['tau_epoch'])} epochs",
                     f"τ_iter·B/N with B = {a['batch_size']}, N = {a['dataset_size']}"))
    else:
        rows.append(("τ_epoch", "—", "give --batch-size and --dataset-size"))
    if a["tau_fraction"] is not None:
        rows.append(("τ / run", f"{_fmt(a['tau_fraction'])} of the run", "τ_iter/T = B/(η·λ·D) (Power Lines)"))
        left = math.exp(-a["integrated_decay_efolds"])
        rows.append(("decay", f"{_fmt(a['integrated_decay_efolds'])} e-folds",
                     f"Σ_t s_t·λ over the run: decay alone leaves {left:.3g} of the initial weights"))
    else:
        rows.append(("τ / run", "—", "give --steps"))
    rows.append(("angle", f"{_fmt(a['angular_update_rad'])} rad/step",
                 f"equilibrium angular update, β = {a['beta1']:g} (Kosson et al.; scale-invariant weights)"))
    if a["equilibrium_weight_rms"] is not None:
        rows.append(("‖w‖/√C", f"{_fmt(a['equilibrium_weight_rms'])}",
                     "AdamW's equilibrium weight norm per coordinate, lr/sqrt(2·s_peak·λ) (Kosson et al.)"))
    lines += [f"  {k:<9}{v:<24}{note}" for k, v, note in rows]

    # With a constant lr both definitions of "equivalent" give the same λ: one column then.
    integrated = a.get("weight_decay_integrated") if a["schedule"] not in (None, "a constant lr") else None
    lines += ["", "λ in every convention"]
    header = f"  {'':<10}{'decay per step':<18}{'equal at peak lr':<18}" + \
        (f"{'equal Σ s_t·λ':<18}" if integrated else "") + "used by"
    lines.append(header)
    for name, lam in a["weight_decay"].items():
        value = f"{lam:<18.6g}" + (f"{integrated[name]:<18.6g}" if integrated else "")
        lines.append(f"  {name:<10}{a['per_step'][name]:<18}{value}{', '.join(a['libraries'][name])}")
    if a["steps"] is None:
        lines.append("  (give --steps and --schedule for λ at equal integrated decay over the run)")
    elif integrated is None:
        lines.append("  (with a constant lr, equal integrated decay gives the same λ; --schedule for another)")
    lines += ["", "rules of the literature (sources in docs/methods.md)"]
    for r in a["recommendations"]:
        lines.append(f"  - {r['name']}: {r['rule']}")
        lines.append(f"    {r['source']}; measured on {r['measured_on']}")
        if r["assessment"]:
            lines.append(f"    here: {r['assessment']}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- --from-store

# Decay forms under which the weights are an EMA of the updates with τ_iter = 1/(s·λ).
EMA_FORMS = ("decoupled", "prox")


@dataclass
class StoreFit:
    """The best timescale of each method of a sweep: per seed, the run with the best ``metric``."""

    sweep: str
    metric: str
    higher_is_better: bool
    validation: bool
    unit: str  # "epochs", "fraction" (of the run) or "iterations"
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


METRIC_ORDER = ("val_acc", "val_loss", "test_acc", "test_loss")


def _pick_metric(runs: list[Any], metric: str | None) -> tuple[str, bool]:
    present = set.intersection(*(set(r.final) for r in runs))
    if metric is not None:
        if metric not in present:
            raise AdviseError(f"--metric must be a final metric every run records ({', '.join(sorted(present))}); "
                              f"got {metric!r}")
        return metric, metric.startswith("val")
    for name in METRIC_ORDER:
        if name in present:
            return name, name.startswith("val")
    raise AdviseError(f"--metric is needed: the runs record none of {', '.join(METRIC_ORDER)} "
                      f"(they record {', '.join(sorted(present))})")


def _run_tau(config: dict[str, Any], final: dict[str, Any]) -> dict[str, float | None]:
    from .. import timescale as ts

    tau = ts.tau_iter(float(config["weight_decay"]), float(config["lr"]), config.get("decay_scale", "lr"))
    steps = final.get("steps") or config.get("steps")
    epochs = config.get("epochs") if config.get("steps") is None else None
    return {"iterations": tau,
            "fraction": tau / steps if steps else None,
            "epochs": tau * epochs / steps if steps and epochs else None}


def _log_stats(values: list[float]) -> dict[str, Any]:
    finite = [v for v in values if math.isfinite(v) and v > 0]
    if len(finite) < len(values):  # λ = 0 won for some seed: the timescale is infinite there
        return {"geomean": math.inf if not finite else None, "min": min(values), "max": max(values),
                "factor": None, "values": values}
    logs = [math.log(v) for v in finite]
    mean = sum(logs) / len(logs)
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / (len(logs) - 1)) if len(logs) > 1 else math.nan
    return {"geomean": math.exp(mean), "min": min(values), "max": max(values), "factor": math.exp(sd),
            "values": values}


def fit_store(store: str, sweep: str | None = None, metric: str | None = None) -> StoreFit:
    """Per method and seed, the timescale of the best run (by ``metric``); its geometric mean over
    seeds, range and spread factor ``exp(sd of log τ)``. Runs whose decay is not an EMA of the updates
    (``l2``, ``prox_euclid``, ``cautious``, ``stable``) are left out, with a note."""
    from ..store import load_sweep

    try:
        data = load_sweep(store, sweep)
    except (FileNotFoundError, ValueError) as error:
        raise AdviseError(f"--from-store: {error}") from None
    runs = [r for r in data.runs if r.config.get("decay", "decoupled") in EMA_FORMS
            and "lr" in r.config and "weight_decay" in r.config]
    notes = []
    if len(runs) < len(data.runs):
        notes.append(f"{len(data.runs) - len(runs)} of {len(data.runs)} finished runs left out: their decay form is "
                     f"not one of {', '.join(EMA_FORMS)} (no EMA timescale)")
    if not runs:
        raise AdviseError(f"--from-store: sweep {data.name!r} has no finished run with decoupled or proximal decay")
    name, validation = _pick_metric(runs, metric)
    higher = name.endswith("_acc")
    if not validation:
        notes.append(f"the runs record no validation metric: the best run is selected on {name}, which makes the "
                     "timescale optimistic for that split (a store from before decaylab's runs recorded validation)")
    taus = {id(r): _run_tau(r.config, r.final) for r in runs}
    unit = next(u for u in ("epochs", "fraction", "iterations") if all(taus[id(r)][u] is not None for r in runs))
    fit = StoreFit(data.name, name, higher, validation, unit, notes=notes)

    def score(run: Any) -> float:
        value = run.final.get(name)
        if value is None or not math.isfinite(float(value)):
            return -math.inf  # a diverged run is never the best
        return float(value) if higher else -float(value)

    for label in sorted({r.label for r in runs}):
        mine = [r for r in runs if r.label == label]
        seeds = sorted({r.config.get("seed", 0) for r in mine})
        best = {seed: max((r for r in mine if r.config.get("seed", 0) == seed), key=score) for seed in seeds}
        entry = _log_stats([taus[id(best[seed])][unit] for seed in seeds])
        entry.update({"seeds": len(seeds),
                      "best": [{"seed": seed, "lr": r.config["lr"], "weight_decay": r.config["weight_decay"],
                                "decay_scale": r.config.get("decay_scale", "lr"), name: r.final.get(name)}
                               for seed, r in best.items()]})
        fit.methods[label] = entry
    return fit


def _store_target(fit: StoreFit, s: _Setting) -> dict[str, Any] | None:
    """λ at the target setting that keeps each method's best timescale (geometric mean over seeds)."""
    from .. import timescale as ts

    if s.lr is None:
        return None
    out = {}
    for label, entry in fit.methods.items():
        tau = entry["geomean"]
        if tau is None or not math.isfinite(tau):
            continue
        if fit.unit == "epochs":
            if s.batch_size is None:
                return {"needs": "--batch-size and --dataset-size (the timescale is in epochs)"}
            lam = ts.tau_epochs(tau, lr=s.lr, batch_size=s.batch_size, dataset_size=s.dataset_size, convention="torch")
        elif fit.unit == "fraction":
            if s.steps is None:
                return {"needs": "--steps (the timescale is a fraction of the run)"}
            lam = ts.tau_fraction(tau, lr=s.lr, steps=s.steps, convention="torch")
        else:
            lam = ts.tau_iters(tau, lr=s.lr, convention="torch")
        out[label] = {name: ts.convert(lam, lr=s.lr, source="torch", target=name) for name in ts.CONVENTIONS}
    return out


def format_fit(d: dict[str, Any]) -> str:
    unit = {"epochs": "epochs", "fraction": "of the run", "iterations": "steps"}[d["unit"]]
    split = "validation" if d["validation"] else f"{d['metric']} (NOT a validation metric)"
    lines = [f"sweep {d['sweep']!r}: best τ per seed, selected on {split}, τ in {unit}"]
    lines += [f"note: {n}" for n in d["notes"]]
    for label, e in d["methods"].items():
        spread = f" ×/÷ {e['factor']:.3g}" if e["factor"] and math.isfinite(e["factor"]) else ""
        lines.append(f"  {label:<20} τ* = {_fmt(e['geomean'])}{spread} {unit} (geometric mean over {e['seeds']} "
                     f"seeds; range {_fmt(e['min'])} … {_fmt(e['max'])})")
    target = d.get("target")
    if target and "needs" in target:
        lines.append(f"for λ at your setting, give {target['needs']}")
    elif target:
        lines.append("λ that keeps τ* at your setting (equal decay per step at peak lr):")
        for label, row in target.items():
            lines.append(f"  {label:<20} " + "  ".join(f"{k} {v:.4g}" for k, v in row.items()))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- entry points


def run(args: argparse.Namespace) -> int:
    """Print the advice (or the store's fit); bad input: one line on stderr, exit status 2."""
    try:
        if args.from_store is not None:
            given = [f for f in ("--weight-decay", *TIMESCALE_FLAGS) if getattr(args, f[2:].replace("-", "_"))]
            if given:
                raise AdviseError(f"--from-store finds the timescale itself; leave out {' and '.join(given)}")
            setting = _setting(args)
            fit = fit_store(args.from_store, args.sweep, args.metric)
            d = {"sweep": fit.sweep, "metric": fit.metric, "higher_is_better": fit.higher_is_better,
                 "validation": fit.validation, "unit": fit.unit, "methods": fit.methods, "notes": fit.notes,
                 "target": _store_target(fit, setting)}
            print(_dumps(d) if args.json else format_fit(d))
            return 0
        if args.sweep is not None or args.metric is not None:
            raise AdviseError("--sweep and --metric go with --from-store")
        a = advice(args)
    except ValueError as error:  # AdviseError, and the library's own checks (which name the argument)
        return error_line("advise", error)
    print(_dumps(a) if args.json else format_advice(a))
    return 0


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float as None (an infinite τ: λ = 0), so the output is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _dumps(value: Any) -> str:
    return json.dumps(_finite(value), indent=2, allow_nan=False, ensure_ascii=False)
