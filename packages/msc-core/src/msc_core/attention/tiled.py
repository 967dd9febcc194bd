"""`tiled` backend: MSC attention in pure PyTorch, the fast CPU path and the ONNX path.

High-Res branch (§3.2): the queries of each frame are cut into `tile x tile` spatial
tiles. Because NATTEN windows are shifted inwards at the borders, the union of the
`w x w` windows of a tile's queries lies in one `(tile + w - 1)^2` "halo" of the frame.
One gather (`index_select` with a shape-derived index) collects, for every query tile,
the halo in each of its `v` key frames; one batched `scaled_dot_product_attention`
call over all tiles, frames and heads then applies the exact per-query window with a
shape-derived boolean mask shared by every frame (the first `v - 1` frames, which have
fewer key frames, get a call each). Work per query is `v * (tile + w - 1)^2` keys
instead of `T * H * W` for dense attention.

Memory: the gathered K/V tiles are ~`v * (tile + w - 1)^2 / tile^2` times the K/V
themselves, so frames go through SDPA in chunks of at most `KEYS_PER_CALL` gathered key
elements, and when gradients are needed each chunk is checkpointed: backward re-gathers
its tiles (about 20% more time for this branch) instead of keeping them all alive.

Low-Res branch (§3.2): frames `t, t-d, t-2d, ...` are the frames congruent to `t`
modulo `d`, so the frames are split into `d` interleaved groups and each group runs
plain frame-causal attention over its pooled tokens: one SDPA call for all groups.

Everything that drives Python here is a shape, never a tensor value, so the module
traces and exports to ONNX.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from msc_core.attention.masks import neighborhood_window_start

# gathered key elements per High-Res SDPA call: bounds the memory of the K/V tiles
KEYS_PER_CALL = 1 << 22


def _tracing() -> bool:
    """Under torch.compile / torch.export (ONNX) the graph is traced once: no checkpointing."""
    is_exporting = getattr(torch.compiler, "is_exporting", lambda: False)  # torch >= 2.6
    return torch.compiler.is_compiling() or is_exporting()


@dataclass(frozen=True)
class AxisTiles:
    """How one spatial axis of length `length` is cut into query tiles and key halos."""

    length: int
    window: int  # effective window, min(w, length)
    tile: int  # queries per tile
    num_tiles: int
    halo: int  # keys per tile
    halo_starts: tuple[int, ...]


def axis_tiles(length: int, window: int, tile: int) -> AxisTiles:
    """Tile geometry of one axis; the last tile may stick out and is clamped to the edge."""
    window_eff = min(window, length)
    tile = min(tile, length)
    num_tiles = -(-length // tile)
    halo = min(tile + window_eff - 1, length)
    # plain ints: the geometry is a function of shapes only, never of traced tensors
    starts = tuple(min(neighborhood_window_start(a * tile, length, window), length - halo) for a in range(num_tiles))
    return AxisTiles(length, window_eff, tile, num_tiles, halo, starts)


def _query_positions(tiles: AxisTiles, device: torch.device) -> torch.Tensor:
    """`(num_tiles, tile)` position of each tile query; rows past the edge repeat the last one."""
    pos = torch.arange(tiles.num_tiles, device=device)[:, None] * tiles.tile + torch.arange(
        tiles.tile, device=device
    )
    return pos.clamp(max=tiles.length - 1)


def _key_positions(tiles: AxisTiles, device: torch.device) -> torch.Tensor:
    """`(num_tiles, halo)` position of each halo key."""
    starts = torch.tensor(tiles.halo_starts, device=device)
    return starts[:, None] + torch.arange(tiles.halo, device=device)


def _axis_mask(tiles: AxisTiles, window: int, device: torch.device) -> torch.Tensor:
    """`(num_tiles, tile, halo)`: tile query may see halo key along this axis."""
    start = neighborhood_window_start(_query_positions(tiles, device), tiles.length, window)
    key = _key_positions(tiles, device)
    return (key[:, None, :] >= start[:, :, None]) & (key[:, None, :] < start[:, :, None] + tiles.window)


def tiled_high_res_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int,
    temporal_window: int,
    tile_size: int,
) -> torch.Tensor:
    """q `(B, h, Tq, H, W, D)`, k/v `(B, h, Tk, H, W, D)`; queries are the last Tq key frames."""
    B, heads, Tq, H, W, D = q.shape
    Tk = k.shape[2]
    device = q.device
    rows, cols = axis_tiles(H, window, tile_size), axis_tiles(W, window, tile_size)
    num_tiles = rows.num_tiles * cols.num_tiles
    tile_queries, halo_keys = rows.tile * cols.tile, rows.halo * cols.halo

    # per-tile flat positions i*W + j of the tile queries and of the halo keys
    q_pos = (_query_positions(rows, device)[:, None, :, None] * W + _query_positions(cols, device)[None, :, None, :])
    k_pos = (_key_positions(rows, device)[:, None, :, None] * W + _key_positions(cols, device)[None, :, None, :])
    q_pos = q_pos.reshape(num_tiles, tile_queries)  # (nTiles, th*tw)
    k_pos = k_pos.reshape(num_tiles, halo_keys)  # (nTiles, kh*kw)
    spatial_mask = (
        _axis_mask(rows, window, device)[:, None, :, None, :, None]
        & _axis_mask(cols, window, device)[None, :, None, :, None, :]
    ).reshape(num_tiles, tile_queries, halo_keys)

    q_flat = q.reshape(B * heads, Tq * H * W, D)
    k_flat = k.reshape(B * heads, Tk * H * W, D)
    v_flat = v.reshape(B * heads, Tk * H * W, D)

    def attend(first: int, count: int, slots: int) -> torch.Tensor:
        """Query frames first..first+count-1, each with its `slots` key frames ending at itself."""
        frames = torch.arange(first, first + count, device=device)
        key_frames = (Tk - Tq) + frames[:, None] - (slots - 1) + torch.arange(slots, device=device)  # (count, slots)
        q_index = frames[:, None, None] * (H * W) + q_pos  # (count, nTiles, th*tw)
        k_index = key_frames[:, None, :, None] * (H * W) + k_pos[None, :, None, :]  # (count, nTiles, slots, kh*kw)
        shape_q = (B * heads * count, num_tiles, tile_queries, D)
        shape_k = (B * heads * count, num_tiles, slots * halo_keys, D)
        mask = spatial_mask.repeat(1, 1, slots)[None]  # (1, nTiles, th*tw, slots*kh*kw), shared by all frames
        return F.scaled_dot_product_attention(
            q_flat.index_select(1, q_index.reshape(-1)).reshape(shape_q),
            k_flat.index_select(1, k_index.reshape(-1)).reshape(shape_k),
            v_flat.index_select(1, k_index.reshape(-1)).reshape(shape_k),
            attn_mask=mask,
        ).reshape(B * heads, count * num_tiles * tile_queries, D)

    recompute = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)) and not _tracing()

    def attend_chunk(first: int, count: int, slots: int) -> torch.Tensor:
        # training: keep only q/k/v for backward and re-gather the tiles there, so the
        # gathered K/V (the bulk of this branch's memory) live one chunk at a time
        if recompute:
            return checkpoint(attend, first, count, slots, use_reentrant=False)
        return attend(first, count, slots)

    # the first frames of the sequence have fewer than v frames to look at: one call each,
    # so that every other frame shares one spatial mask and no key slot is ever empty
    slots = min(temporal_window, Tk)
    early = max(0, min(Tq, (slots - 1) - (Tk - Tq)))
    parts = [attend_chunk(t, 1, Tk - Tq + t + 1) for t in range(early)]
    per_call = max(1, KEYS_PER_CALL // (B * heads * num_tiles * slots * halo_keys * D))
    for first in range(early, Tq, per_call):
        parts.append(attend_chunk(first, min(per_call, Tq - first), slots))
    out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)  # (B*h, Tq*nTiles*th*tw, D)

    # back from tile order to (t, i, j) order; queries past the edge are dropped here
    i, j = torch.arange(H, device=device), torch.arange(W, device=device)
    tile_of = (i // rows.tile)[:, None] * cols.num_tiles + (j // cols.tile)[None, :]  # (H, W)
    within = (i % rows.tile)[:, None] * cols.tile + (j % cols.tile)[None, :]
    out_index = (
        torch.arange(Tq, device=device)[:, None, None] * (num_tiles * tile_queries)
        + (tile_of * tile_queries + within)[None]
    )  # (Tq, H, W)
    out = out.index_select(1, out_index.reshape(-1))
    return out.reshape(B, heads, Tq, H, W, D)


def tiled_low_res_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, temporal_stride: int
) -> torch.Tensor:
    """q `(B, h, Tq, P, D)`, k/v `(B, h, Tk, P, D)`; queries are the last Tq key frames."""
    B, heads, Tq, P, D = q.shape
    Tk = k.shape[2]
    past = Tk - Tq
    d = min(temporal_stride, Tk)  # a stride past the first frame only ever finds the frame itself
    key_rows = -(-Tk // d)  # frame f*d + g is row f of group g
    first_query_row = past // d
    query_rows = key_rows - first_query_row
    front = past - first_query_row * d  # padding frames so that queries start a row
    back = key_rows * d - Tk  # padding frames after the last frame: only padded queries see them

    def by_group(x: torch.Tensor, rows_: int, before: int) -> torch.Tensor:
        x = F.pad(x, (0, 0, 0, 0, before, back))  # (B, h, rows*d, P, D)
        x = x.reshape(B, heads, rows_, d, P, D).transpose(2, 3)
        return x.reshape(B, heads * d, rows_ * P, D)

    row_q = torch.arange(query_rows, device=q.device) + first_query_row
    row_k = torch.arange(key_rows, device=q.device)
    mask = (row_q[:, None] >= row_k[None, :]).repeat_interleave(P, 0).repeat_interleave(P, 1)
    out = F.scaled_dot_product_attention(
        by_group(q, query_rows, front), by_group(k, key_rows, 0), by_group(v, key_rows, 0), attn_mask=mask
    )  # (B, h*d, query_rows*P, D)
    out = out.reshape(B, heads, d, query_rows, P, D).transpose(2, 3).reshape(B, heads, query_rows * d, P, D)
    return out[:, :, front : front + Tq]
