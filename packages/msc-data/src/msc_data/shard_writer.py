"""`msc data build`: video files (or a bundled source) -> webdataset clip shards.

Pipeline per source video (DESIGN.md, "Data"; motion score as NOVA Sec. 3.2):
decode with PyAV -> resample to `fps` -> resize the short side to `size` and center-crop
-> cut clips of `frames` frames every `stride` frames -> optical-flow motion score ->
encode (`clip_format`) with the caption from a sidecar `<video>.txt` / `<video>.json`.
Workers (a spawn pool) process whole videos; the main process writes their clips in a
fixed order with `webdataset.ShardWriter`, so the shards are identical for any number of
workers. After each finished shard the manifest is rewritten; re-running the same build
keeps the verified shards and continues after the last one.

Sources: a folder (searched recursively), one video file, or the named bundled sources
`moving-mnist` and `sample-videos`.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from tqdm import tqdm
from webdataset import ShardWriter

from msc_data.clip_format import make_clip_sample
from msc_data.manifest import (
    CLIP_SHARD_PATTERN,
    MANIFEST_NAME,
    ClipBuildConfig,
    ClipManifest,
    ShardInfo,
    SkippedFile,
    SourceEntry,
    load_manifest,
    save_manifest,
    shard_info,
    verified_shard_prefix,
)
from msc_data.clip_cutting import ClipCutter
from msc_data.motion import motion_score
from msc_data.moving_mnist import render_moving_mnist
from msc_data.sample_videos import sample_video_caption, sample_video_paths
from msc_data.video_io import VIDEO_EXTENSIONS, VideoDecodeError, iter_video_frames, native_frame_rate

NAMED_SOURCES = ("moving-mnist", "sample-videos")
CAPTION_EXTENSIONS = (".txt", ".json")
MNIST_CHUNK = 64  # moving-MNIST clips per worker task


@dataclass(frozen=True)
class _Item:
    """One unit of the source: a video file, or the moving-MNIST stream."""

    index: int
    kind: str  # "video" | "moving-mnist"
    path: str
    source_id: str
    caption_file: str | None = None
    fixed_caption: str | None = None


@dataclass(frozen=True)
class _Task:
    item: _Item
    start_clip: int  # clips before this index were written by an earlier run
    stop_clip: int | None  # moving-MNIST chunks only


@dataclass
class _TaskResult:
    item_index: int
    samples: list[dict[str, Any]] = field(default_factory=list)
    clip_indices: list[int] = field(default_factory=list)
    entry: SourceEntry | None = None
    skipped: SkippedFile | None = None


# --------------------------------------------------------------------------- sources


def _read_caption(item: _Item) -> str:
    if item.fixed_caption is not None:
        return item.fixed_caption
    if item.caption_file is None:
        return ""
    path = Path(item.caption_file)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"caption file {path} cannot be read ({type(err).__name__}: {err})") from None
    if path.suffix == ".txt":
        return text.strip()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"caption file {path} is not valid JSON ({err})") from None
    caption = data.get("caption", data.get("text")) if isinstance(data, dict) else None
    if not isinstance(caption, str):
        raise ValueError(f'caption file {path} must be a JSON object with a string "caption" (or "text") field')
    return caption.strip()


def _list_folder(root: Path, out: Path) -> tuple[list[_Item], list[SkippedFile], str]:
    """Video items under `root` (sorted), other files as skipped, and a fingerprint."""
    files: list[Path] = []
    out_resolved = out.resolve()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and (here / d).resolve() != out_resolved)
        files.extend(here / f for f in sorted(filenames) if not f.startswith("."))
    videos = [f for f in files if f.suffix.lower() in VIDEO_EXTENSIONS]
    video_stems = {f.with_suffix("") for f in videos}
    items, skipped = [], []
    digest = hashlib.sha256()
    for f in files:
        rel = f.relative_to(root).as_posix()
        if f.suffix.lower() in VIDEO_EXTENSIONS:
            caption = next((str(f.with_suffix(e)) for e in CAPTION_EXTENSIONS if f.with_suffix(e).is_file()), None)
            items.append(_Item(len(items), "video", str(f), rel, caption_file=caption))
            size = f.stat().st_size if f.exists() else -1
            digest.update(f"{rel}\0{size}\n".encode())
        elif not (f.suffix.lower() in CAPTION_EXTENSIONS and f.with_suffix("") in video_stems):
            skipped.append(SkippedFile(
                path=str(f),
                reason=f"not a video file (extension {f.suffix or '(none)'!r}; video extensions: "
                f"{', '.join(sorted(VIDEO_EXTENSIONS))})",
            ))
    return items, skipped, digest.hexdigest()


def _resolve_source(source: str | Path, out: Path, config: ClipBuildConfig) -> tuple[str, list[_Item], list[SkippedFile], str]:
    """`(source string, items, skipped files, fingerprint)` for SRC."""
    name = str(source)
    if name == "moving-mnist":
        mm = config.moving_mnist_config()
        item = _Item(0, "moving-mnist", "moving-mnist", f"moving-mnist/{mm.split}")
        return name, [item], [], hashlib.sha256(mm.to_json().encode()).hexdigest()
    if name == "sample-videos":
        paths = sample_video_paths()
        items = [
            _Item(i, "video", str(p), f"sample-videos/{p.name}", fixed_caption=sample_video_caption(p))
            for i, p in enumerate(paths)
        ]
        digest = hashlib.sha256("".join(f"{p.name}\0{p.stat().st_size}\n" for p in paths).encode())
        return name, items, [], digest.hexdigest()
    path = Path(source)
    if not path.exists() and not path.is_symlink():
        raise FileNotFoundError(
            f"source {name!r} does not exist; give a folder of videos, a video file, "
            f"or a named source ({', '.join(NAMED_SOURCES)})"
        )
    if path.is_dir():
        items, skipped, fingerprint = _list_folder(path, out)
        if not items:
            others = f"; {len(skipped)} other file(s) ignored, e.g. {skipped[0].path}" if skipped else " (it is empty)"
            raise ValueError(
                f"no video files found in {path}{others}; video extensions: {', '.join(sorted(VIDEO_EXTENSIONS))}"
            )
        return str(path.resolve()), items, skipped, fingerprint
    caption = next((str(path.with_suffix(e)) for e in CAPTION_EXTENSIONS if path.with_suffix(e).is_file()), None)
    item = _Item(0, "video", str(path), path.name, caption_file=caption)
    size = path.stat().st_size if path.exists() else -1
    return str(path.resolve()), [item], [], hashlib.sha256(f"{path.name}\0{size}".encode()).hexdigest()


# --------------------------------------------------------------------------- workers


def _clip_sample(item: _Item, clip_index: int, frames: Any, caption: str, fps: float, start: int,
                 motion: float, config: ClipBuildConfig) -> dict[str, Any]:
    return make_clip_sample(
        f"{item.index:06d}-{clip_index:06d}",
        frames,
        source=item.source_id,
        caption=caption,
        fps=fps,
        motion=motion,
        start_frame=start,
        clip_format=config.clip_format,
        crf=config.mp4_crf,
    )


def _video_task(task: _Task, config: ClipBuildConfig) -> _TaskResult:
    item = task.item
    result = _TaskResult(item.index)
    cutter = ClipCutter(config.frames, config.stride, config.motion_method, config.max_clips_per_video)
    try:
        caption = _read_caption(item)
        native = native_frame_rate(item.path)
        fps = config.fps or native
        if fps is None:
            raise VideoDecodeError(f"{item.path}: the stream has no frame rate; pass an explicit fps")
        for clip in cutter.cut(iter_video_frames(item.path, config.fps, config.size), task.start_clip):
            result.samples.append(
                _clip_sample(item, clip.index, clip.frames, caption, fps, clip.start_frame, clip.motion, config)
            )
            result.clip_indices.append(clip.index)
    except (VideoDecodeError, ValueError) as err:
        result.samples.clear()
        result.clip_indices.clear()
        result.skipped = SkippedFile(path=item.path, reason=str(err).removeprefix(f"{item.path}: "))
        return result
    if cutter.num_clips == 0:
        result.skipped = SkippedFile(
            path=item.path,
            reason=f"too short: {cutter.num_frames} frames at {fps:g} fps, a clip needs {config.frames}",
        )
        return result
    result.entry = SourceEntry(
        index=item.index, path=item.path, source_id=item.source_id, num_clips=cutter.num_clips,
        num_frames=cutter.num_frames, native_fps=native, caption=caption,
    )
    return result


def _moving_mnist_task(task: _Task, config: ClipBuildConfig) -> _TaskResult:
    mm = config.moving_mnist_config()
    item = task.item
    result = _TaskResult(item.index)
    stop = config.num_clips if task.stop_clip is None else task.stop_clip
    for index in range(task.start_clip, stop):
        clip = render_moving_mnist(mm, config.seed, index)
        frames = np.repeat(clip.frames[..., None], 3, axis=-1)  # (T, H, W, 3)
        motion = motion_score(clip.frames, config.motion_method)
        result.samples.append(_clip_sample(item, index, frames, clip.caption, mm.fps, 0, motion, config))
        result.clip_indices.append(index)
    return result


def _run_task(args: tuple[_Task, ClipBuildConfig]) -> _TaskResult:
    task, config = args
    if task.item.kind == "moving-mnist":
        return _moving_mnist_task(task, config)
    return _video_task(task, config)


def _init_worker() -> None:
    # One thread each: the pool already uses every core we were given.
    import cv2
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def _tasks(items: list[_Item], cursor: tuple[int, int], config: ClipBuildConfig) -> list[_Task]:
    item_index, clip_index = cursor
    tasks = []
    for item in items:
        if item.index < item_index:
            continue
        start = clip_index if item.index == item_index else 0
        if item.kind == "moving-mnist":
            for lo in range(start, config.num_clips, MNIST_CHUNK):
                tasks.append(_Task(item, lo, min(lo + MNIST_CHUNK, config.num_clips)))
        else:
            tasks.append(_Task(item, start, None))
    return tasks


def _run_tasks(tasks: list[_Task], config: ClipBuildConfig, workers: int) -> Iterator[_TaskResult]:
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            yield _run_task((task, config))
        return
    ctx = multiprocessing.get_context("spawn")  # fork after torch/cv2 threads start can deadlock
    with ctx.Pool(min(workers, len(tasks)), initializer=_init_worker) as pool:
        yield from pool.imap(_run_task, [(t, config) for t in tasks], chunksize=1)


# --------------------------------------------------------------------------- build


def _resume_state(out: Path, fresh: ClipManifest) -> tuple[list[ShardInfo], ClipManifest | None]:
    """Verified finished shards of an earlier run of the same build, and its manifest."""
    if not (out / MANIFEST_NAME).is_file():
        stray = sorted(out.glob("clips-*.tar"))
        if stray:
            raise ValueError(
                f"{out} holds clip shards ({stray[0].name}, ...) but no {MANIFEST_NAME}; "
                "build into an empty directory"
            )
        return [], None
    previous = load_manifest(out)
    if not isinstance(previous, ClipManifest):
        raise ValueError(f"{out} holds a {previous.kind} shard set, not clip shards; build into another directory")
    for name in ("source", "source_fingerprint", "build"):
        old, new = getattr(previous, name), getattr(fresh, name)
        if old != new:
            what = "the source files changed" if name == "source_fingerprint" else f"{name} differs"
            raise ValueError(
                f"{out} holds an earlier build with other settings ({what}: was {_short(old)}, now {_short(new)}); "
                "re-run with the same settings to resume it, or build into a new directory"
            )
    return verified_shard_prefix(previous.shards, out), previous


def _short(value: Any) -> str:
    text = value.to_json() if hasattr(value, "to_json") else repr(value)
    return text if len(text) < 300 else text[:300] + "..."


def build_shards(
    source: str | Path,
    out: str | Path,
    config: ClipBuildConfig = ClipBuildConfig(),
    *,
    workers: int = 1,
    progress: bool = True,
) -> ClipManifest:
    """Write clip shards of `source` into `out` (`clips-000000.tar`, ..., `manifest.json`).

    `source` is a folder of videos (recursive), one video file, `"moving-mnist"` or
    `"sample-videos"`. Files that cannot be used are listed in `manifest.skipped` with the
    reason. Re-running the same build resumes after the last verified shard.
    Raises ValueError when no clip could be made (after writing the manifest).
    """
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    source_str, items, listing_skipped, fingerprint = _resolve_source(source, out, config)
    fresh = ClipManifest(
        source=source_str, source_fingerprint=fingerprint, build=config, clip_format=config.clip_format,
        frames=config.frames, height=config.size, width=config.size,
    )
    finished, previous = _resume_state(out, fresh)
    if previous is not None and previous.complete and len(finished) == len(previous.shards):
        if progress:
            print(f"{out}: all {len(finished)} shards of this build are finished; nothing to do")
        return previous
    cursor = finished[-1].end if finished and finished[-1].end is not None else (0, 0)
    kept_sources = [s for s in (previous.sources if previous else []) if s.index < cursor[0]]
    kept_skipped = [s for s in (previous.skipped if previous else []) if s not in listing_skipped]
    index_of = {item.path: item.index for item in items}
    kept_skipped = [s for s in kept_skipped if index_of.get(s.path, -1) < cursor[0]]
    if source_str == "moving-mnist":  # one source entry for the whole generated stream
        mm = config.moving_mnist_config()
        kept_sources = [SourceEntry(
            index=0, path="moving-mnist", source_id=items[0].source_id, num_clips=config.num_clips,
            num_frames=config.num_clips * mm.frames, native_fps=mm.fps, caption="",
        )]

    state = _BuildState(out, fresh, list(finished), kept_sources, listing_skipped + kept_skipped)
    tasks = _tasks(items, cursor, config)
    pattern = os.path.join(str(out).replace("%", "%%"), CLIP_SHARD_PATTERN)
    writer = ShardWriter(
        pattern, maxcount=config.shard_max_clips, maxsize=config.shard_max_bytes, post=state.shard_done,
        start_shard=len(finished), verbose=0, encoder=False, mtime=0,
    )
    bar = tqdm(total=len(tasks), unit="task", desc=f"build {out.name}", disable=not progress)
    try:
        for result in _run_tasks(tasks, config, workers):
            state.add_result(result)
            for sample, clip_index in zip(result.samples, result.clip_indices):
                writer.write(sample)
                state.written(result.item_index, clip_index)
            bar.update(1)
            bar.set_postfix(clips=state.total_clips())
    except BaseException:
        state.interrupted = True  # the open shard may end in a half-written sample: drop it
        raise
    finally:
        writer.close()
        bar.close()
    manifest = state.save(complete=True)
    if manifest.num_clips == 0:
        reasons = "; ".join(f"{s.path}: {s.reason}" for s in manifest.skipped[:5])
        raise ValueError(f"no clips could be made from {source_str} ({len(manifest.skipped)} file(s) skipped: {reasons})")
    return manifest


class _BuildState:
    """Bookkeeping of a running build: finished shards, sources, skipped files."""

    def __init__(self, out: Path, fresh: ClipManifest, shards: list[ShardInfo],
                 sources: list[SourceEntry], skipped: list[SkippedFile]) -> None:
        self.out, self.fresh = out, fresh
        self.shards, self.sources, self.skipped = shards, sources, skipped
        self.in_shard = 0
        self.last: tuple[int, int] | None = None
        self.interrupted = False

    def add_result(self, result: _TaskResult) -> None:
        if result.entry is not None:
            self.sources = [s for s in self.sources if s.index != result.entry.index] + [result.entry]
        if result.skipped is not None:
            self.skipped.append(result.skipped)

    def written(self, item_index: int, clip_index: int) -> None:
        self.in_shard += 1
        self.last = (item_index, clip_index + 1)

    def total_clips(self) -> int:
        return sum(s.num_samples for s in self.shards) + self.in_shard

    def shard_done(self, fname: str) -> None:
        """ShardWriter's `post` hook: called when a shard file is closed."""
        path = Path(fname)
        if self.in_shard == 0 or self.interrupted:
            # Empty: ShardWriter opens a shard before knowing a clip will come. Interrupted: the
            # shard may end in a half-written sample; the resumed build rewrites it.
            path.unlink(missing_ok=True)
            return
        self.shards.append(shard_info(path, self.in_shard, self.last))
        self.in_shard = 0
        self.save(complete=False)

    def save(self, complete: bool) -> ClipManifest:
        manifest = self.fresh.model_copy(update=dict(
            num_clips=sum(s.num_samples for s in self.shards),
            shards=list(self.shards),
            sources=sorted(self.sources, key=lambda s: s.index),
            skipped=list(self.skipped),
            complete=complete,
        ))
        manifest = ClipManifest.from_dict(manifest.model_dump())  # re-validate
        save_manifest(manifest, self.out)
        return manifest
