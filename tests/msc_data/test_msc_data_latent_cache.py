"""Latent cache: clip shards -> latent shards with a real (tiny) Tokenizer, loaded by kind."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Literal

import pytest
import torch
import torch.nn.functional as F

from msc_core.checkpoint import save_pretrained
from msc_core.config import Config
from msc_core.interfaces import LatentSpec, Tokenizer
from msc_data import ClipBuildConfig, LatentClipDataset, VideoClipDataset, build_shards, encode_shards, load_manifest
from msc_data import tokenizer_registry
from msc_data.cli import main
from msc_data.tokenizer_registry import ENTRY_POINT_GROUP, load_tokenizer, register_tokenizer

KIND = "avgpool-test-tokenizer"


class AvgPoolTokenizerConfig(Config):
    kind: Literal["avgpool-test-tokenizer"] = KIND
    temporal: int = 2
    spatial: int = 4


class AvgPoolTokenizer(torch.nn.Module):
    """A fixed average-pool encoder / nearest-upsample decoder with one learned gain."""

    config_class = AvgPoolTokenizerConfig

    def __init__(self, config: AvgPoolTokenizerConfig) -> None:
        super().__init__()
        self.config = config
        self.gain = torch.nn.Parameter(torch.ones(3, 1, 1, 1))

    @property
    def latent_spec(self) -> LatentSpec:
        return LatentSpec(layout="grid", channels=3, temporal_compression=self.config.temporal,
                          spatial_compression=self.config.spatial)

    def encode(self, video: torch.Tensor) -> torch.Tensor:  # (B, 3, T, H, W) -> (B, 3, T/t, H/s, W/s)
        s, t = self.config.spatial, self.config.temporal
        return F.avg_pool3d(video, (t, s, s)) * self.gain

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        s, t = self.config.spatial, self.config.temporal
        return (latents / self.gain).repeat_interleave(t, 2).repeat_interleave(s, 3).repeat_interleave(s, 4)


@pytest.fixture(scope="module")
def clip_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("clips")
    build_shards("moving-mnist", out, ClipBuildConfig(frames=4, size=32, num_clips=10, shard_max_clips=4), progress=False)
    return out


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = AvgPoolTokenizer(AvgPoolTokenizerConfig())
    with torch.no_grad():
        model.gain.copy_(torch.tensor([0.5, 2.0, -1.0]).view(3, 1, 1, 1))
    return save_pretrained(model, tmp_path_factory.mktemp("tokenizer"))


def reference_latents(clip_shards: Path, tokenizer_dir: Path) -> dict[str, torch.Tensor]:
    model = load_tokenizer(tokenizer_dir, AvgPoolTokenizer)
    with torch.no_grad():
        return {s["key"]: model.encode(s["video"][None])[0] for s in VideoClipDataset(clip_shards)}


def check_latents(out: Path, expected: dict[str, torch.Tensor]) -> None:
    samples = list(LatentClipDataset(out))
    assert sorted(s["key"] for s in samples) == sorted(expected)
    for s in samples:
        assert s["latents"].shape == (3, 2, 8, 8)
        torch.testing.assert_close(s["latents"], expected[s["key"]], rtol=0, atol=0)
        assert s["caption"].startswith("the digits") and s["fps"] == 8.0


def test_cli_encode_with_class_override_matches_direct_encoding(clip_shards, tokenizer_dir, tmp_path, capsys) -> None:
    assert sys.modules[__name__].AvgPoolTokenizer is AvgPoolTokenizer  # importable as module:Class
    out = tmp_path / "latents"
    code = main(["encode", str(clip_shards), str(out), "--tokenizer", str(tokenizer_dir),
                 "--tokenizer-class", f"{__name__}:AvgPoolTokenizer", "--batch-size", "3", "--quiet"])
    assert code == 0, capsys.readouterr().err
    manifest = load_manifest(out)
    assert manifest.complete and manifest.num_samples == 10 and manifest.tokenizer_kind == KIND
    assert manifest.latent_spec.spatial_compression == 4 and manifest.tokenizer_config["spatial"] == 4
    check_latents(out, reference_latents(clip_shards, tokenizer_dir))


def test_kind_resolves_through_the_entry_point_group(clip_shards, tokenizer_dir, tmp_path, monkeypatch) -> None:
    # A real installed-distribution record declaring the entry point, found by importlib.metadata.
    site = tmp_path / "site"
    info = site / "avgpool_tokenizer_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: avgpool-tokenizer-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{KIND} = {__name__}:AvgPoolTokenizer\n")
    monkeypatch.syspath_prepend(str(site))
    out = tmp_path / "latents"
    manifest = encode_shards(clip_shards, out, tokenizer_dir, batch_size=4, progress=False)
    assert manifest.tokenizer_class == f"{__name__}:AvgPoolTokenizer"
    check_latents(out, reference_latents(clip_shards, tokenizer_dir))


def test_unknown_kind_is_a_clear_error(clip_shards, tokenizer_dir, tmp_path, capsys) -> None:
    code = main(["encode", str(clip_shards), str(tmp_path / "x"), "--tokenizer", str(tokenizer_dir), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and f"no tokenizer class registered for kind '{KIND}'" in err and "--tokenizer-class" in err


def test_encoding_resumes_after_an_interruption(clip_shards, tokenizer_dir, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(tokenizer_registry, "_REGISTRY", {})  # this test's registrations end with it
    register_tokenizer(KIND, AvgPoolTokenizer)
    out = tmp_path / "latents"
    manifest = encode_shards(clip_shards, out, tokenizer_dir, batch_size=4, progress=False)
    assert [s.num_samples for s in manifest.shards] == [4, 4, 2]
    mtimes = {s.name: os.stat(out / s.name).st_mtime_ns for s in manifest.shards}
    # Interrupted before the last shard was renamed into place.
    (out / manifest.shards[2].name).unlink()
    (out / "manifest.json").write_text(manifest.model_copy(update={"complete": False}).to_json())
    resumed = encode_shards(clip_shards, out, tokenizer_dir, batch_size=4, progress=False)
    assert resumed == manifest
    assert {n: os.stat(out / n).st_mtime_ns for n in mtimes if n != manifest.shards[2].name} == {
        n: t for n, t in mtimes.items() if n != manifest.shards[2].name
    }
    check_latents(out, reference_latents(clip_shards, tokenizer_dir))


def test_frames_the_tokenizer_cannot_take_are_rejected(tmp_path) -> None:
    clips = tmp_path / "clips"
    build_shards("moving-mnist", clips, ClipBuildConfig(frames=5, size=32, num_clips=2), progress=False)
    tokenizer = AvgPoolTokenizer(AvgPoolTokenizerConfig())
    assert isinstance(tokenizer, Tokenizer)
    with pytest.raises(ValueError, match="num_frames=5 is not valid"):
        encode_shards(clips, tmp_path / "out", tokenizer=tokenizer, progress=False)
