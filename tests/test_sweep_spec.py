"""decaylab.sweep.spec: parsing, grid helpers, and every validation error."""
from __future__ import annotations

import math

import pytest
from test_sweep_contract import config_class

from decaylab.sweep import available_specs, find_spec, linear_grid, load_spec, log_grid

HEAD = 'name = "t"\n'


def load(text: str):
    return load_spec(text, config_class=config_class())


def test_log_grid_values():
    assert log_grid(1e-4, 1e-1, 4) == [1e-4, 1e-3, 1e-2, 1e-1]
    values = log_grid(1e-4, 1e-1, 6)
    assert values[0] == 1e-4 and values[-1] == 1e-1 and len(values) == 6
    for i, v in enumerate(values):  # evenly spaced in log10, to 6 significant digits
        assert math.isclose(math.log10(v), -4 + 0.6 * i, abs_tol=1e-6)
    assert values[1] == 0.000398107
    assert log_grid(0.5, 0.5, 1) == [0.5]
    assert log_grid(1.0, 1e-2, 3) == [1.0, 0.1, 1e-2]  # descending is allowed
    assert linear_grid(0, 1, 5) == [0.0, 0.25, 0.5, 0.75, 1.0]


@pytest.mark.parametrize("args, match", [
    ((0, 1, 3), "bounds must be > 0"),
    ((-1e-3, 1, 3), "bounds must be > 0"),
    ((1e-3, 1, 0), "num must be an integer >= 1"),
    ((1e-3, 1, 2.5), "num must be an integer >= 1"),
    ((1e-3, 1e-3, 3), "bounds are equal"),
    ((1e-3, math.inf, 3), "finite"),
])
def test_log_grid_errors(args, match):
    with pytest.raises(ValueError, match=match):
        log_grid(*args)


def test_full_spec_expands_in_order():
    spec = load(HEAD + """
description = "d"
[base]
epochs = 2
batch_size = 64
[grid]
lr = { log = [1e-3, 1e-1], num = 3 }
weight_decay = [0.0, 0.1]
seed = { range = 2 }
[[methods]]
label = "A"
decay = "l2"
weight_decay = { log = [1e-5, 1e-3], num = 3 }
[[methods]]
label = "B"
decay_scale = "schedule"
[[methods]]
label = "C (no decay)"
weight_decay = 0
""")
    runs = spec.configs()
    assert spec.name == "t" and spec.description == "d" and spec.methods == ["A", "B", "C (no decay)"]
    assert [label for label, _ in runs] == ["A"] * 18 + ["B"] * 12 + ["C (no decay)"] * 6
    a = [c for label, c in runs if label == "A"]
    # axes in [grid] order, a method's axis replacing the grid's in place; the last varies fastest
    assert [(c.lr, c.weight_decay, c.seed) for c in a[:4]] == [(1e-3, 1e-5, 0), (1e-3, 1e-5, 1),
                                                              (1e-3, 1e-4, 0), (1e-3, 1e-4, 1)]
    assert {c.decay for c in a} == {"l2"} and {c.epochs for c in a} == {2.0} and a[0].batch_size == 64
    c = [c for label, c in runs if label == "C (no decay)"]
    assert {x.weight_decay for x in c} == {0.0}  # a plain value removes the axis: no duplicate runs
    assert len({c.key() for _, c in runs}) == len(runs) == len(spec)
    assert load(spec.text).configs() == runs  # deterministic
    assert isinstance(a[0].epochs, float) and isinstance(a[0].lr, float)  # TOML ints made floats


def test_spec_without_methods_and_explicit_lists():
    spec = load(HEAD + "[grid]\nlr = [1, 0.1]\nbetas = [[0.9, 0.99], [0.8, 0.999]]\n")
    assert [c.lr for _, c in spec.configs()] == [1.0, 1.0, 0.1, 0.1]
    assert {c.betas for _, c in spec.configs()} == {(0.9, 0.99), (0.8, 0.999)}
    assert {label for label, _ in spec.configs()} == {"t"}
    one = load(HEAD + "[base]\nbetas = [0.9, 0.95]\n").configs()
    assert len(one) == 1 and one[0][1].betas == (0.9, 0.95)


def test_demo_spec():
    assert "demo" in available_specs()
    spec = load_spec(find_spec("demo"), config_class=config_class())
    runs = spec.configs()
    assert len(runs) == 480 and spec.name == "demo"
    assert spec.methods == ["Adam+L2", "AdamW (torch)", "AdamW (paper)", "ProxAdam", "AdamP (Euclidean prox)"]
    by_label = {}
    for label, c in runs:
        by_label.setdefault(label, []).append(c)
    assert [len(v) for v in by_label.values()] == [105, 90, 90, 90, 105]  # 5 lr × (7 or 6) λ × 3 seeds
    assert {c.decay for c in by_label["AdamP (Euclidean prox)"]} == {"prox_euclid"}
    assert {c.decay_scale for c in by_label["AdamW (paper)"]} == {"schedule"}
    assert {c.decay for c in by_label["Adam+L2"]} == {"l2"}
    assert {c.dataset for _, c in runs} == {"mnist1d"} and {c.schedule for _, c in runs} == {"cosine"}
    assert len({c.stack_key() for _, c in runs}) == 5  # one stack group per method
    assert sorted({c.weight_decay for c in by_label["AdamW (torch)"]}) == log_grid(3.16228e-2, 10, 6)
    assert {c.model for _, c in runs} == {"mlp-bn"}


def test_find_spec_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"'nope'.*checked-in specs: .*demo"):
        find_spec("nope")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_spec(tmp_path / "missing.toml", config_class=config_class())
    path = tmp_path / "s.toml"
    path.write_text(HEAD + "[grid]\nlr = [0.1]\n")
    assert load_spec(path, config_class=config_class()).path == path
    assert load_spec(str(path), config_class=config_class()).configs()[0][1].lr == 0.1


@pytest.mark.parametrize("text, match", [
    # syntax and structure
    ("name = ", "not valid TOML"),
    ('name = "t"\ngrids = 1', r"unknown key 'grids' in the top level of the spec; allowed: name, description, "
                              r"base, grid, methods, max_runs, claim \(did you mean 'grid'\?\)"),
    ("name = ''", "name .* must be a non-empty string"),
    ("[grid]\nlr = [0.1]", "name .* must be a non-empty string"),
    (HEAD + "description = 3", "description must be a string"),
    (HEAD + "base = 3", r"\[base\] must be a table"),
    (HEAD + "methods = 3", "methods must be one or more"),
    (HEAD + "methods = []", "methods must be one or more"),
    # unknown keys, with did-you-mean
    (HEAD + "[base]\nlearning_rate = 0.1", r"unknown key 'learning_rate' in \[base\]; allowed: TrainConfig fields "
                                           r"\(dataset, .*\) \(did you mean 'lr'\?\)"),
    (HEAD + "[grid]\nweight_decy = [0.1]", r"unknown key 'weight_decy' in \[grid\].*did you mean 'weight_decay'"),
    (HEAD + "[[methods]]\nlabel = 'A'\ndecay_form = 'l2'",
     r"unknown key 'decay_form' in methods\[0\] \('A'\); allowed: label and TrainConfig fields .*"
     r"did you mean 'decay"),
    (HEAD + "[grid]\nlr = { logs = [1e-3, 1], num = 3 }", r"unknown key 'logs' in the grid helper for lr.*"
                                                          r"allowed: log, linear, range, num"),
    # grid helpers
    (HEAD + "[grid]\nlr = { num = 3 }", "needs exactly one of log, linear, range"),
    (HEAD + "[grid]\nlr = { log = [1e-3, 1], linear = [1, 2], num = 3 }", "needs exactly one of"),
    (HEAD + "[grid]\nlr = { log = [1e-3, 1] }", r"lr in \[grid\]: the log helper needs num"),
    (HEAD + "[grid]\nlr = { log = [1e-3, 1], num = 0 }", r"lr in \[grid\].*num must be an integer >= 1, got 0"),
    (HEAD + "[grid]\nlr = { log = [0, 1], num = 3 }", r"lr in \[grid\].*bounds must be > 0"),
    (HEAD + "[grid]\nlr = { log = [-1e-3, 1], num = 3 }", r"bounds must be > 0 \(log spacing\), got low=-0.001"),
    (HEAD + "[grid]\nlr = { log = [1e-3], num = 3 }", r"log must be a pair \[low, high\]"),
    (HEAD + "[grid]\nlr = { log = [1e-3, 1e-3], num = 3 }", "bounds are equal"),
    (HEAD + "[grid]\nseed = { range = 0 }", "range 0 is empty"),
    (HEAD + "[grid]\nseed = { range = 1.5 }", "range must be an integer n or a pair"),
    (HEAD + "[grid]\nseed = { range = 3, num = 3 }", "range takes no num"),
    (HEAD + "[grid]\nlr = []", "needs at least one value"),
    (HEAD + "[grid]\nlr = [0.1, 0.1]", "the value 0.1 appears twice"),
    # values, each naming the field
    (HEAD + "[grid]\nlr = [0.1, -0.01]", r"lr in \[grid\] must be a finite number > 0; got -0.01"),
    (HEAD + "[base]\nlr = 0", r"lr in \[base\] must be a finite number > 0; got 0"),
    (HEAD + "[base]\nlr = nan", r"lr in \[base\] must be a finite number > 0; got nan"),
    (HEAD + "[base]\nlr = 'big'", r"lr in \[base\] must be a finite number > 0; got 'big'"),
    (HEAD + "[base]\nweight_decay = -1", r"weight_decay in \[base\] must be a finite number >= 0"),
    (HEAD + "[base]\ndecay = 'adamw'", r"decay in \[base\] must be one of 'l2', 'decoupled', 'prox', "
                                       r"'prox_euclid', 'cautious', 'stable'; got 'adamw'"),
    (HEAD + "[[methods]]\nlabel = 'A'\ndecay = 'decopled'", r"decay in methods\[0\] \('A'\) must be one of .*"
                                                            r"did you mean 'decoupled'"),
    (HEAD + "[base]\ndecay_scale = 'paper'", r"decay_scale in \[base\] must be one of 'lr', 'schedule', "
                                             r"'corrected', 'constant'"),
    (HEAD + "[base]\noptimizer = 'adamv'", r"optimizer in \[base\] must be one of .*'adam'.*'sgd'.*; got 'adamv'"),
    (HEAD + "[base]\nschedule = 'cosin'", r"schedule in \[base\] must be one of .*did you mean 'cosine'"),
    (HEAD + "[base]\nprecision = 'fp16'", r"precision in \[base\] must be one of 'fp32'"),
    (HEAD + "[base]\ndataset = 'mnist-1d'", r"dataset in \[base\] must be one of .*did you mean 'mnist1d'"),
    (HEAD + "[base]\nmodel = 'mlp2'", r"model in \[base\] must be one of .*'mlp'"),
    (HEAD + "[base]\nbatch_size = 0", r"batch_size in \[base\] must be an integer >= 1; got 0"),
    (HEAD + "[base]\nbatch_size = 12.5", r"batch_size in \[base\] must be an integer >= 1; got 12.5"),
    (HEAD + "[base]\nseed = -1", r"seed in \[base\] must be an integer >= 0"),
    (HEAD + "[base]\nepochs = 0", r"epochs in \[base\] must be a finite number > 0"),
    (HEAD + "[base]\nsteps = 0", r"steps in \[base\] must be an integer >= 1"),
    (HEAD + "[base]\nmomentum = 1.0", r"momentum in \[base\] must be a finite number >= 0 and < 1; got 1.0"),
    (HEAD + "[base]\nbetas = [0.9]", r"betas in \[base\] must be a pair of numbers"),
    (HEAD + "[base]\nbetas = [0.9, 1.5]", r"betas\[1\] in \[base\] must be a finite number >= 0 and < 1; got 1.5"),
    (HEAD + "[base]\nno_decay_bias_norm = 1", r"no_decay_bias_norm in \[base\] must be true or false"),
    (HEAD + "[base]\ngrad_clip = 0", r"grad_clip in \[base\] must be a finite number > 0"),
    (HEAD + "[base]\nlr = [0.1, 0.01]", r"lr in \[base\] must be one value.*put several values in \[grid\]"),
    (HEAD + "[base]\nlr = 0.1\n[grid]\nlr = [0.1]", r"lr is set in both \[base\] and \[grid\]"),
    # methods
    (HEAD + "[[methods]]\ndecay = 'l2'", r"label in methods\[0\] must be a non-empty string"),
    (HEAD + "[[methods]]\nlabel = 'A'\n[[methods]]\nlabel = 'A'", r"label 'A' in methods\[1\] is used by an earlier"),
    (HEAD + "[[methods]]\nlabel = 'A'\ndecay = 'l2'\n[[methods]]\nlabel = 'B'\ndecay = 'l2'",
     "methods 'A' and 'B' both produce the run"),
    (HEAD + "[[methods]]\nlabel = 'A'\nlr = { log = [1e-3, 0], num = 2 }", r"lr in methods\[0\] \('A'\).*> 0"),
])
def test_validation_errors(text, match):
    with pytest.raises(ValueError, match=match):
        load(text)


def test_doctests():
    import doctest

    from decaylab.sweep import spec as spec_module

    result = doctest.testmod(spec_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
