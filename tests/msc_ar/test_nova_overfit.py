"""A tiny NOVA overfits a few moving-square clips: the masked-token diffusion loss drops > 5x."""

from __future__ import annotations

import pytest
import torch

from msc_ar.nova import NOVA, NovaConfig

CLIPS = [  # caption, velocity (dx, dy) in pixels/frame, RGB colour in [-1, 1], top-left start
    ("red square moving right", (1, 0), (1.0, -1.0, -1.0), (1, 1)),
    ("green square moving down", (0, 1), (-1.0, 1.0, -1.0), (1, 4)),
    ("blue square moving left", (-1, 0), (-1.0, -1.0, 1.0), (4, 2)),
    ("white square moving up", (0, -1), (1.0, 1.0, 1.0), (3, 4)),
]


def moving_square_clips(num_frames: int = 4, size: int = 8, side: int = 3) -> torch.Tensor:
    """`(len(CLIPS), 3, T, size, size)` in [-1, 1]: a coloured square crossing a black frame."""
    video = -torch.ones(len(CLIPS), 3, num_frames, size, size)
    for i, (_, (dx, dy), colour, (x0, y0)) in enumerate(CLIPS):
        for t in range(num_frames):
            x, y = x0 + dx * t, y0 + dy * t
            video[i, :, t, y : y + side, x : x + side] = torch.tensor(colour)[:, None, None]
    return video


def masked_token_loss(model: NOVA, batch: dict, seeds: range = range(4)) -> dict[str, float]:
    """The training losses with fixed masks, timesteps and noise (no caption dropout)."""
    model.eval()
    with torch.no_grad():
        runs = [model.training_losses(batch, generator=torch.Generator().manual_seed(s)) for s in seeds]
    model.train()
    return {key: float(torch.stack([r[key] for r in runs]).mean()) for key in runs[0]}


@pytest.mark.slow
def test_tiny_nova_overfits_moving_squares():
    torch.manual_seed(0)
    model = NOVA(NovaConfig.tiny()).train()
    video = moving_square_clips()
    assert bool((video[:, :, 1:] != video[:, :, :-1]).any()), "the squares must move"
    batch = {"video": video, "caption": [c[0] for c in CLIPS], "motion": torch.ones(len(CLIPS)),
             "fps": torch.full((len(CLIPS),), 8.0)}  # fmt: skip
    before = masked_token_loss(model, batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.95), weight_decay=0.0)
    for _ in range(400):
        loss = model.training_losses(batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    after = masked_token_loss(model, batch)
    for key in ("loss", "loss_later_frames"):  # overall, and for frames predicted from earlier frames
        assert after[key] < before[key] / 5, f"{key} {before[key]:.3f} -> {after[key]:.3f}: not a 5x drop"
