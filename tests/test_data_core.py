"""decaylab.data.core: the dataset types, the batch sampler, cache_dir, the data errors."""

import doctest
from pathlib import Path

import pytest
import torch

from decaylab import data
from decaylab.data import core
from decaylab.data.core import TensorData, TextData


def test_doctests() -> None:
    for module in (core, data):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        assert result.attempted > 0, module.__name__
        assert result.failed == 0, module.__name__


# --- TensorData -----------------------------------------------------------------------------------


def _tensor_data(**changes) -> TensorData:
    fields = dict(x_train=torch.zeros(6, 3), y_train=torch.tensor([0, 1, 2, 0, 1, 2]),
                  x_test=torch.zeros(2, 3), y_test=torch.tensor([1, 2]), num_classes=3, name="toy")
    fields.update(changes)
    return TensorData(**fields)


def test_tensor_data_properties_and_to() -> None:
    d = _tensor_data()
    assert (d.n_train, d.n_test, d.input_shape) == (6, 2, (3,))
    moved = d.to("cpu", dtype=torch.float64)
    assert moved.x_train.dtype == torch.float64 and moved.y_train.dtype == torch.int64
    assert d.x_train.dtype == torch.float32  # the original is untouched
    assert "train=6" in repr(d) and "tensor(" not in repr(d)


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(y_train=torch.tensor([0, 1, 2, 0, 1, 2], dtype=torch.int32)), "int64"),
        (dict(y_test=torch.tensor([1])), "rows"),
        (dict(x_test=torch.zeros(2, 4)), "same example shape"),
        (dict(y_test=torch.tensor([1, 3])), "outside"),
        (dict(num_classes=0), "num_classes"),
        (dict(x_train=[[0.0]] * 6), "torch.Tensor"),
    ],
)
def test_tensor_data_rejects_inconsistent_fields(changes, match) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        _tensor_data(**changes)


# --- TextData ---------------------------------------------------------------------------------------


def _text(n_train: int = 1000, n_val: int = 100) -> TextData:
    g = torch.Generator().manual_seed(0)
    return TextData(train=torch.randint(0, 256, (n_train,), generator=g, dtype=torch.uint8),
                    val=torch.randint(0, 256, (n_val,), generator=g, dtype=torch.uint8), name="toy")


def test_batch_shapes_dtypes_and_shift() -> None:
    text = _text()
    for split, data_ in (("train", text.train), ("val", text.val)):
        x, y = text.batch(split, batch_size=8, block_size=16, generator=torch.Generator().manual_seed(1))
        assert x.shape == y.shape == (8, 16)
        assert x.dtype == y.dtype == torch.int64
        assert x.is_contiguous() and y.is_contiguous()
        assert torch.equal(y[:, :-1], x[:, 1:])  # y is x shifted by one
        # every row is a window of the split's bytes, and y's last byte is the one after x's window
        for row_x, row_y in zip(x, y, strict=True):
            windows = data_.long().unfold(0, 17, 1)
            match = (windows[:, :16] == row_x).all(1)
            assert match.any()
            assert (windows[match][:, 1:] == row_y).all(1).any()


def test_batch_is_nanogpt_get_batch() -> None:
    text = _text()
    x, y = text.batch("train", 4, 8, generator=torch.Generator().manual_seed(3))
    # nanoGPT: ix = torch.randint(len(data) - block_size, (batch_size,)); x = stack(data[i:i+bs]) ...
    ix = torch.randint(len(text.train) - 8, (4,), generator=torch.Generator().manual_seed(3))
    assert torch.equal(x, torch.stack([text.train[i:i + 8].long() for i in ix]))
    assert torch.equal(y, torch.stack([text.train[i + 1:i + 9].long() for i in ix]))


def test_batch_is_deterministic_with_a_generator() -> None:
    text = _text()
    a = text.batch("train", 4, 8, generator=torch.Generator().manual_seed(5))
    b = text.batch("train", 4, 8, generator=torch.Generator().manual_seed(5))
    c = text.batch("train", 4, 8, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])


def test_batch_uses_every_start_position() -> None:
    text = TextData(train=torch.arange(6, dtype=torch.uint8), val=torch.arange(3, dtype=torch.uint8), name="t")
    x, y = text.batch("train", 400, 3, generator=torch.Generator().manual_seed(0))
    assert set(x[:, 0].tolist()) == {0, 1, 2}  # starts 0..len-block_size-1, the last window ends at byte 5
    assert y.max() == 5


@pytest.mark.parametrize(
    "args, match",
    [
        (("test", 2, 4), "split must be one of 'train', 'val', got 'test'"),
        (("train", 0, 4), "batch_size"),
        (("train", 2, 0), "block_size"),
        (("val", 2, 100), "block_size=100"),
        (("train", 2, 2.5), "block_size"),
    ],
)
def test_batch_errors(args, match) -> None:
    with pytest.raises(ValueError, match=match):
        _text(n_val=100).batch(*args)


def test_text_data_rejects_non_bytes() -> None:
    with pytest.raises(ValueError, match="1-D uint8"):
        TextData(train=torch.arange(10), val=torch.arange(3, dtype=torch.uint8), name="t")


def test_decode() -> None:
    assert TextData.decode("héllo".encode() + b"\xff" + b"x") == "héllo<|endoftext|>x"
    assert TextData.decode(torch.tensor(list(b"ok"))) == "ok"
    with pytest.raises(ValueError, match="byte values"):
        TextData.decode(torch.tensor([300]))


def test_split_bytes_is_a_fixed_offset() -> None:
    train, val = core.split_bytes(bytes(range(100)), 0.1)
    assert train.tolist() == list(range(90)) and val.tolist() == list(range(90, 100))
    with pytest.raises(ValueError, match="val_fraction"):
        core.split_bytes(b"abc", 1.0)


# --- cache_dir ----------------------------------------------------------------------------------------


def test_cache_dir_precedence(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("DECAYLAB_DATA", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert data.cache_dir() == Path("~/.cache/decaylab").expanduser()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.cache_dir() == tmp_path / "xdg" / "decaylab"
    monkeypatch.setenv("DECAYLAB_DATA", str(tmp_path / "env"))
    assert data.cache_dir() == tmp_path / "env"
    assert data.cache_dir(tmp_path / "arg") == tmp_path / "arg"
