"""The two MNIST-1D baselines: an MLP and the small 1-d CNN of Greydanus's MNIST-1D paper.

Both follow ``greydanus/mnist1d`` (``notebooks/models.py``: ``MLPBase``, ``ConvBase``) and keep
PyTorch's default initialization, as that code does. Inputs are MNIST-1D signals of shape
``(batch, in_length)`` (``(batch, 1, in_length)`` is accepted too); outputs are logits
``(batch, num_classes)``.

Both are stateless apart from their parameters (no buffers, no in-place ops on activations, no
data-dependent control flow), so ``K`` copies stack with :func:`torch.func.stack_module_state` and
run under ``vmap(functional_call(...))`` in train and eval mode alike. (``MLP(norm="bn")`` adds
BatchNorm running statistics as buffers, which stack like the ResNets' do.)

>>> import torch
>>> MLP()(torch.randn(8, 40)).shape, CNN1d()(torch.randn(8, 40)).shape
(torch.Size([8, 10]), torch.Size([8, 10]))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from decaylab.models._layers import check_choice

__all__ = ["ACTIVATIONS", "CNN1d", "MLP"]

#: Activation names the MLP accepts, and the (out-of-place) function each one applies.
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "tanh": torch.tanh,
    "silu": F.silu,
}


class MLP(nn.Module):
    """A fully connected classifier: ``Linear → act`` for each hidden width, then a linear head.

    With ``residual=True`` a hidden layer whose input and output widths agree adds its input back,
    ``h ← h + act(W h + b)``; with the default ``hidden=(100, 100)`` this is exactly MNIST-1D's
    ``MLPBase`` (15,210 parameters either way). Default PyTorch initialization.

    With ``norm="bn"`` every hidden layer is ``Linear (no bias) → BatchNorm1d → act``, so the
    hidden weights are scale-invariant (the output does not change when a hidden ``W`` is
    multiplied by a positive number): the small-scale stand-in for Zhuang et al.'s BN ResNets
    (15,410 parameters with the defaults).

    Parameter names: ``hidden.<i>.weight``/``.bias`` (no bias with BN), ``norms.<i>.weight``/``.bias``
    (with BN) and ``head.weight``/``.bias``.

    Args:
        in_features: length of the (flattened) input; 40 for MNIST-1D.
        hidden: widths of the hidden layers, in order (may be empty: a linear model).
        num_classes: number of output logits.
        activation: one of :data:`ACTIVATIONS` (``"relu"``, ``"gelu"``, ``"tanh"``, ``"silu"``).
        residual: add skip connections around hidden layers of equal width (MNIST-1D's ``MLPBase``).
        norm: ``"none"`` (default) or ``"bn"`` (BatchNorm1d after every hidden linear layer).
    """

    def __init__(
        self,
        in_features: int = 40,
        hidden: Sequence[int] = (100, 100),
        num_classes: int = 10,
        activation: str = "relu",
        residual: bool = False,
        norm: str = "none",
    ) -> None:
        super().__init__()
        check_choice("activation", activation, tuple(ACTIVATIONS))
        check_choice("norm", norm, ("none", "bn"))
        if isinstance(hidden, int):
            raise TypeError(f"hidden must be a sequence of widths, e.g. ({hidden},), not an int")
        widths = [in_features, *hidden]
        bias = norm == "none"  # a bias before BatchNorm is cancelled by its mean subtraction
        self.hidden = nn.ModuleList(nn.Linear(a, b, bias=bias) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.norms = nn.ModuleList(nn.BatchNorm1d(b) for b in widths[1:]) if norm == "bn" else None
        self.head = nn.Linear(widths[-1], num_classes)
        self.activation = activation
        # Decided once here from the widths, so forward has no data-dependent branches.
        self._skip = [residual and a == b for a, b in zip(widths[:-1], widths[1:], strict=True)]

    def forward(self, x: Tensor) -> Tensor:
        act = ACTIVATIONS[self.activation]
        h = x.flatten(1)
        norms = self.norms if self.norms is not None else [None] * len(self.hidden)
        for layer, norm, skip in zip(self.hidden, norms, self._skip, strict=True):
            z = layer(h)
            if norm is not None:
                # Under autocast the linear layer gives bf16 while BN's affine stays fp32: normalize in
                # BN's dtype (what autocast does for batch_norm on CUDA), which vmap's batched batch_norm
                # (stacked models) needs too.
                z = norm(z.to(norm.weight.dtype))
            h = h + act(z) if skip else act(z)
        return self.head(h)

    def stacked_forward(self, params: dict[str, Tensor], x: Tensor, shared: bool = False) -> Tensor | None:
        """K models at once from their stacked parameters (``params[name]`` has a leading K), with
        batched matmuls: the logits ``(K, B, classes)`` that ``vmap(functional_call)`` gives, without
        its per-operation overhead. ``x`` is ``(K, B, ...)``, or ``(B, ...)`` seen by every model
        with ``shared=True``. None with BatchNorm (its batch statistics need vmap's per-model view).
        """
        if self.norms is not None:
            return None
        act = ACTIVATIONS[self.activation]
        k = params["head.weight"].shape[0]
        h = x.flatten(1).expand(k, -1, -1) if shared else x.flatten(2)
        # Under autocast the matmuls run in another dtype than the saved weights: autograd's own
        # baddbmm handles that; the hand-written backward is for the plain (one-dtype) case.
        linear = _baddbmm if torch.is_autocast_enabled(h.device.type) else _StackedLinear.apply
        for i, skip in enumerate(self._skip):
            w, b = params[f"hidden.{i}.weight"], params[f"hidden.{i}.bias"]
            if self.activation == "relu" and not skip:
                h = linear(h, w, b, True)
            else:
                z = linear(h, w, b, False)
                h = h + act(z) if skip else act(z)
        return linear(h, params["head.weight"], params["head.bias"], False)


def _baddbmm(h: Tensor, w: Tensor, b: Tensor, relu: bool) -> Tensor:
    z = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
    return torch.relu(z) if relu else z


class _StackedLinear(torch.autograd.Function):
    """K linear layers at once, ``relu?(h @ Wᵀ + b)`` for ``h (K, B, in)``, ``W (K, out, in)``, ``b (K, out)``.

    Autograd's own backward of ``baddbmm(b, h, Wᵀ)`` forms the weight gradient transposed and copies
    it into W's layout, and a separate ReLU keeps its own input and output; here the weight gradient
    is one ``bmm`` in W's layout, the ReLU is applied in place and its mask read from the output.
    (Twice differentiable: the backward is made of differentiable operations.)
    """

    @staticmethod
    def forward(ctx, h: Tensor, w: Tensor, b: Tensor, relu: bool) -> Tensor:
        z = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
        if relu:
            z.clamp_min_(0)
        ctx.relu = relu
        ctx.save_for_backward(h, w, z if relu else None)
        return z

    @staticmethod
    def backward(ctx, grad: Tensor):
        h, w, out = ctx.saved_tensors
        if ctx.relu:
            # one kernel (ReLU's own backward); under create_graph, a differentiable form of it
            grad = torch.where(out > 0, grad, 0.0) if torch.is_grad_enabled() else torch.ops.aten.threshold_backward(
                grad, out, 0)
        grad_h = torch.bmm(grad, w) if ctx.needs_input_grad[0] else None
        grad_w = torch.bmm(grad.transpose(1, 2), h) if ctx.needs_input_grad[1] else None
        grad_b = grad.sum(1) if ctx.needs_input_grad[2] else None
        return grad_h, grad_w, grad_b, None


def _conv_length(length: int, kernel: int, stride: int, padding: int) -> int:
    return (length + 2 * padding - kernel) // stride + 1


class CNN1d(nn.Module):
    """MNIST-1D's ``ConvBase``: three strided 1-d convolutions with ReLU, then a linear classifier.

    ``conv1``: 1 → C, kernel 5, stride 2, padding 1; ``conv2``, ``conv3``: C → C, kernel 3,
    stride 2, padding 1; ReLU after each; the ``C × L₃`` features are flattened into ``linear``.
    For ``in_length=40`` the lengths go 40 → 19 → 10 → 5, so with the paper's ``channels=25`` the
    classifier sees 125 features and the model has 5,210 parameters. Default PyTorch init.

    Args:
        in_length: length of the input signal (40 for MNIST-1D).
        channels: channels of every conv layer (MNIST-1D uses 25).
        num_classes: number of output logits.
    """

    def __init__(self, in_length: int = 40, channels: int = 25, num_classes: int = 10) -> None:
        super().__init__()
        length = in_length
        for kernel in (5, 3, 3):
            length = _conv_length(length, kernel, stride=2, padding=1)
        if length < 1:
            raise ValueError(f"in_length must be at least 3 (the first conv has kernel 5, padding 1), got {in_length}")
        self.in_length = in_length
        self.conv1 = nn.Conv1d(1, channels, 5, stride=2, padding=1)
        self.conv2 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.linear = nn.Linear(channels * length, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        # Shape checks only (no values), so this stays vmap-compatible.
        if x.shape[-1] != self.in_length:
            raise ValueError(f"CNN1d was built for in_length={self.in_length}, got input shape {tuple(x.shape)}")
        if x.ndim == 2:
            x = x.unsqueeze(1)
        h = F.relu(_conv(self.conv1, x))
        h = F.relu(_conv(self.conv2, h))
        h = F.relu(_conv(self.conv3, h))
        return self.linear(h.flatten(1))


def _conv(layer: nn.Conv1d, x: Tensor) -> Tensor:
    """``layer(x)``; 16-bit on a CPU it convolves in float32 and rounds the result back. Under vmap
    (stacked models) a 16-bit CPU convolution's input gradient runs as one grouped convolution in
    which a model whose weights are NaN turns the other models' gradients NaN too (torch 2.13,
    oneDNN); in float32 the groups stay apart. bf16 kernels accumulate in float32 anyway."""
    w, b = layer.weight, layer.bias
    if x.device.type != "cpu" or x.dtype not in (torch.bfloat16, torch.float16):
        return layer(x)
    out = F.conv1d(x.float(), w.float(), None if b is None else b.float(), layer.stride, layer.padding,
                   layer.dilation, layer.groups)
    return out.to(x.dtype)
