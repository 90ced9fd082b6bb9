"""Models for weight-decay experiments, all stackable with ``torch.func`` (``vmap(functional_call)``).

- MNIST-1D: :class:`MLP`, :class:`CNN1d` (:mod:`decaylab.models.mnist1d`)
- CIFAR, with and without BatchNorm: :func:`resnet20`, :func:`preact_resnet18`
  (:mod:`decaylab.models.resnet`), :func:`vgg16` without BatchNorm (:mod:`decaylab.models.vgg`)
- language: :class:`GPT` / :class:`GPTConfig`, nanoGPT-style (:mod:`decaylab.models.gpt`)
- by name: :func:`build`, :func:`available`; :func:`num_parameters` (:mod:`decaylab.models.registry`)

Each file's docstring says which paper's code it follows, its init, its parameter count and what
works under ``vmap`` (BatchNorm in train mode: yes, with stacked buffers; SDPA: yes, looped on CPU).
"""

from decaylab.models.gpt import GPT, GPTConfig
from decaylab.models.mnist1d import MLP, CNN1d
from decaylab.models.registry import INPUTS, available, build, data_sizes, num_parameters, takes
from decaylab.models.resnet import PreActResNet, ResNet, preact_resnet18, resnet20
from decaylab.models.vgg import VGG, vgg16

__all__ = [
    "INPUTS",
    "data_sizes",
    "takes",
    "CNN1d",
    "GPT",
    "GPTConfig",
    "MLP",
    "PreActResNet",
    "ResNet",
    "VGG",
    "available",
    "build",
    "num_parameters",
    "preact_resnet18",
    "resnet20",
    "vgg16",
]
