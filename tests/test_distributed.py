"""torch.distributed with the real engines, 2 CPU processes over gloo.

* DDP: two processes with half the batch each equal one process with the whole batch
  (parameters and every optimizer state entry, float64, to 1e-12).
* FSDP2 (``fully_shard`` on a CPU mesh: parameters become ``DTensor`` shards, some uneven, one
  empty): every decay form and executor gives the updates and optimizer state of the unsharded
  run, the stable form averages ``v̂`` over whole parameters (not this rank's shard), and the
  instruments' norms, angles, effective lrs, underflow counts and buffer mixing are those of
  the unsharded model.
* ``torchrun --nproc_per_node 2 -m decaylab.train.distributed``: the training loop under DDP
  equals the single-process run.

Workers run in processes started by ``torch.multiprocessing.spawn``; an assertion failing in a
worker fails the test with the worker's traceback.
"""
from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.testing import assert_close

from decaylab.diagnostics import (
    AdamBufferMixing,
    AngularUpdate,
    DecayUnderflow,
    EffectiveLR,
    Monitor,
    WeightNorm,
)
from decaylab.optim import SGD, Adam, AdamW
from decaylab.optim.sharded import global_sums, is_dtensor, local_shard

WORLD = 2
BATCH = 16
EXACT = dict(rtol=0.0, atol=1e-12)


# ---------------------------------------------------------------------------------------------- helpers


def _spawn(worker, tmp_path: Path, *args) -> None:
    mp.spawn(worker, args=(str(tmp_path / "rendezvous"), *args), nprocs=WORLD, join=True)


def _init(rank: int, rendezvous: str) -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # torch's notes about FSDP2 on CPU; decaylab's underflow warning (wanted here)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=WORLD)


def _mlp() -> nn.Module:
    """Float64 MLP whose FSDP2 shards are uneven (7 rows: 4 + 3) and, for the last layer, empty on rank 1."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 7), nn.Tanh(), nn.Linear(7, 5), nn.Tanh(), nn.Linear(5, 1)).double()


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(BATCH, 6, generator=g, dtype=torch.float64)
    return x, torch.randn(BATCH, 1, generator=g, dtype=torch.float64)


def _half(x: torch.Tensor, rank: int) -> torch.Tensor:
    n = x.shape[0] // WORLD
    return x[rank * n:(rank + 1) * n]


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (model(x) - y).square().mean()


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if is_dtensor(t) else t


def _assert_same_run(model, opt, ref, ref_opt, what: str) -> None:
    """Parameters and every optimizer state entry of ``model`` equal ``ref``'s (gathered when sharded)."""
    for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters(), strict=True):
        assert_close(_full(p.detach()), q.detach(), **EXACT, msg=lambda m, n=name: f"{what}: {n}: {m}")
        st, ref_st = opt.state[p], ref_opt.state[q]
        assert set(st) == set(ref_st), (what, name, set(st), set(ref_st))
        for key, value in st.items():
            assert_close(_full(value), ref_st[key], **EXACT, msg=lambda m, n=name, k=key: f"{what}: {n}.{k}: {m}")


# ---------------------------------------------------------------------------------------------- DDP

DDP_CASES = [
    ("AdamW", AdamW, dict(lr=1e-2, weight_decay=0.1)),
    ("Adam stable", Adam, dict(lr=1e-2, weight_decay=0.1, decay="stable")),
    ("Adam prox", Adam, dict(lr=1e-2, weight_decay=0.1, decay="prox")),
    ("SGD stable", SGD, dict(lr=1e-1, momentum=0.9, weight_decay=0.1, decay="stable")),
]


def _ddp_worker(rank: int, rendezvous: str) -> None:
    _init(rank, rendezvous)
    from torch.nn.parallel import DistributedDataParallel as DDP

    for what, cls, kwargs in DDP_CASES:
        ref = _mlp()
        model = DDP(copy.deepcopy(ref))
        opt, ref_opt = cls(model.parameters(), **kwargs), cls(ref.parameters(), **kwargs)
        for step in range(4):
            x, y = _batch(step)
            _loss(model, _half(x, rank), _half(y, rank)).backward()  # DDP averages the two halves' gradients
            _loss(ref, x, y).backward()
            opt.step(), ref_opt.step()
            opt.zero_grad(), ref_opt.zero_grad()
        _assert_same_run(model.module, opt, ref, ref_opt, f"DDP {what}")
    dist.barrier()  # both ranks done before either closes its connections (gloo aborts a peer mid-send)
    dist.destroy_process_group()


def test_ddp_two_processes_with_half_batches_equal_one_process(tmp_path):
    _spawn(_ddp_worker, tmp_path)


# ---------------------------------------------------------------------------------------------- FSDP2

FSDP_CASES = [
    ("AdamW foreach", Adam, dict(lr=1e-2, weight_decay=0.1, decay="decoupled", backend="foreach")),
    ("Adam stable foreach", Adam, dict(lr=1e-2, weight_decay=0.1, decay="stable", backend="foreach")),
    ("Adam stable reference", Adam, dict(lr=1e-2, weight_decay=0.1, decay="stable", backend="reference")),
    ("Adam stable compiled", Adam, dict(lr=1e-2, weight_decay=0.1, decay="stable", backend="compiled")),
    ("Adam prox auto", Adam, dict(lr=1e-2, weight_decay=0.1, decay="prox")),
    ("Adam prox_euclid", Adam, dict(lr=1e-2, weight_decay=0.1, decay="prox_euclid", backend="foreach")),
    ("Adam cautious to init", Adam, dict(lr=1e-2, weight_decay=0.1, decay="cautious", decay_to="init",
                                         backend="foreach")),
    ("Adam l2 amsgrad", Adam, dict(lr=1e-2, weight_decay=0.1, decay="l2", amsgrad=True, backend="foreach")),
    ("SGD stable nesterov", SGD, dict(lr=1e-1, momentum=0.9, nesterov=True, weight_decay=0.1, decay="stable",
                                      backend="foreach")),
]


def _sharded(ref: nn.Module, mesh) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    model = copy.deepcopy(ref)
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def _train_pair(model, opt, ref, ref_opt, rank: int, steps: int) -> None:
    """Each rank's FSDP2 model sees its half of the batch (FSDP2 averages gradients); the reference the whole."""
    for step in range(steps):
        x, y = _batch(step)
        _loss(model, _half(x, rank), _half(y, rank)).backward()
        _loss(ref, x, y).backward()
        opt.step(), ref_opt.step()
        opt.zero_grad(), ref_opt.zero_grad()


def _records(monitor: Monitor) -> dict[tuple[int, str], float]:
    return {(r["step"], r["metric"]): r["value"] for r in monitor.records}


def _fsdp_worker(rank: int, rendezvous: str) -> None:
    _init(rank, rendezvous)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor

    mesh = init_device_mesh("cpu", (WORLD,))

    # --- updates and optimizer state, every form and executor
    for what, cls, kwargs in FSDP_CASES:
        ref = _mlp()
        model = _sharded(ref, mesh)
        assert all(isinstance(p, DTensor) for p in model.parameters())
        locals_ = [local_shard(p).shape[0] for p in model.parameters()]
        assert locals_ == ([4, 4, 3, 3, 1, 1] if rank == 0 else [3, 3, 2, 2, 0, 0]), locals_  # uneven; empty on rank 1
        opt, ref_opt = cls(model.parameters(), **kwargs), cls(ref.parameters(), **kwargs)
        _train_pair(model, opt, ref, ref_opt, rank, steps=3)
        _assert_same_run(model, opt, ref, ref_opt, f"FSDP2 {what}")
        if what == "Adam stable foreach":
            # The test can tell a shard's mean of v̂ from the whole's: they differ by far more than the tolerance.
            whole = torch.cat([ref_opt.state[q]["exp_avg_sq"].reshape(-1) for q in ref.parameters()])
            shard = torch.cat([local_shard(opt.state[p]["exp_avg_sq"]).reshape(-1) for p in model.parameters()])
            assert abs(float(shard.mean() / whole.mean()) - 1) > 1e-3

    # --- a replicated DTensor counts once in the stable form's mean (no reduction over a Replicate dim)
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    g = torch.Generator().manual_seed(7)
    values = [torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)]
    grads = [[torch.randn_like(v) for v in values] for _ in range(3)]
    plain = [nn.Parameter(v.clone()) for v in values]
    placements = [Shard(0), Replicate()]
    placed = [nn.Parameter(distribute_tensor(v.clone(), mesh, [pl])) for v, pl in zip(values, placements, strict=True)]
    opt_plain = Adam(plain, lr=1e-2, weight_decay=0.5, decay="stable")
    opt_placed = Adam(placed, lr=1e-2, weight_decay=0.5, decay="stable")
    for step_grads in grads:
        for p, q, gr in zip(plain, placed, step_grads, strict=True):
            p.grad = gr.clone()
            q.grad = distribute_tensor(gr.clone(), mesh, q.placements)
        opt_plain.step(), opt_placed.step()
    for p, q in zip(plain, placed, strict=True):
        assert_close(q.detach().full_tensor(), p.detach(), **EXACT)

    # --- instruments on the sharded model equal those on the unsharded one
    ref = _mlp()
    model = _sharded(ref, mesh)
    # lr·λ = 2^-54/0.75: the decay of about a quarter of float64 weights rounds away (mantissa < 0.75)
    kwargs = dict(lr=1e-2, weight_decay=2.0**-54 / 0.75 / 1e-2, backend="foreach")
    opt, ref_opt = AdamW(model.parameters(), **kwargs), AdamW(ref.parameters(), **kwargs)
    instruments = lambda: [WeightNorm(), EffectiveLR(), AngularUpdate(), DecayUnderflow()]  # noqa: E731
    monitor, ref_monitor = Monitor(model, opt, instruments()), Monitor(ref, ref_opt, instruments())
    _train_pair(model, opt, ref, ref_opt, rank, steps=2)
    got, want = _records(monitor), _records(ref_monitor)
    assert got.keys() == want.keys() and len(want) > 40, sorted(set(got) ^ set(want))
    fraction = want[(2, "decay_underflow/rounded_fraction/total")]
    assert 0.05 < fraction < 0.95, fraction  # a count that a shard-only sum would get wrong
    for key, value in want.items():
        assert math.isclose(got[key], value, rel_tol=1e-10, abs_tol=1e-300), (key, got[key], value)
    monitor.close(), ref_monitor.close()

    # --- Adam buffer mixing (coupled L2) on shards
    ref = _mlp()
    model = _sharded(ref, mesh)
    kwargs = dict(lr=1e-2, weight_decay=0.1, decay="l2", backend="foreach")
    opt, ref_opt = Adam(model.parameters(), **kwargs), Adam(ref.parameters(), **kwargs)
    monitor, ref_monitor = Monitor(model, opt, [AdamBufferMixing()]), Monitor(ref, ref_opt, [AdamBufferMixing()])
    _train_pair(model, opt, ref, ref_opt, rank, steps=3)
    got, want = _records(monitor), _records(ref_monitor)
    assert got.keys() == want.keys() and len(want) >= 9
    for key, value in want.items():
        assert math.isclose(got[key], value, rel_tol=1e-10), (key, got[key], value)
    monitor.close(), ref_monitor.close()

    # --- the helper itself: a shard's sum completed over the mesh
    x = distribute_tensor(torch.arange(7.0, dtype=torch.float64), mesh, [Shard(0)])
    assert_close(global_sums(local_shard(x).sum().reshape(1), [x]), torch.tensor([21.0], dtype=torch.float64))
    dist.barrier()  # both ranks done before either closes its connections (gloo aborts a peer mid-send)
    dist.destroy_process_group()


@pytest.mark.slow  # two processes, a compile each (warm: ~15 s)
def test_fsdp2_sharded_parameters_give_the_unsharded_updates_state_and_instruments(tmp_path):
    _spawn(_fsdp_worker, tmp_path)


# ---------------------------------------------------------------------------------------------- torchrun


@pytest.mark.slow  # torchrun starts two processes
def test_torchrun_two_processes_train_the_single_process_run(tmp_path):
    from decaylab.train import TrainConfig, train

    config = TrainConfig(model="mlp", dataset="mnist1d", steps=12, batch_size=64, lr=3e-3, weight_decay=0.1,
                         eval_every=6, decay="stable", schedule="warmup_cosine", warmup_steps=3, grad_clip=1.0)
    (tmp_path / "run.toml").write_text(
        'model = "mlp"\ndataset = "mnist1d"\nsteps = 12\nbatch_size = 64\nlr = 3e-3\neval_every = 6\n'
        'decay = "stable"\nschedule = "warmup_cosine"\nwarmup_steps = 3\n'
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[1]))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD),
               "-m", "decaylab.cli", "train", str(tmp_path / "run.toml"), "--weight-decay", "0.1",
               "--grad_clip", "1.0", "--quiet", "--out", str(tmp_path / "result.json"),
               "--checkpoint-dir", str(tmp_path / "checkpoints")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("decaylab train: mlp/mnist1d") == 1  # rank 0 reports, rank 1 does not

    torch.set_num_threads(1)
    one = train(config)
    got = json.loads((tmp_path / "result.json").read_text())
    assert got["config"] == config.to_dict()
    assert [c["step"] for c in got["curves"]] == [6, 12]
    for name, value in one.final.items():
        if name != "wall_s":
            assert math.isclose(got["final"][name], value, rel_tol=1e-4, abs_tol=1e-6), (name, got["final"], value)
    (checkpoint,) = (tmp_path / "checkpoints").iterdir()  # rank 0 alone wrote it
    assert checkpoint.name == f"{config.key()}.pt"
    state = torch.load(checkpoint, weights_only=False)["model"]
    for name, value in one.model.state_dict().items():
        assert_close(state[name], value, rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def test_each_rank_trains_on_its_own_slice_of_every_batch():
    from decaylab.train.distributed import _RankBatches

    class Batches:
        def batch(self, step):
            return torch.arange(12.0).view(1, 12, 1) + step, torch.arange(12).view(1, 12)

    parts = [_RankBatches(Batches(), rank, 3).batch(5) for rank in range(3)]
    assert [tuple(x.shape) for x, _ in parts] == [(1, 4, 1)] * 3
    assert_close(torch.cat([x for x, _ in parts], 1), torch.arange(12.0).view(1, 12, 1) + 5)
    assert_close(torch.cat([y for _, y in parts], 1), torch.arange(12).view(1, 12))


def test_train_command_errors(tmp_path, monkeypatch, capsys):
    from decaylab.cli import main
    from decaylab.train import TrainConfig, load_config
    from decaylab.train.distributed import train_distributed

    assert load_config(None, ["--weight-decay", "0.5", "--betas", "[0.9, 0.95]", "--no_decay_bias_norm", "false"]) \
        == TrainConfig(weight_decay=0.5, betas=(0.9, 0.95), no_decay_bias_norm=False)
    with pytest.raises(ValueError, match="unknown key 'weight_dacay' in the command line; .*'weight_decay'"):
        load_config(None, ["--weight_dacay", "0.1"])
    with pytest.raises(ValueError, match="pairs '--field value'"):
        load_config(None, ["--lr"])
    with pytest.raises(ValueError, match="config file .*missing.toml' does not exist"):
        load_config(tmp_path / "missing.toml")
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ValueError, match="batch_size must be a multiple of the world size 3"):
        train_distributed(TrainConfig(batch_size=64, steps=1))
    assert main(["train", "--steps=0"]) == 2
    assert capsys.readouterr().err == "decaylab train: error: --steps: steps must be an integer >= 1 or None; got 0\n"
    assert main(["train", "--weight_dacay", "0.1"]) == 2  # an unknown field: one line with the closest match
    err = capsys.readouterr().err
    assert err.startswith("decaylab train: error: unknown key 'weight_dacay'") and err.count("\n") == 1
    assert "(did you mean 'weight_decay'?)" in err
