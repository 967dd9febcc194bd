"""A small CNN that recognises the digit in a moving-MNIST frame: the offline network
behind `msc_data.video_metrics` (recognition rate, identity consistency, a Fréchet
distance on its features in the manner of FVD).

It sees one frame of the demo geometry: one 28x28 digit on a 64x64 canvas, area-downsampled
to 32x32 (as `data.output_size: 32` does in msc-ray-train), gray, values in `[-1, 1]`.
Frames of other sizes are area-resized to 32x32 and RGB frames averaged to gray first
(`prepare_frames`). Trained only on 4,500 digits, evaluated on frames of 500 held-out ones
(the last 50 of each class, `classifier_digit_ids`); the shipped weights and their
training record live in `msc_data/weights/`. Retrain with `python -m msc_data.digit_classifier --out DIR`.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from msc_core.checkpoint import atomic_path, atomic_write_text, file_digest
from msc_data.moving_mnist import DIGIT_SIZE, MovingMNISTConfig, load_mnist_digits, render_moving_mnist, split_digit_ids

INPUT_SIZE = 32  # the classifier's frame side
FEATURE_DIM = 64  # penultimate features, used for Fréchet distances
NUM_CLASSES = 10
CROP_SIZE = 24  # the window around the digit the network sees (a digit is ~14 px at 32x32)
INK_THRESHOLD = -0.5  # pixels brighter than this are ink
WEIGHTS_DIR = Path(__file__).parent / "weights"
WEIGHTS_PATH = WEIGHTS_DIR / "digit_classifier.safetensors"
RETRAIN_COMMAND = "python -m msc_data.digit_classifier --out packages/msc-data/src/msc_data/weights"

# The demo geometry (services/ray-train/.../jobs/demo.yaml): one digit, 64x64 canvas, 1-2 px/frame.
CANVAS_SIZE = 64
DEMO_SPEED = (1.0, 2.0)


def prepare_frames(frames: torch.Tensor) -> torch.Tensor:
    """`(N, C, H, W)` frames in `[-1, 1]`, C in {1, 3} -> float32 `(N, 1, 32, 32)`:
    channels averaged to gray, then area-resized (a 2x2 mean for 64x64 frames)."""
    if frames.ndim != 4 or frames.shape[1] not in (1, 3):
        raise ValueError(f"frames must be (N, C, H, W) with C = 1 or 3, got shape {tuple(frames.shape)}")
    x = frames.float().mean(dim=1, keepdim=True)  # (N, 1, H, W)
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="area")
    return x


def ink_centroid(frames: torch.Tensor, threshold: float = INK_THRESHOLD) -> tuple[torch.Tensor, torch.Tensor]:
    """Centroid `(N, 2)` as (y, x) pixels of the bright pixels of gray `(N, H, W)` frames in
    `[-1, 1]`, each weighing `max(value - threshold, 0)`, and their total weight `(N,)`
    (0: no bright pixel, the centroid is then the frame's centre)."""
    weight = (frames.double() - threshold).clamp(min=0.0)  # (N, H, W)
    h, w = frames.shape[-2:]
    mass = weight.sum(dim=(1, 2))
    ys = torch.arange(h, dtype=torch.float64, device=frames.device)
    xs = torch.arange(w, dtype=torch.float64, device=frames.device)
    safe = mass.clamp(min=1e-12)
    centroid = torch.stack([(weight.sum(2) * ys).sum(1) / safe, (weight.sum(1) * xs).sum(1) / safe], dim=1)
    centre = torch.tensor([(h - 1) / 2, (w - 1) / 2], dtype=torch.float64, device=frames.device)
    return torch.where(mass[:, None] > 0, centroid, centre), mass


def crop_on_ink(frames: torch.Tensor, size: int = CROP_SIZE) -> torch.Tensor:
    """`(N, 1, H, W)` frames -> `(N, 1, size, size)` windows centred (to the pixel) on the
    ink centroid, padded with background (-1): MNIST's own centring by centre of mass."""
    n, _, h, w = frames.shape
    centroid, _ = ink_centroid(frames[:, 0])
    top_left = (centroid - (size - 1) / 2).round().long() + size  # in the padded frame
    padded = F.pad(frames, (size, size, size, size), value=-1.0)  # (N, 1, H + 2s, W + 2s)
    offsets = torch.arange(size, device=frames.device)
    rows = (top_left[:, 0, None] + offsets)[:, :, None]  # (N, size, 1)
    cols = (top_left[:, 1, None] + offsets)[:, None, :]  # (N, 1, size)
    return padded[torch.arange(n, device=frames.device)[:, None, None], 0, rows, cols].unsqueeze(1)


# --------------------------------------------------------------------------- model


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 conv -> batch norm -> ReLU -> 2x2 max pool (halves the side)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True), nn.MaxPool2d(2)
    )


class DigitClassifier(nn.Module):
    """32x32 gray frame -> 10 digit logits; `features` is the 64-d penultimate vector.

    The frame is first cropped to 24x24 around its ink centroid (`crop_on_ink`), so the
    answer does not depend on where the digit is; then three conv blocks (32, 64, 128
    channels; 24 -> 12 -> 6 -> 3) and a linear layer to the features.
    """

    def __init__(self, widths: tuple[int, int, int] = (32, 64, 128), feature_dim: int = FEATURE_DIM) -> None:
        super().__init__()
        self.widths, self.feature_dim = tuple(widths), feature_dim
        self.backbone = nn.Sequential(conv_block(1, widths[0]), conv_block(widths[0], widths[1]),
                                      conv_block(widths[1], widths[2]))
        side = CROP_SIZE // 8
        self.embed = nn.Linear(widths[2] * side * side, feature_dim)
        self.head = nn.Linear(feature_dim, NUM_CLASSES)

    def features(self, frames: torch.Tensor) -> torch.Tensor:
        """`(N, C, H, W)` frames in `[-1, 1]` -> `(N, 64)` penultimate features, taken before
        the ReLU: after it a third of them are 0 on every digit, and their covariance singular."""
        x = crop_on_ink(prepare_frames(frames))  # (N, 1, 24, 24)
        x = self.backbone(x)  # (N, 128, 3, 3)
        return self.embed(x.flatten(1))  # (N, 64)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """`(N, C, H, W)` frames in `[-1, 1]` -> `(N, 10)` logits."""
        return self.head(F.relu(self.features(frames)))


# --------------------------------------------------------------------------- data


def classifier_digit_ids(split: Literal["train", "test"]) -> np.ndarray:
    """Digit ids the classifier trains on (`train`) and is evaluated on (`test`): moving
    MNIST's own split (`moving_mnist.split_digit_ids`: the last 50 digits of each class held
    out, 500 test and 4,500 train, every class in both)."""
    if split not in ("train", "test"):
        raise ValueError(f"unknown classifier split {split!r}; valid: 'train', 'test'")
    return split_digit_ids(split)


def render_digit_clips(
    split: Literal["train", "test"], seed: int, num_clips: int, frames: int = 8, first_index: int = 0,
    speed: tuple[float, float] = DEMO_SPEED, size: int = CANVAS_SIZE,
) -> tuple[np.ndarray, np.ndarray]:
    """Moving-MNIST clips of one digit drawn from `classifier_digit_ids(split)`: uint8
    `(num_clips, frames, size, size)` canvases and int64 labels `(num_clips,)`.

    Clip `i` moves exactly as `render_moving_mnist(config, seed, first_index + i)` (one
    digit, `speed` px/frame, bouncing), with its digit swapped for one of `split`.
    """
    if num_clips < 1 or frames < 1:
        raise ValueError(f"num_clips and frames must be >= 1, got num_clips={num_clips}, frames={frames}")
    images, all_labels = load_mnist_digits()
    pool = classifier_digit_ids(split)
    config = MovingMNISTConfig(frames=frames, size=size, num_digits=1, speed_min=speed[0], speed_max=speed[1])
    canvases = np.zeros((num_clips, frames, size, size), dtype=np.uint8)
    labels = np.empty(num_clips, dtype=np.int64)
    for i in range(num_clips):
        index = first_index + i
        clip = render_moving_mnist(config, seed, index)
        glyph = images[clip.digit_ids[0]]
        top, left = np.argmax(glyph.any(axis=1)), np.argmax(glyph.any(axis=0))  # first inked row / column
        digit = int(np.random.default_rng([seed, index, 1]).choice(pool))
        labels[i] = all_labels[digit]
        for t, frame in enumerate(clip.frames):  # a lone digit: its ink box gives its position
            y = int(np.argmax(frame.any(axis=1))) - top
            x = int(np.argmax(frame.any(axis=0))) - left
            canvases[i, t, y : y + DIGIT_SIZE, x : x + DIGIT_SIZE] = images[digit]
    return canvases, labels


def canvases_to_frames(canvases: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 canvases `(..., 64, 64)` -> the classifier's float32 frames `(N, 1, 32, 32)` in `[-1, 1]`."""
    x = torch.as_tensor(canvases).reshape(-1, 1, *canvases.shape[-2:]).float() / 127.5 - 1.0
    return prepare_frames(x)


def render_digit_frames(
    split: Literal["train", "test"], seed: int, num_clips: int, frames: int = 8, first_index: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every frame of `render_digit_clips(split, seed, num_clips, frames, first_index)` as the
    classifier sees it: float32 `(num_clips * frames, 1, 32, 32)` in `[-1, 1]`, int64 labels."""
    canvases, labels = render_digit_clips(split, seed, num_clips, frames, first_index)
    return canvases_to_frames(canvases), torch.from_numpy(labels).repeat_interleave(frames)


@dataclass(frozen=True)
class Augmentation:
    """Handwriting variation added to each training canvas before it is downsampled
    (measured: elastic distortion and stroke-width jitter did not help in this budget)."""

    degrees: float = 12.0  # rotation in +-degrees
    scale: float = 0.12  # size factor in 1 +- scale
    shear: float = 0.15  # horizontal shear (slant) in +-shear


def augment_canvases(canvases: torch.Tensor, generator: torch.Generator, aug: Augmentation) -> torch.Tensor:
    """uint8 canvases `(N, S, S)` -> distorted float32 frames `(N, 1, 32, 32)` in `[-1, 1]`:
    a random rotation, scaling and shear about the ink centroid (so the digit stays where
    the clip put it; bilinear), then the usual area downsampling."""
    n, h, w = canvases.shape
    x = canvases.float().unsqueeze(1) / 255.0  # (N, 1, S, S), ink > 0 on a 0 background
    centroid, _ = ink_centroid(x[:, 0] * 2.0 - 1.0, threshold=-1.0)  # (N, 2) pixels
    cy, cx = (centroid[:, 0] * 2 / (h - 1) - 1).float(), (centroid[:, 1] * 2 / (w - 1) - 1).float()  # in [-1, 1]

    def uniform(limit: float) -> torch.Tensor:
        return (torch.rand(n, generator=generator) * 2 - 1) * limit

    angle, s, k = uniform(math.radians(aug.degrees)), 1.0 + uniform(aug.scale), uniform(aug.shear)
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    # output point p samples input point c + A (p - c), A = rotation / scale @ shear
    a00, a01, a10, a11 = cos, cos * k - sin, sin, sin * k + cos
    theta = torch.stack([torch.stack([a00, a01, cx - a00 * cx - a01 * cy], 1),
                         torch.stack([a10, a11, cy - a10 * cx - a11 * cy], 1)], 1)  # (N, 2, 3)
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=True)  # (N, S, S, 2)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return prepare_frames(x * 2.0 - 1.0)


# --------------------------------------------------------------------------- training

EVAL_SEED = 12345  # the held-out clips of the training record
EVAL_FRAMES = 2  # frames per held-out clip in the training record


@torch.no_grad()
def evaluate_digit_classifier(
    model: DigitClassifier, split: Literal["train", "test"] = "test", num_clips: int = 1000, frames: int = 2,
    seed: int = EVAL_SEED, batch_size: int = 500,
) -> float:
    """Accuracy on every frame of `num_clips` demo-geometry clips of `split` (default: 2,000
    frames of about 430 of the 500 held-out digits)."""
    x, y = render_digit_frames(split, seed, num_clips, frames)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = sum(int((model(x[i : i + batch_size].to(device)).argmax(1).cpu() == y[i : i + batch_size]).sum())
                  for i in range(0, len(x), batch_size))
    model.train(was_training)
    return correct / len(x)


DEFAULT_EPOCHS = 10
DEFAULT_CLIPS_PER_EPOCH = 12000


def train_digit_classifier(
    seed: int = 0,
    epochs: int = DEFAULT_EPOCHS,
    clips_per_epoch: int = DEFAULT_CLIPS_PER_EPOCH,
    batch_size: int = 128,
    lr: float = 3e-3,
    augmentation: Augmentation = Augmentation(),
    eval_clips: int = 1000,
    log: bool = False,
) -> tuple[DigitClassifier, dict[str, Any]]:
    """Train a `DigitClassifier` on frames of `train` digits only; return it (eval mode) and
    its training record (held-out accuracy, seed, epochs, wall time, torch version).

    An epoch is one frame of each of `clips_per_epoch` fresh clips (clip indices continue),
    so no frame is seen twice; every canvas is distorted (`augment_canvases`); AdamW with a
    one-cycle learning rate. About 100 s on one thread of a 2-core CPU.
    """
    load_average = os.getloadavg()[0]  # the machine this is measured on is shared
    start = time.perf_counter()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = DigitClassifier().to(memory_format=torch.channels_last)  # ~1.5x faster convolutions on CPU
    steps_per_epoch = math.ceil(clips_per_epoch / batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch)
    model.train()
    for epoch in range(epochs):
        canvases, labels = render_digit_clips("train", seed, clips_per_epoch, frames=1, first_index=epoch * clips_per_epoch)
        x, y = torch.from_numpy(canvases[:, 0]), torch.from_numpy(labels)  # (N, 64, 64), (N,)
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for i in range(0, len(x), batch_size):
            idx = order[i : i + batch_size]
            loss = F.cross_entropy(model(augment_canvases(x[idx], generator, augmentation)), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(idx)
        if log:
            print(f"epoch {epoch + 1}/{epochs}: loss {total / len(x):.4f} ({time.perf_counter() - start:.0f} s)", flush=True)
    model.eval()
    train_time = time.perf_counter() - start
    accuracy = evaluate_digit_classifier(model, "test", num_clips=eval_clips, frames=EVAL_FRAMES)
    record = {
        "test_accuracy": accuracy,
        "test_frames": eval_clips * EVAL_FRAMES,
        "test_seed": EVAL_SEED,
        "seed": seed,
        "epochs": epochs,
        "clips_per_epoch": clips_per_epoch,
        "batch_size": batch_size,
        "lr": lr,
        "augmentation": asdict(augmentation),
        "train_wall_time_s": round(train_time, 1),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": round(load_average, 2),
        "torch_version": torch.__version__,
        "widths": list(model.widths),
        "feature_dim": model.feature_dim,
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }
    return model, record


def save_digit_classifier(model: DigitClassifier, record: dict[str, Any], out: str | Path) -> Path:
    """Write `digit_classifier.safetensors` and then `digit_classifier.json` (the record plus
    the weights' size and SHA-256) into `out`, each atomically."""
    weights = Path(out) / WEIGHTS_PATH.name
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(weights) as tmp:
        save_file(state, str(tmp))
        tmp.chmod(0o644)  # safetensors writes 0600; the file ships in the wheel for every user
    digest = file_digest(weights)
    record = {**record, "file_bytes": digest["bytes"], "sha256": digest["sha256"]}
    atomic_write_text(weights.with_suffix(".json"), json.dumps(record, indent=2) + "\n")
    return weights


# --------------------------------------------------------------------------- loading


def load_digit_classifier(device: str | torch.device = "cpu", weights: str | Path | None = None) -> DigitClassifier:
    """The shipped classifier (or the one at `weights`), in eval mode on `device`.

    Cached per (device, path): do not train or modify the returned module. The file's
    SHA-256 must match the one in the `.json` record next to it.
    """
    path = Path(weights).resolve() if weights is not None else WEIGHTS_PATH
    return _load_cached(str(torch.device(device)), str(path))


@functools.lru_cache(maxsize=8)
def _load_cached(device: str, path_str: str) -> DigitClassifier:
    path = Path(path_str)
    record_path = path.with_suffix(".json")
    for p in (path, record_path):
        if not p.is_file():
            raise FileNotFoundError(f"digit classifier file {p} is missing; reinstall msc-data or retrain: {RETRAIN_COMMAND}")
    try:
        record = json.loads(record_path.read_text())
        expected = record["sha256"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{record_path} is not a digit-classifier record with a 'sha256' field ({e})") from e
    actual = file_digest(path)["sha256"]
    if actual != expected:
        raise ValueError(f"{path} has SHA-256 {actual} but {record_path} records {expected}: the weights are corrupt "
                         f"or do not belong to this record; reinstall msc-data or retrain: {RETRAIN_COMMAND}")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path} is not a readable safetensors file ({e})") from e
    model = DigitClassifier(widths=tuple(record.get("widths", (32, 64, 128))), feature_dim=record.get("feature_dim", FEATURE_DIM))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{path} does not hold DigitClassifier weights: {e}") from e
    model.requires_grad_(False)
    return model.eval().to(device)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m msc_data.digit_classifier",
                                     description="Train the moving-MNIST digit classifier and write its weights + record.")
    parser.add_argument("--out", required=True, help="directory for digit_classifier.safetensors and .json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--clips-per-epoch", type=int, default=DEFAULT_CLIPS_PER_EPOCH)
    parser.add_argument("--eval-clips", type=int, default=1000, help="held-out clips (x 2 frames) to measure on")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the record is for 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, record = train_digit_classifier(seed=args.seed, epochs=args.epochs, clips_per_epoch=args.clips_per_epoch,
                                           eval_clips=args.eval_clips, log=True)
    path = save_digit_classifier(model, record, args.out)
    print(json.dumps({"weights": str(path), **json.loads(path.with_suffix(".json").read_text())}))


if __name__ == "__main__":
    main()
