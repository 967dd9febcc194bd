"""Damaged shards: every good sample is still read, and the skipped ones are counted exactly."""

from __future__ import annotations

import logging
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from msc_data import ClipBuildConfig, VideoClipDataset, build_shards
from msc_data.manifest import ClipManifest

CLIPS_PER_SHARD = 6


@pytest.fixture(scope="module")
def clean_shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ClipManifest]:
    out = tmp_path_factory.mktemp("clean")
    config = ClipBuildConfig(frames=4, size=32, fps=8.0, num_clips=4 * CLIPS_PER_SHARD, shard_max_clips=CLIPS_PER_SHARD)
    return out, build_shards("moving-mnist", out, config, progress=False)


def members(path: Path) -> dict[tuple[int, str], tarfile.TarInfo]:
    """(sample number in the shard, member extension) -> TarInfo with its byte offsets."""
    with tarfile.open(path) as tar:
        infos = tar.getmembers()
    keys = sorted({m.name.split(".", 1)[0] for m in infos})
    return {(keys.index(m.name.split(".", 1)[0]), m.name.split(".", 1)[1]): m for m in infos}


def overwrite(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def all_keys(manifest: ClipManifest) -> list[str]:
    return [f"000000-{i:06d}" for i in range(manifest.num_clips)]


@pytest.fixture()
def damaged(clean_shards: tuple[Path, ClipManifest], tmp_path: Path) -> tuple[Path, ClipManifest, set[str]]:
    """A copy with one truncated shard and five garbled samples; returns the damaged keys."""
    src, manifest = clean_shards
    out = tmp_path / "damaged"
    shutil.copytree(src, out)
    shard = [out / s.name for s in manifest.shards]
    key = lambda shard_index, n: f"000000-{shard_index * CLIPS_PER_SHARD + n:06d}"  # noqa: E731

    # Shard 1: cut in the middle of sample 3's frames -> 3 is incomplete, 4 and 5 are lost.
    m = members(shard[1])
    cut = m[(3, "npy.gz")].offset_data + m[(3, "npy.gz")].size // 2
    with open(shard[1], "r+b") as f:
        f.truncate(cut)
    bad = {key(1, 3), key(1, 4), key(1, 5)}

    # Shard 2: garbled frame bytes (fails CRC), garbled metadata JSON, garbled tar header.
    m = members(shard[2])
    overwrite(shard[2], m[(1, "npy.gz")].offset_data + 40, b"\x00garbage\xff" * 4)
    overwrite(shard[2], m[(3, "json")].offset_data, b"{{{{")
    overwrite(shard[2], m[(4, "npy.gz")].offset, b"\x13" * 100)  # name field: header checksum fails
    bad |= {key(2, 1), key(2, 3), key(2, 4)}

    # Shard 3: the metadata member's header of sample 0 is garbled.
    m = members(shard[3])
    overwrite(shard[3], m[(0, "json")].offset + 148, b"9999999\x00")  # the checksum field itself
    bad.add(key(3, 0))
    return out, manifest, bad


def test_reader_yields_all_good_samples_and_counts_the_rest(damaged, caplog: pytest.LogCaptureFixture) -> None:
    out, manifest, bad = damaged
    ds = VideoClipDataset(out, shuffle_buffer=4)
    with caplog.at_level(logging.WARNING, logger="msc_data"):
        keys = [sample["key"] for sample in ds]
    assert sorted(keys) == sorted(set(all_keys(manifest)) - bad)
    assert ds.skipped.as_dict() == {"corrupt": 5, "missing": 2, "damaged_shards": 1, "total": len(bad)}
    assert len(keys) + ds.skipped.total == manifest.num_clips
    logged = caplog.text
    assert "2 of 6 samples missing" in logged and "fails its CRC32 check" in logged
    for k in ("000000-000013", "000000-000015"):  # the garbled frames and the garbled JSON
        assert k in logged


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_skip_counts_reach_the_trainer_from_dataloader_workers(damaged, context: str) -> None:
    out, manifest, bad = damaged
    keys, skipped = [], 0
    ranks = (0, 1) if context == "fork" else (0,)
    for rank in ranks:
        ds = VideoClipDataset(out, rank=rank, world_size=len(ranks), batch_size=2)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context=context)
        keys += [k for batch in loader for k in batch["key"]]
        skipped += ds.skipped.total  # updated by the worker processes
    assert sorted(keys) == sorted(set(all_keys(manifest)) - bad)
    assert skipped == len(bad)


def test_without_a_manifest_damage_is_reported_per_shard(damaged) -> None:
    out, manifest, bad = damaged
    ds = VideoClipDataset(sorted(str(p) for p in out.glob("clips-*.tar")))
    keys = [sample["key"] for sample in ds]
    assert sorted(keys) == sorted(set(all_keys(manifest)) - bad)
    # The cut sample and the garbled ones are counted; the 2 lost after the cut cannot be.
    assert ds.skipped.as_dict() == {"corrupt": 5, "missing": 0, "damaged_shards": 1, "total": 5}


def test_unreadable_and_missing_shards_count_their_samples(clean_shards, tmp_path: Path) -> None:
    src, manifest = clean_shards
    out = tmp_path / "broken"
    shutil.copytree(src, out)
    (out / manifest.shards[0].name).write_bytes(np.random.default_rng(0).bytes(5000))  # not a tar at all
    (out / manifest.shards[3].name).unlink()
    ds = VideoClipDataset(out, resampled=False)
    keys = [sample["key"] for sample in ds]
    assert sorted(keys) == all_keys(manifest)[CLIPS_PER_SHARD : 3 * CLIPS_PER_SHARD]
    assert ds.skipped.as_dict() == {"corrupt": 0, "missing": 12, "damaged_shards": 2, "total": 12}


def test_resampled_stream_over_only_broken_shards_fails_clearly(tmp_path: Path) -> None:
    broken = tmp_path / "x.tar"
    broken.write_bytes(b"not a tar file" * 100)
    ds = VideoClipDataset([str(broken)], resampled=True)
    with pytest.raises(ValueError, match="no sample could be read"):
        next(iter(ds))
