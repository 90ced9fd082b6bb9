"""TrainConfig: validation (errors name the field and what it allows), JSON round trip, stable keys."""
from __future__ import annotations

import hashlib
import json

import pytest

from decaylab.train import OPTIMIZERS, RunResult, TrainConfig, stack_groups

# The contract's fields with their defaults, as the sweep store will have hashed them. If this
# changes, every stored run's key changes: don't.
CONTRACT_DEFAULTS = {
    "dataset": "mnist1d", "model": "mlp", "optimizer": "adam", "decay": "decoupled", "decay_scale": "lr",
    "lr": 1e-3, "weight_decay": 0.0, "momentum": 0.9, "betas": [0.9, 0.999], "eps": 1e-8, "epochs": 10.0,
    "steps": None, "batch_size": 128, "schedule": "cosine", "warmup_steps": 0, "seed": 0,
    "no_decay_bias_norm": True, "eval_every": 0, "precision": "fp32", "grad_clip": None,
}


def test_key_is_sha1_of_sorted_contract_json():
    text = json.dumps(CONTRACT_DEFAULTS, sort_keys=True, separators=(",", ":"))
    assert TrainConfig().key() == hashlib.sha1(text.encode()).hexdigest()
    assert TrainConfig().key() == "2af8486d096a46aefe015a3d015faf3e8d316fbb"


def test_key_stable_under_equivalent_spellings():
    a = TrainConfig(lr=0.001, epochs=10, weight_decay=0, betas=[0.9, 0.999], dataset="MNIST1D")
    b = TrainConfig(lr=1e-3, epochs=10.0, weight_decay=0.0, betas=(0.9, 0.999))
    assert a.key() == b.key() and a == b


def test_key_changes_with_every_field():
    base = TrainConfig()
    changed = dict(
        dataset="digits", model="cnn1d", optimizer="sgd", decay="prox", decay_scale="schedule", lr=2e-3,
        weight_decay=0.1, momentum=0.8, betas=(0.8, 0.99), eps=1e-6, epochs=3, steps=7, batch_size=64,
        schedule="constant", warmup_steps=2, seed=1, no_decay_bias_norm=False, eval_every=5,
        precision="bf16", grad_clip=1.0, final_lr_ratio=0.1, lr_milestones=(0.3,), lr_gamma=0.5,
        restart_steps=10, restart_mult=1, train_examples=100, train_eval_size=10, block_size=64, lm_eval_batches=2,
        callbacks=("ema:0.99",),
    )
    assert set(changed) == set(base.to_dict()), "every field must be covered"
    keys = {base.key()}
    for name, value in changed.items():
        keys.add(base.replace(**{name: value}).key())
    assert len(keys) == len(changed) + 1
    # every callback changes the key too, and so does each of its arguments
    texts = ["ema:0.99", "ema:0.9", "jacobian:8", "loss_scale:10", "lr_factors:1,2", "decay_window:0-0.3",
             "decay_window:0-0.4", "decay_window:0.3-1", "decay_window:0-0.3,matched", "decay_window:0-0.2,0.5-0.6"]
    assert len({base.replace(callbacks=(text,)).key() for text in texts} | {base.key()}) == len(texts) + 1


def test_callbacks_are_canonical_and_old_knob_fields_keep_their_keys():
    a = TrainConfig(callbacks=["jacobian:8", "ema:0.9990"])
    assert a.callbacks == ("ema:0.999", "jacobian:8") == TrainConfig(callbacks=("ema:0.999", "jacobian:8")).callbacks
    with pytest.raises(ValueError, match="each callback may appear once; 'ema'"):
        TrainConfig(callbacks=("ema:0.9", "ema:0.99"))
    with pytest.raises(ValueError, match=r"unknown callback 'emma' \(did you mean 'ema'\?\)"):
        TrainConfig(callbacks=("emma:0.9",))
    with pytest.raises(ValueError, match="windows must not overlap"):
        TrainConfig(callbacks=("decay_window:0-0.5,0.4-0.6",))
    # what an old store holds (every field, knobs included) loads, with the key the run had
    old = {**TrainConfig().to_dict(), "decay_schedule": "early", "decay_switch": 0.3, "ema_beta": 0.99,
           "loss_scale": 1.0, "lr_factors": [], "jacobian_probe": 0}
    del old["callbacks"]
    text = json.dumps({k: v for k, v in old.items() if k in CONTRACT_DEFAULTS or k in
                       ("decay_schedule", "decay_switch", "ema_beta")}, sort_keys=True, separators=(",", ":"))
    config = TrainConfig.from_dict(old)
    assert config.callbacks == ("decay_window:0-0.3", "ema:0.99")
    assert config.key() == hashlib.sha1(text.encode()).hexdigest()  # the key before callbacks
    with pytest.raises(ValueError, match=r"ema:BETA: BETA must be a number >= 0 and < 1; got '1.0' \(from ema_beta\)"):
        TrainConfig.from_dict({"ema_beta": 1.0})


def test_additions_at_defaults_do_not_enter_the_key():
    config = TrainConfig(lr=3e-3, weight_decay=0.1, seed=4)
    d = {k: v for k, v in config.to_dict().items() if k in CONTRACT_DEFAULTS}
    text = json.dumps(d, sort_keys=True, separators=(",", ":"))
    assert config.key() == hashlib.sha1(text.encode()).hexdigest()
    assert config.replace(callbacks=("ema:0.999",)).key() != config.key()


def test_round_trip_through_json():
    config = TrainConfig(model="cnn1d", lr=3e-3, weight_decay=0.05, steps=100, betas=(0.8, 0.95),
                         lr_milestones=(0.25, 0.5), grad_clip=0.5, callbacks=("ema:0.99",), schedule="step")
    again = TrainConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and again.key() == config.key()
    assert isinstance(again.betas, tuple) and isinstance(again.lr_milestones, tuple)
    result = RunResult(config, {"test_acc": 0.5}, [{"step": 1, "test_acc": 0.5}])
    assert RunResult.from_dict(json.loads(json.dumps(result.to_dict()))).config == config


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match=r"unknown TrainConfig field\(s\) \['learning_rate'\]"):
        TrainConfig.from_dict({"learning_rate": 0.1})


def test_from_dict_fills_missing_fields_with_defaults():
    assert TrainConfig.from_dict({"lr": 0.01}) == TrainConfig(lr=0.01)


def test_stack_key_ignores_only_lr_weight_decay_seed():
    a = TrainConfig(lr=1e-3, weight_decay=0.0, seed=0)
    assert a.stack_key() == TrainConfig(lr=1e-2, weight_decay=0.5, seed=7).stack_key()
    assert a.stack_key() != a.replace(momentum=0.5).stack_key()
    assert a.stack_key() != a.replace(callbacks=("ema:0.9",)).stack_key()
    hash(a.stack_key())
    configs = [a, a.replace(model="cnn1d"), a.replace(lr=0.1), a.replace(seed=3), a.replace(model="cnn1d", seed=1)]
    assert stack_groups(configs) == [[0, 2, 3], [1, 4]]
    assert stack_groups(configs, max_models=2) == [[0, 2], [3], [1, 4]]


BAD = [
    ("dataset", "", "dataset must be a non-empty name"),
    ("model", "resnet21", r"model must be one of 'mlp', 'mlp-bn', .*'resnet20'.*\(did you mean 'resnet20'\?\)"),
    ("optimizer", "adamw", "optimizer must be one of " + ", ".join(map(repr, OPTIMIZERS)) + "; got 'adamw'"),
    ("decay", "weird", "decay must be one of 'l2', 'decoupled'"),
    ("decay_scale", "paper", "decay_scale must be one of 'lr', 'schedule', 'corrected', 'constant'"),
    ("lr", 0.0, "lr must be a finite number > 0"),
    ("lr", float("nan"), "lr must be a finite number > 0"),
    ("lr", "0.1", "lr must be a finite number > 0"),
    ("weight_decay", -0.1, "weight_decay must be a finite number >= 0"),
    ("momentum", 1.0, "momentum must be a finite number >= 0 and < 1"),
    ("betas", (0.9,), "betas must be a pair"),
    ("betas", (0.9, 1.0), r"betas\[1\] must be a finite number >= 0 and < 1"),
    ("eps", -1e-8, "eps must be a finite number >= 0"),
    ("epochs", 0, "epochs must be a finite number > 0"),
    ("steps", 0, "steps must be an integer >= 1 or None"),
    ("steps", 2.5, "steps must be an integer >= 1 or None"),
    ("batch_size", True, "batch_size must be an integer >= 1"),
    ("schedule", "linear", "schedule must be one of 'constant', 'cosine', 'warmup_cosine', 'step', 'restarts'"),
    ("warmup_steps", -1, "warmup_steps must be an integer >= 0"),
    ("seed", -1, "seed must be an integer >= 0"),
    ("no_decay_bias_norm", 1, "no_decay_bias_norm must be true or false"),
    ("eval_every", -5, "eval_every must be an integer >= 0"),
    ("precision", "fp16", "precision must be one of 'fp32', 'bf16-autocast', 'bf16'; got 'fp16'"),
    ("grad_clip", 0.0, "grad_clip must be a finite number > 0"),
    ("final_lr_ratio", 1.5, "final_lr_ratio must be a finite number >= 0 and <= 1"),
    ("lr_milestones", (0.75, 0.5), "lr_milestones must be increasing fractions of the run in"),
    ("lr_milestones", (1.5,), r"lr_milestones\[0\] must be a finite number > 0 and < 1"),
    ("restart_steps", 0, "restart_steps must be an integer >= 1 or None"),
    ("restart_mult", 0, "restart_mult must be an integer >= 1"),
    ("callbacks", ("ema:1.0",), "callbacks: ema:BETA: BETA must be a number >= 0 and < 1"),
    ("callbacks", ("decay_window:0.5-0.25",), "a window must not end before it starts"),
    ("callbacks", "ema:0.9", "callbacks must be a list of strings"),
    ("train_eval_size", 0, "train_eval_size must be an integer >= 1"),
    ("block_size", 0, "block_size must be an integer >= 1"),
    ("lm_eval_batches", 0, "lm_eval_batches must be an integer >= 1"),
]


@pytest.mark.parametrize("field, value, message", BAD, ids=[f"{f}={v!r}" for f, v, _ in BAD])
def test_bad_values_raise_naming_field_and_allowed_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})


def test_combinations_that_make_no_sense_raise():
    with pytest.raises(ValueError, match="decay_scale must be 'lr' with decay='l2'"):
        TrainConfig(decay="l2", decay_scale="schedule")
    with pytest.raises(ValueError, match="warmup_steps must be an integer >= 1 with schedule='warmup_cosine'"):
        TrainConfig(schedule="warmup_cosine")


# ---------------------------------------------------------------------------------------------- one schema


def test_every_field_states_its_schema_once():
    import dataclasses

    from decaylab.optim import OPTIMIZERS as DIRECTIONS
    from decaylab.optim import RULES, SCALES
    from decaylab.train.config import field_meta

    for f in dataclasses.fields(TrainConfig):
        meta = f.metadata["meta"]
        assert meta.help and meta.kind in ("str", "int", "float", "bool", "floats", "strs"), f.name
        assert TrainConfig.check_field(f.name, f.default) == f.default, f.name  # every default is allowed
    # choices are the registries' own names, read when checked (a direction registered later is allowed)
    assert tuple(field_meta("optimizer").choices()) == (*DIRECTIONS, "torch-adamw")
    assert tuple(field_meta("decay").choices()) == tuple(RULES) and tuple(field_meta("decay_scale").choices()) == SCALES
    from decaylab.data import available
    from decaylab.models import available as models

    assert tuple(field_meta("dataset").choices()) == tuple(info.name for info in available())
    assert tuple(field_meta("model").choices()) == tuple(models())
    assert TrainConfig.per_model_fields() == ("lr", "weight_decay", "seed")


def test_a_spec_the_command_line_and_a_config_file_share_the_check(tmp_path):
    from decaylab.sweep import load_spec
    from decaylab.sweep import spec as spec_module
    from decaylab.train import load_config

    assert not hasattr(spec_module, "_RANGES") and not hasattr(spec_module, "OPTIMIZERS")  # no second copy
    with pytest.raises(ValueError) as direct:
        TrainConfig(weight_decay=-1)
    with pytest.raises(ValueError) as in_spec:
        load_spec('name = "x"\n[base]\nweight_decay = -1')
    with pytest.raises(ValueError) as on_line:
        load_config(None, ["--weight-decay", "-1"])
    path = tmp_path / "run.toml"
    path.write_text("weight_decay = -1\n")
    with pytest.raises(ValueError) as in_file:
        load_config(path)
    assert str(direct.value) == "weight_decay must be a finite number >= 0; got -1"
    assert str(in_spec.value) == "weight_decay in [base] must be a finite number >= 0; got -1"
    assert str(on_line.value) == "--weight_decay: weight_decay must be a finite number >= 0; got -1.0"
    assert str(in_file.value) == f"weight_decay in config file {str(path)!r} must be a finite number >= 0; got -1"
    path.write_text("learning_rate = 0.1\n")
    with pytest.raises(ValueError, match=r"unknown key 'learning_rate' in config file .*\(did you mean 'lr'\?\)"):
        load_config(path)


def test_every_field_is_an_option_of_decaylab_train():
    import dataclasses

    from decaylab.cli import build_parser

    options = build_parser("train")._subparsers._group_actions[0].choices["train"]._option_string_actions
    for f in dataclasses.fields(TrainConfig):
        assert f"--{f.name}" in options and f"--{f.name.replace('_', '-')}" in options, f.name


@pytest.mark.parametrize("module", ["decaylab.train.config", "decaylab.train.callbacks", "decaylab.train.schedules"])
def test_doctests(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
