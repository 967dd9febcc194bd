"""`natten` backend: NATTEN `na3d` kernels (CUDA) with the semantics of `masks.py`.

High-Res (§3.2): `na3d` over `(T, H, W)` with `kernel_size=(v, w, w)` and
`is_causal=(True, False, False)`: NATTEN's causal window along time is the query frame
and the `v - 1` before it, and its spatial windows are shifted inwards at the borders,
exactly the reference masks. Kernel sizes are clamped to the input size as the
reference clamps windows.

Low-Res (§3.2): frames `t, t-d, t-2d, ...` are a causal window along time with
`dilation=d` long enough to reach frame 0, and a spatial kernel covering the whole
pooled frame (frame-global). Axes whose kernel is 1 (v = 1, w = 1, d >= T, a 1-pixel
pooled axis) are folded into the batch, since NATTEN needs kernels >= 2. Time is zero-padded at the end to a multiple of `d`
(NATTEN needs `kernel * dilation <= T`); causality makes padding invisible to real frames.

NATTEN is an optional extra (`pip install 'msc-core[natten]'`), imported lazily and once
per process (the outcome, and the reason of a failure, are remembered).

Calls with a KV cache: na3d needs as many query as key frames, so the High-Res branch pads
the queries in front with the cached frames' positions (zeros) and keeps the outputs of the
new frames. The High-Res cache holds only the `v - 1` frames the new ones can see, so the
extra work is at most `(v - 1)` frames per call and the result is exact. The Low-Res branch
of a cached call runs `tiled` (its cache holds every past frame, so padding would cost a
whole sequence per step, and its pooled tokens are few).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


_NATTEN: dict[str, object] = {}  # "ops" -> (na1d, na2d, na3d) or "error" -> why the import failed


def _import_natten() -> None:
    if _NATTEN:
        return
    try:
        from natten.functional import na1d, na2d, na3d
    except Exception as err:  # ImportError, or a binary built for another torch / CUDA
        _NATTEN["error"] = f"{type(err).__name__}: {err}"
    else:
        _NATTEN["ops"] = (na1d, na2d, na3d)


def natten_import_error() -> str | None:
    """Why NATTEN cannot be used in this process, or None when it imports (tried once)."""
    _import_natten()
    return _NATTEN.get("error")  # type: ignore[return-value]


def natten_available() -> bool:
    return natten_import_error() is None


def _natten_ops() -> tuple[Callable[..., torch.Tensor], ...]:
    error = natten_import_error()
    if error is not None:
        raise ImportError(
            f"MSCAttention backend='natten' needs NATTEN, which does not import here ({error}): "
            "install the optional extra with `pip install 'msc-core[natten]'` (CUDA build), "
            "or use backend='tiled' or 'auto'"
        )
    return _NATTEN["ops"]  # type: ignore[return-value]


def neighborhood_attention_3d(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size: tuple[int, int, int],
    dilation: tuple[int, int, int],
    is_causal: tuple[bool, bool, bool],
) -> torch.Tensor:
    """NATTEN neighbourhood attention over `(B, X, Y, Z, heads, D)` tensors.

    NATTEN rejects kernels of size 1; an axis with a size-1 kernel is attention of each
    position with itself along that axis, i.e. independent problems, so it is folded
    into the batch and the call drops to `na2d` / `na1d` (or to `v` when no axis is left).
    """
    kept = [axis for axis in range(3) if kernel_size[axis] > 1]
    if not kept:
        return v  # every query sees exactly its own key: softmax weight 1
    folded = [axis for axis in range(3) if kernel_size[axis] == 1]
    order = [0, *(1 + a for a in folded), *(1 + a for a in kept), 4, 5]
    B, heads, D = q.shape[0], q.shape[4], q.shape[5]
    kept_sizes = [q.shape[1 + a] for a in kept]

    def fold(x: torch.Tensor) -> torch.Tensor:
        return x.permute(order).reshape(-1, *kept_sizes, heads, D)

    na = _natten_ops()[len(kept) - 1]
    out = na(
        fold(q),
        fold(k),
        fold(v),
        kernel_size=tuple(kernel_size[a] for a in kept),
        dilation=tuple(dilation[a] for a in kept),
        is_causal=tuple(is_causal[a] for a in kept),
    )
    permuted_shape = [B, *(q.shape[1 + a] for a in folded), *kept_sizes, heads, D]
    return out.reshape(permuted_shape).permute(torch.argsort(torch.tensor(order)).tolist())


def natten_high_res_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, temporal_window: int
) -> torch.Tensor:
    """q `(B, h, Tq, H, W, D)`, k/v `(B, h, Tk, H, W, D)`; queries are the last Tq key frames."""
    Tq, Tk = q.shape[2], k.shape[2]
    if Tk > Tq:  # cached frames: pad the queries in front, keep the new frames' outputs
        pad = q.new_zeros(*q.shape[:2], Tk - Tq, *q.shape[3:])
        return natten_high_res_attention(torch.cat([pad, q], dim=2), k, v, window, temporal_window)[:, :, Tk - Tq :]
    T, H, W = q.shape[2:5]
    kernel = (min(temporal_window, T), min(window, H), min(window, W))
    heads_last = [x.permute(0, 2, 3, 4, 1, 5) for x in (q, k, v)]  # (B, T, H, W, h, D)
    out = neighborhood_attention_3d(*heads_last, kernel, (1, 1, 1), (True, False, False))
    return out.permute(0, 4, 1, 2, 3, 5)


def natten_low_res_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pooled_height: int, pooled_width: int, temporal_stride: int
) -> torch.Tensor:
    """q, k, v `(B, h, T, P, D)` with `P = pooled_height * pooled_width` (no cache)."""
    B, heads, T, P, D = q.shape
    d = min(temporal_stride, T)
    rows = -(-T // d)
    padded = rows * d

    def heads_last(x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, 0, 0, 0, 0, padded - T))
        return x.reshape(B, heads, padded, pooled_height, pooled_width, D).permute(0, 2, 3, 4, 1, 5)

    out = neighborhood_attention_3d(
        heads_last(q),
        heads_last(k),
        heads_last(v),
        kernel_size=(rows, pooled_height, pooled_width),
        dilation=(d, 1, 1),
        is_causal=(True, False, False),
    )  # (B, padded, h', w', heads, D)
    return out.permute(0, 4, 1, 2, 3, 5).reshape(B, heads, padded, P, D)[:, :, :T]
