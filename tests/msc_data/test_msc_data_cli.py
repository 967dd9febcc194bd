"""`python -m msc_data.cli` (the `msc-data` command): build, info, size parsing."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from msc_data import MovingMNIST, MovingMNISTConfig, VideoClipDataset, load_manifest
from msc_data.cli import main, parse_size


def test_build_moving_mnist_shards_equal_the_on_the_fly_dataset(tmp_path: Path, capsys) -> None:
    out = tmp_path / "mm"
    code = main(["build", "moving-mnist", str(out), "--num-clips", "6", "--frames", "5", "--size", "32",
                 "--digits", "1", "--seed", "4", "--split", "test", "--clips-per-shard", "4", "--workers", "1", "--quiet"])
    assert code == 0
    assert capsys.readouterr().out.strip() == f"6 clips in 2 shards -> {out}"
    manifest = load_manifest(out)
    assert manifest.build.moving_mnist.split == "test" and manifest.sources[0].source_id == "moving-mnist/test"
    # The shards hold exactly the clips MovingMNIST generates on the fly for the same seed.
    config = MovingMNISTConfig(frames=5, size=32, num_digits=1, split="test")
    live = {s["index"]: s for s in MovingMNIST(config, seed=4, num_clips=6)}
    for sample in VideoClipDataset(out):
        index = int(sample["key"].split("-")[1])
        torch.testing.assert_close(sample["video"], live[index]["video"], rtol=0, atol=0)
        assert sample["caption"] == live[index]["caption"]
        assert sample["motion"] == pytest.approx(live[index]["motion"], rel=1e-12)
    assert main(["info", str(out)]) == 0
    assert capsys.readouterr().out.startswith("clips: 6 x 5x32x32 (npy.gz) at 8.0 fps in 2 shards")


def test_module_entry_point_reports_errors_without_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "msc_data.cli", "info", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"msc-data: error: no shard manifest at {tmp_path / 'manifest.json'} " \
        "(expected a manifest.json written by msc-data)"


def test_parse_size() -> None:
    assert parse_size("256MB") == 256_000_000
    assert parse_size("1GiB") == 2**30
    assert parse_size("1.5kb") == 1500
    assert parse_size("4096") == 4096
    with pytest.raises(argparse.ArgumentTypeError, match="invalid size '12 parsecs'"):
        parse_size("12 parsecs")


def test_bad_settings_are_reported_by_field(tmp_path: Path, capsys) -> None:
    code = main(["build", "moving-mnist", str(tmp_path), "--frames", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "frames" in err and "greater than or equal to 2" in err


def test_msc_data_through_the_msc_console_script_with_relative_paths(tmp_path: Path) -> None:
    """`msc data build` / `msc data info` as a user types them, from a working directory of
    its own: the relative output folder lands there."""
    msc = Path(sys.executable).parent / "msc"
    build = subprocess.run(
        [str(msc), "data", "build", "moving-mnist", "clips", "--num-clips", "3", "--frames", "4", "--size", "32",
         "--digits", "1", "--workers", "1", "--no-progress"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr
    assert build.stdout.strip() == "3 clips in 1 shards -> clips"
    assert load_manifest(tmp_path / "clips").num_clips == 3
    info = subprocess.run([str(msc), "data", "info", "clips"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert info.returncode == 0 and info.stdout.startswith("clips: 3 x 4x32x32 (npy.gz)")
