"""NOVA spatial autoregression: MAR-style masked encoder/decoder over one frame (NOVA §3.3, §4.1).

eq. 3: `p(S'_f, S_(f,1), ..., S_(f,K)) = prod_k p(S_(f,k) | S'_f, S_(f,1..k-1))`. The
indicator features `S'_f` (from the Scaling-and-Shift layer) are a prefix of `L` tokens;
the frame's own tokens follow, with 2-D sine-cosine positions on masked and unmasked
tokens alike. As in MAR (and MAE), which NOVA follows for its spatial layers:

- `forward_encoder` embeds the frame's tokens, *drops* the masked ones and runs the
  bidirectional encoder over `[indicator prefix, visible tokens]`;
- `forward_decoder` puts a learned mask token at every masked position, adds positions
  again, runs the decoder over `[prefix, all L positions]` and returns the features of
  the `L` frame positions: the conditions `z` of the per-token diffusion head.

All frames of a call must mask the same number of tokens (MAR draws one ratio per
batch), so the visible tokens of a batch form a dense `(N, n_visible, D)` tensor.
"""

from __future__ import annotations

import torch
from torch import nn

from msc_ar.nova.post_norm_block import PostNormBlock


class SpatialMaskedTransformer(nn.Module):
    def __init__(
        self,
        token_dim: int,
        dim: int,
        encoder_depth: int,
        decoder_depth: int,
        num_heads: int,
        mlp_ratio: float,
    ) -> None:
        super().__init__()
        self.token_embed = nn.Linear(token_dim, dim)
        self.token_norm = nn.LayerNorm(dim, eps=1e-6)
        self.indicator_proj = nn.Linear(dim, dim)
        self.encoder_blocks = nn.ModuleList(PostNormBlock(dim, num_heads, mlp_ratio) for _ in range(encoder_depth))
        self.encoder_norm = nn.LayerNorm(dim, eps=1e-6)
        self.decoder_embed = nn.Linear(dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.decoder_blocks = nn.ModuleList(PostNormBlock(dim, num_heads, mlp_ratio) for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(dim, eps=1e-6)

    def forward_encoder(
        self, tokens: torch.Tensor, mask: torch.Tensor, indicator: torch.Tensor, pos: torch.Tensor
    ) -> torch.Tensor:
        """`tokens` `(N, L, Dt)`, `mask` `(N, L)` (True = masked), `indicator` `(N, L, D)`, `pos` `(L, D)`."""
        N, L, _ = tokens.shape
        num_visible = L - int(mask[0].sum())
        if bool((mask.sum(dim=1) != L - num_visible).any()):
            raise ValueError("every frame of a call must mask the same number of tokens (one ratio per batch)")
        x = self.token_norm(self.token_embed(tokens) + pos)  # (N, L, D)
        visible = x[~mask].view(N, num_visible, x.shape[-1])  # (N, n_visible, D), in position order
        x = torch.cat([self.indicator_proj(indicator), visible], dim=1)  # (N, L + n_visible, D)
        for block in self.encoder_blocks:
            x, _ = block(x)
        return self.encoder_norm(x)

    def forward_decoder(self, encoded: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """`encoded` `(N, L_prefix + n_visible, D)` -> per-position conditions `z` `(N, L, D)`."""
        N, L = mask.shape
        x = self.decoder_embed(encoded)
        num_prefix = x.shape[1] - (L - int(mask[0].sum()))
        prefix, visible = x[:, :num_prefix], x[:, num_prefix:]
        frame = self.mask_token.to(x.dtype).expand(N, L, -1).clone()  # (N, L, D)
        frame[~mask] = visible.reshape(-1, x.shape[-1])
        x = torch.cat([prefix, frame + pos], dim=1)
        for block in self.decoder_blocks:
            x, _ = block(x)
        return self.decoder_norm(x)[:, num_prefix:]  # (N, L, D)

    def forward(
        self, tokens: torch.Tensor, mask: torch.Tensor, indicator: torch.Tensor, pos: torch.Tensor
    ) -> torch.Tensor:
        return self.forward_decoder(self.forward_encoder(tokens, mask, indicator, pos), mask, pos)
