"""CIFAR ResNets with and without BatchNorm: He et al.'s ResNet-20 and "Why WD"'s PreAct-ResNet-18.

========================  ===========  ==========  ===========================================
model                     norm="bn"    norm="none" follows
========================  ===========  ==========  ===========================================
``resnet20()``            269,722      268,346     He et al. 2016 §4.2 via akamaster/pytorch_resnet_cifar10,
                                                   as used by Zhuang et al. (AdamW-Scale-free)
``preact_resnet18()``     11,172,176   11,164,362  tml-epfl/why-weight-decay ``PreActResNet18``
========================  ===========  ==========  ===========================================

(for ``num_classes=10``; the published figures are 0.27M and 11.17M).

**ResNet-20** — 3×3 conv (16) → 3 stages × 3 basic blocks (16, 32, 64 channels; stride 2 at the
start of stages 2 and 3) → global average pool → linear. A basic block is
``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``, convs without bias. The shortcut where
the shape changes is *option A* by default (He et al.'s choice for CIFAR and Zhuang et al.'s code):
subsample by the stride and zero-pad the new channels — no parameters, hence the published 0.27M.
``shortcut="B"`` uses a 1×1 conv (+ BN) instead (272,474 parameters). Init as in that code:
``kaiming_normal_`` (fan-in, ReLU gain) on every conv and linear weight.

**PreAct-ResNet-18** — exactly the "Why WD" code's ``PreActResNet18`` with ``learnable_bn=True``
(as its experiments build it): BatchNorm on the *input image*, a 3×3 conv (64), 4 stages × 2
pre-activation blocks (64, 128, 256, 512), a final BN + ReLU, global average pool, linear. A block is
``out = relu(bn1(x)); s = shortcut(out) if projecting else x; conv2(relu(bn2(conv1(out)))) + s``
with a 1×1 conv shortcut (no bias) where the shape changes. The kuangliu PreActResNet18 it derives
from lacks the input BN and the final BN + ReLU (11,171,146 parameters; the same 11.17M).
Default PyTorch init, as in that code. (Its ``bn_flag=False`` swaps in GroupNorm; here
``norm="none"`` removes normalization instead, like Zhuang et al.'s no-BN ResNets.)

**Without BatchNorm** (``norm="none"``) every BN becomes ``nn.Identity`` and nothing else changes
in the architecture. So that deep stacks still train, ``zero_init_residual`` (default: on exactly
when ``norm="none"``) initializes the *last conv of every residual branch* to zero (Fixup's zero
init, without its scalar biases and multipliers; Goyal et al. / torchvision zero the last BN's γ
instead, which is what ``zero_init_residual=True`` does with BN): every block starts as the
identity on its shortcut, so the signal neither explodes nor vanishes with depth, and the branch
weights still get gradients at the first step (its input is non-zero). Pass
``zero_init_residual=False`` to reproduce Zhuang et al.'s no-BN init exactly (plain removal).

**Stacking with vmap.** No in-place ops on activations, no data-dependent control flow, and the
pooling is a mean over the spatial dims (any input size ≥ the strides). BatchNorm works under
``vmap(functional_call(base, (params, buffers), x))`` in train mode too, *provided the buffers are
stacked and vmapped along with the parameters* (``in_dims=0``, as :func:`torch.func.stack_module_state`
returns them): each model then normalizes with its own batch statistics and updates its own slice of
the stacked ``running_mean``/``running_var``/``num_batches_tracked`` in place — outputs, gradients
and running statistics equal K separate models' (see ``tests/test_models.py``). With *unbatched*
buffers (``in_dims=None``) BN raises in train mode, since the in-place running-stat update of one
shared tensor would need K different values; :func:`torch.func.replace_all_batch_norm_modules_`
(no running stats at all) is the fallback when buffers cannot be stacked.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from decaylab.models._layers import check_choice, norm2d

__all__ = ["BasicBlock", "PreActBlock", "PreActResNet", "ResNet", "preact_resnet18", "resnet20"]


class PadShortcut(nn.Module):
    """He et al.'s option-A shortcut: subsample by ``stride`` and zero-pad the new channels (no parameters)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        # Pad the channel dim on both sides, as the reference code does (planes//4 each side for ×2).
        self.pad = ((planes - in_planes) // 2, planes - in_planes - (planes - in_planes) // 2)

    def forward(self, x: Tensor) -> Tensor:
        x = x[..., :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, *self.pad))


class BasicBlock(nn.Module):
    """Post-activation basic block: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, norm: str = "bn", shortcut: str = "A") -> None:
        super().__init__()
        check_choice("shortcut", shortcut, ("A", "B"))
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm2d(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = norm2d(norm, planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            if shortcut == "A":
                self.shortcut = PadShortcut(in_planes, planes, stride)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), norm2d(norm, planes)
                )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """He et al.'s CIFAR ResNet with ``6n + 2`` layers (``n = blocks_per_stage``); see module docs.

    Args:
        blocks_per_stage: basic blocks in each of the 3 stages (3 → ResNet-20, 9 → ResNet-56, ...).
        num_classes: number of output logits.
        norm: ``"bn"`` (BatchNorm after every conv) or ``"none"``.
        shortcut: ``"A"`` (zero-pad, parameter-free; the paper's) or ``"B"`` (1×1 conv projection).
        zero_init_residual: zero the last layer of every residual branch (``conv2`` without BN,
            ``bn2.weight`` with BN). ``None`` (default): on exactly when ``norm="none"``.
        width: channels of the first stage (16 in the paper); stages use ``width·(1, 2, 4)``.
    """

    def __init__(
        self,
        blocks_per_stage: int = 3,
        num_classes: int = 10,
        norm: str = "bn",
        shortcut: str = "A",
        zero_init_residual: bool | None = None,
        width: int = 16,
    ) -> None:
        super().__init__()
        check_choice("norm", norm, ("bn", "none"))
        check_choice("shortcut", shortcut, ("A", "B"))
        self.norm = norm
        self.conv1 = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = norm2d(norm, width)
        in_planes = width
        stages = []
        for planes, stride in ((width, 1), (2 * width, 2), (4 * width, 2)):
            blocks = []
            for s in [stride] + [1] * (blocks_per_stage - 1):
                blocks.append(BasicBlock(in_planes, planes, s, norm=norm, shortcut=shortcut))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(in_planes, num_classes)

        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(module.weight)
        if zero_init_residual is None:
            zero_init_residual = norm == "none"
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, BasicBlock):
                    last = module.bn2 if norm == "bn" else module.conv2
                    nn.init.zeros_(last.weight)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(out.mean(dim=(-2, -1)))


def resnet20(
    num_classes: int = 10, norm: str = "bn", shortcut: str = "A", zero_init_residual: bool | None = None
) -> ResNet:
    """ResNet-20 for CIFAR (0.27M parameters with BN); ``norm="none"`` for Zhuang et al.'s no-BN runs.

    >>> import torch
    >>> resnet20(norm="none")(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """
    return ResNet(3, num_classes, norm=norm, shortcut=shortcut, zero_init_residual=zero_init_residual)


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016b), as in the "Why WD" code; see module docs."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, norm: str = "bn") -> None:
        super().__init__()
        self.bn1 = norm2d(norm, in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = norm2d(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        # The projection reads the pre-activated input, the identity the raw one (as in the reference).
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + skip


class PreActResNet(nn.Module):
    """Pre-activation ResNet for CIFAR as in tml-epfl/why-weight-decay; see module docs.

    Args:
        blocks_per_stage: blocks in each of the 4 stages ((2, 2, 2, 2) → PreAct-ResNet-18).
        num_classes: number of output logits.
        norm: ``"bn"`` or ``"none"``.
        zero_init_residual: zero the last layer of every residual branch (``conv2`` — in a
            pre-activation block the branch ends in a conv, with or without BN). ``None``
            (default): on exactly when ``norm="none"``.
        width: channels of the first stage (64); stages use ``width·(1, 2, 4, 8)``.
    """

    def __init__(
        self,
        blocks_per_stage: Sequence[int] = (2, 2, 2, 2),
        num_classes: int = 10,
        norm: str = "bn",
        zero_init_residual: bool | None = None,
        width: int = 64,
    ) -> None:
        super().__init__()
        check_choice("norm", norm, ("bn", "none"))
        if len(blocks_per_stage) != 4:
            raise ValueError(f"blocks_per_stage must have 4 entries, got {tuple(blocks_per_stage)}")
        self.norm = norm
        self.input_norm = norm2d(norm, 3)  # "Why WD" normalizes the input image with a BN too
        self.conv1 = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
        in_planes = width
        stages = []
        for i, n_blocks in enumerate(blocks_per_stage):
            planes, stride = width * 2**i, 1 if i == 0 else 2
            blocks = []
            for s in [stride] + [1] * (n_blocks - 1):
                blocks.append(PreActBlock(in_planes, planes, s, norm=norm))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn = norm2d(norm, in_planes)
        self.linear = nn.Linear(in_planes, num_classes)

        if zero_init_residual is None:
            zero_init_residual = norm == "none"
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, PreActBlock):
                    nn.init.zeros_(module.conv2.weight)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(self.input_norm(x))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.relu(self.bn(out))
        return self.linear(out.mean(dim=(-2, -1)))


def preact_resnet18(num_classes: int = 10, norm: str = "bn", zero_init_residual: bool | None = None) -> PreActResNet:
    """PreAct-ResNet-18 of "Why WD" (11.17M parameters with BN)."""
    return PreActResNet((2, 2, 2, 2), num_classes, norm=norm, zero_init_residual=zero_init_residual)
