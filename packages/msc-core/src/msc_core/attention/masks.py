"""Who may attend to whom in MSC attention (paper §3.2, §3.3): the one semantics.

Every backend implements exactly these masks; the `reference` backend applies them
densely. Frames are indexed so that the `Tq` query frames are the LAST `Tq` of the
`Tk` key frames (query frame `i` is key frame `Tk - Tq + i`): with a KV cache the key
frames are the cached ones followed by the new ones. All rules are relative in time,
so that indexing is all a cache needs.

- High-Res (§3.2, P-frames): key frame `t'` with `t - v < t' <= t` (a causal window
  of `v` frames, fewer at the start: NATTEN's causal semantics), and in space the
  `w x w` neighbourhood of NATTEN: the window is SHIFTED, not shrunk, at the borders,
  so a border query still sees a full `w x w` window inside the frame. A window larger
  than the frame is clamped to the whole frame.
- Low-Res (§3.2, I-frames): key frame `t' <= t` with `(t - t') % d == 0`, every token
  of those frames (frame-global).

Options (off by default; `MSCAttentionConfig`):
- light cone (`light_cone_growth = g`, §3.2's "window proportional to the frame
  difference"): at frame lag `l = t - t'` the High-Res spatial window is
  `w_l = w + 2 g l` (still odd, still NATTEN-shifted at the borders);
- anchored stride (`stride_anchor="fixed"`): the Low-Res branch of frame t sees itself
  and the anchor frames `t' < t` with `t' % d == 0`, counted from the first key frame
  (frame 0 of the sequence the layer sees, cache included): fixed I-frames shared by
  every query instead of a stride that moves with the query.
"""

from __future__ import annotations

import torch


def neighborhood_window_start(index: torch.Tensor | int, length: int, window: int) -> torch.Tensor | int:
    """First key position of the NATTEN window of each query position along one axis.

    The window is centred on the query and shifted inwards at the borders; it spans
    `min(window, length)` positions. Takes a tensor of positions or one int.
    """
    start, last = index - window // 2, max(length - window, 0)
    if isinstance(start, torch.Tensor):
        return start.clamp(min=0, max=last)
    return min(max(start, 0), last)


def neighborhood_mask_1d(
    length: int, window: int, device: torch.device | None = None
) -> torch.Tensor:
    """Boolean `(length, length)`: query position i may see key position j."""
    pos = torch.arange(length, device=device)
    start = neighborhood_window_start(pos, length, window)  # (L,)
    return (pos[None, :] >= start[:, None]) & (pos[None, :] < start[:, None] + min(window, length))


def frame_lags(num_query_frames: int, num_key_frames: int, device: torch.device | None = None) -> torch.Tensor:
    """`(Tq, Tk)` query frame index minus key frame index (queries are the last Tq key frames)."""
    query = torch.arange(num_key_frames - num_query_frames, num_key_frames, device=device)
    return query[:, None] - torch.arange(num_key_frames, device=device)[None, :]


def high_res_frame_mask(
    num_query_frames: int, num_key_frames: int, temporal_window: int, device: torch.device | None = None
) -> torch.Tensor:
    """Boolean `(Tq, Tk)`: query frame t sees key frames t-v+1 .. t."""
    lag = frame_lags(num_query_frames, num_key_frames, device)
    return (lag >= 0) & (lag < temporal_window)


def light_cone_windows(window: int, temporal_window: int, growth: int = 0) -> tuple[int, ...]:
    """High-Res spatial window at each frame lag `0 .. v-1`: `w + 2 * growth * lag`."""
    return tuple(window + 2 * growth * lag for lag in range(temporal_window))


def low_res_frame_mask(
    num_query_frames: int,
    num_key_frames: int,
    temporal_stride: int,
    device: torch.device | None = None,
    anchored: bool = False,
) -> torch.Tensor:
    """Boolean `(Tq, Tk)`: query frame t sees key frames t, t-d, t-2d, ... >= 0; anchored:
    t itself and the key frames t' < t with t' % d == 0."""
    lag = frame_lags(num_query_frames, num_key_frames, device)
    if anchored:
        key = torch.arange(num_key_frames, device=device)[None, :]
        return (lag == 0) | ((lag > 0) & (key % temporal_stride == 0))
    return (lag >= 0) & (lag % temporal_stride == 0)


def high_res_mask(
    num_query_frames: int,
    num_key_frames: int,
    height: int,
    width: int,
    window: int,
    temporal_window: int,
    device: torch.device | None = None,
    growth: int = 0,
) -> torch.Tensor:
    """Dense boolean `(Tq*H*W, Tk*H*W)` mask of the High-Res branch, tokens in (t, i, j) order."""
    lag = frame_lags(num_query_frames, num_key_frames, device)
    mask = torch.zeros(num_query_frames, height, width, num_key_frames, height, width, dtype=torch.bool, device=device)
    for l, w_l in enumerate(light_cone_windows(window, temporal_window, growth)):
        rows = neighborhood_mask_1d(height, w_l, device)
        cols = neighborhood_mask_1d(width, w_l, device)
        mask |= (
            (lag == l)[:, None, None, :, None, None]
            & rows[None, :, None, None, :, None]
            & cols[None, None, :, None, None, :]
        )  # (Tq, H, W, Tk, H, W)
    return mask.reshape(num_query_frames * height * width, num_key_frames * height * width)


def low_res_mask(
    num_query_frames: int,
    num_key_frames: int,
    tokens_per_frame: int,
    temporal_stride: int,
    device: torch.device | None = None,
    anchored: bool = False,
) -> torch.Tensor:
    """Dense boolean `(Tq*P, Tk*P)` mask of the Low-Res branch (P pooled tokens per frame)."""
    frames = low_res_frame_mask(num_query_frames, num_key_frames, temporal_stride, device, anchored)
    return frames.repeat_interleave(tokens_per_frame, 0).repeat_interleave(tokens_per_frame, 1)
