"""decaylab.reproduce: the registry, the command, the checked-in specs, each verdict's logic (a store
where the claim holds and one where it does not), and the loss-scale field through the real loop."""
from __future__ import annotations

import json
import math
import types

import pytest
import torch
from _stores import fill_store

from decaylab.cli import main
from decaylab.reproduce import (
    REGISTRY,
    Reproduction,
    Verdict,
    claims,
    describe,
    early_decay,
    get,
)
from decaylab.reproduce.core import spec_path, spec_seeds
from decaylab.reproduce.stats import mean_std, verdict_line
from decaylab.sweep import load_spec
from decaylab.train import TrainConfig, train

MINE = ("decoupling", "early-decay", "scale-free")


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------- registry and CLI


def test_the_registry_finds_every_module_and_its_specs():
    import pkgutil

    import decaylab.reproduce as package

    modules = {m.name for m in pkgutil.iter_modules(package.__path__)} - {"core", "stats", "verdicts"}
    public = {name.replace("_", "-") for name in modules if not name.startswith("_")}
    assert set(REGISTRY) == public  # a module is an entry, found on import: no list to add it to
    assert list(REGISTRY) == sorted(REGISTRY) and set(MINE) <= set(claims())
    assert "demo" in REGISTRY and "demo" not in claims()  # the demo is an entry, with no claim
    for name, reproduction in REGISTRY.items():
        assert all(spec_path(reproduction, scale).is_file() for scale in reproduction.specs), name
        if name != "demo":  # found by name in specs/: NAME.toml and NAME-paper.toml
            assert reproduction.specs == {"small": f"{name}.toml", "paper": f"{name}-paper.toml"}
    text = describe()
    for name in MINE:
        r = get(name)
        assert f"{name} — {r.title}" in text and r.source in text and "scales: small, paper" in text


def test_unknown_name_suggests_the_closest():
    with pytest.raises(ValueError, match=r"got 'decoupeling' \(did you mean 'decoupling'\?\)"):
        get("decoupeling")


def test_bad_scale_names_the_allowed_ones():
    with pytest.raises(ValueError, match="scale must be one of small, paper; got 'huge'"):
        spec_path(get("decoupling"), "huge")


def test_cli_list(capsys):
    assert main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in MINE)


@pytest.mark.parametrize("argv, message", [
    (["reproduce", "early-decy"], "did you mean 'early-decay'?"),
    (["reproduce"], "NAME is required"),
])
def test_cli_errors(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_cli_bad_scale_and_stack(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["reproduce", "decoupling", "--scale", "huge"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'huge'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["reproduce", "decoupling", "--stack", "0"])
    assert "--stack must be a positive integer, got 0" in capsys.readouterr().err


def test_cli_prints_verdict_wall_time_and_report(monkeypatch, tmp_path, capsys):
    calls = []

    def fake_run(self, **kwargs):
        calls.append((self.name, kwargs))
        return Verdict(self.name, True, verdict_line(self.name, True, "numbers"), wall_s=12.3,
                       report=tmp_path / self.name / "report.html")

    for reproduction in REGISTRY.values():  # some reproductions define their own run
        monkeypatch.setattr(reproduction, "run", types.MethodType(fake_run, reproduction))
    assert main(["reproduce", "decoupling", "--store", str(tmp_path / "s.sqlite"), "--quiet", "--stack", "4",
                 "--processes", "3"]) == 0
    out = capsys.readouterr().out
    assert "decoupling: HELD — numbers" in out and "wall time 12 s" in out and "report.html" in out
    assert calls == [("decoupling", {"scale": "small", "store": str(tmp_path / "s.sqlite"), "out": None, "stack": 4,
                                     "progress": False, "processes": 3, "retry_failed": False})]
    calls.clear()
    assert main(["reproduce", "bf16", "--quiet", "--retry-failed"]) == 0  # what a failed run's message advises
    assert calls[0][1]["retry_failed"] is True
    calls.clear()
    assert main(["reproduce", "all", "--store", str(tmp_path), "--out", str(tmp_path / "reports"), "--quiet"]) == 0
    assert [name for name, _ in calls] == claims()  # every claim; the demo has its own command
    assert calls[1][1]["store"] == tmp_path / "reproduce-decoupling.sqlite"
    assert calls[1][1]["out"] == tmp_path / "reports" / "decoupling"


# ------------------------------------------------------------------------------------- specs


@pytest.mark.parametrize("name", MINE)
@pytest.mark.parametrize("scale", ["small", "paper"])
def test_specs_load_and_have_three_seeds(name, scale):
    spec = get(name).spec(scale)
    assert spec.name.startswith(f"reproduce-{name}")
    assert spec_seeds(spec) >= 3
    if scale == "small":  # the embedded data only
        assert {c.dataset for _, c in spec.configs()} <= {"mnist1d", "digits", "pystdlib-text"}


# ------------------------------------------------------------------------------------- stores for the verdicts


def _final(err: float, **extra) -> dict:
    return {"test_acc": 1.0 - err, "test_loss": err, "train_acc": 1.0, "train_loss": 0.01, "weight_norm": 10.0,
            **extra}


def _bowl(x: float, center: float) -> float:
    return 0.02 * (x - center) ** 2


def _early_world(early_gain: float, late_gain: float, full_gain: float = 0.04, noise: float = 0.004,
                 train_acc: float = 1.0):
    """Final test errors of the four arms: 0.30 minus each arm's gain, with per-seed noise shared by the
    arms (the paired design) plus a little of each arm's own."""
    base_err = {"no decay": 0.30, "full decay": 0.30 - full_gain, "late decay": 0.30 - late_gain,
                "early decay": 0.30 - early_gain}
    norm = {"no decay": 40.0, "full decay": 15.0, "late decay": 20.0, "early decay": 30.0}
    own = {"no decay": 0, "full decay": 1, "early decay": 2, "late decay": 3}

    def final_of(label, c):
        shared = noise * ((c.seed * 7) % 5 - 2)
        mine = 0.002 * (((c.seed + own[label]) * 3) % 5 - 2) / 2
        return _final(base_err[label] + shared + mine, weight_norm=norm[label] + c.seed, train_acc=train_acc,
                      val_acc=0.7, steps=1860)

    def curves_of(label, c):
        return [{"step": s, "epoch": s / 31, "lr": c.lr, "test_acc": 0.6 + 0.0001 * s, "train_acc": 0.9,
                 "train_loss": 0.1, "test_loss": 1.0, "weight_norm": norm[label] * s / 1860} for s in (930, 1860)]

    return final_of, curves_of


@pytest.mark.parametrize("early_gain, late_gain, status", [
    (0.035, 0.005, "HELD"),          # early recovers ~88 %, late ~12 %
    (0.020, 0.040, "DID NOT HOLD"),  # at equal integrated decay late recovers everything, early half
    (0.005, 0.005, "DID NOT HOLD"),  # early recovers ~12 %
])
def test_early_decay_verdict_both_ways(tmp_path, early_gain, late_gain, status):
    spec = get("early-decay").spec("small")
    store = tmp_path / "e.sqlite"
    fill_store(store, spec, *_early_world(early_gain, late_gain))
    verdict = early_decay.analyze(store, spec, "small")
    assert verdict.status == status, verdict.line
    assert verdict.line.startswith(f"early-decay: {status} — full decay gains")
    assert verdict.numbers["recovered"]["early"] == pytest.approx(early_gain / 0.04, abs=0.05)
    assert verdict.numbers["recovered"]["late"] == pytest.approx(late_gain / 0.04, abs=0.05)
    # every arm's integrated decay is recomputed from its config: the small spec matches them
    efolds = verdict.numbers["integrated_decay_efolds"]
    assert efolds["none"] == 0 and efolds["full"] == pytest.approx(3.71, abs=0.01)
    assert efolds["early"] == pytest.approx(efolds["full"]) == pytest.approx(efolds["late"])
    assert all(p.held for p in verdict.premises) and verdict.seeds == 5
    assert len(verdict.sections[0].figures) == 2 and len(verdict.sections[0].table) == 4


def test_early_decay_a_diverged_run_fails_the_train_accuracy_premise(tmp_path):
    """The store writes a diverged run's metrics as null: it fits nothing (accuracy 0), which the
    premise names, instead of a crash."""
    spec = get("early-decay").spec("small")
    final_of, curves_of = _early_world(0.035, 0.005)

    def diverging(label, c):
        final = final_of(label, c)
        return dict.fromkeys(final, float("nan")) if label == "late decay" and c.seed == 1 else final

    fill_store(tmp_path / "e.sqlite", spec, diverging, curves_of)
    verdict = early_decay.analyze(tmp_path / "e.sqlite", spec, "small")
    assert verdict.status == "PREMISE NOT MET" and "train accuracy (every run)" in verdict.line, verdict.line


def test_early_decay_undecided_when_the_seeds_disagree(tmp_path):
    spec = get("early-decay").spec("small")
    store = tmp_path / "e.sqlite"
    # early recovers exactly half (the threshold): its interval straddles it, so that part is undecided
    fill_store(store, spec, *_early_world(0.02, 0.0, noise=0.0))
    verdict = early_decay.analyze(store, spec, "small")
    assert verdict.numbers["parts"]["early recovers most"] is None, verdict.line
    assert verdict.numbers["parts"]["late recovers less"] is True and verdict.status == "INCONCLUSIVE"


@pytest.mark.parametrize("case, premise", [
    ("no benefit", "full decay's gain over no decay"),
    ("underfit", "train accuracy (every run)"),
    ("unmatched", "integrated decay of early and late vs full"),
])
def test_early_decay_premises(tmp_path, case, premise):
    spec = get("early-decay").spec("small")
    if case == "unmatched":  # late decay at the old design's λ: half the integrated decay of full decay
        text = spec.text.replace('weight_decay = 0.0266\ncallbacks = ["decay_window:0.25-0.5"]',
                                 'weight_decay = 0.0133\ncallbacks = ["decay_window:0.25-0.5"]')
        assert text != spec.text
        (tmp_path / "unmatched.toml").write_text(text, encoding="utf-8")
        spec = load_spec(tmp_path / "unmatched.toml")
    world = _early_world(0.0 if case == "no benefit" else 0.035, 0.005,
                         full_gain=0.0 if case == "no benefit" else 0.04,
                         train_acc=0.9 if case == "underfit" else 1.0)
    store = tmp_path / "e.sqlite"
    fill_store(store, spec, *world)
    verdict = early_decay.analyze(store, spec, "small")
    assert verdict.status == "PREMISE NOT MET", verdict.line
    assert [p.name for p in verdict.premises if not p.held] == [next(p.name for p in verdict.premises
                                                                     if p.name.startswith(premise))]
    assert verdict.line.startswith("early-decay: PREMISE NOT MET — " + premise)


def test_early_decay_integrated_decay_by_hand():
    from decaylab.reproduce.early_decay import integrated_decay

    step = {"lr": 0.3, "weight_decay": 0.1, "schedule": "step", "lr_milestones": [0.5], "lr_gamma": 0.1}
    # 100 steps: 50 at lr 0.3 and 50 at 0.03 → (50·0.3 + 50·0.03)·0.1
    assert integrated_decay(step, 100) == pytest.approx(1.65)
    assert integrated_decay({**step, "callbacks": ["decay_window:0-0.5"]}, 100) == pytest.approx(1.5)
    assert integrated_decay({**step, "callbacks": ["decay_window:0.5-1"]}, 100) == pytest.approx(0.15)
    assert integrated_decay({**step, "decay_scale": "constant"}, 100) == pytest.approx(10.0)


def test_early_decay_spec_claim_keys():
    for scale in ("small", "paper"):
        spec = get("early-decay").spec(scale)
        assert set(early_decay.CLAIM_KEYS) <= set(spec.claim) and spec.claim["max_seeds"] >= spec_seeds(spec) >= 5
        assert {label for label, _ in spec.configs()} == set(early_decay.LABELS.values())


# ------------------------------------------------------------------------------------- loss_scale


def _params(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).double() for p in model.parameters()])


@pytest.mark.parametrize("decay, weight_decay, scale_free_", [
    ("decoupled", 0.3, True), ("prox", 0.3, True), ("l2", 5e-4, False), ("prox_euclid", 5e-4, False)])
def test_loss_scale_leaves_scale_free_iterates_unchanged(decay, weight_decay, scale_free_):
    base = TrainConfig(dataset="mnist1d", model="mlp", lr=0.01, eps=1e-30, steps=25, batch_size=64, decay=decay,
                       weight_decay=weight_decay, seed=3)
    reference = _params(train(base).model)
    for c in (10.0, 100.0):
        moved = _params(train(base.replace(callbacks=(f"loss_scale:{c}",))).model)
        distance = float((moved - reference).norm() / reference.norm())
        if scale_free_:
            assert distance < 1e-4, (decay, c, distance)
        else:
            assert distance > 1e-2, (decay, c, distance)


def test_loss_scale_callback():
    assert TrainConfig(callbacks=("loss_scale:1",)) == TrainConfig()  # a scale of 1 is the plain run
    assert TrainConfig(callbacks=("loss_scale:10",)).key() != TrainConfig().key()
    # an old store's loss_scale field reads as the callback, with the key it had
    old = TrainConfig.from_dict({"loss_scale": 10.0, "lr": 1e-3})
    assert old.callbacks == ("loss_scale:10",) and old.key() == TrainConfig(callbacks=("loss_scale:10",)).key()
    with pytest.raises(ValueError, match=r"loss_scale:C: C must be a number > 0; got '0'"):
        TrainConfig(callbacks=("loss_scale:0",))


# ------------------------------------------------------------------------------------- the framework


def test_run_writes_report_and_verdict_json(tmp_path):
    spec_file = tmp_path / "tiny.toml"
    spec_file.write_text('name = "tiny"\n[base]\nsteps = 3\nbatch_size = 64\n[grid]\nseed = [0, 1, 2]\n')
    seen = {}

    def analyze(store, spec, scale, *, progress=True):
        seen.update(store=store, scale=scale, progress=progress)
        return Verdict("tiny", False, verdict_line("tiny", False, "it did not"), {"x": 1.5})

    repro = Reproduction("tiny", "t", "c", "s", analyze, specs={"small": str(spec_file)})
    verdict = repro.run(store=tmp_path / "t.sqlite", out=tmp_path / "out", progress=False)
    assert seen == {"store": tmp_path / "t.sqlite", "scale": "small", "progress": False}
    assert verdict.report == tmp_path / "out" / "report.html" and verdict.report.exists()
    assert "tiny: DID NOT HOLD — it did not" in verdict.report.read_text()
    record = json.loads((tmp_path / "out" / "verdict.json").read_text())
    assert record["status"] == "DID NOT HOLD" and record["numbers"] == {"x": 1.5} and record["wall_s"] >= 0
    few = tmp_path / "few.toml"
    few.write_text('name = "few"\n[base]\nsteps = 3\n[grid]\nseed = [0, 1]\n')
    with pytest.raises(ValueError, match="has 2 seed\\(s\\) per method; a verdict needs at least 3"):
        Reproduction("few", "t", "c", "s", analyze, specs={"small": str(few)}).run(store=tmp_path / "f.sqlite")


def test_mean_std():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert math.isnan(mean_std([1.0])[1])


def test_stats_doctests():
    import doctest

    from decaylab.reproduce import _regimes, stats

    for module in (stats, _regimes):  # _regimes: the integrated decay of a run's config, by hand
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__
    assert stats.STATUSES == ("HELD", "DID NOT HOLD", "INCONCLUSIVE", "PREMISE NOT MET", "REPORTED")
