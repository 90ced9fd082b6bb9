"""decaylab.data's offline datasets: MNIST-1D (generated, cached), digits, the stdlib text corpus."""

import hashlib
import random
import sysconfig
from pathlib import Path

import mnist1d  # a dependency of decaylab: its absence is a failure, not a skip
import numpy as np
import pytest
import torch

from decaylab import data
from decaylab.data import MNIST1D_DEFAULT_SHAPES, embedded

SMALL = {"num_samples": 300}  # a quick generation (~0.2 s) for the tests that generate more than once


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mnist1d-cache")


@pytest.fixture(scope="module")
def mnist(mnist_root) -> data.TensorData:
    return data.load("mnist1d", root=mnist_root)  # the one full-size generation (~3 s)


# --- MNIST-1D -----------------------------------------------------------------------------------


def test_mnist1d_has_the_documented_shapes_and_dtypes(mnist) -> None:
    s = MNIST1D_DEFAULT_SHAPES
    assert s == {"n_train": 4000, "n_test": 1000, "length": 40, "num_classes": 10}
    assert mnist.x_train.shape == (s["n_train"], s["length"]) and mnist.x_test.shape == (s["n_test"], s["length"])
    assert mnist.y_train.shape == (s["n_train"],) and mnist.y_test.shape == (s["n_test"],)
    assert mnist.x_train.dtype == torch.float32 and mnist.y_train.dtype == torch.int64
    assert mnist.num_classes == 10 and mnist.name == "mnist1d"
    assert set(mnist.y_train.tolist()) == set(range(10)) and set(mnist.y_test.tolist()) == set(range(10))
    assert torch.isfinite(mnist.x_train).all()
    full = torch.cat([mnist.x_train, mnist.x_test])
    assert abs(full.mean().item()) < 1e-3 and abs(full.std().item() - 1) < 1e-3  # the package standardizes
    assert mnist.meta["seed"] == 42 and mnist.meta["generated"] is True
    assert "url" not in mnist.meta["args"]


def test_mnist1d_second_load_reads_the_cache(mnist, mnist_root, monkeypatch) -> None:
    def no_generation(*args, **kwargs):
        raise AssertionError("make_dataset called although the cache exists")

    monkeypatch.setattr(mnist1d.data, "make_dataset", no_generation)
    again = data.load("mnist1d", root=mnist_root)
    assert again.meta["generated"] is False
    assert Path(again.meta["cache"]).parent == mnist_root / "mnist1d"
    for k in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(again, k), getattr(mnist, k))


def test_mnist1d_env_var_sets_the_cache(mnist, mnist_root, monkeypatch) -> None:
    monkeypatch.setenv("DECAYLAB_DATA", str(mnist_root))
    monkeypatch.setattr(mnist1d.data, "make_dataset", lambda *a, **k: pytest.fail("generated again"))
    assert torch.equal(data.load("mnist1d").x_train, mnist.x_train)


def test_mnist1d_is_the_package_output(tmp_path) -> None:
    ours = data.load_mnist1d(tmp_path, seed=7, args=SMALL)
    args = mnist1d.data.get_dataset_args()
    args.num_samples, args.seed = SMALL["num_samples"], 7
    theirs = mnist1d.data.make_dataset(args)
    assert torch.equal(ours.x_train, torch.from_numpy(theirs["x"].astype(np.float32)))
    assert torch.equal(ours.y_test, torch.from_numpy(theirs["y_test"]))
    assert ours.x_train.shape == (240, 40) and ours.x_test.shape == (60, 40)
    # the validation split: the package's process with another seed (its first training signals), so the
    # training and test splits above stay the package's own
    args.seed = 7 + data.MNIST1D_VAL_SEED_OFFSET
    other = mnist1d.data.make_dataset(args)
    assert torch.equal(ours.x_val, torch.from_numpy(other["x"][:60].astype(np.float32)))
    assert torch.equal(ours.y_val, torch.from_numpy(other["y"][:60]))
    assert ours.meta["validation"]["seed"] == 7 + data.MNIST1D_VAL_SEED_OFFSET
    held = {tuple(x.tolist()) for x in torch.cat([ours.x_train, ours.x_test])}
    assert not any(tuple(x.tolist()) in held for x in ours.x_val)  # no validation signal is trained or tested on


def test_mnist1d_same_seed_same_arrays(tmp_path) -> None:
    a = data.load_mnist1d(tmp_path / "a", seed=1, args=SMALL)
    b = data.load_mnist1d(tmp_path / "b", seed=1, args=SMALL)
    c = data.load_mnist1d(tmp_path / "a", seed=2, args=SMALL)
    assert a.meta["generated"] and b.meta["generated"] and c.meta["generated"]
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)
    assert not torch.equal(a.x_train, c.x_train)
    assert a.meta["cache"] != c.meta["cache"]  # one cache file per seed and arguments


def test_mnist1d_leaves_global_random_state_alone(tmp_path) -> None:
    random.seed(123)
    np.random.seed(123)
    expected = (random.random(), np.random.rand())
    random.seed(123)
    np.random.seed(123)
    data.load_mnist1d(tmp_path, seed=3, args=SMALL)
    assert (random.random(), np.random.rand()) == expected


def test_mnist1d_corrupt_cache_is_regenerated_with_a_warning(tmp_path) -> None:
    first = data.load_mnist1d(tmp_path, seed=4, args=SMALL)
    Path(first.meta["cache"]).write_bytes(b"not an npz")
    with pytest.warns(UserWarning, match=r"unreadable.*expected an \.npz"):
        again = data.load_mnist1d(tmp_path, seed=4, args=SMALL)
    assert again.meta["generated"] and torch.equal(again.x_train, first.x_train)


def test_mnist1d_argument_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"unknown MNIST-1D argument\(s\) \['num_sample'\].*num_samples"):
        data.load_mnist1d(tmp_path, args={"num_sample": 10})
    with pytest.raises(ValueError, match="seed="):
        data.load_mnist1d(tmp_path, args={"seed": 1})
    with pytest.raises(ValueError, match="seed must be"):
        data.load_mnist1d(tmp_path, seed=-1)


# --- digits -------------------------------------------------------------------------------------


def test_digits_split_sizes_and_types() -> None:
    d = data.load("digits")
    # the held-out 539 images: the first half validation, the rest test; training as decaylab quickstart's
    assert (d.n_train, d.n_val, d.n_test, d.input_shape, d.num_classes) == (1258, 269, 270, (64,), 10)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert set(d.y_test.tolist()) == set(range(10)) == set(d.y_val.tolist())
    assert d.meta["image_shape"] == (1, 8, 8)


def test_digits_split_is_seeded() -> None:
    a, b, c = data.load_digits(seed=1), data.load_digits(seed=1), data.load_digits(seed=2)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.y_train, c.y_train)
    half = data.load_digits(test_fraction=0.5)
    assert (half.n_val, half.n_test) == (449, 449)


def test_digits_are_standardized_with_train_statistics() -> None:
    from sklearn.datasets import load_digits

    d = data.load_digits(seed=0)
    raw = torch.tensor(load_digits().data, dtype=torch.float32) / 16
    perm = torch.randperm(1797, generator=torch.Generator().manual_seed(0))
    train = raw[perm[539:]]
    mean, std = train.mean(0), train.std(0)
    assert torch.equal(d.x_train, (train - mean) / (std + 1e-3))
    assert torch.equal(d.x_val, (raw[perm[:269]] - mean) / (std + 1e-3))
    assert torch.equal(d.x_test, (raw[perm[269:539]] - mean) / (std + 1e-3))
    varying = std > 0.1
    assert d.x_train.mean(0).abs().max() < 1e-5
    assert (d.x_train.std(0)[varying] - 1).abs().max() < 0.02


def test_digits_errors() -> None:
    with pytest.raises(ValueError, match="test_fraction"):
        data.load_digits(test_fraction=1.0)


# --- the Python standard library as text -----------------------------------------------------------


def test_pystdlib_text_is_deterministic_and_recorded() -> None:
    a = data.load("pystdlib-text", max_bytes=100_000)
    b = data.load_pystdlib_text(max_bytes=100_000)
    assert torch.equal(a.train, b.train) and torch.equal(a.val, b.val) and torch.equal(a.test, b.test)
    raw = bytes(torch.cat([a.train, a.val, a.test]).numpy())  # the held-out tail: validation, then test
    assert len(raw) == 100_000 and (len(a.train), len(a.val), len(a.test)) == (90_000, 5_000, 5_000)
    assert a.meta["sha256"] == hashlib.sha256(raw).hexdigest() == b.meta["sha256"]
    assert a.meta["python_version"] == __import__("platform").python_version()
    assert a.vocab_size == 256 and a.name == "pystdlib-text"


def test_pystdlib_text_is_the_sorted_sources_joined() -> None:
    text = data.load_pystdlib_text(max_bytes=300_000)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = embedded._stdlib_sources(stdlib)
    assert files == sorted(files) and files[0] == text.meta["first_file"]
    assert not any(part in embedded.STDLIB_EXCLUDED_DIRS for f in files for part in f.split("/")[:-1])
    expected = b"\xff".join((stdlib / f).read_bytes() for f in files[: text.meta["files"]])[:300_000]
    assert bytes(torch.cat([text.train, text.val, text.test]).numpy()) == expected


def test_pystdlib_text_default_size_and_batches() -> None:
    text = data.load("pystdlib-text")
    assert len(text.train) + len(text.val) + len(text.test) == 2_000_000
    x, y = text.batch("val", batch_size=4, block_size=64, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 64) and x.dtype == torch.int64
    assert torch.equal(y[:, :-1], x[:, 1:])


def test_pystdlib_text_errors() -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        data.load_pystdlib_text(max_bytes=0)
    with pytest.raises(ValueError, match="val_fraction"):
        data.load_pystdlib_text(max_bytes=1000, val_fraction=0)
