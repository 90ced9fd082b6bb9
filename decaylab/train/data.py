"""The data side of a run: loading (cached per process), the model that fits the data, the
order of the training examples, and the fixed evaluation sets.

Order: model ``k`` draws its batches from its own ``torch.Generator`` seeded with its config's
``seed``. For classification each epoch is ``torch.randperm(n_train, generator=g)`` cut into
``n_train // batch_size`` batches (the remainder is dropped, so K stacked models step through
their epochs in lockstep); the permutations of all K models are drawn once per epoch and moved
to the device together, and a step gathers ``x[idx]`` for all K models at once. For text,
each step draws ``batch_size`` windows per model with :meth:`decaylab.data.TextData.batch`.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from decaylab import data as datasets
from decaylab.data import TensorData, TextData
from decaylab.models import build, data_sizes

from .config import TrainConfig

__all__ = [
    "load_data", "check_fits", "build_model", "steps_per_epoch", "Prepared", "prepare", "Sampler", "LM_EVAL_SEED",
    "lm_eval_batches",
]

#: Seed of the generator that picks the fixed language-model evaluation windows (the same for
#: every run, so every run is evaluated on the same text).
LM_EVAL_SEED = 20240601

_LOADED: dict[str, TensorData | TextData] = {}
_SUBSETS: dict[tuple[int, int], tuple[TensorData, TensorData]] = {}  # (id(data), n) -> (data, its subset)
_PREPARED: OrderedDict[tuple, Prepared] = OrderedDict()
_PREPARED_MAX = 4


def load_data(config: TrainConfig, data: TensorData | TextData | None = None) -> TensorData | TextData:
    """``data`` if given, else ``decaylab.data.load(config.dataset)`` (loaded once per process); with
    ``config.train_examples``, its nested training subset of that size (:meth:`TensorData.train_subset`)."""
    if data is not None:
        if not isinstance(data, (TensorData, TextData)):
            raise ValueError(f"data must be a decaylab.data.TensorData or TextData; got {type(data).__name__}")
    else:
        if config.dataset not in _LOADED:
            _LOADED[config.dataset] = datasets.load(config.dataset)
        data = _LOADED[config.dataset]
    if config.train_examples is None:
        return data
    if isinstance(data, TextData):
        raise ValueError(f"train_examples is for classification datasets; {data.name!r} is text")
    key = (id(data), config.train_examples)
    if key not in _SUBSETS or _SUBSETS[key][0] is not data:
        _SUBSETS[key] = (data, data.train_subset(config.train_examples))
    return _SUBSETS[key][1]


def check_fits(config: TrainConfig, data: TensorData | TextData) -> None:
    """Raise ``ValueError`` if ``config.model`` cannot train on ``data`` (classifier vs text)."""
    if isinstance(data, TextData) and not config.is_language_model:
        raise ValueError(
            f"model {config.model!r} is a classifier but dataset {data.name!r} is text; use a language model "
            "('gpt-micro') for text"
        )
    if not isinstance(data, TextData) and config.is_language_model:
        raise ValueError(f"model {config.model!r} is a language model but dataset {data.name!r} is classification")


def build_model(config: TrainConfig, data: TensorData | TextData) -> nn.Module:
    """``decaylab.models.build(config.model, ...)`` with the sizes the data dictates (input
    features or length, classes, vocabulary). Uses torch's global RNG: seed it first."""
    check_fits(config, data)
    if isinstance(data, TextData):
        sizes = data_sizes(config.model, vocab_size=data.vocab_size, block_size=config.block_size)
    else:
        sizes = data_sizes(config.model, input_shape=data.input_shape, num_classes=data.num_classes, dataset=data.name)
    return build(config.model, **sizes)


def steps_per_epoch(config: TrainConfig, data: TensorData | TextData) -> int:
    """Optimizer steps in one pass over the training data.

    Raises ``ValueError`` when one batch is larger than the training data: ``batch_size`` examples,
    or for text ``batch_size × block_size`` tokens (such a batch only repeats the data, at the cost
    of memory the machine may not have)."""
    if isinstance(data, TextData):
        tokens = config.batch_size * config.block_size
        if tokens > len(data.train):
            raise ValueError(
                f"batch_size × block_size must be at most the number of training tokens ({len(data.train):,}) of "
                f"{data.name!r}; got {config.batch_size} × {config.block_size} = {tokens:,}"
            )
        return max(1, len(data.train) // tokens)
    if config.batch_size > data.n_train:
        raise ValueError(
            f"batch_size must be at most the number of training examples ({data.n_train}) of {data.name!r}; "
            f"got {config.batch_size}"
        )
    return data.n_train // config.batch_size


@dataclass
class Prepared:
    """Tensors of one dataset on one device, inputs in the model's dtype."""

    data: TensorData | TextData
    x_train: Tensor | None = None
    y_train: Tensor | None = None
    x_test: Tensor | None = None
    y_test: Tensor | None = None
    x_val: Tensor | None = None
    y_val: Tensor | None = None

    @property
    def is_text(self) -> bool:
        return isinstance(self.data, TextData)


def prepare(data: TensorData | TextData, device: torch.device, dtype: torch.dtype) -> Prepared:
    """``data`` on ``device`` with float inputs in ``dtype`` (kept for reuse by the next runs)."""
    if isinstance(data, TextData):
        return Prepared(data)
    key = (id(data), str(device), dtype)
    hit = _PREPARED.get(key)
    if hit is not None and hit.data is data:
        _PREPARED.move_to_end(key)
        return hit
    def cast(x: Tensor) -> Tensor:
        return x.to(device=device, dtype=dtype) if x.is_floating_point() else x.to(device)

    val = {} if data.x_val is None else {"x_val": cast(data.x_val), "y_val": data.y_val.to(device)}
    prepared = Prepared(data, cast(data.x_train), data.y_train.to(device), cast(data.x_test), data.y_test.to(device),
                        **val)
    _PREPARED[key] = prepared
    while len(_PREPARED) > _PREPARED_MAX:
        _PREPARED.popitem(last=False)
    return prepared


class Sampler:
    """Training batches for K models, each in the order of its own seeded generator."""

    def __init__(self, prepared: Prepared, config: TrainConfig, seeds: list[int], device: torch.device):
        self.prepared, self.device = prepared, device
        self.batch_size, self.block_size = config.batch_size, config.block_size
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.per_epoch = steps_per_epoch(config, prepared.data)
        self.epoch = -1
        self.perm: Tensor | None = None  # (K, n_train) on CPU: the current epoch's permutations
        self.order: Tensor | None = None  # (batches, K·B) on the device: the epoch's batches

    def batch(self, step: int) -> tuple[Tensor, Tensor]:
        """Inputs and targets ``(K, B, ...)`` for the 0-based ``step``."""
        if self.prepared.is_text:
            text: TextData = self.prepared.data
            pairs = [text.batch("train", self.batch_size, self.block_size, generator=g) for g in self.generators]
            x = torch.stack([p[0] for p in pairs]).to(self.device, non_blocking=True)
            y = torch.stack([p[1] for p in pairs]).to(self.device, non_blocking=True)
            return x, y
        epoch, i = divmod(step, self.per_epoch)
        if epoch != self.epoch:
            if epoch != self.epoch + 1:
                raise RuntimeError(f"the sampler is at epoch {self.epoch} and was asked for epoch {epoch}")
            self._new_epoch()
            self.epoch = epoch
        idx = self.order[i]  # (K·B,), contiguous: one index_select per step for all K models
        k = len(self.generators)
        x = self.prepared.x_train.index_select(0, idx)
        y = self.prepared.y_train.index_select(0, idx)
        return x.view(k, self.batch_size, *x.shape[1:]), y.view(k, self.batch_size)

    def _new_epoch(self) -> None:
        n = self.prepared.data.n_train
        self.perm = torch.stack([torch.randperm(n, generator=g) for g in self.generators])
        self._arrange()

    def _arrange(self) -> None:
        # (K, n) permutations -> (batches, K·B) on the device: batch i of model k is
        # perm[k, i·B:(i+1)·B], the remainder of each epoch is dropped.
        b, k = self.batch_size, len(self.generators)
        used = self.perm[:, :self.per_epoch * b].reshape(k, self.per_epoch, b)
        self.order = used.transpose(0, 1).reshape(self.per_epoch, k * b).to(self.device)

    def state_dict(self) -> dict[str, Any]:
        return {
            "generators": [g.get_state() for g in self.generators],
            "epoch": self.epoch,
            "perm": self.perm,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["generators"]) != len(self.generators):
            raise ValueError("checkpoint: its data order is for a different number of models")
        for g, s in zip(self.generators, state["generators"], strict=True):
            g.set_state(s)
        self.epoch = state["epoch"]
        self.perm = None if state["perm"] is None else state["perm"].cpu()
        if self.perm is not None:
            self._arrange()


def lm_eval_batches(
    text: TextData, split: str, config: TrainConfig, device: torch.device
) -> list[tuple[Tensor, Tensor]]:
    """The fixed evaluation windows of a text split (the same for every run and every evaluation)."""
    gen = torch.Generator().manual_seed(LM_EVAL_SEED)
    return [text.batch(split, config.batch_size, config.block_size, generator=gen, device=device)
            for _ in range(config.lm_eval_batches)]
