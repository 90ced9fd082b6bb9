"""VGG-16 for CIFAR, without BatchNorm by default: the "Why WD" vision VGG.

Configuration D of Simonyan & Zisserman — 13 3×3 convs (with bias) + ReLU in five blocks
``[64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512, M]`` (``M``: 2×2 max
pool) — then a classifier on the 512 features: one linear layer 512 → ``num_classes`` by default
(14,719,818 parameters for 10 classes, the usual "14.7M CIFAR VGG-16"). The "Why WD" code
(tml-epfl/why-weight-decay, from chengyangfu/pytorch-vgg-cifar10) puts two hidden 512-wide layers
with ReLU before the output (no dropout): ``hidden_fc=(512, 512)`` reproduces it (15,245,130).

Init as in that code: conv weights ``N(0, 2/(k²·out_channels))`` (Kaiming, fan-out), conv biases
zero, linear layers PyTorch's default. That code also subtracts ImageNet's mean/std inside the
model; here input normalization is the data pipeline's job.

After the five pools a 32×32 image is 1×1; the features are then averaged over the remaining
spatial dims, which is the identity on CIFAR and lets larger inputs through. ``norm="bn"`` puts a
BatchNorm after every conv (the code's ``batch_norm=True``; see :mod:`decaylab.models.resnet` for
BatchNorm under vmap). Everything is out-of-place, so the model stacks under ``vmap``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from decaylab.models._layers import check_choice, norm2d

__all__ = ["VGG", "VGG16_CONFIG", "vgg16"]

#: Configuration D: conv widths, ``"M"`` for a 2×2 max pool.
# fmt: off
VGG16_CONFIG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)
# fmt: on


class VGG(nn.Module):
    """A VGG network for 3-channel images; see module docs.

    Parameter names: ``features.<i>.weight``/``.bias`` (convs, and BNs with ``norm="bn"``),
    ``classifier.<i>.weight``/``.bias``.

    Args:
        config: conv widths and ``"M"`` pools, in order.
        num_classes: number of output logits.
        norm: ``"none"`` (default) or ``"bn"`` (BatchNorm after every conv).
        hidden_fc: widths of hidden linear layers (with ReLU) before the output layer.
    """

    def __init__(
        self,
        config: Sequence[int | str] = VGG16_CONFIG,
        num_classes: int = 10,
        norm: str = "none",
        hidden_fc: Sequence[int] = (),
    ) -> None:
        super().__init__()
        check_choice("norm", norm, ("bn", "none"))
        self.norm = norm
        layers: list[nn.Module] = []
        channels = 3
        for v in config:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            if not isinstance(v, int):
                raise ValueError(f"config entries must be conv widths (int) or 'M', got {v!r}")
            layers.append(nn.Conv2d(channels, v, 3, padding=1))
            if norm == "bn":
                layers.append(norm2d(norm, v))
            layers.append(nn.ReLU())  # out-of-place: inplace=True is not needed and is riskier under vmap
            channels = v
        self.features = nn.Sequential(*layers)
        head: list[nn.Module] = []
        for width in hidden_fc:
            head += [nn.Linear(channels, width), nn.ReLU()]
            channels = width
        head.append(nn.Linear(channels, num_classes))
        self.classifier = nn.Sequential(*head)

        for module in self.features:
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).mean(dim=(-2, -1)))


def vgg16(num_classes: int = 10, norm: str = "none", hidden_fc: Sequence[int] = ()) -> VGG:
    """VGG-16 for CIFAR, no BatchNorm (14.7M parameters); ``hidden_fc=(512, 512)`` for "Why WD"'s head.

    >>> import torch
    >>> vgg16()(torch.randn(1, 3, 32, 32)).shape
    torch.Size([1, 10])
    """
    return VGG(VGG16_CONFIG, num_classes, norm=norm, hidden_fc=hidden_fc)
