"""`tiled` backend: MSC attention in pure PyTorch, the fast CPU path and the ONNX path.

High-Res branch (§3.2): the queries of each frame are cut into `rows x cols` spatial
tiles (`tile_size`). Because NATTEN windows are shifted inwards at the borders, the union
of the `w x w` windows of a tile's queries lies in one `(rows + w - 1) x (cols + w - 1)`
"halo" of the frame; a boolean mask shared by every frame applies each query's exact
window. Work per query is `v` halos instead of `T * H * W` keys for dense attention.

- CPU (`_CPUHighResTiles`, not while tracing): split by key frame. Each frame's query
  tiles and each key frame's halos are gathered once, the `v` key frames of a query frame
  are `v` contiguous slices attended by the CPU flash kernel, and the partial results are
  merged exactly with their log-sum-exps; backward is the blockwise flash backward. Only
  q, k, v, the output and the log-sum-exp are kept for backward.
- Elsewhere (CUDA without NATTEN, torch.compile, torch.export / ONNX): one gather
  (`index_select`) collects, for every query tile, the halo in each of its `v` key frames;
  one batched `scaled_dot_product_attention` call per chunk of frames (the first `v - 1`
  frames, which have fewer key frames, get a call each). For training each chunk is
  checkpointed: backward re-gathers its tiles instead of keeping them all alive.

Light cone (`growth > 0`): the halos are those of the widest window (the oldest key
frame's, `w + 2 g (v - 1)`); the narrower windows of nearer frames are nested in it, so
each key frame lag gets its own spatial mask over the same halo.

Memory: frames go through in chunks of at most `KEYS_PER_CALL` gathered key elements.
Index tensors and masks depend on shapes only and are cached per shape (`shape_cached`).

Low-Res branch (§3.2): frames `t, t-d, t-2d, ...` are the frames congruent to `t`
modulo `d`, so the frames are split into `d` interleaved groups and each group runs
plain frame-causal attention over its pooled tokens: one SDPA call for all groups.
Anchored stride: every query frame attends to the anchor frames (`t' % d == 0`) before
it and to itself: one SDPA call with the anchors' K/V shared by every query frame.

Everything that drives Python here is a shape, never a tensor value, so the module
traces and exports to ONNX.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from msc_core.attention.masks import light_cone_windows, neighborhood_window_start

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
    """`(num_tiles, tile, halo)`: tile query may see halo key along this axis, for a window
    of `window` (at most the halo's: NATTEN windows of one query are nested)."""
    start = neighborhood_window_start(_query_positions(tiles, device), tiles.length, window)
    key = _key_positions(tiles, device)
    return (key[:, None, :] >= start[:, :, None]) & (key[:, None, :] < start[:, :, None] + min(window, tiles.length))


@dataclass(frozen=True)
class _Chunk:
    """One High-Res SDPA call: query frames `first..first+count-1`, `slots` key frames each."""

    count: int
    slots: int
    q_index: torch.Tensor  # flat query rows gathered, in tile order
    k_index: torch.Tensor  # flat key rows gathered: each tile's halo in each of its key frames
    mask: torch.Tensor  # (1, nTiles, tile queries, slots * halo keys) bool, shared by every frame


@dataclass(frozen=True)
class _HighResPlan:
    """Everything about a High-Res call that depends on shapes only: built once per shape."""

    num_tiles: int
    tile_queries: int
    halo_keys: int
    chunks: tuple[_Chunk, ...]
    out_index: torch.Tensor  # tile order -> (t, i, j) order
    # one frame's geometry, for the split-by-key-frame CPU path
    q_spatial: torch.Tensor  # (nTiles * tile queries,) flat i*W + j of each tile query
    k_spatial: torch.Tensor  # (nTiles * halo keys,) flat i*W + j of each halo key
    out_spatial: torch.Tensor  # (H * W,) tile-order position of each pixel
    spatial_masks: tuple[torch.Tensor, ...]  # per frame lag: (1, nTiles, tile queries, halo keys) bool
    additive_masks: dict = field(default_factory=dict, compare=False)  # (dtype, lag) -> 0 / -inf mask

    def additive_mask(self, dtype: torch.dtype, lag: int = 0) -> torch.Tensor:
        if (dtype, lag) not in self.additive_masks:
            mask = self.spatial_masks[lag]
            self.additive_masks[dtype, lag] = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
                ~mask, float("-inf")
            )
        return self.additive_masks[dtype, lag]


def _build_high_res_plan(
    H: int, W: int, Tq: int, Tk: int, window: int, temporal_window: int, tile: tuple[int, int],
    per_call_budget: int, device: torch.device, growth: int = 0,
) -> _HighResPlan:
    slots = min(temporal_window, Tk)
    windows = light_cone_windows(window, slots, growth)  # per frame lag; the widest sets the halos
    rows, cols = axis_tiles(H, windows[-1], tile[0]), axis_tiles(W, windows[-1], tile[1])
    num_tiles = rows.num_tiles * cols.num_tiles
    tile_queries, halo_keys = rows.tile * cols.tile, rows.halo * cols.halo

    # per-tile flat positions i*W + j of the tile queries and of the halo keys
    q_pos = (_query_positions(rows, device)[:, None, :, None] * W + _query_positions(cols, device)[None, :, None, :])
    k_pos = (_key_positions(rows, device)[:, None, :, None] * W + _key_positions(cols, device)[None, :, None, :])
    q_pos = q_pos.reshape(num_tiles, tile_queries)  # (nTiles, th*tw)
    k_pos = k_pos.reshape(num_tiles, halo_keys)  # (nTiles, kh*kw)
    spatial_masks = tuple(
        (
            _axis_mask(rows, w_l, device)[:, None, :, None, :, None]
            & _axis_mask(cols, w_l, device)[None, :, None, :, None, :]
        ).reshape(1, num_tiles, tile_queries, halo_keys)
        for w_l in windows
    )

    def chunk(first: int, count: int, slots: int) -> _Chunk:
        frames = torch.arange(first, first + count, device=device)
        key_frames = (Tk - Tq) + frames[:, None] - (slots - 1) + torch.arange(slots, device=device)  # (count, slots)
        q_index = frames[:, None, None] * (H * W) + q_pos  # (count, nTiles, th*tw)
        k_index = key_frames[:, None, :, None] * (H * W) + k_pos[None, :, None, :]  # (count, nTiles, slots, kh*kw)
        # slot j holds the key frame `slots - 1 - j` frames back
        mask = torch.cat([spatial_masks[slots - 1 - j] for j in range(slots)], dim=-1)  # (1, nTiles, th*tw, slots*kh*kw)
        return _Chunk(count, slots, q_index.reshape(-1), k_index.reshape(-1), mask)

    # the first frames of the sequence have fewer than v frames to look at: one call each,
    # so that every other frame shares one spatial mask and no key slot is ever empty
    early = max(0, min(Tq, (slots - 1) - (Tk - Tq)))
    chunks = [chunk(t, 1, Tk - Tq + t + 1) for t in range(early)]
    per_call = max(1, per_call_budget // (num_tiles * slots * halo_keys))
    chunks += [chunk(first, min(per_call, Tq - first), slots) for first in range(early, Tq, per_call)]

    # back from tile order to (t, i, j) order; queries past the edge are dropped here
    i, j = torch.arange(H, device=device), torch.arange(W, device=device)
    tile_of = (i // rows.tile)[:, None] * cols.num_tiles + (j // cols.tile)[None, :]  # (H, W)
    within = (i % rows.tile)[:, None] * cols.tile + (j % cols.tile)[None, :]
    out_spatial = (tile_of * tile_queries + within).reshape(-1)  # (H * W,)
    out_index = (torch.arange(Tq, device=device)[:, None] * (num_tiles * tile_queries) + out_spatial).reshape(-1)
    return _HighResPlan(
        num_tiles, tile_queries, halo_keys, tuple(chunks), out_index,
        q_pos.reshape(-1), k_pos.reshape(-1), out_spatial, spatial_masks,
    )


_SHAPE_CACHE: dict[tuple, object] = {}
_MAX_CACHED = 128


def shape_cached(key: tuple, build):
    """`build()` cached per process under `key` (shapes and a device, never tensor values).

    Index tensors and masks are functions of shapes only: made once per shape instead of
    from Python lists in every call. Rebuilt, not cached, while tracing (torch.compile /
    export record the index arithmetic in the graph). Bounded: streaming grows the number
    of key frames by one per call, so the oldest entries go first.
    """
    if _tracing():
        return build()
    value = _SHAPE_CACHE.get(key)
    if value is None:
        if len(_SHAPE_CACHE) >= _MAX_CACHED:
            _SHAPE_CACHE.pop(next(iter(_SHAPE_CACHE)))
        value = _SHAPE_CACHE[key] = build()
    return value


def high_res_plan(
    H: int, W: int, Tq: int, Tk: int, window: int, temporal_window: int, tile: tuple[int, int],
    per_call_budget: int, device: torch.device, growth: int = 0,
) -> _HighResPlan:
    """The plan of one call shape, cached per process (`shape_cached`)."""
    args = (H, W, Tq, Tk, window, temporal_window, tile, per_call_budget, device, growth)
    return shape_cached(("high_res", *args), lambda: _build_high_res_plan(*args))


def _gather(x: torch.Tensor, index: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    return x.index_select(1, index).reshape(shape)


_flash_cpu = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_flash_cpu_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def _frame_chunks(plan: _HighResPlan, Tq: int, BH: int, D: int) -> list[tuple[int, int]]:
    """Query frame ranges whose gathered halos stay within `KEYS_PER_CALL` elements."""
    per_frame = max(1, BH * plan.num_tiles * plan.halo_keys * D)
    step = max(1, KEYS_PER_CALL // per_frame)
    return [(first, min(Tq, first + step)) for first in range(0, Tq, step)]


class _CPUHighResTiles(torch.autograd.Function):
    """The High-Res branch on CPU, split by key frame: no K/V tile is gathered twice.

    Inputs are frame-major `(T, B*h, H*W, D)`. Each frame's queries are gathered into tiles
    once and each key frame's halos once; the `v` key frames of a query frame are then
    `v` contiguous slices (query frames `t0..`, key frames `t0 - s..`), each attended by
    the flash kernel with the one spatial mask, and the partial results merged exactly
    with their log-sum-exps. Backward calls the flash kernel's backward per key frame with
    the merged output and log-sum-exp (the blockwise flash backward), accumulating into one
    gradient buffer per input; nothing but q, k, v, the output and the log-sum-exp is kept.
    Frames go through in chunks so the gathered halos hold at most `KEYS_PER_CALL` elements.
    """

    @staticmethod
    def forward(ctx, q, k, v, plan: _HighResPlan, slots: int):  # type: ignore[override]
        Tq, BH, _, D = q.shape
        past = k.shape[0] - Tq
        out = q.new_empty(Tq, BH, plan.num_tiles, plan.tile_queries, D)
        lse = torch.full((Tq, BH, plan.num_tiles, plan.tile_queries), float("-inf"), device=q.device,
                         dtype=_lse_dtype(q.dtype))
        for first, last, qt, kt, vt, key_first in _chunk_tiles(plan, q, k, v, slots):
            for s in range(slots):
                t0 = max(first, s - past)  # query frames that have a key frame s back
                if t0 >= last:
                    continue
                k0 = t0 + past - s - key_first
                n = last - t0
                o_s, lse_s = _flash_cpu(
                    qt[t0 - first :].flatten(0, 1), kt[k0 : k0 + n].flatten(0, 1), vt[k0 : k0 + n].flatten(0, 1),
                    attn_mask=plan.additive_mask(q.dtype, s),
                )
                lse_s = lse_s.to(lse.dtype).view(n, BH, plan.num_tiles, plan.tile_queries)
                o_s = o_s.view(n, BH, plan.num_tiles, plan.tile_queries, D)
                if s == 0:  # every query frame has its own frame: the first partial result
                    out[t0:last], lse[t0:last] = o_s, lse_s
                    continue
                merged = torch.logaddexp(lse[t0:last], lse_s)
                keep, new = torch.exp(lse[t0:last] - merged), torch.exp(lse_s - merged)
                out[t0:last] = out[t0:last] * keep[..., None].to(q.dtype) + o_s * new[..., None].to(q.dtype)
                lse[t0:last] = merged
        ctx.plan, ctx.slots = plan, slots
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        plan: _HighResPlan = ctx.plan
        q, k, v, out, lse = ctx.saved_tensors
        Tq, BH, _, D = q.shape
        past = k.shape[0] - Tq
        grad = grad.contiguous()
        gq, gk, gv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        for first, last, qt, kt, vt, key_first in _chunk_tiles(plan, q, k, v, ctx.slots):
            gqt, gkt, gvt = None, torch.zeros_like(kt), torch.zeros_like(vt)
            for s in range(ctx.slots):
                t0 = max(first, s - past)
                if t0 >= last:
                    continue
                k0 = t0 + past - s - key_first
                n = last - t0
                dq, dk, dv = _flash_cpu_backward(
                    grad[t0:last].flatten(0, 1), qt[t0 - first :].flatten(0, 1), kt[k0 : k0 + n].flatten(0, 1),
                    vt[k0 : k0 + n].flatten(0, 1), out[t0:last].flatten(0, 1),
                    lse[t0:last].flatten(0, 1).to(_lse_dtype(q.dtype)), 0.0, False, attn_mask=plan.additive_mask(q.dtype, s),
                )
                if gqt is None:  # s = 0 covers every query frame of the chunk
                    gqt = dq.view_as(qt)
                else:
                    gqt[t0 - first :] += dq.view_as(gqt[t0 - first :])
                gkt[k0 : k0 + n] += dk.view_as(gkt[k0 : k0 + n])
                gvt[k0 : k0 + n] += dv.view_as(gvt[k0 : k0 + n])
            key_last = key_first + kt.shape[0]
            gq[first:last].index_add_(2, plan.q_spatial, gqt.flatten(2, 3))
            gk[key_first:key_last].index_add_(2, plan.k_spatial, gkt.flatten(2, 3))
            gv[key_first:key_last].index_add_(2, plan.k_spatial, gvt.flatten(2, 3))
        return gq, gk, gv, None, None


def _lse_dtype(dtype: torch.dtype) -> torch.dtype:
    """The CPU flash kernel's log-sum-exp: float64 for float64 inputs, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _chunk_tiles(plan: _HighResPlan, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slots: int):
    """Per frame chunk: `(first, last, q tiles, k halos, v halos, first key frame gathered)`."""
    Tq, BH, _, D = q.shape
    past = k.shape[0] - Tq
    for first, last in _frame_chunks(plan, Tq, BH, D):
        key_first = max(0, first + past - (slots - 1))
        key_last = last + past
        qt = q[first:last].index_select(2, plan.q_spatial).view(last - first, BH, plan.num_tiles, plan.tile_queries, D)
        kt, vt = (
            x[key_first:key_last].index_select(2, plan.k_spatial).view(key_last - key_first, BH, plan.num_tiles, plan.halo_keys, D)
            for x in (k, v)
        )
        yield first, last, qt, kt, vt, key_first


def tiled_high_res_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int,
    temporal_window: int,
    tile_size: int | tuple[int, int],
    growth: int = 0,
) -> torch.Tensor:
    """q `(B, h, Tq, H, W, D)`, k/v `(B, h, Tk, H, W, D)`; queries are the last Tq key frames.
    `growth`: the light cone, window `w + 2 * growth * lag` at each frame lag."""
    B, heads, Tq, H, W, D = q.shape
    Tk = k.shape[2]
    tile = (tile_size, tile_size) if isinstance(tile_size, int) else tuple(tile_size)
    plan = high_res_plan(
        H, W, Tq, Tk, window, temporal_window, tile, KEYS_PER_CALL // (B * heads * D), q.device, growth
    )

    if q.device.type == "cpu" and not _tracing():
        frames_first = [x.permute(2, 0, 1, 3, 4, 5).reshape(x.shape[2], B * heads, H * W, D) for x in (q, k, v)]
        out = _CPUHighResTiles.apply(*frames_first, plan, min(temporal_window, Tk))  # (Tq, B*h, nTiles, tq, D)
        out = out.flatten(2, 3).index_select(2, plan.out_spatial)  # (Tq, B*h, H*W, D)
        return out.reshape(Tq, B, heads, H, W, D).permute(1, 2, 0, 3, 4, 5)

    q_flat = q.reshape(B * heads, Tq * H * W, D)
    k_flat = k.reshape(B * heads, Tk * H * W, D)
    v_flat = v.reshape(B * heads, Tk * H * W, D)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)) and not _tracing()
    # elsewhere (CUDA without NATTEN, torch.compile, ONNX export): the halos of the v key
    # frames gathered per query frame into one batched SDPA call per chunk of frames
    def attend(n: int) -> torch.Tensor:
        c = plan.chunks[n]
        shape_q = (B * heads * c.count, plan.num_tiles, plan.tile_queries, D)
        shape_k = (B * heads * c.count, plan.num_tiles, c.slots * plan.halo_keys, D)
        return F.scaled_dot_product_attention(
            _gather(q_flat, c.q_index, shape_q), _gather(k_flat, c.k_index, shape_k),
            _gather(v_flat, c.k_index, shape_k), attn_mask=c.mask,
        ).reshape(B * heads, -1, D)

    # training elsewhere (CUDA without NATTEN): keep only q/k/v for backward and
    # re-gather the tiles there, so the gathered K/V live one chunk at a time
    parts = [
        checkpoint(attend, n, use_reentrant=False) if needs_grad else attend(n) for n in range(len(plan.chunks))
    ]
    out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)  # (B*h, Tq*nTiles*th*tw, D)
    out = out.index_select(1, plan.out_index)
    return out.reshape(B, heads, Tq, H, W, D)


def tiled_low_res_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, temporal_stride: int, anchored: bool = False
) -> torch.Tensor:
    """q `(B, h, Tq, P, D)`, k/v `(B, h, Tk, P, D)`; queries are the last Tq key frames."""
    if anchored:
        return _anchored_low_res_attention(q, k, v, temporal_stride)
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

    def causal_rows() -> torch.Tensor:
        row_q = torch.arange(query_rows, device=q.device) + first_query_row
        row_k = torch.arange(key_rows, device=q.device)
        return (row_q[:, None] >= row_k[None, :]).repeat_interleave(P, 0).repeat_interleave(P, 1)

    mask = shape_cached(("low_res", query_rows, key_rows, first_query_row, P, q.device), causal_rows)
    out = F.scaled_dot_product_attention(
        by_group(q, query_rows, front), by_group(k, key_rows, 0), by_group(v, key_rows, 0), attn_mask=mask
    )  # (B, h*d, query_rows*P, D)
    out = out.reshape(B, heads, d, query_rows, P, D).transpose(2, 3).reshape(B, heads, query_rows * d, P, D)
    return out[:, :, front : front + Tq]


def _anchored_low_res_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, temporal_stride: int) -> torch.Tensor:
    """Each query frame t: the anchor frames `t' < t, t' % d == 0` (shared) and frame t itself."""
    B, heads, Tq, P, D = q.shape
    Tk = k.shape[2]
    past = Tk - Tq
    anchors = k[:, :, ::temporal_stride].flatten(2, 3), v[:, :, ::temporal_stride].flatten(2, 3)  # (B, h, A*P, D)
    A = anchors[0].shape[2] // P

    def with_own(shared: torch.Tensor, own: torch.Tensor) -> torch.Tensor:  # (B, h, Tq, A*P + P, D)
        return torch.cat([shared[:, :, None].expand(B, heads, Tq, A * P, D), own[:, :, past:]], dim=3)

    def visible() -> torch.Tensor:  # (Tq, 1, A*P + P): anchors strictly before the query frame, then itself
        query = torch.arange(past, Tk, device=q.device)[:, None]
        anchor = (torch.arange(A, device=q.device) * temporal_stride)[None, :]
        seen = (anchor < query).repeat_interleave(P, 1)
        return torch.cat([seen, torch.ones(Tq, P, dtype=torch.bool, device=q.device)], dim=1)[:, None]

    mask = shape_cached(("low_res_anchored", Tq, Tk, P, temporal_stride, q.device), visible)
    out = F.scaled_dot_product_attention(  # 4-D for ONNX: (B, h*Tq, tokens, D)
        q.flatten(1, 2), with_own(anchors[0], k).flatten(1, 2), with_own(anchors[1], v).flatten(1, 2),
        attn_mask=mask.repeat(heads, 1, 1)[None],
    )
    return out.view(B, heads, Tq, P, D)
