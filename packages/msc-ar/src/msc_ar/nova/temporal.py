"""NOVA temporal autoregression: block-causal transformer, KV cache, Scaling-and-Shift.

NOVA §3.2 (eq. 2): the sequence is `[text P, motion m, BOV B, S_1, ..., S_F]` and
`p(S_f | P, m, B, S_1..S_{f-1})`. Every token carries a *block id*: the condition
prefix (text + motion) is block 0, the BOV set block 1, the input frame in slot `s`
block `s + 1`. A query in block `b` sees every valid key in blocks `<= b`, so

- text and motion are visible to every frame (and to each other),
- the tokens of one frame see each other (full attention inside a frame),
- a frame never sees a later frame (block-causal, Fig. 2a).

Because of that rule the keys/values of a block never change once it is computed, so
inference keeps them in a `TemporalKVCache` and feeds each block once: the text is fed
a single time, then BOV, then one frame per step.

NOVA §3.3, Scaling-and-Shift layer: the BOV-attended output (the features that predict
frame 0) is the *anchor*. A low-rank MLP (rank 24 by default, §4.4) maps the current
frame's temporal features to per-channel `gamma = 1 + scale` and `beta = shift`, which
modulate the normalised anchor: `S'_f = LN(anchor) * gamma_f + beta_f`. For frame 0
the layer is the identity on `LN(anchor)` (`gamma = 1, beta = 0`, explicitly, not only
at init), so text-to-image is never perturbed by it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from msc_ar.nova.post_norm_block import KeyValue, PostNormBlock


def block_causal_mask(query_blocks: torch.Tensor, key_blocks: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
    """Boolean attention mask `(B, 1, Nq, Nk)`: key block <= query block, and the key is valid.

    `query_blocks` `(Nq,)`, `key_blocks` `(Nk,)` are block ids; `key_valid` `(B, Nk)` marks
    real keys (False for text padding).
    """
    allowed = key_blocks[None, :] <= query_blocks[:, None]  # (Nq, Nk)
    return (allowed[None] & key_valid[:, None, :])[:, None]  # (B, 1, Nq, Nk)


class TemporalKVCache:
    """Per-layer keys/values of every block fed so far, plus each key's block id and validity."""

    def __init__(self, num_layers: int) -> None:
        self.layers: list[KeyValue | None] = [None] * num_layers
        self.key_blocks: torch.Tensor | None = None  # (Nk,)
        self.key_valid: torch.Tensor | None = None  # (B, Nk)

    @property
    def num_tokens(self) -> int:
        return 0 if self.key_blocks is None else int(self.key_blocks.shape[0])

    @property
    def last_block(self) -> int:
        return -1 if self.key_blocks is None else int(self.key_blocks.max())

    def truncate(self, num_tokens: int) -> None:
        """Keep the first `num_tokens` keys (e.g. drop every frame, keep text + motion + BOV)."""
        if not 0 <= num_tokens <= self.num_tokens:
            raise ValueError(f"cannot truncate a cache of {self.num_tokens} tokens to {num_tokens}")
        self.layers = [
            None if kv is None else (kv[0][:, :, :num_tokens], kv[1][:, :, :num_tokens]) for kv in self.layers
        ]
        self.key_blocks = self.key_blocks[:num_tokens]
        self.key_valid = self.key_valid[:, :num_tokens]


class TemporalTransformer(nn.Module):
    """Block-causal stack of post-norm blocks; `forward` appends blocks to an optional cache."""

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(PostNormBlock(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def new_cache(self) -> TemporalKVCache:
        return TemporalKVCache(len(self.blocks))

    def forward(
        self,
        x: torch.Tensor,
        block_ids: torch.Tensor,
        key_valid: torch.Tensor,
        cache: TemporalKVCache | None = None,
    ) -> torch.Tensor:
        """`x` `(B, N, D)` new tokens with `block_ids` `(N,)` and `key_valid` `(B, N)` -> `(B, N, D)`.

        With a cache, the new blocks must all come after the cached ones; their keys and
        values are appended, so the output equals that of one uncached forward over the
        cached tokens followed by `x`.
        """
        if block_ids.shape != (x.shape[1],) or key_valid.shape != x.shape[:2]:
            raise ValueError(
                f"block_ids {tuple(block_ids.shape)} / key_valid {tuple(key_valid.shape)} do not match "
                f"tokens {tuple(x.shape)}; expected ({x.shape[1]},) and {tuple(x.shape[:2])}"
            )
        key_blocks, all_valid = block_ids, key_valid
        if cache is not None and cache.num_tokens:
            if int(block_ids.min()) <= cache.last_block:
                raise ValueError(
                    f"new blocks {int(block_ids.min())}.. must come after the cached blocks (last {cache.last_block})"
                )
            if cache.key_valid.shape[0] != x.shape[0]:
                raise ValueError(f"cache holds batch {cache.key_valid.shape[0]}, tokens have batch {x.shape[0]}")
            key_blocks = torch.cat([cache.key_blocks, block_ids])
            all_valid = torch.cat([cache.key_valid, key_valid], dim=1)
        mask = block_causal_mask(block_ids, key_blocks, all_valid)  # (B, 1, N, Nk)
        for i, block in enumerate(self.blocks):
            past = cache.layers[i] if cache is not None else None
            x, kv = block(x, mask, past)
            if cache is not None:
                cache.layers[i] = kv
        if cache is not None:
            cache.key_blocks, cache.key_valid = key_blocks, all_valid
        return self.norm(x)


class ScaleShiftLayer(nn.Module):
    """`S'_f = LN(anchor) * (1 + scale(h_f)) + shift(h_f)`, identity on `LN(anchor)` for frame 0."""

    def __init__(self, dim: int, rank: int) -> None:
        super().__init__()
        self.anchor_norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.down = nn.Linear(dim, rank)  # the low-rank bottleneck of §4.4 / Fig. 8a
        self.up = nn.Linear(rank, 2 * dim)
        # Zero-init: every frame starts at the anchor and learns its relative change.
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, anchor: torch.Tensor, features: torch.Tensor, frame_index: torch.Tensor) -> torch.Tensor:
        """`anchor` `(B, L, D)`, `features` `(B, T, L, D)`, absolute `frame_index` `(T,)` -> `(B, T, L, D)`."""
        base = self.anchor_norm(anchor)[:, None]  # (B, 1, L, D)
        scale, shift = self.up(F.silu(self.down(features))).chunk(2, dim=-1)  # (B, T, L, D) each
        modulated = base * (1 + scale) + shift
        first = (frame_index == 0).view(1, -1, 1, 1)
        return torch.where(first, base.expand_as(modulated), modulated)
