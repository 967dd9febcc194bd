"""The transformer block of every NOVA stack: residual post-norm (NOVA §3.3, §4.4).

NOVA "incorporate[s] post-norm layers before the residual connections in both temporal
and spatial AR layers", following Swin Transformer V2 (Liu et al. 2022b): the branch
output is normalised *before* it is added to the residual stream,

    x = x + LN(Attn(x));  x = x + LN(MLP(x))

so no branch can blow up the stream's scale, which is what §4.4 (Fig. 8b) credits for
stable mixed-precision training where pre-norm overflowed.

Attention is dense `scaled_dot_product_attention` with an optional boolean mask
`(B, 1, Nq, Nk)` (True = may attend) and optional past keys/values, which is all the
block-causal KV cache of the temporal model needs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

KeyValue = tuple[torch.Tensor, torch.Tensor]


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, past: KeyValue | None = None
    ) -> tuple[torch.Tensor, KeyValue]:
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        if past is not None:  # keys/values of earlier tokens, already position-encoded
            k = torch.cat([past[0], k], dim=2)  # (B, heads, Nk, head_dim)
            v = torch.cat([past[1], v], dim=2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, heads, N, head_dim)
        return self.proj(out.transpose(1, 2).reshape(B, N, D)), (k, v)


class PostNormBlock(nn.Module):
    """`x + LN(Attn(x))`, then `x + LN(MLP(x))` (Swin V2 residual post-norm)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.attn = SelfAttention(dim, num_heads)
        self.attn_norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.mlp_norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, past: KeyValue | None = None
    ) -> tuple[torch.Tensor, KeyValue]:
        attended, kv = self.attn(x, attn_mask, past)
        x = x + self.attn_norm(attended)
        x = x + self.mlp_norm(self.mlp(x))
        return x, kv


def init_transformer_weights(module: nn.Module) -> None:
    """Xavier-uniform linears with zero bias, unit LayerNorms (ViT/MAE/MAR init)."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
