"""The verdict machinery every reproduction shares: premises (PREMISE NOT MET, never a verdict),
t-intervals against a threshold fixed in the spec's [claim] table, seeds added until the verdict is
decided, verdict.json, and the README's table generated from verdict files (checked against the
copies the repository keeps)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from decaylab.cli import main
from decaylab.reproduce import Reproduction, Verdict, stats, verdicts
from decaylab.reproduce.stats import Premise, against, interval, verdict_line
from decaylab.sweep import load_spec

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------- statistics


def test_t_interval_matches_scipy_and_the_textbook():
    from scipy import stats as sp

    xs = [0.31, 0.52, 0.44, 0.12, 0.60]
    got = interval(xs)
    low, high = sp.t.interval(0.95, len(xs) - 1, loc=sum(xs) / len(xs), scale=sp.sem(xs))
    assert math.isclose(got.low, low, rel_tol=1e-12) and math.isclose(got.high, high, rel_tol=1e-12)
    assert math.isclose(stats.t_quantile(2), 12.7062047, rel_tol=1e-7)  # the t table, 1 degree of freedom
    assert math.isinf(interval([1.0]).half) and interval([1.0, math.nan, 2.0]).n == 2


def test_against_decides_only_outside_the_interval():
    tight = interval([1.0, 1.1, 0.9, 1.05])
    assert against(tight, 0.5) is True and against(tight, 1.5) is False and against(tight, 1.0) is None
    assert against(interval([1.0, 1.1]), 0.0) is None  # fewer than MIN_SEEDS seeds: never decided
    assert against(interval([-5.0, 5.0, 0.1]), 0.0) is None


def test_premises():
    assert Premise.at_least("train accuracy", 0.995, 0.99).held
    assert not Premise.at_least("train accuracy", 0.98, 0.99).held
    assert not Premise.at_most("edge optima", math.nan, 0).held  # a nan never meets a premise
    p = Premise.at_most("optima on an edge", 2, 0, "2 of 12 rows")
    assert p.plain() == {"name": "optima on an edge", "value": 2.0, "threshold": 0, "held": False,
                         "relation": "≤", "detail": "2 of 12 rows"}
    assert p.text() == "optima on an edge 2 ≤ 0: NOT MET"
    v = Verdict("x", True, "x: HELD — y", premises=[Premise.at_least("a", 1.0, 0.5), p])
    assert v.status == "PREMISE NOT MET" and v.premises_failed == [p] and v.decided
    assert Verdict("x", None, "", premises=[Premise.at_least("a", 1.0, 0.5)]).status == "INCONCLUSIVE"
    assert stats.premises_line([Premise.at_least("a", 1.0, 0.5), p]) == "optima on an edge 2 ≤ 0: NOT MET"


# ------------------------------------------------------------------------------------- the [claim] table


def test_spec_claim_table_and_with_seeds():
    spec = load_spec('name = "s"\n[claim]\nthreshold = 0.3\nmax_seeds = 9\n[grid]\nlr = [0.1, 0.2]\nseed = [0, 1, 2]\n'
                     '[[methods]]\nlabel = "a"\n[[methods]]\nlabel = "b"\ndecay = "l2"\n')
    assert spec.claim == {"threshold": 0.3, "max_seeds": 9} and spec.seeds() == [0, 1, 2]
    more = spec.with_seeds(range(6))
    assert len(more) == 2 * len(spec) and more.seeds() == list(range(6))
    assert {c.key() for _, c in spec.configs()} < {c.key() for _, c in more.configs()}  # the same runs, and more
    assert [label for label, _ in more.configs()].count("b") == 12 and more.text != spec.text
    with pytest.raises(ValueError, match=r"\[claim\] must be a table"):
        load_spec('name = "s"\nclaim = 3\n')


def _tiny(tmp_path: Path, claim: str = "") -> Path:
    spec_file = tmp_path / "tiny.toml"
    spec_file.write_text(f'name = "tiny"\n{claim}[base]\nsteps = 2\nbatch_size = 32\n[grid]\nseed = [0, 1, 2]\n')
    return spec_file


def test_seeds_are_added_until_the_verdict_is_decided(tmp_path, capsys):
    looks = []

    def analyze(store, spec, scale):
        from decaylab.store import load_sweep

        n = len({r.config["seed"] for r in load_sweep(store, spec.name).runs})
        looks.append(n)
        held = True if n >= 7 else None
        return Verdict("tiny", held, verdict_line("tiny", held, f"{n} seeds"),
                       premises=[Premise.at_least("p", 1.0, 0.5)])

    spec_file = _tiny(tmp_path, "[claim]\nmax_seeds = 9\nseed_step = 2\n")
    repro = Reproduction("tiny", "t", "c", "s", analyze, specs={"small": str(spec_file)})
    verdict = repro.run(store=tmp_path / "t.sqlite", out=tmp_path / "out", progress=False, processes=1)
    assert looks == [3, 5, 7] and verdict.status == "HELD" and verdict.seeds == 7
    assert [look["seeds"] for look in verdict.looks] == [3, 5, 7]
    assert [look["status"] for look in verdict.looks] == ["INCONCLUSIVE", "INCONCLUSIVE", "HELD"]
    record = json.loads((tmp_path / "out" / "verdict.json").read_text())
    assert record["seeds"] == 7 and record["selection"] == "validation" and record["status"] == "HELD"
    assert record["premises"] == [{"name": "p", "value": 1.0, "threshold": 0.5, "held": True, "relation": "≥",
                                   "detail": ""}]
    assert "Seeds were added until the verdict was decided" in verdict.report.read_text()
    assert "different spec text" not in capsys.readouterr().err  # its own added seeds are no news

    looks.clear()  # a second call reads the 7 seeds the store has: decided at once, nothing trains
    again = repro.run(store=tmp_path / "t.sqlite", out=tmp_path / "out", progress=False, processes=1)
    assert looks == [7] and again.status == "HELD"


def test_undecided_stops_at_max_seeds_and_a_failed_premise_stops_at_once(tmp_path):
    calls = []

    def never(store, spec, scale):
        calls.append(len(spec.seeds()))
        return Verdict("tiny", None, "tiny: INCONCLUSIVE — no")

    spec_file = _tiny(tmp_path, "[claim]\nmax_seeds = 5\n")  # seed_step defaults to the spec's 3
    verdict = Reproduction("tiny", "t", "c", "s", never, specs={"small": str(spec_file)}).run(
        store=tmp_path / "a.sqlite", report=False, progress=False, processes=1)
    assert calls == [3, 5] and verdict.status == "INCONCLUSIVE"

    calls.clear()

    def premise(store, spec, scale):
        calls.append(len(spec.seeds()))
        return Verdict("tiny", None, "tiny: PREMISE NOT MET", premises=[Premise.at_least("acc", 0.5, 0.99)])

    verdict = Reproduction("tiny", "t", "c", "s", premise, specs={"small": str(spec_file)}).run(
        store=tmp_path / "b.sqlite", report=False, progress=False, processes=1)
    assert calls == [3] and verdict.status == "PREMISE NOT MET"  # more seeds cannot mend a regime


def test_bad_max_seeds_is_refused_before_anything_trains(tmp_path):
    spec_file = _tiny(tmp_path, "[claim]\nmax_seeds = 2\n")
    repro = Reproduction("tiny", "t", "c", "s", lambda *a: None, specs={"small": str(spec_file)})
    with pytest.raises(ValueError, match=r"max_seeds in \[claim\] of the spec 'tiny' must be an integer >= 3, got 2"):
        repro.run(store=tmp_path / "t.sqlite", progress=False)
    assert not (tmp_path / "t.sqlite").exists()


# ------------------------------------------------------------------------------------- the README's table


def _record(name: str, status: str = "HELD", **extra) -> dict:
    return {"name": name, "scale": "small", "status": status, "held": status == "HELD",
            "line": f"{name}: {status} — effect +0.5 ± 0.1 against 0.2", "seeds": 5,
            "premises": [{"name": "train accuracy", "value": 0.999, "threshold": 0.99, "held": True,
                          "relation": "≥", "detail": ""}],
            "looks": [{"seeds": 5, "status": status}], "wall_s": 30.2, "cores": 2,
            "finished": "2026-12-03T12:00:00+00:00", **extra}


def test_table_cli_copies_and_updates_the_readme_block(tmp_path, capsys):
    runs = tmp_path / "runs"
    for name in ("b", "a"):
        (runs / name).mkdir(parents=True)
        (runs / name / "verdict.json").write_text(json.dumps(_record(name)))
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\nbefore\n{verdicts.BEGIN}\nstale numbers\n{verdicts.END}\nafter\n")
    assert main(["reproduce", "--table", str(runs), "--copy-to", str(tmp_path / "kept"),
                 "--update", str(readme)]) == 0
    text = readme.read_text()
    assert "stale numbers" not in text and text.startswith("# x\nbefore\n") and text.endswith("after\n")
    assert text.index("| `a` |") < text.index("| `b` |") and "effect +0.5 ± 0.1 against 0.2" in text
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["a.json", "b.json"]
    assert "2 reproductions in 60 s" in capsys.readouterr().out
    # from the kept copies, the same block
    assert verdicts.render(verdicts.read([tmp_path / "kept"])) in text


def test_table_errors_name_the_problem(tmp_path, capsys):
    assert main(["reproduce", "--table", str(tmp_path / "nothing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "x"}')
    assert main(["reproduce", "--table", str(bad)]) == 2
    assert "not a verdict record of this version (missing status" in capsys.readouterr().err
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_record("g")))
    readme = tmp_path / "R.md"
    readme.write_text("no block here\n")
    assert main(["reproduce", "--table", str(good), "--update", str(readme)]) == 2
    assert "has no verdict block" in capsys.readouterr().err and readme.read_text() == "no block here\n"
    assert main(["reproduce", "--update", str(readme)]) == 2
    assert "--copy-to and --update go with --table" in capsys.readouterr().err


def test_the_readme_table_is_generated_from_the_kept_verdicts():
    """The README's verdicts are what `decaylab reproduce --table` renders from docs/verdicts (the
    verdict.json files of the last `decaylab reproduce all`): nobody typed them. Every claim has its
    record, selected on validation."""
    from decaylab.reproduce import claims

    kept = ROOT / "docs" / "verdicts"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert verdicts.BEGIN in readme and verdicts.END in readme
    block = readme.split(verdicts.BEGIN, 1)[1].split(verdicts.END, 1)[0].lstrip("\n")
    records = verdicts.read([kept])
    assert block == verdicts.render(records)
    assert {r["name"] for r in records} == set(claims())
    for r in records:
        assert r["selection"] == "validation" and r["status"] in stats.STATUSES
        assert r["seeds"] == r["looks"][-1]["seeds"] and r["status"] == r["looks"][-1]["status"]


def test_claim_numbers_name_every_bad_key():
    from decaylab.reproduce.core import claim_numbers

    spec = load_spec('name = "t"\n[claim]\na = 0.5\nb = "x"\nc = -1\nd = true\n[base]\nlr = 0.1\n')
    assert claim_numbers(spec, ("a", "c")) == {"a": 0.5, "c": -1.0}
    with pytest.raises(ValueError, match=r"the spec 't' needs \[claim\] b, d, e = numbers .*got \{'b': 'x', 'd': True, "
                                         r"'e': None\}"):
        claim_numbers(spec, ("a", "b", "d", "e"))
    with pytest.raises(ValueError, match=r"needs \[claim\] c = numbers > 0"):
        claim_numbers(spec, ("a", "c"), positive=True)
