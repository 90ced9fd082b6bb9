"""Hostile input to checkpoints and optimizer state (issue 15, items 1 and 2).

1. A crafted ``.pt`` in a checkpoint directory must not run code on resume: decaylab's checkpoints load
   with ``weights_only=True``, and nothing in the package unpickles a file a user may receive.
2. A mismatched optimizer state (another model's: narrower, wider) is refused at ``load_state_dict``, as
   are hyperparameters the constructor would refuse; a failing load or step leaves everything as it was;
   the C step checks every tensor's size at its boundary.
"""
from __future__ import annotations

import copy
import math
import os
import pickle
import re
from pathlib import Path

import pytest
import torch

from decaylab import optim as dl
from decaylab.optim.executors import EXECUTORS

PACKAGE = Path(__file__).resolve().parents[1] / "decaylab"


class _RunsCode:
    """Unpickling this calls os.system: what a crafted checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# --------------------------------------------------------------------------- 1. no code from checkpoints


def test_a_crafted_checkpoint_does_not_run_code_on_resume(tmp_path):
    from decaylab.train import TrainConfig, train
    from decaylab.train.loop import _checkpoint_path

    config = TrainConfig(model="mlp", dataset="digits", steps=4, batch_size=32, eval_every=2)
    marker = tmp_path / "pwned"
    path = _checkpoint_path(tmp_path / "ckpt", [config], False)
    torch.save({"format": 1, "keys": [config.key()], "payload": _RunsCode(marker)}, path)
    with pytest.raises(ValueError, match=r"cannot be loaded safely \(UnpicklingError.*delete it to start the run over"):
        train(config, checkpoint_dir=tmp_path / "ckpt", resume=True, progress=False)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"not a zip file at all", b"PK\x03\x04truncated"])
def test_a_damaged_checkpoint_is_one_clear_error(tmp_path, content):
    from decaylab.train import TrainConfig, train
    from decaylab.train.loop import _checkpoint_path

    config = TrainConfig(model="mlp", dataset="digits", steps=4, batch_size=32, eval_every=2)
    _checkpoint_path(tmp_path, [config], False).write_bytes(content)
    with pytest.raises(ValueError, match="cannot be loaded safely .*truncated, damaged or not a decaylab checkpoint"):
        train(config, checkpoint_dir=tmp_path, resume=True, progress=False)


def test_nothing_in_the_package_unpickles_a_received_file():
    """torch.load always with weights_only=True; pickle only through the CIFAR loader's restricted unpickler."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        for n, line in enumerate(text.splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(r"weights_only\s*=\s*False", code) or re.search(r"\bpickle\.loads?\(", code) \
                    or re.search(r"\b(np|numpy)\.load\(.*allow_pickle\s*=\s*True", code):
                offenders.append(f"{path.relative_to(PACKAGE)}:{n}: {line.strip()}")
            if re.search(r"\btorch\.load\(", code) and "weights_only=True" not in code:
                offenders.append(f"{path.relative_to(PACKAGE)}:{n}: {line.strip()}")
    assert not offenders, offenders


def test_the_cifar_unpickler_refuses_code(tmp_path):
    from decaylab.data.cifar import CIFAR, _unpickle
    from decaylab.data.core import CorruptDataError

    marker = tmp_path / "pwned"
    blob = pickle.dumps({b"data": _RunsCode(marker), b"labels": [0]}, protocol=2)
    with pytest.raises(CorruptDataError, match="posix.system is not something a CIFAR file holds"):
        _unpickle(CIFAR["cifar10"], blob, "data_batch_1", (b"data", b"labels"))
    assert not marker.exists()


# --------------------------------------------------------------------------- 2. mismatched optimizer state


def _trained(cls=dl.AdamW, shapes=((4, 3), (3,)), steps=2, **kw):
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64)) for s in shapes]
    opt = cls(params, lr=1e-2, weight_decay=0.1, **kw)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        opt.step()
    return opt, params


def _snapshot(opt, params):
    return [p.detach().clone() for p in params], copy.deepcopy(opt.state_dict())


def _unchanged(opt, params, snapshot):
    weights, sd = snapshot
    assert all(torch.equal(p, w) for p, w in zip(params, weights, strict=True))
    assert repr(opt.state_dict()) == repr(sd)


@pytest.mark.parametrize("backend", ["native", "fused", "foreach"])
@pytest.mark.parametrize("other", [((8, 3), (3,)), ((2, 3), (3,)), ((4, 3), (5,))], ids=["wider", "narrower", "bias"])
def test_state_of_another_model_is_refused_at_load(backend, other):
    """A narrower model's state into a wider one made the C step read past its buffers (segfaults, heap
    damage); a wider one's into a narrower trained with wrong moments. Both are refused at load."""
    source, _ = _trained(shapes=other)
    opt, params = _trained(backend=backend)
    snapshot = _snapshot(opt, params)
    with pytest.raises(ValueError, match=r"state_dict: param group 0, parameter \d has shape .* but its state "
                                         r"'exp_avg' has shape .*from another model"):
        opt.load_state_dict(source.state_dict())
    _unchanged(opt, params, snapshot)
    for p in params:  # still trains
        p.grad = torch.ones_like(p)
    opt.step()


@pytest.mark.parametrize(("change", "pattern"), [
    (dict(decay="bogus"), r"^decay must be one of .*got 'bogus'"),
    (dict(lr=-5.0), r"^lr must be a number >= 0.*got -5\.0"),
    (dict(weight_decay=math.nan), r"^weight_decay must be a number >= 0.*got nan"),
    (dict(backend="cuda-magic"), r"^backend must be one of .*got 'cuda-magic'"),
    (dict(betas=(0.9, 1.5)), r"^betas\[1\] must be a number in \[0, 1\)"),
    (dict(decay="l2", decay_scale="corrected"), r"has no effect with decay='l2'"),
])
def test_bad_hyperparameters_are_refused_at_load(change, pattern):
    opt, params = _trained()
    sd = copy.deepcopy(opt.state_dict())
    sd["param_groups"][0].update(change)
    snapshot = _snapshot(opt, params)
    with pytest.raises(ValueError, match=pattern):
        opt.load_state_dict(sd)
    _unchanged(opt, params, snapshot)


@pytest.mark.parametrize(("key", "value", "pattern"), [
    ("step", torch.tensor([1.0, 2.0]), "step must be one finite count >= 0"),
    ("step", torch.tensor(-3.0), "step must be one finite count >= 0"),
    ("exp_avg", "a string", "state 'exp_avg' is a str, not a tensor"),
])
def test_bad_state_entries_are_refused_at_load(key, value, pattern):
    opt, params = _trained()
    sd = copy.deepcopy(opt.state_dict())
    sd["state"][0][key] = value
    with pytest.raises(ValueError, match=pattern):
        opt.load_state_dict(sd)


def test_a_state_dict_that_is_not_one_is_refused():
    opt, _ = _trained()
    with pytest.raises(ValueError, match="state_dict must be a dict with 'state' and 'param_groups'"):
        opt.load_state_dict({"weights": 1})


@pytest.mark.parametrize("backend", ["reference", "foreach", "native"])
@pytest.mark.parametrize(("key", "bad", "pattern"), [
    ("lr", -5.0, r"^lr must be a number >= 0"),
    ("decay", "bogus", r"^decay must be one of"),
    ("backend", "cuda-magic", r"^backend must be one of"),
    ("weight_decay", math.inf, r"^weight_decay must be a number >= 0"),
])
def test_a_bad_second_group_fails_the_step_before_the_first_moves(backend, key, bad, pattern):
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.nn.Parameter(torch.randn(4, generator=gen, dtype=torch.float64)) for _ in range(2))
    opt = dl.AdamW([{"params": [a]}, {"params": [b]}], lr=1e-2, backend=backend)
    opt.param_groups[1][key] = bad  # edited after construction (by hand, or by a scheduler gone wrong)
    a.grad, b.grad = torch.ones_like(a), torch.ones_like(b)
    before = a.detach().clone()
    with pytest.raises(ValueError, match=pattern):
        opt.step()
    assert torch.equal(a.detach(), before)
    assert opt.param_groups[0]["step"] == 0 and not opt.state[a]


def test_the_c_step_checks_sizes_at_its_boundary():
    """Even a state swapped in by hand after loading (no load_state_dict) never reaches the C loop."""
    opt, params = _trained(backend="native")
    opt.state[params[0]]["exp_avg"] = torch.zeros(2, 3, dtype=torch.float64)  # 6 elements for a 12-element weight
    for p in params:
        p.grad = torch.ones_like(p)
    with pytest.raises(ValueError, match=r"exp_avg of parameter 0 has shape \(2, 3\) but the parameter has shape "
                                         r"\(4, 3\); the native step refuses to run on it"):
        EXECUTORS["native"].step(_bucket(opt))


def _bucket(opt):
    group = opt.param_groups[0]
    rule = dl.RULES[group["decay"]]
    return opt._bucket(group, rule, opt._group_hparams(group), group["params"], torch.device("cpu"),
                       torch.float64, False)


@pytest.mark.parametrize("backend", ["reference", "foreach", "native", "compiled"])
def test_one_models_nan_gradient_stays_in_that_model_with_the_stable_form(backend):
    """Item 10: K stacked models, one group with (K,) hyperparameters and one with plain numbers. The stable
    form's mean v̂ is one per model over every group, so model 1's NaN gradient turns only model 1 NaN.
    (Before, the plain group's sum ran over all K models: every model went NaN, and native crashed.)"""
    K = 3
    gen = torch.Generator().manual_seed(0)
    w1 = torch.nn.Parameter(torch.randn(K, 4, 3, generator=gen, dtype=torch.float64))
    w2 = torch.nn.Parameter(torch.randn(K, 5, generator=gen, dtype=torch.float64))
    lr = torch.tensor([1e-2, 2e-2, 3e-2], dtype=torch.float64)
    opt = dl.Adam([{"params": [w1], "lr": lr}, {"params": [w2], "lr": 1e-2}], weight_decay=0.1, decay="stable",
                  backend=backend)
    for step in range(3):
        w1.grad = torch.randn(w1.shape, generator=gen, dtype=torch.float64)
        w2.grad = torch.randn(w2.shape, generator=gen, dtype=torch.float64)
        if step == 1:
            w2.grad[1, 2] = math.nan
        opt.step()
    for w in (w1, w2):
        assert torch.isfinite(w[0]).all() and torch.isfinite(w[2]).all()
    assert torch.isnan(w2[1]).any()


def test_groups_of_one_optimizer_stack_the_same_models():
    lr = torch.tensor([1e-2, 2e-2, 3e-2], dtype=torch.float64)
    with pytest.raises(ValueError, match="this param group trains 2 stacked models and another group 3"):
        dl.Adam([{"params": [torch.nn.Parameter(torch.zeros(3, 2))], "lr": lr},
                 {"params": [torch.nn.Parameter(torch.zeros(2, 2))], "lr": lr[:2]}])
    with pytest.raises(ValueError, match=r"every parameter must stack 3 models along dim 0; got .* shape \(2, 2\)"):
        dl.Adam([{"params": [torch.nn.Parameter(torch.zeros(3, 2))], "lr": lr},
                 {"params": [torch.nn.Parameter(torch.zeros(2, 2))], "lr": 0.1}])
