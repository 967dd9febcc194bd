"""Latent normalisation (msc_core.latents): per-channel statistics measured exactly, a
lossless round trip, a bound from the data, a JSON round trip, clear refusals."""

from __future__ import annotations

import pytest
import torch

from msc_core.config import ConfigError
from msc_core.latents import LatentNormalization, LatentStatistics


@pytest.mark.parametrize("layout", ["grid", "tokens"])
def test_statistics_of_data_with_known_mean_and_variance(layout: str) -> None:
    means, stds = torch.tensor([3.0, -1.0, 0.5]), torch.tensor([2.0, 0.25, 1.0])
    g = torch.Generator().manual_seed(0)
    if layout == "grid":  # [B, C, T, H, W]
        data = torch.randn(64, 3, 4, 8, 8, generator=g) * stds.view(1, 3, 1, 1, 1) + means.view(1, 3, 1, 1, 1)
        flat = data.transpose(0, 1).reshape(3, -1)
    else:  # [B, T, L, D]
        data = torch.randn(64, 4, 16, 3, generator=g) * stds + means
        flat = data.reshape(-1, 3).T
    statistics = LatentStatistics(layout)
    for batch in data.split(7):  # in uneven batches: the sums are exact
        statistics.update(batch)
    norm = statistics.normalization()
    assert norm.clips == 64 and norm.channels == 3
    # exactly the data's own mean and (population) standard deviation, in float64 ...
    assert torch.allclose(torch.tensor(norm.shift), flat.double().mean(1).float(), atol=1e-6)
    assert torch.allclose(torch.tensor(norm.scale), flat.double().std(1, unbiased=False).float(), rtol=1e-6)
    # ... which are the generating ones up to sampling error
    assert torch.allclose(torch.tensor(norm.shift), means, atol=0.05)
    assert torch.allclose(torch.tensor(norm.scale), stds, rtol=0.05)
    normalized = norm.normalize(data)
    per_channel = normalized.transpose(0, 1).reshape(3, -1) if layout == "grid" else normalized.reshape(-1, 3).T
    assert torch.allclose(per_channel.mean(1), torch.zeros(3), atol=1e-5)
    assert torch.allclose(per_channel.std(1, unbiased=False), torch.ones(3), atol=1e-5)
    assert norm.bound == pytest.approx(normalized.abs().max().item(), rel=1e-5)
    assert torch.allclose(norm.denormalize(normalized), data, atol=1e-5)


def test_a_constant_channel_gets_scale_one_and_json_round_trips(tmp_path) -> None:
    statistics = LatentStatistics("tokens")
    data = torch.zeros(2, 3, 4, 2)
    data[..., 1] = torch.arange(24.0).view(2, 3, 4)
    statistics.update(data)
    norm = statistics.normalization()
    assert norm.scale[0] == 1.0 and norm.shift[0] == 0.0
    norm.save(tmp_path)
    assert LatentNormalization.read(tmp_path) == norm
    assert LatentNormalization.read(tmp_path / "missing") is None


def test_bad_statistics_and_mismatched_latents_are_refused() -> None:
    with pytest.raises(ConfigError, match="scale must be finite and > 0"):
        LatentNormalization.from_dict({"layout": "grid", "shift": [0.0], "scale": [0.0]})
    with pytest.raises(ConfigError, match="one value per channel"):
        LatentNormalization.from_dict({"layout": "grid", "shift": [0.0, 1.0], "scale": [1.0]})
    norm = LatentNormalization(layout="grid", shift=(0.0, 1.0), scale=(1.0, 2.0))
    with pytest.raises(ValueError, match="latents have 3 channels on axis 1"):
        norm.normalize(torch.zeros(1, 3, 1, 2, 2))
    with pytest.raises(ValueError, match="no latents were measured"):
        LatentStatistics("grid").normalization()
