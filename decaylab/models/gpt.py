"""A nanoGPT-style GPT (karpathy/nanoGPT ``model.py`` conventions), small enough to train on a CPU.

Same module names as nanoGPT, so its checkpoints' state dicts line up:
``transformer.wte`` (token embedding, tied to ``lm_head``), ``transformer.wpe`` (learned positions),
``transformer.h.<i>.{ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj}``,
``transformer.ln_f``, ``lm_head``. Pre-LayerNorm blocks ``x ← x + attn(ln_1(x))``,
``x ← x + mlp(ln_2(x))``, MLP ``4·n_embd`` wide with exact GELU, LayerNorm ε = 1e-5.

Init (nanoGPT): every linear and embedding weight ``N(0, 0.02²)``, biases zero, LayerNorm ones;
then the residual projections (``attn.c_proj``, ``mlp.c_proj``) ``N(0, (0.02/√(2·n_layer))²)``.

Weight decay as in nanoGPT and "Why WD": every 2-d tensor (the matmul weights and both embeddings)
decays, LayerNorm gains and biases do not — ``decaylab.groups.param_groups(gpt, λ, no_decay_1d=True)``
makes exactly that split (LayerNorm here is ``nn.LayerNorm``, so ``no_decay_norm`` recognizes it too).
The tied matrix is listed once, as ``transformer.wte.weight``.

Differences from nanoGPT: ``forward`` returns logits for *every* position also without targets
(nanoGPT then returns the last position only); LayerNorm without bias is ``nn.LayerNorm(bias=False)``;
no ``generate``/``configure_optimizers``/``from_pretrained``.

Parameter counts: :meth:`GPTConfig.micro` (4 layers, 4 heads, width 192, vocab 256, block 128)
has 1,844,928 parameters (1,820,352 without the position embedding, nanoGPT's
``get_num_params()`` convention); :meth:`GPTConfig.gpt2_small` has 124,373,760 (123.59M without positions).

**Stacking with vmap.** Attention is ``F.scaled_dot_product_attention(..., is_causal=True)`` by
default (``attention="sdpa"``) or written out with a causal mask (``attention="manual"``); both run
under ``vmap(functional_call(...))``, ``vmap(grad(...))`` and ``vmap(jacrev(...))`` and agree. On CPU
(torch 2.13) SDPA's fused kernel has no batching rule, so under vmap it loops over the K models
(correct, with a one-time performance warning; measured about as fast as ``"manual"`` for K=4,
batch 8, T=128), and it has **no double backward**: Hessian-vector products through
``autograd.grad(..., create_graph=True)`` (e.g. a Hessian-trace instrument) need ``"manual"``.
The causal mask is built in ``forward`` (a ``T×T`` bool, no buffer), so there is no state to stack.
With ``dropout > 0`` call vmap with ``randomness="different"`` (independent masks per model).
The tied weight needs nothing special: the dict from :func:`torch.func.stack_module_state` holds
``transformer.wte.weight`` only, and ``forward`` computes the logits from that tensor, so a base
module copied to the ``meta`` device (where ``.to()`` unties ``lm_head.weight``) still works.
Without targets the output is ``(logits, None)``: vmap then needs ``out_dims=(0, None)``.

>>> import torch
>>> model = GPT(GPTConfig.micro())
>>> idx = torch.randint(0, 256, (2, 16))
>>> logits, loss = model(idx, targets=idx)
>>> tuple(logits.shape), loss.shape
((2, 16, 256), torch.Size([]))
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from decaylab.models._layers import check_choice

__all__ = ["GPT", "GPTConfig"]

ATTENTION_IMPLEMENTATIONS = ("sdpa", "manual")


@dataclass
class GPTConfig:
    """Hyperparameters of :class:`GPT`; the defaults are the micro config (4 layers, 4 heads, 192 wide).

    Attributes:
        block_size: longest sequence (number of learned positions).
        vocab_size: number of tokens (256: bytes).
        n_layer: transformer blocks.
        n_head: attention heads per block; must divide ``n_embd``.
        n_embd: model width.
        dropout: dropout on embeddings, attention weights and residual branches (nanoGPT's).
        bias: biases in the linear layers and LayerNorms (nanoGPT's train.py default: False).
        attention: ``"sdpa"`` (``F.scaled_dot_product_attention``) or ``"manual"`` (explicit
            causal mask; fully batched under vmap on CPU).
    """

    block_size: int = 128
    vocab_size: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 192
    dropout: float = 0.0
    bias: bool = False
    attention: str = "sdpa"

    def __post_init__(self) -> None:
        check_choice("attention", self.attention, ATTENTION_IMPLEMENTATIONS)
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")

    @classmethod
    def micro(cls, **overrides: Any) -> GPTConfig:
        """The CPU-sized config of "Why WD"'s tests: 4 layers, 4 heads, width 192 (vocab 256, block 128)."""
        return cls(**{**dict(block_size=128, vocab_size=256, n_layer=4, n_head=4, n_embd=192), **overrides})

    @classmethod
    def nano(cls, **overrides: Any) -> GPTConfig:
        """A GPT small enough for thousands of steps on 2 CPU cores (decaylab's reproductions): 2 layers,
        2 heads, width 32, attention written out (faster stacked under vmap on CPU); vocab 256, block 128."""
        return cls(**{**dict(block_size=128, vocab_size=256, n_layer=2, n_head=2, n_embd=32, attention="manual"),
                      **overrides})

    @classmethod
    def gpt2_small(cls, **overrides: Any) -> GPTConfig:
        """GPT-2 small as nanoGPT trains it ("Why WD" LLM runs): 12 × 12 × 768, block 1024, vocab 50304."""
        return cls(**{**dict(block_size=1024, vocab_size=50304, n_layer=12, n_head=12, n_embd=768), **overrides})

    @classmethod
    def field_names(cls) -> list[str]:
        """The names ``GPTConfig`` accepts as keywords."""
        return [f.name for f in dataclasses.fields(cls)]


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with one fused q/k/v projection (nanoGPT's)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.attention = config.attention

    def forward(self, x: Tensor) -> Tensor:
        # (B, T, C) -> three (B, n_head, T, head_size); unflatten/flatten rather than view, which
        # can fail on the strided layouts vmap produces.
        q, k, v = (t.unflatten(-1, (self.n_head, -1)).transpose(-3, -2) for t in self.c_attn(x).split(self.n_embd, -1))
        if self.attention == "sdpa":
            y = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
            )
        else:
            T = x.shape[-2]
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.shape[-1]))
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            att = F.softmax(att.masked_fill(~causal, float("-inf")), dim=-1)
            y = self.attn_dropout(att) @ v
        return self.resid_dropout(self.c_proj(y.transpose(-3, -2).flatten(-2)))


class MLPBlock(nn.Module):
    """``c_proj(gelu(c_fc(x)))`` with a 4× hidden width."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm transformer block."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLPBlock(config)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """A decoder-only transformer language model; see module docs.

    ``forward(idx, targets=None) -> (logits, loss)``: ``idx`` and ``targets`` are token ids of
    shape ``(batch, T)`` with ``T <= block_size``; ``logits`` is ``(batch, T, vocab_size)``;
    ``loss`` is the mean next-token cross-entropy over positions whose target is not ``-1``, or
    ``None`` without targets.
    """

    def __init__(self, config: GPTConfig | None = None) -> None:
        super().__init__()
        self.config = config = GPTConfig() if config is None else config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
                ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying; wte is registered first, so the shared tensor is named transformer.wte.weight.
        self.lm_head.weight = self.transformer.wte.weight

        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Parameters, the tied matrix counted once; ``non_embedding`` leaves out ``wpe`` (nanoGPT's count)."""
        total = sum(p.numel() for p in self.parameters())
        return total - self.transformer.wpe.weight.numel() if non_embedding else total

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        T = idx.shape[-1]
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        pos = torch.arange(T, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        # The head reads the shared matrix through wte, not lm_head: a copy moved with .to("meta")
        # (how stacked training keeps a weightless base) gets a separate, untied lm_head.weight,
        # which functional_call would then leave in place.
        logits = F.linear(self.transformer.ln_f(x), self.transformer.wte.weight)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.flatten(0, -2), targets.flatten(), ignore_index=-1)
        return logits, loss
