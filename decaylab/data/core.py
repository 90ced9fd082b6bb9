"""The two in-memory dataset types, the data errors, and where data lives on disk.

Every dataset decaylab trains on is small enough to hold in memory, and the sweep engine trains
many stacked models on the same tensors, so a dataset is plain tensors, not a ``Dataset`` object
with a per-item ``__getitem__``:

- :class:`TensorData` — classification: ``x_train, y_train, x_test, y_test`` (``y`` int64 class
  indices), ``num_classes``, ``name``, a ``meta`` dict that says where the numbers came from, and the
  validation split ``x_val, y_val``;
- :class:`TextData` — byte-level language modelling: ``train``, ``val`` and ``test`` are 1-D uint8
  tensors of raw bytes (vocabulary 256), sampled into ``(x, y)`` blocks by :meth:`TextData.batch`.

Every registered dataset has a train, a validation and a test split: runs select on validation and
report test (decaylab's datasets keep their training split as their sources define it; where the
validation examples come from is each loader's to say). Data made by hand may leave validation out:
runs on it then record no ``val_*`` metrics.

>>> import torch
>>> text = TextData(train=torch.arange(100, dtype=torch.uint8), val=torch.arange(20, dtype=torch.uint8), name="demo")
>>> text.splits
('train', 'val')
>>> x, y = text.batch("train", batch_size=4, block_size=8, generator=torch.Generator().manual_seed(0))
>>> x.shape, x.dtype, y.shape
(torch.Size([4, 8]), torch.int64, torch.Size([4, 8]))
>>> bool((y[:, :-1] == x[:, 1:]).all())
True
"""

from __future__ import annotations

import hashlib
import numbers
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "END_OF_TEXT",
    "CorruptDataError",
    "DataFileError",
    "MissingDataError",
    "TensorData",
    "TextData",
    "cache_dir",
    "file_md5",
]

#: The byte that separates documents in a byte-level corpus. 0xFF never occurs in valid UTF-8, so
#: a model sees unambiguous document boundaries (GPT-2's ``<|endoftext|>`` in one byte).
END_OF_TEXT = 0xFF


class DataFileError(OSError):
    """A data file is missing or unreadable; the message names the file and what was expected there."""


class MissingDataError(DataFileError, FileNotFoundError):
    """An expected data file or folder is not there (and could not be downloaded)."""


class CorruptDataError(DataFileError):
    """A data file is there but is not what was expected (wrong checksum, unreadable, wrong contents)."""


def cache_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """Where datasets are cached and looked for: ``root`` if given, else ``$DECAYLAB_DATA``, else
    ``$XDG_CACHE_HOME/decaylab``, else ``~/.cache/decaylab``. The folder is not created here.

    >>> str(cache_dir("/tmp/somewhere"))
    '/tmp/somewhere'
    """
    if root is None:
        root = os.environ.get("DECAYLAB_DATA") or None
    if root is None:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = Path(xdg) / "decaylab" if xdg else Path("~/.cache/decaylab")
    return Path(root).expanduser()


def file_md5(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """The hex md5 digest of a file, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------
# classification


@dataclass
class TensorData:
    """A classification dataset held in memory as tensors.

    ``x_train``, ``x_val`` and ``x_test`` share every dimension but the first (float32 from every
    decaylab loader); the ``y`` are int64 class indices in ``[0, num_classes)``. ``meta`` records
    where the numbers came from (source file, checksum, seed, normalization, the validation split's
    origin). ``x_val``/``y_val`` is None for data made without a validation split.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    name: str
    meta: dict[str, Any] = field(default_factory=dict)
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if (self.x_val is None) != (self.y_val is None):
            raise ValueError("x_val and y_val must be given together (the validation split), or neither")
        for split in self.splits:
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
                raise TypeError(f"x_{split} and y_{split} must be torch.Tensor, got {type(x).__name__} "
                                f"and {type(y).__name__}")
            if y.dtype != torch.int64 or y.ndim != 1:
                raise ValueError(f"y_{split} must be a 1-D int64 tensor of class indices, got "
                                 f"dtype {y.dtype} and shape {tuple(y.shape)}")
            if x.ndim < 1 or len(x) != len(y):
                raise ValueError(f"x_{split} has {len(x) if x.ndim else 0} rows but y_{split} has {len(y)}")
        for split in self.splits[1:]:
            x = getattr(self, f"x_{split}")
            if self.x_train.shape[1:] != x.shape[1:]:
                raise ValueError(f"x_train and x_{split} must have the same example shape, got "
                                 f"{tuple(self.x_train.shape[1:])} and {tuple(x.shape[1:])}")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, numbers.Integral) \
                or self.num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {self.num_classes!r}")
        for split in self.splits:
            y = getattr(self, f"y_{split}")
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise ValueError(f"y_{split} has labels in [{int(y.min())}, {int(y.max())}], outside "
                                 f"[0, num_classes={self.num_classes})")

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one example, e.g. ``(40,)`` for MNIST-1D or ``(3, 32, 32)`` for CIFAR."""
        return tuple(self.x_train.shape[1:])

    @property
    def n_train(self) -> int:
        return len(self.y_train)

    @property
    def n_test(self) -> int:
        return len(self.y_test)

    @property
    def n_val(self) -> int:
        return 0 if self.y_val is None else len(self.y_val)

    @property
    def splits(self) -> tuple[str, ...]:
        """``("train", "val", "test")``, or ``("train", "test")`` without a validation split."""
        return ("train", "test") if self.x_val is None else ("train", "val", "test")

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> TensorData:
        """A copy with every tensor on ``device`` (and the inputs in ``dtype``, if given)."""
        moved = {}
        for split in self.splits:
            moved[f"x_{split}"] = getattr(self, f"x_{split}").to(device=device, dtype=dtype)
            moved[f"y_{split}"] = getattr(self, f"y_{split}").to(device)
        return replace(self, meta=dict(self.meta), **moved)

    def train_subset(self, n: int, seed: int = 0) -> TensorData:
        """A copy that trains on ``n`` of the training examples: the first ``n`` of a fixed permutation
        (``seed``), in the dataset's own order, so that a smaller subset is part of every larger one
        (data-scaling experiments); validation and test are unchanged."""
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 1 <= n <= self.n_train:
            raise ValueError(f"train_examples must be an integer from 1 to {self.n_train} (the training examples of "
                             f"{self.name!r}); got {n!r}")
        keep = torch.randperm(self.n_train, generator=torch.Generator().manual_seed(seed))[:n].sort().values
        meta = {**self.meta, "train_subset": {"n": int(n), "of": self.n_train, "seed": seed,
                                              "indices_md5": hashlib.md5(keep.numpy().tobytes()).hexdigest()}}
        return replace(self, x_train=self.x_train[keep], y_train=self.y_train[keep], meta=meta)

    def __repr__(self) -> str:
        val = f", val={self.n_val}" if self.x_val is not None else ""
        return (f"TensorData(name={self.name!r}, train={self.n_train}{val}, test={self.n_test}, "
                f"input_shape={self.input_shape}, num_classes={self.num_classes}, "
                f"dtype={self.x_train.dtype}, device={self.x_train.device})")


# --------------------------------------------------------------------------------------------------
# byte-level language modelling


def bytes_to_tensor(data: bytes | bytearray) -> torch.Tensor:
    """A 1-D uint8 tensor holding ``data`` (one copy, no per-byte Python loop)."""
    if len(data) == 0:
        return torch.empty(0, dtype=torch.uint8)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def split_held_out(n: int) -> tuple[slice, slice]:
    """A held-out block of ``n`` examples (or bytes) as validation and test: the first half (rounded down)
    and the rest, nothing random (the same data give the same split)."""
    return slice(0, n // 2), slice(n // 2, n)


def split_bytes(data: bytes, val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a byte stream into its first ``1 - val_fraction`` (train) and the rest (val).

    The split is at a fixed byte offset, ``len(data) - int(len(data) * val_fraction)``, as in
    nanoGPT's character-level Shakespeare: nothing random, so the same bytes give the same split.
    """
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, numbers.Real) \
            or not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be a number in (0, 1), got {val_fraction!r}")
    n_train = len(data) - int(len(data) * val_fraction)
    return bytes_to_tensor(data[:n_train]), bytes_to_tensor(data[n_train:])


@dataclass
class TextData:
    """A byte-level language-modelling corpus held in memory.

    ``train``, ``val`` and ``test`` are 1-D uint8 tensors of raw bytes (UTF-8 text; documents separated
    by :data:`END_OF_TEXT`, 0xFF, where the source has documents), so the vocabulary is the 256 byte
    values and no tokenizer is involved. ``meta`` records the source and a sha256 of the bytes.
    ``test`` is None for text made without a test split (then runs evaluate ``val`` only).
    """

    train: torch.Tensor
    val: torch.Tensor
    name: str
    vocab_size: int = 256
    meta: dict[str, Any] = field(default_factory=dict)
    test: torch.Tensor | None = None

    @property
    def splits(self) -> tuple[str, ...]:
        """``("train", "val", "test")``, or ``("train", "val")`` without a test split."""
        return ("train", "val") if self.test is None else ("train", "val", "test")

    def __post_init__(self) -> None:
        for split in self.splits:
            t = getattr(self, split)
            if not isinstance(t, torch.Tensor) or t.dtype != torch.uint8 or t.ndim != 1:
                got = f"dtype {t.dtype}, shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"TextData.{split} must be a 1-D uint8 tensor of bytes, got {got}")

    def split(self, split: str) -> torch.Tensor:
        """The byte tensor of ``split``: one of :attr:`splits`."""
        if split not in self.splits:
            raise ValueError(f"split must be one of {', '.join(map(repr, self.splits))}, got {split!r}")
        return getattr(self, split)

    def batch(
        self,
        split: str,
        batch_size: int,
        block_size: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample ``batch_size`` windows of ``block_size + 1`` consecutive bytes from ``split``.

        Returns ``(x, y)``, both int64 of shape ``(batch_size, block_size)``, with
        ``y[:, t] = x[:, t + 1]`` inside a window: ``y`` is the next byte after each byte of ``x``.
        The window starts are ``torch.randint(len(data) - block_size, (batch_size,),
        generator=generator)``, exactly nanoGPT's ``get_batch``, so a seeded CPU ``generator``
        gives the same batches on every machine. ``device`` moves the result (non-blocking).
        """
        data = self.split(split)
        for arg, value in (("batch_size", batch_size), ("block_size", block_size)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{arg} must be a positive int, got {value!r}")
        if block_size >= len(data):
            raise ValueError(f"block_size={block_size} needs more than {block_size} bytes, but split "
                             f"{split!r} of {self.name!r} has {len(data)}")
        starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
        windows = data[starts[:, None] + torch.arange(block_size + 1)].long()
        x, y = windows[:, :-1].contiguous(), windows[:, 1:].contiguous()
        if device is not None:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        return x, y

    @staticmethod
    def decode(tokens: torch.Tensor | bytes) -> str:
        """Bytes (or a tensor of byte values) as text: UTF-8 with replacement characters for
        incomplete sequences, and ``<|endoftext|>`` for each :data:`END_OF_TEXT` byte.

        >>> TextData.decode(torch.tensor([104, 105, 255, 33]))
        'hi<|endoftext|>!'
        """
        if isinstance(tokens, torch.Tensor):
            t = tokens.detach().cpu().reshape(-1)
            if t.numel() and (int(t.min()) < 0 or int(t.max()) > 255):
                raise ValueError(f"byte values must be in [0, 255], got [{int(t.min())}, {int(t.max())}]")
            raw = t.to(torch.uint8).numpy().tobytes()
        else:
            raw = bytes(tokens)
        return "<|endoftext|>".join(part.decode("utf-8", errors="replace")
                                    for part in raw.split(bytes([END_OF_TEXT])))

    def __repr__(self) -> str:
        test = f", test={len(self.test):,} bytes" if self.test is not None else ""
        return (f"TextData(name={self.name!r}, train={len(self.train):,} bytes, val={len(self.val):,} bytes{test}, "
                f"vocab_size={self.vocab_size})")
