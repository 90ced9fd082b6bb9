"""decaylab.data.registry: load(), available(), register()."""

import doctest

import pytest
import torch

from decaylab import data
from decaylab.data import registry
from decaylab.data.core import TensorData


def test_doctests() -> None:
    result = doctest.testmod(registry, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def _toy(n: int) -> TensorData:
    return TensorData(torch.zeros(n, 3), torch.zeros(n, dtype=torch.int64), torch.zeros(2, 3),
                      torch.tensor([1, 2]), num_classes=3, name="toy")


# --- registry -----------------------------------------------------------------------------------------


def test_available_lists_every_dataset() -> None:
    infos = {info.name: info for info in data.available()}
    assert set(infos) == {"mnist1d", "digits", "pystdlib-text", "cifar10", "cifar100", "openwebtext", "tinystories"}
    assert {n for n, i in infos.items() if i.offline} == {"mnist1d", "digits", "pystdlib-text"}
    assert infos["tinystories"].kind == "text" and infos["cifar10"].kind == "classification"
    for info in infos.values():
        assert info.description and "\n" not in info.description
        assert info.name in str(info)


def test_unknown_name_lists_the_allowed_ones() -> None:
    with pytest.raises(ValueError) as err:
        data.load("imagenet")
    message = str(err.value)
    assert "'imagenet'" in message
    for info in data.available():
        assert info.name in message
    with pytest.raises(ValueError, match="did you mean 'mnist1d'"):
        data.load("mnist-1d")


def test_unknown_option_names_the_allowed_ones() -> None:
    with pytest.raises(TypeError, match=r"no option\(s\) \['sed'\].*'seed'"):
        data.load("digits", sed=1)


def test_name_is_case_insensitive() -> None:
    assert data.load("DIGITS").name == "digits"


def test_register_a_custom_dataset() -> None:
    def load_toy(root=None, *, n: int = 6) -> TensorData:
        return _toy(n)

    data.register("toy-for-test", load_toy, kind="classification", offline=True, description="a toy")
    try:
        assert data.load("toy-for-test", n=4).n_train == 4
        assert "toy-for-test" in [i.name for i in data.available()]
        with pytest.raises(ValueError, match="already registered"):
            data.register("toy-for-test", load_toy, kind="classification", offline=True, description="again")
        with pytest.raises(ValueError, match="kind"):
            data.register("toy2", load_toy, kind="images", offline=True, description="x")
        with pytest.raises(ValueError, match="root"):
            data.register("toy2", lambda n=1: None, kind="text", offline=True, description="x")
    finally:
        registry._REGISTRY.pop("toy-for-test", None)


def test_every_offline_dataset_has_train_validation_and_test() -> None:
    for info in data.available():
        if not info.offline:
            continue
        d = data.load(info.name)
        assert d.splits == ("train", "val", "test"), info.name
        if info.kind == "classification":
            assert min(d.n_train, d.n_val, d.n_test) > 0, info.name
        else:
            assert min(len(d.train), len(d.val), len(d.test)) > 0, info.name
