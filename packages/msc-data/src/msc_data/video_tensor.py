"""uint8 frames <-> video tensors in the msc convention (DESIGN.md, "Typed interfaces").

Frames on disk are uint8 `(T, H, W, C)`; models take float `(C, T, H, W)` in `[-1, 1]`
(batched `[B, 3, T, H, W]`). One place converts between the two.
"""

from __future__ import annotations

import numpy as np
import torch

# ITU-R BT.601 luma, the weights OpenCV's RGB2GRAY uses.
_LUMA = (0.299, 0.587, 0.114)


def frames_to_video(frames: np.ndarray | torch.Tensor, channels: int = 3) -> torch.Tensor:
    """uint8 `(T, H, W, 3)` or gray `(T, H, W)` -> float32 `(channels, T, H, W)` in `[-1, 1]`.

    `channels=1` gives the BT.601 luma of RGB input; `channels=3` repeats gray input.
    Computed in numpy: per-sample work inside data workers should not wake torch's
    intra-op thread pool (on busy machines that costs ~100 ms per call).
    """
    x = frames.numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if x.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {x.dtype}")
    if x.ndim == 3:
        x = x[..., None]  # (T, H, W, 1)
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"frames must be (T, H, W, 3) or (T, H, W), got {tuple(x.shape)}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    video = x.transpose(3, 0, 1, 2).astype(np.float32)  # (C, T, H, W)
    if channels == 1 and video.shape[0] == 3:
        video = np.tensordot(np.asarray(_LUMA, np.float32), video, axes=1)[None]
    elif channels == 3 and video.shape[0] == 1:
        video = np.repeat(video, 3, axis=0)
    video *= 1.0 / 127.5
    video -= 1.0
    return torch.from_numpy(np.ascontiguousarray(video))


def video_to_frames(video: torch.Tensor) -> np.ndarray:
    """float `(C, T, H, W)` in `[-1, 1]` -> uint8 `(T, H, W, C)` (rounded, clamped)."""
    if video.ndim != 4:
        raise ValueError(f"video must be (C, T, H, W), got {tuple(video.shape)}")
    x = ((video.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).contiguous().numpy()  # (T, H, W, C)
