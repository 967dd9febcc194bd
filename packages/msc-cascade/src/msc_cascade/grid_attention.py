"""Grid-based 3D attention (CascadeV §3.3, Fig. 3).

Tokens `[B, T, H, W, C]` are partitioned per layer into groups and attention runs inside
each group:

- `spatial`: `window x window` spatial windows spanning **all** frames (group size
  `T * window^2`): long-range in time, local in space;
- `temporal`: chunks of `chunk` frames at **full** resolution (group size
  `chunk * H * W`): global in space, local in time;
- `full`: every token attends to every token.

Alternating `spatial` and `temporal` layers lets information cross the whole volume in
two layers at a fraction of full 3D attention's cost.

CascadeV's P^2 rule (§3.3, `partitions=P`): instead of fixed `window` and `chunk`, the
groups follow the input: spatial groups are `ceil(H/P) x ceil(W/P)` tokens over all
frames (P^2 groups per volume) and temporal groups `ceil(T/P^2)` frames at full
resolution (P^2 groups), so every group holds about `T*H*W / P^2` tokens whatever the
input size, and attention costs `1/P^2` of full 3D attention. The groups then depend on
the input size, which an exported graph keeps dynamic: ONNX export refuses `partitions`
(use fixed `window` / `chunk` there). Sizes that do not divide are zero-padded and the padded keys are
masked out, so any latent size works. Implemented with reshapes and SDPA only, so it
exports to ONNX; while `torch.export` traces (dynamic frame count and latent size), groups
are not clamped to the volume and padding and key masks are always built, from sizes
written as `ceil(size / group) * group`, so one graph serves every size.
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


def _partition_group_shape(kind: str, T: int, H: int, W: int, partitions: int) -> tuple[int, int, int]:
    """Group extent under the P^2 rule: P x P spatial groups, P^2 temporal groups."""
    if kind == "spatial":
        return T, -(-H // partitions), -(-W // partitions)
    if kind == "temporal":
        return -(-T // partitions**2), H, W
    return _group_shape(kind, T, H, W, 1, 1)


def _export_group_shape(kind: str, T: int, H: int, W: int, window: int, chunk: int) -> tuple[int, int, int]:
    """`_group_shape` without clamping to the volume (a clamp is a guard on a symbolic size);
    the padded keys are masked, so a chunk / window larger than the volume gives the same result."""
    if kind == "spatial":
        return T, window, window
    if kind == "temporal":
        return chunk, H, W
    return _group_shape(kind, T, H, W, window, chunk)


def _num_groups(size: int, group: int) -> int:
    """ceil(size / group); a group that is the whole axis is recognised without dividing, so
    symbolic (exported) sizes need no guard there."""
    return 1 if statically_known_true(group == size) else (size + group - 1) // group


def partition(x: torch.Tensor, group: tuple[int, int, int]) -> tuple[torch.Tensor, tuple[int, ...]]:
    """`[B, T, H, W, C]` -> `[B * G, gt * gh * gw, C]` groups (zero-padded to multiples)."""
    B, T, H, W, C = x.shape
    gt, gh, gw = group
    nT, nH, nW = _num_groups(T, gt), _num_groups(H, gh), _num_groups(W, gw)
    Tp, Hp, Wp = nT * gt, nH * gh, nW * gw
    if torch.compiler.is_exporting() or (Tp, Hp, Wp) != (T, H, W):
        x = F.pad(x, (0, 0, 0, Wp - W, 0, Hp - H, 0, Tp - T))
    x = x.reshape(B, nT, gt, nH, gh, nW, gw, C)
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
    """Boolean `[G, 1, 1, group_size]` mask of real (non-padded) keys, or None without padding.

    Built from index comparisons; while exporting it is always built, since whether there
    is padding depends on the input size.
    """
    B, T, H, W, Tp, Hp, Wp = dims
    if not torch.compiler.is_exporting() and (Tp, Hp, Wp) == (T, H, W):
        return None
    valid = (
        (torch.arange(Tp, device=device) < T)[:, None, None]
        & (torch.arange(Hp, device=device) < H)[None, :, None]
        & (torch.arange(Wp, device=device) < W)[None, None, :]
    )  # (Tp, Hp, Wp)
    groups, _ = partition(valid[None, :, :, :, None], group)  # (G, group_size, 1)
    return groups[..., 0][:, None, None, :]


class GridAttention3D(nn.Module):
    """Multi-head self-attention inside grid groups of a `[B, T, H, W, C]` token volume."""

    def __init__(
        self, dim: int, num_heads: int, window: int = 4, chunk: int = 2, qkv_bias: bool = True,
        partitions: int | None = None,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        if window < 1 or chunk < 1:
            raise ValueError(f"window and chunk must be >= 1, got window={window}, chunk={chunk}")
        if partitions is not None and partitions < 1:
            raise ValueError(f"partitions (CascadeV's P) must be >= 1 or None, got {partitions}")
        self.num_heads, self.window, self.chunk, self.partitions = num_heads, window, chunk, partitions
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, kind: GridKind) -> torch.Tensor:
        if x.dim() != 5:
            raise ValueError(f"expected tokens [B, T, H, W, C], got shape {tuple(x.shape)}")
        B, T, H, W, C = x.shape
        if self.partitions is not None:
            if torch.compiler.is_exporting():
                raise ValueError(
                    f"grid attention with partitions={self.partitions} (the P^2 rule) sizes its groups from the "
                    "input, which an exported graph keeps dynamic; export a cascade with fixed window / chunk"
                )
            group = _partition_group_shape(kind, T, H, W, self.partitions)
        elif torch.compiler.is_exporting():
            group = _export_group_shape(kind, T, H, W, self.window, self.chunk)
        else:
            group = _group_shape(kind, T, H, W, self.window, self.chunk)
        groups, dims = partition(x, group)  # (B*G, N, C)
        nb, n, _ = groups.shape
        qkv = self.qkv(groups).reshape(nb, n, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B*G, heads, N, hd)
        mask = padding_key_mask(dims, group, x.device)
        if mask is not None:  # same padding pattern for every batch element
            mask = mask[None].expand(B, -1, -1, -1, -1).reshape(-1, *mask.shape[1:])
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = out.transpose(1, 2).reshape(nb, n, C)
        return self.proj(unpartition(out, group, dims))


def grid_group_ids(
    T: int, H: int, W: int, kind: GridKind, window: int, chunk: int, partitions: int | None = None
) -> torch.Tensor:
    """Group id of every token in `(T, H, W)` order: the definition the tests check against."""
    if partitions is not None:
        gt, gh, gw = _partition_group_shape(kind, T, H, W, partitions)
    else:
        gt, gh, gw = _group_shape(kind, T, H, W, window, chunk)
    t = torch.arange(T)[:, None, None] // gt
    h = torch.arange(H)[None, :, None] // gh
    w = torch.arange(W)[None, None, :] // gw
    n_h, n_w = -(-H // gh), -(-W // gw)
    return ((t * n_h + h) * n_w + w).flatten()
