"""Grid-based 3D attention (CascadeV §3.3, Fig. 3).

Tokens `[B, T, H, W, C]` are partitioned per layer into groups and attention runs inside
each group:

- `spatial`: `window x window` spatial windows spanning **all** frames (group size
  `T * window^2`): long-range in time, local in space;
- `temporal`: chunks of `chunk` frames at **full** resolution (group size
  `chunk * H * W`): global in space, local in time;
- `full`: every token attends to every token.

Alternating `spatial` and `temporal` layers lets information cross the whole volume in
two layers at a fraction of full 3D attention's cost (CascadeV picks the temporal chunk so
both group sizes match). Sizes that do not divide are zero-padded and the padded keys are
masked out, so any latent size works. Implemented with reshapes and SDPA only, so it
exports to ONNX; while `torch.export` traces (dynamic frame count and latent size), the
groups are formed by index gathering (`group_gather_index`) so no size guard is needed.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx.experimental.symbolic_shapes import statically_known_true

GridKind = Literal["spatial", "temporal", "full"]
GRID_KINDS: tuple[str, ...] = ("spatial", "temporal", "full")


def _group_shape(kind: str, T: int, H: int, W: int, window: int, chunk: int) -> tuple[int, int, int]:
    """Group extent (frames, rows, cols) of a layer kind."""
    if kind == "spatial":
        return T, min(window, H), min(window, W)
    if kind == "temporal":
        return min(chunk, T), H, W
    if kind == "full":
        return T, H, W
    raise ValueError(f"unknown grid attention kind {kind!r}; valid: {', '.join(GRID_KINDS)}")


def partition(x: torch.Tensor, group: tuple[int, int, int]) -> tuple[torch.Tensor, tuple[int, ...]]:
    """`[B, T, H, W, C]` -> `[B * G, gt * gh * gw, C]` groups (zero-padded to multiples)."""
    B, T, H, W, C = x.shape
    gt, gh, gw = group
    pt, ph, pw = (-T) % gt, (-H) % gh, (-W) % gw
    if pt or ph or pw:
        x = F.pad(x, (0, 0, 0, pw, 0, ph, 0, pt))
    Tp, Hp, Wp = T + pt, H + ph, W + pw
    x = x.reshape(B, Tp // gt, gt, Hp // gh, gh, Wp // gw, gw, C)
    x = x.permute(0, 1, 3, 5, 2, 4, 6, 7)  # (B, nT, nH, nW, gt, gh, gw, C)
    return x.reshape(-1, gt * gh * gw, C), (B, T, H, W, Tp, Hp, Wp)


def unpartition(x: torch.Tensor, group: tuple[int, int, int], dims: tuple[int, ...]) -> torch.Tensor:
    """Inverse of `partition`, dropping the padding."""
    B, T, H, W, Tp, Hp, Wp = dims
    gt, gh, gw = group
    C = x.shape[-1]
    x = x.reshape(B, Tp // gt, Hp // gh, Wp // gw, gt, gh, gw, C)
    x = x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(B, Tp, Hp, Wp, C)
    return x[:, :T, :H, :W]


def padding_key_mask(dims: tuple[int, ...], group: tuple[int, int, int], device: torch.device) -> torch.Tensor | None:
    """Boolean `[G, 1, 1, group_size]` mask of real (non-padded) keys, or None without padding."""
    B, T, H, W, Tp, Hp, Wp = dims
    if (Tp, Hp, Wp) == (T, H, W):
        return None
    valid = torch.zeros(1, Tp, Hp, Wp, 1, dtype=torch.bool, device=device)
    valid[:, :T, :H, :W] = True
    groups, _ = partition(valid, group)  # (nG, group_size, 1)
    return groups[..., 0][:, None, None, :]


def _export_group_shape(kind: str, T: int, H: int, W: int, window: int, chunk: int) -> tuple[int, int, int]:
    """`_group_shape` without clamping to the volume (a clamp is a guard on a symbolic size);
    the padded keys are masked, so a chunk / window larger than the volume gives the same result."""
    if kind == "spatial":
        return T, window, window
    if kind == "temporal":
        return chunk, H, W
    return _group_shape(kind, T, H, W, window, chunk)


def group_gather_index(
    T: int, H: int, W: int, group: tuple[int, int, int], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Index form of `partition` for symbolic sizes (ONNX export, dynamic frames / latent size).

    Returns `source [G, N]` (flat `(t, h, w)` index of each group member; padding repeats
    the last real row/column/frame), `valid [G, N]` (real members) and `inverse [T*H*W]`
    (where each token sits in the flattened `[G * N]` groups). Built from `arange`
    arithmetic and used with gathers, every tensor size is a plain product of the inputs'
    sizes, so `torch.export` never has to prove how a padded size divides into groups.
    """
    gt, gh, gw = group
    counts = [1 if statically_known_true(g == s) else (s + g - 1) // g for s, g in ((T, gt), (H, gh), (W, gw))]
    nT, nH, nW = counts

    def axis_positions(n: int, g: int) -> torch.Tensor:  # (n, g): position of member j of group i
        return torch.arange(n, device=device)[:, None] * g + torch.arange(g, device=device)[None, :]

    t = axis_positions(nT, gt)[:, None, None, :, None, None]  # (nT, 1, 1, gt, 1, 1)
    h = axis_positions(nH, gh)[None, :, None, None, :, None]  # (1, nH, 1, 1, gh, 1)
    w = axis_positions(nW, gw)[None, None, :, None, None, :]  # (1, 1, nW, 1, 1, gw)
    valid = (t < T) & (h < H) & (w < W)  # (nT, nH, nW, gt, gh, gw)
    source = (t.clamp(max=T - 1) * H + h.clamp(max=H - 1)) * W + w.clamp(max=W - 1)
    G, N = nT * nH * nW, gt * gh * gw
    tt, hh, ww = (torch.arange(s, device=device) for s in (T, H, W))
    group_id = ((tt // gt)[:, None, None] * nH + (hh // gh)[None, :, None]) * nW + (ww // gw)[None, None, :]
    member = ((tt % gt)[:, None, None] * gh + (hh % gh)[None, :, None]) * gw + (ww % gw)[None, None, :]
    inverse = (group_id * N + member).reshape(-1)  # (T*H*W,)
    return source.reshape(G, N), valid.reshape(G, N), inverse


class GridAttention3D(nn.Module):
    """Multi-head self-attention inside grid groups of a `[B, T, H, W, C]` token volume."""

    def __init__(self, dim: int, num_heads: int, window: int = 4, chunk: int = 2, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        if window < 1 or chunk < 1:
            raise ValueError(f"window and chunk must be >= 1, got window={window}, chunk={chunk}")
        self.num_heads, self.window, self.chunk = num_heads, window, chunk
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, kind: GridKind, symbolic_sizes: bool | None = None) -> torch.Tensor:
        """`symbolic_sizes` (default: while `torch.export` traces) takes the guard-free index
        path of `group_gather_index`; both paths compute the same attention."""
        if x.dim() != 5:
            raise ValueError(f"expected tokens [B, T, H, W, C], got shape {tuple(x.shape)}")
        B, T, H, W, C = x.shape
        if symbolic_sizes is None:
            symbolic_sizes = torch.compiler.is_exporting()
        if symbolic_sizes:
            return self._attend_by_gather(x, _export_group_shape(kind, T, H, W, self.window, self.chunk))
        group = _group_shape(kind, T, H, W, self.window, self.chunk)
        groups, dims = partition(x, group)  # (B*G, N, C)
        nb, n, _ = groups.shape
        qkv = self.qkv(groups).reshape(nb, n, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B*G, heads, N, hd)
        mask = padding_key_mask(dims, group, x.device)
        if mask is not None:  # same padding pattern for every batch element
            mask = mask.repeat(B, 1, 1, 1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = out.transpose(1, 2).reshape(nb, n, C)
        return self.proj(unpartition(out, group, dims))

    def _attend_by_gather(self, x: torch.Tensor, group: tuple[int, int, int]) -> torch.Tensor:
        """The same attention with `group_gather_index`: batch and groups stay separate dims."""
        B, T, H, W, C = x.shape
        source, valid, inverse = group_gather_index(T, H, W, group, x.device)
        G, N = source.shape
        groups = x.reshape(B, T * H * W, C)[:, source]  # (B, G, N, C)
        qkv = self.qkv(groups).reshape(B, G, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5)  # each (B, G, heads, N, hd)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=valid[None, :, None, None, :])
        out = out.transpose(2, 3).reshape(B, G * N, C).index_select(1, inverse)  # (B, T*H*W, C)
        return self.proj(out.reshape(B, T, H, W, C))


def grid_group_ids(T: int, H: int, W: int, kind: GridKind, window: int, chunk: int) -> torch.Tensor:
    """Group id of every token in `(T, H, W)` order: the definition the tests check against."""
    gt, gh, gw = _group_shape(kind, T, H, W, window, chunk)
    t = torch.arange(T)[:, None, None] // gt
    h = torch.arange(H)[None, :, None] // gh
    w = torch.arange(W)[None, None, :] // gw
    n_h, n_w = -(-H // gh), -(-W // gw)
    return ((t * n_h + h) * n_w + w).flatten()
