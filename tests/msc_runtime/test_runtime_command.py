"""The `msc-runtime` command through its console script: relative paths, mp4 frames, errors.

Each run is the installed script in a subprocess, from a working directory of its own with
paths relative to it; the mp4 it writes (lossless, read back with PyAV) holds exactly the
frames of the runner's output. User mistakes exit with status 2 and one error line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from msc_runtime import CascadeRefiner, RefineSettings, VAEDecoder

CPU = ["CPUExecutionProvider"]
SCRIPT = Path(sys.executable).parent / "msc-runtime"


def msc_runtime(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    if not SCRIPT.exists():
        pytest.skip(f"no console script {SCRIPT} (msc-runtime is not installed in this environment)")
    return subprocess.run([str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture
def layout(tmp_path, fixtures):
    """tmp/{models,data,work,out}: the command runs in work/ with paths relative to it."""
    for name in ("models", "data", "work", "out"):
        (tmp_path / name).mkdir()
    shutil.copytree(fixtures, tmp_path / "models" / "cascade", ignore=shutil.ignore_patterns("*.npz", "*.json"))
    return tmp_path


def test_decode_writes_the_runners_frames_with_relative_paths(layout, expected):
    av = pytest.importorskip("av", reason="PyAV is the msc-runtime[video] extra")
    from msc_runtime.video import read_video, video_to_frames

    z = expected["vae_decode_latents"]
    np.save(layout / "data" / "latents.npy", z[0].astype(np.float16))  # one clip without the batch axis, float16
    run = msc_runtime("decode", "../data/latents.npy", "../out/clip.mp4", "--model", "../models/cascade/vae_decoder.onnx",
                      "--fps", "12", "--lossless", "--chunk-frames", "2", "--providers", "cpu", "--threads", "1",
                      cwd=layout / "work")
    assert run.returncode == 0, run.stderr
    assert "9 frames, 12 fps; vae3d_decoder on CPUExecutionProvider" in run.stdout
    frames, fps = read_video(layout / "out" / "clip.mp4")
    decoder = VAEDecoder(layout / "models" / "cascade" / "vae_decoder.onnx", providers=CPU)
    want = video_to_frames(decoder.decode(z.astype(np.float16).astype(np.float32))[0])
    assert fps == 12 and frames.shape == want.shape == (9, 16, 24, 3)
    assert np.array_equal(frames, want)
    assert av is not None


def test_decode_of_base_latents_with_a_cascade_folder(layout, expected, manifest):
    pytest.importorskip("av", reason="PyAV is the msc-runtime[video] extra")
    from msc_runtime.video import read_video, video_to_frames

    base = expected["refine_base"]
    np.save(layout / "data" / "base.npy", base)
    run = msc_runtime("decode", "../data/base.npy", "../out/x4.mp4", "--model", "../models/cascade", "--seed", "5",
                      "--lossless", "--providers", "cpu", "--vae-chunk-frames", "1", cwd=layout / "work")
    assert run.returncode == 0, run.stderr
    assert "cascade sr (3 steps, seed 5)" in run.stdout
    refiner = CascadeRefiner(layout / "models" / "cascade", RefineSettings(vae_chunk_frames=1), providers=CPU)
    frames, _ = read_video(layout / "out" / "x4.mp4")
    assert np.array_equal(frames, video_to_frames(refiner.decode(base, seed=5)[0]))


def test_upscale_writes_the_runners_frames(layout, expected, manifest, need):
    need("upscale_video")
    pytest.importorskip("av", reason="PyAV is the msc-runtime[video] extra")
    from msc_runtime.video import frames_to_video, read_video, video_to_frames, write_video

    case = manifest["cases"]["upscale"]
    source = video_to_frames(expected["upscale_input"][0])  # (5, 8, 8, 3)
    extra = np.concatenate([source, source[:2]])  # 7 frames: the command keeps 1 + 4k = 5
    write_video(layout / "data" / "in.mp4", extra, fps=10, lossless=True)
    flags = [f"--{name.replace('_size', '').replace('_', '-')}={value}" for name, value in case["settings"].items()]
    run = msc_runtime("upscale", "../data/in.mp4", "../out/up.mp4", "--model", "../models/cascade",
                      "--seed", str(case["seed"]), *flags, "--lossless", "--providers", "cpu", cwd=layout / "work")
    assert run.returncode == 0, run.stderr
    assert "dropped the last 2 frame(s)" in run.stderr
    refiner = CascadeRefiner(layout / "models" / "cascade", RefineSettings(**case["settings"]), providers=CPU)
    want = video_to_frames(refiner.upscale(frames_to_video(source), seed=case["seed"])[0])
    frames, fps = read_video(layout / "out" / "up.mp4")
    assert fps == 10 and frames.shape == want.shape == (5, 32, 32, 3)
    assert np.array_equal(frames, want)


@pytest.mark.parametrize(
    "args, message",
    [
        (["decode", "missing.npy", "o.mp4", "--model", "m"], "latents file"),
        (["decode", "z.npy", "o.mp4", "--model", "nowhere"], "model"),
        (["decode", "z.npy", "o.mp4", "--model", "{models}/cascade_step.onnx"],
         "holds a 'cascade_step' graph, expected 'vae3d_decoder' or 'arvae_decoder'"),
        (["decode", "bad.npy", "o.mp4", "--model", "{models}/vae_decoder.onnx"], "this decoder reads one clip"),
        (["decode", "z.npy", "o.mp4", "--model", "{models}/vae_decoder.onnx", "--normalized"],
         "carries no 'msc.latent_normalization'"),
        (["decode", "z.npy", "o.mp4", "--model", "{models}/vae_decoder.onnx", "--threads", "0"], "must be >= 1"),
        (["upscale", "z.npy", "o.mp4", "--model", "{models}/vae_decoder.onnx"], "cascade folder"),
        (["upscale", "z.npy", "nodir/o.mp4", "--model", "{models}"], "does not exist"),
        (["decode", "z.npy", "o.mp4", "--model", "{models}/vae_decoder.onnx", "--providers", "fpga"],
         "unknown ONNX Runtime provider 'fpga'"),
    ],
    ids=["no-latents", "no-model", "wrong-kind", "bad-shape", "not-normalized", "threads", "not-a-folder",
         "no-out-dir", "provider"],
)
def test_user_mistakes_exit_2_with_one_line(layout, expected, args, message):
    work = layout / "work"
    np.save(work / "z.npy", expected["vae_decode_latents"])
    np.save(work / "bad.npy", np.zeros((2, 2), np.float32))
    models = os.path.relpath(layout / "models" / "cascade", work)
    if "--providers" not in args:  # the workspace's onnxruntime-gpu would add its fallback warning on a CPU host
        args = [*args, "--providers", "cpu"]
    run = msc_runtime(*[a.format(models=models) for a in args], cwd=work)
    assert run.returncode == 2, (run.stdout, run.stderr)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("msc-runtime") and "error:" in lines[0], run.stderr
    assert message in lines[0]


def test_help_ends_with_an_example_and_version_names_onnxruntime(tmp_path):
    for args in (["--help"], ["decode", "--help"], ["upscale", "--help"]):
        run = msc_runtime(*args, cwd=tmp_path)
        assert run.returncode == 0
        lines = run.stdout.strip().splitlines()
        examples = lines[lines.index("example:") + 1:]
        assert examples and all(line.strip().startswith("msc-runtime ") for line in examples)
    run = msc_runtime("--version", cwd=tmp_path)
    assert run.returncode == 0 and run.stdout.startswith("msc-runtime 0.1.0; onnxruntime ")


def test_msc_dispatcher_runs_the_runtime_command(tmp_path):
    msc = Path(sys.executable).parent / "msc"
    if not msc.exists():
        pytest.skip("msc-core (the msc dispatcher) is not installed here")
    run = subprocess.run([str(msc), "runtime", "decode", "--help"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1].strip().startswith("msc runtime decode ")
    run = subprocess.run([str(msc), "runtime", "decode", "z.npy", "o.mp4", "--model", "m"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stderr.startswith("msc: error: latents file"), run.stderr
