"""Bad inputs at the public model entry points get a clear error, never a torch / ONNX Runtime traceback.

A table of cases (`msc_core.validation`'s input contract): each builds a tiny model once
per module, passes one bad input and expects a `ValueError` (or a subclass:
`OnnxModelError`, pydantic's `ValidationError`) or `FileNotFoundError` whose message names
the offending argument and value, raised from msc code, not from inside torch or
onnxruntime. Categories: wrong dtype (float64 / float16 are cast and work; uint8, int and
bool are refused), NaN, inf, wrong ndim, wrong channels, zero-sized axes, pixels in
0..255, timesteps out of range (-5, 10**6, float), wrong batch, bad GenerationRequest
fields, bad prefixes, NOVA diffusion_steps=0, ONNX files missing `msc.*` metadata, ONNX
runner inputs (zero-sized, wrong shape, NaN) and corrupt ONNX files. A few OK rows check
that the dtype policy's casts work.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from msc_ar.ardiffusion import ARDiffusion, ARDiffusionConfig
from msc_ar.nova import NOVA, NovaConfig
from msc_cascade.cascade_decoder import CascadeDecoder
from msc_cascade.cascade_model import CascadeConfig, CascadeModel
from msc_core.attention import MSCAttention, MSCAttentionConfig
from msc_core.checkpoint import save_pretrained
from msc_core.frame_causal_attention import FrameCausalAttention, FrameCausalAttentionConfig
from msc_core.interfaces import GenerationRequest, SchedulerParams
from msc_core.transformer import MSCTransformer, MSCTransformerConfig
from msc_core.validation import finite_checks, finite_checks_enabled
from msc_tokenizers import ARVAE, ARVAEConfig, CausalVAE3D, CausalVAE3DConfig

NAN, INF = float("nan"), float("inf")
TINY_DIT = dict(latent_channels=4, dim=32, depth=2, num_heads=2, window=2, chunk=2, timestep_frequency_dim=32)


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    """A valid [-1, 1] tensor."""
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def with_value(x: torch.Tensor, value: float) -> torch.Tensor:
    """`x` with one entry set to `value` (NaN, inf, 255)."""
    x = x.clone()
    x.view(-1)[x.numel() // 2] = value
    return x


def pixels_0_255(x: torch.Tensor) -> torch.Tensor:
    """The classic mistake: a [-1, 1] video as 0..255 floats."""
    return (x + 1) * 127.5


def uint8(x: torch.Tensor) -> torch.Tensor:
    return pixels_0_255(x).round().to(torch.uint8)


# -----------------------------------------------------------------------------
# tiny models, built once per module


class Models:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp

    @cached_property
    def attention(self) -> MSCAttention:
        config = MSCAttentionConfig(dim=16, num_heads=2, pool=2, window=3, temporal_window=2, temporal_stride=2,
                                    noise_embed_dim=8, tile_size=4, backend="tiled")
        return MSCAttention(config).eval()

    @cached_property
    def dense(self) -> FrameCausalAttention:
        return FrameCausalAttention(FrameCausalAttentionConfig(dim=16, num_heads=2)).eval()

    @cached_property
    def transformer(self) -> MSCTransformer:
        torch.manual_seed(0)
        return MSCTransformer(MSCTransformerConfig.preset("tiny", backend="tiled")).eval()

    @cached_property
    def ardiffusion(self) -> ARDiffusion:
        torch.manual_seed(0)
        return ARDiffusion(ARDiffusionConfig.preset("tiny", transformer=dict(backend="tiled"))).eval()

    @cached_property
    def ardiffusion_text(self) -> ARDiffusion:
        torch.manual_seed(0)
        config = ARDiffusionConfig.preset("tiny", text_embed_dim=6, transformer=dict(backend="tiled"))
        return ARDiffusion(config).eval()

    @cached_property
    def nova(self) -> NOVA:
        torch.manual_seed(0)
        return NOVA(NovaConfig.tiny()).eval()

    @cached_property
    def vae(self) -> CausalVAE3D:
        torch.manual_seed(0)
        return CausalVAE3D(CausalVAE3DConfig.preset("tiny")).eval()

    @cached_property
    def arvae(self) -> ARVAE:
        torch.manual_seed(0)
        return ARVAE(ARVAEConfig.preset("tiny")).eval()

    @cached_property
    def vae_dir(self) -> Path:
        directory = self.tmp / "tiny_vae"
        save_pretrained(self.vae, directory)
        return directory

    @cached_property
    def cascade(self) -> CascadeModel:
        torch.manual_seed(0)
        config = CascadeConfig(mode="sr", dit=TINY_DIT, vae_path=str(self.vae_dir), sample_steps=2,
                               num_frames=5, height=64, width=64)
        return CascadeModel(config).eval()

    # ONNX: tiny hand-written graphs (Identity nodes) stamped with `msc.*` metadata, so the
    # runners load them in milliseconds; their checks run before ONNX Runtime is called

    @cached_property
    def onnx(self) -> Any:
        pytest.importorskip("onnxruntime", reason="ONNX Runtime is the msc-cascade[onnx] extra")
        from msc_cascade import onnx_export

        return onnx_export

    def onnx_file(self, name: str, graph: str | None, drop: tuple[str, ...] = (), **changes: str) -> Path:
        """A valid `graph` file (Identity nodes) with its metadata minus `drop`, plus `changes`."""
        self.onnx  # noqa: B018 - skips without onnxruntime
        onnx = pytest.importorskip("onnx")
        from onnx import TensorProto, helper

        spec = self.vae.latent_spec.to_json()
        if graph == "arvae_decoder":
            c = self.arvae.config
            head_dim = c.width // c.num_heads
            inputs = [("latents", TensorProto.FLOAT, ["B", "T", c.num_latent_tokens, c.latent_dim])]
            inputs += [(f"cache_in_{i}", TensorProto.FLOAT, ["B", c.num_heads, "P", head_dim])
                       for i in range(2 * c.decoder_depth)]
            meta = {"msc.latent_spec": self.arvae.latent_spec.to_json(),
                    "msc.cache": json.dumps({"layers": c.decoder_depth, "heads": c.num_heads, "head_dim": head_dim,
                                             "tokens_per_frame": c.num_latent_tokens})}
        elif graph == "cascade_step":
            grid = ["B", 4, "T", "H", "W"]
            inputs = [("x_t", TensorProto.FLOAT, grid), ("base_up", TensorProto.FLOAT, grid),
                      ("t", TensorProto.INT64, ["B"]), ("t_next", TensorProto.INT64, ["B"])]
            meta = {"msc.config": self.cascade.config.to_json(), "msc.latent_spec": spec}
        else:  # vae3d_decoder (also for graph=None: a file without msc.graph)
            inputs = [("latents", TensorProto.FLOAT, ["B", 4, "T", "h", "w"]),
                      ("cache_in_0", TensorProto.FLOAT, ["B", 4, 2, "h", "w"])]
            meta = {"msc.latent_spec": spec,
                    "msc.cache": json.dumps([{"channels": 4, "frames": 2, "height_scale": 1, "width_scale": 1}])}
        n_out = 1 if graph == "cascade_step" else len(inputs)
        outputs = [("x_next" if graph == "cascade_step" else "video" if i == 0 else f"cache_out_{i - 1}", inputs[i])
                   for i in range(n_out)]
        nodes = [helper.make_node("Identity", [src[0]], [dst]) for dst, src in outputs]
        outputs_info = [helper.make_tensor_value_info(dst, src[1], src[2]) for dst, src in outputs]
        initializers = []
        if graph != "cascade_step":  # the decoders' `video` is [B, 3, T, H, W]: 3 channels made from the latents
            if graph == "arvae_decoder":  # [B, T, L, D] -> [B, 1, T, L, D] -> 3 copies on axis 1
                initializers.append(helper.make_tensor("axis1", TensorProto.INT64, [1], [1]))
                nodes[0] = helper.make_node("Unsqueeze", ["latents", "axis1"], ["latents_5d"])
                nodes.insert(1, helper.make_node("Concat", ["latents_5d"] * 3, ["video"], axis=1))
            else:  # [B, 4, T, h, w] -> its first 3 channels
                initializers += [helper.make_tensor(n, TensorProto.INT64, [1], [v])
                                 for n, v in (("start", 0), ("end", 3), ("axis1", 1))]
                nodes[0] = helper.make_node("Slice", ["latents", "start", "end", "axis1"], ["video"])
            outputs_info[0] = helper.make_tensor_value_info("video", TensorProto.FLOAT, ["B", 3, "T", "H", "W"])
        g = helper.make_graph(
            nodes, "identity",
            [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
            outputs_info,
            initializer=initializers,
        )
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
        model.ir_version = 9
        stamp = {"msc.graph": graph, **meta, **changes} if graph else {}
        for key, value in stamp.items():
            if key not in drop:
                entry = model.metadata_props.add()
                entry.key, entry.value = key, value
        onnx.checker.check_model(model)
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(path))
        return path

    @cached_property
    def onnx_vae(self) -> Any:
        return self.onnx.OnnxVAEDecoder(self.onnx_file("vae/vae_decoder.onnx", "vae3d_decoder"),
                                        providers=["CPUExecutionProvider"])

    @cached_property
    def onnx_arvae(self) -> Any:
        return self.onnx.OnnxARVAEDecoder(self.onnx_file("arvae/arvae_decoder.onnx", "arvae_decoder"),
                                          providers=["CPUExecutionProvider"])

    @cached_property
    def onnx_cascade(self) -> Any:
        directory = self.onnx_file("cascade/cascade_step.onnx", "cascade_step").parent
        self.onnx_file("cascade/vae_decoder.onnx", "vae3d_decoder")
        return self.onnx.OnnxCascadeDecoder(directory, providers=["CPUExecutionProvider"])

    def onnx_runner(self, kind: str, name: str, drop: tuple[str, ...] = (), **changes: str) -> Any:
        """Load a runner of `kind` on a file with some metadata dropped or changed."""
        if kind == "cascade_step":
            directory = self.onnx_file(f"{name}/cascade_step.onnx", kind, drop, **changes).parent
            self.onnx_file(f"{name}/vae_decoder.onnx", "vae3d_decoder")
            return self.onnx.OnnxCascadeDecoder(directory, providers=["CPUExecutionProvider"])
        runner = self.onnx.OnnxARVAEDecoder if kind == "arvae_decoder" else self.onnx.OnnxVAEDecoder
        return runner(self.onnx_file(f"{name}.onnx", kind, drop, **changes), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    return Models(tmp_path_factory.mktemp("bad_inputs"))


# -----------------------------------------------------------------------------
# the table


@dataclass(frozen=True)
class Case:
    surface: str
    id: str
    call: Callable[[Models], Any]
    match: str | None  # regex the message must contain; None: the call must succeed
    error: type[BaseException] = ValueError
    check: Callable[[Any], bool] | None = None  # for OK rows: the result is right


CASES: list[Case] = []


def bad(surface: str, id: str, call: Callable[[Models], Any], match: str, error: type[BaseException] = ValueError) -> None:
    CASES.append(Case(surface, id, call, match, error))


def ok(surface: str, id: str, call: Callable[[Models], Any], check: Callable[[Any], bool]) -> None:
    CASES.append(Case(surface, id, call, None, check=check))


def float32_finite(out: Any) -> bool:
    tensors = out if isinstance(out, (tuple, list)) else [out]
    tensors = [t for t in tensors if isinstance(t, torch.Tensor)]
    return bool(tensors) and all(t.dtype == torch.float32 and bool(torch.isfinite(t).all()) for t in tensors)


# --- MSCAttention / FrameCausalAttention / MSCTransformer ---------------------------------

X_ATT = rand(1, 3, 4, 4, 16)
N_ATT = torch.randint(0, 1000, (1, 3), generator=torch.Generator().manual_seed(0))


def att(x: Any = X_ATT, noise: Any = N_ATT) -> Callable[[Models], Any]:
    return lambda m: m.attention(x, noise)


S = "attention/transformer"
ok(S, "attn-float64-x-is-cast", att(X_ATT.double()), float32_finite)
ok(S, "attn-float16-x-is-cast", att(X_ATT.half()), float32_finite)
ok(S, "attn-float-noise-levels", att(noise=N_ATT.float() + 0.5), float32_finite)
bad(S, "attn-uint8-x", att(uint8(X_ATT)), r"x must be a floating-point tensor .*got torch\.uint8.*\.float\(\)")
bad(S, "attn-int64-x", att(X_ATT.long()), r"x must be a floating-point tensor .*got torch\.int64")
bad(S, "attn-bool-x", att(X_ATT > 0), r"x must be a floating-point tensor .*got torch\.bool")
bad(S, "attn-nan-x", att(with_value(X_ATT, NAN)), r"x contains NaN/inf \(1 of 768 values: 1 NaN")
bad(S, "attn-inf-x", att(with_value(X_ATT, INF)), r"x contains NaN/inf \(1 of 768 values: 0 NaN, 1 inf")
bad(S, "attn-4d-x", att(X_ATT[0]), r"x must be \(B, T, H, W, C=16\), got shape \(3, 4, 4, 16\)")
bad(S, "attn-wrong-channels", att(X_ATT[..., :8]), r"C=16\), got shape \(1, 3, 4, 4, 8\)")
bad(S, "attn-zero-frames", att(X_ATT[:, :0], N_ATT[:, :0]), r"at least one frame")
bad(S, "attn-list-x", att(X_ATT.tolist()), r"x must be a torch\.Tensor, got list")
bad(S, "attn-noise-minus-5", att(noise=torch.full((1, 3), -5)), r"noise must be integers in 0\.\.999, found torch\.int64 -5\.\.-5")
bad(S, "attn-noise-1e6", att(noise=torch.full((1, 3), 10**6)), r"noise must be integers in 0\.\.999, found torch\.int64 1000000\.\.1000000")
bad(S, "attn-float-noise-minus-5", att(noise=torch.full((1, 3), -5.0)), r"noise must be timesteps in \[0, 1000\), found -5\.\.-5")
bad(S, "attn-noise-nan", att(noise=torch.full((1, 3), NAN)), r"noise must be timesteps in \[0, 1000\), found nan")
bad(S, "attn-noise-bool", att(noise=N_ATT > 500), r"noise must be an integer or float tensor of timesteps in 0\.\.999, got torch\.bool")
bad(S, "attn-noise-wrong-batch", att(noise=N_ATT.expand(2, 3)), r"noise must be timesteps \(B, T\)=\(1, 3\).*got shape \(2, 3\)")
bad(S, "attn-noise-missing", att(noise=None), r"needs per-frame noise levels")
bad(S, "attn-noise-embedding-nan", att(noise=torch.full((1, 3, 8), NAN)), r"noise contains NaN/inf \(24 of 24")
bad(S, "attn-noise-embedding-wrong-dim", att(noise=torch.zeros(1, 3, 5)), r"noise_embed_dim=8")
ok(S, "dense-float64-x-is-cast", lambda m: m.dense(X_ATT.double()), float32_finite)
bad(S, "dense-uint8-x", lambda m: m.dense(uint8(X_ATT)), r"x must be a floating-point tensor .*torch\.uint8")
bad(S, "dense-nan-x", lambda m: m.dense(with_value(X_ATT, NAN)), r"x contains NaN/inf \(1 of 768")
bad(S, "dense-zero-batch", lambda m: m.dense(X_ATT[:0]), r"x has shape \(0, 3, 4, 4, 16\) with a zero-sized axis 0")

X_TF = rand(1, 4, 3, 8, 8)
T_TF = torch.randint(0, 1000, (1, 3), generator=torch.Generator().manual_seed(1))


def tf(x: Any = X_TF, t: Any = T_TF, **kw: Any) -> Callable[[Models], Any]:
    return lambda m: m.transformer(x, t, **kw)


ok(S, "transformer-float64-x-is-cast", tf(X_TF.double()), float32_finite)
ok(S, "transformer-bfloat16-x-is-cast", tf(X_TF.bfloat16()), float32_finite)
bad(S, "transformer-uint8-x", tf(uint8(X_TF)), r"x must be a floating-point tensor .*torch\.uint8")
bad(S, "transformer-int32-x", tf(X_TF.int()), r"x must be a floating-point tensor .*torch\.int32")
bad(S, "transformer-nan-x", tf(with_value(X_TF, NAN)), r"x contains NaN/inf \(1 of 768 values: 1 NaN")
bad(S, "transformer-inf-x", tf(with_value(X_TF, -INF)), r"x contains NaN/inf \(1 of 768 values: 0 NaN, 1 inf")
bad(S, "transformer-t-minus-5", tf(t=torch.full((1, 3), -5)), r"t must be integers in 0\.\.999, found torch\.int64 -5\.\.-5")
bad(S, "transformer-t-1e6", tf(t=torch.full((1, 3), 10**6)), r"t must be integers in 0\.\.999, found torch\.int64 1000000\.\.1000000")
bad(S, "transformer-t-float-out-of-range", tf(t=torch.full((1, 3), 1000.5)), r"t must be timesteps in \[0, 1000\), found 1000\.5")
bad(S, "transformer-t-nan", tf(t=torch.full((1, 3), NAN)), r"t must be timesteps in \[0, 1000\), found nan")
bad(S, "transformer-t-wrong-batch", tf(t=T_TF.expand(2, 3)), r"t must be per-frame timesteps \(B, T\)=\(1, 3\), got shape \(2, 3\)")
bad(S, "transformer-t-not-a-tensor", tf(t=[[1, 2, 3]]), r"t must be a torch\.Tensor, got list")
bad(S, "transformer-4d-x", tf(X_TF[0]), r"x must be \(B, C=4, T, H, W\), got shape \(4, 3, 8, 8\)")
bad(S, "transformer-wrong-channels", tf(X_TF[:, :3]), r"x must be \(B, C=4, T, H, W\), got shape \(1, 3, 3, 8, 8\)")
bad(S, "transformer-zero-batch", tf(X_TF[:0], T_TF[:0]), r"x has shape \(0, 4, 3, 8, 8\) with a zero-sized axis 0")
bad(S, "transformer-odd-height", tf(X_TF[..., :7, :]), r"height=7 is not divisible by patch size 2")
bad(S, "transformer-cond-without-cond-dim", tf(cond=torch.zeros(1, 8)), r"cond was given but the model has cond_dim=None")

# --- AR-Diffusion ----------------------------------------------------------------------

X_AR = rand(2, 4, 3, 8, 8, seed=2)
T_AR = torch.randint(-1, 1000, (2, 3), generator=torch.Generator().manual_seed(2))


def ar(x: Any = X_AR, t: Any = T_AR) -> Callable[[Models], Any]:
    return lambda m: m.ardiffusion(x, t)


def ar_loss(**batch: Any) -> Callable[[Models], Any]:
    return lambda m: m.ardiffusion.training_losses(batch, generator=torch.Generator().manual_seed(0))["loss"]


def ar_generate(text: bool = False, text_embedding: Any = None, **request: Any) -> Callable[[Models], Any]:
    def call(m: Models) -> Any:
        model = m.ardiffusion_text if text else m.ardiffusion
        base = dict(num_frames=2, num_steps=1, seed=0)
        return model.generate(GenerationRequest(**{**base, **request}), text_embedding=text_embedding)

    return call


PREFIX_AR = rand(1, 4, 1, 8, 8, seed=3)
S = "ardiffusion"
ok(S, "ar-float64-x-is-cast", ar(X_AR.double()), float32_finite)
ok(S, "ar-training-float64-video-is-cast", ar_loss(video=X_AR.double()), float32_finite)
ok(S, "ar-training-latents-have-no-range", ar_loss(latents=X_AR * 40), float32_finite)
ok(S, "ar-generate-float64-prefix-is-cast", ar_generate(prefix=PREFIX_AR.double()), float32_finite)
bad(S, "ar-uint8-x", ar(uint8(X_AR)), r"x must be a floating-point tensor .*torch\.uint8")
bad(S, "ar-int64-x", ar(X_AR.long()), r"x must be a floating-point tensor .*torch\.int64")
bad(S, "ar-nan-x", ar(with_value(X_AR, NAN)), r"x contains NaN/inf \(1 of 1536 values: 1 NaN")
bad(S, "ar-inf-x", ar(with_value(X_AR, INF)), r"x contains NaN/inf \(1 of 1536 values: 0 NaN, 1 inf")
bad(S, "ar-4d-x", ar(X_AR[0]), r"x must be a float tensor \[B, 4, T, 8, 8\] \(grid layout\), got torch\.float32 \(4, 3, 8, 8\)")
bad(S, "ar-wrong-channels", ar(X_AR[:, :3]), r"x must be a float tensor \[B, 4, T, 8, 8\].*\(2, 3, 3, 8, 8\)")
bad(S, "ar-wrong-frame-size", ar(X_AR[..., :4]), r"x must be a float tensor \[B, 4, T, 8, 8\].*\(2, 4, 3, 8, 4\)")
bad(S, "ar-zero-batch", ar(X_AR[:0], T_AR[:0]), r"x has shape \(0, 4, 3, 8, 8\) with a zero-sized axis 0")
bad(S, "ar-t-minus-5", ar(t=torch.full((2, 3), -5)), r"t must be integers in -1\.\.999 \(-1 = clean\), found torch\.int64 -5\.\.-5")
bad(S, "ar-t-1e6", ar(t=torch.full((2, 3), 10**6)), r"t must be integers in -1\.\.999 .*1000000\.\.1000000")
bad(S, "ar-t-float", ar(t=T_AR.float()), r"t must be an integer tensor of timesteps in -1\.\.999 .*torch\.float32; use \.long\(\)")
bad(S, "ar-t-bool", ar(t=T_AR > 0), r"t must be an integer tensor .*torch\.bool")
bad(S, "ar-t-wrong-batch", ar(t=T_AR[:1]), r"t must be per-frame timesteps \[B, T\]=\(2, 3\), got \(1, 3\)")
bad(S, "ar-training-video-0-255", ar_loss(video=pixels_0_255(X_AR)), r"batch\['video'\] values must lie in \[-1, 1\] \(tolerance 0\.001\), found .*videos are floats in \[-1, 1\]")
bad(S, "ar-training-video-uint8", ar_loss(video=uint8(X_AR)), r"batch\['video'\] must be a floating-point tensor .*videos are floats in \[-1, 1\]")
bad(S, "ar-training-video-nan", ar_loss(video=with_value(X_AR, NAN)), r"batch\['video'\] contains NaN/inf \(1 of 1536")
bad(S, "ar-training-latents-inf", ar_loss(latents=with_value(X_AR, INF)), r"batch\['latents'\] contains NaN/inf")
bad(S, "ar-training-no-video", ar_loss(frames=X_AR), r"exactly one of 'video' or 'latents'")
bad(S, "ar-training-video-wrong-channels", ar_loss(video=X_AR[:, :3]), r"batch\['video'\] must be a float tensor \[B, 4, T, 8, 8\]")
bad(S, "ar-generate-prefix-nan", ar_generate(prefix=with_value(PREFIX_AR, NAN)), r"request\.prefix contains NaN/inf \(1 of 256")
bad(S, "ar-generate-prefix-uint8", ar_generate(prefix=uint8(PREFIX_AR)), r"request\.prefix must be a floating-point tensor .*torch\.uint8")
bad(S, "ar-generate-prefix-wrong-shape", ar_generate(prefix=PREFIX_AR[:, :3]), r"request\.prefix must be a float tensor \[B, 4, T, 8, 8\]")
bad(S, "ar-generate-prefix-zero-frames", ar_generate(prefix=PREFIX_AR[:, :, :0]), r"request\.prefix has shape \(1, 4, 0, 8, 8\) with a zero-sized axis 2")
bad(S, "ar-generate-prefix-wrong-batch", ar_generate(prefix=PREFIX_AR, batch_size=2), r"request\.prefix has batch 1, but batch_size=2")
bad(S, "ar-generate-prefix-too-long", ar_generate(prefix=PREFIX_AR.expand(1, 4, 2, 8, 8)), r"must exceed the 2 prefix frames")
bad(S, "ar-request-num-frames-0", ar_generate(num_frames=0), r"num_frames\s+Input should be greater than or equal to 1")
bad(S, "ar-request-num-steps-0", ar_generate(num_steps=0), r"num_steps\s+Input should be greater than or equal to 1")
bad(S, "ar-request-negative-guidance", ar_generate(guidance_scale=-1.0), r"guidance_scale\s+Input should be greater than or equal to 0")
bad(S, "ar-request-prefix-numpy", ar_generate(prefix=PREFIX_AR.numpy()), r"(?s)prefix\s+Input should be an instance of Tensor.*input_type=ndarray")
bad(S, "ar-request-temperature-0", ar_generate(scheduler=dict(temperature=0.0)), r"temperature\s+Input should be greater than 0")
bad(S, "ar-request-class-label-unconditional", ar_generate(class_label=1), r"request\.class_label was given but this model is not class-conditional")
bad(S, "ar-request-offset-too-large", ar_generate(scheduler=SchedulerParams(offset=5)), r"offset must be an integer in 0\.\.")
bad(S, "ar-text-embedding-nan", ar_generate(True, torch.full((1, 6), NAN), prompt="a digit"), r"text_embedding contains NaN/inf \(6 of 6")
bad(S, "ar-text-embedding-int", ar_generate(True, torch.ones(1, 6, dtype=torch.long), prompt="a digit"), r"text_embedding must be a floating-point tensor .*torch\.int64")
bad(S, "ar-text-embedding-wrong-dim", ar_generate(True, torch.zeros(1, 5), prompt="a digit"), r"text_embedding must be \[B, text_embed_dim=6\]")

# --- NOVA --------------------------------------------------------------------------------

V_NOVA = rand(2, 3, 2, 8, 8, seed=4)


def nova_loss(**batch: Any) -> Callable[[Models], Any]:
    return lambda m: m.nova.training_losses(batch, generator=torch.Generator().manual_seed(0))["loss"]


def nova_generate(diffusion_steps: Any = 2, frames: bool = False, **request: Any) -> Callable[[Models], Any]:
    def call(m: Models) -> Any:
        req = GenerationRequest(**{**dict(num_frames=1, num_steps=2, seed=0), **request})
        if frames:
            return next(iter(m.nova.generate_frames(req, diffusion_steps=diffusion_steps)))
        return m.nova.generate(req, diffusion_steps=diffusion_steps)

    return call


S = "nova"
ok(S, "nova-training-float64-video-is-cast", nova_loss(video=V_NOVA.double()), float32_finite)
ok(S, "nova-generate-diffusion-steps-2", nova_generate(2), float32_finite)
bad(S, "nova-diffusion-steps-0", nova_generate(0), r"diffusion_steps must be an integer >= 1 or None for the default, got 0")
bad(S, "nova-diffusion-steps-negative", nova_generate(-3), r"diffusion_steps must be an integer >= 1 .*got -3")
bad(S, "nova-diffusion-steps-float", nova_generate(2.5), r"diffusion_steps must be an integer >= 1 .*got 2\.5")
bad(S, "nova-diffusion-steps-too-many", nova_generate(10**6), r"diffusion_steps=1000000 exceeds num_train_timesteps=1000")
bad(S, "nova-generate-frames-diffusion-steps-0", nova_generate(0, frames=True), r"diffusion_steps must be an integer >= 1")
bad(S, "nova-training-video-0-255", nova_loss(video=pixels_0_255(V_NOVA)), r"batch\['video'\] values must lie in \[-1, 1\] .*found .*videos are floats in \[-1, 1\]")
bad(S, "nova-training-video-uint8", nova_loss(video=uint8(V_NOVA)), r"batch\['video'\] must be a floating-point tensor .*torch\.uint8.*videos are floats")
bad(S, "nova-training-video-nan", nova_loss(video=with_value(V_NOVA, NAN)), r"batch\['video'\] contains NaN/inf \(1 of 768")
bad(S, "nova-training-video-inf", nova_loss(video=with_value(V_NOVA, INF)), r"batch\['video'\] contains NaN/inf .*1 inf")
bad(S, "nova-training-latents-nan", nova_loss(latents=with_value(V_NOVA, NAN)), r"batch\['latents'\] contains NaN/inf")
bad(S, "nova-training-wrong-channels", nova_loss(video=V_NOVA[:, :2]), r"batch\['video'\] must be \[B, 3, T, H, W\]")
bad(S, "nova-training-zero-batch", nova_loss(video=V_NOVA[:0]), r"batch\['video'\] has shape \(0, 3, 2, 8, 8\) with a zero-sized axis 0")
bad(S, "nova-training-motion-nan", nova_loss(video=V_NOVA, motion=torch.tensor([1.0, NAN])), r"motion contains NaN/inf \(1 of 2")
bad(S, "nova-training-fps-wrong-batch", nova_loss(video=V_NOVA, fps=torch.ones(3)), r"motion/fps must be one value or one per sample \(2\), got 3")
bad(S, "nova-training-captions-wrong-batch", nova_loss(video=V_NOVA, caption=["a"]), r"1 captions for a batch of 2")
bad(S, "nova-prefix-nan", nova_generate(num_frames=2, prefix=with_value(V_NOVA[:1, :, :1], NAN)), r"request\.prefix contains NaN/inf \(1 of 192")
bad(S, "nova-prefix-uint8", nova_generate(num_frames=2, prefix=uint8(V_NOVA[:1, :, :1])), r"request\.prefix must be a floating-point tensor .*torch\.uint8")
bad(S, "nova-prefix-wrong-channels", nova_generate(num_frames=2, prefix=V_NOVA[:1, :2, :1]), r"request\.prefix must be \[B, 3, T, H, W\]")
bad(S, "nova-prefix-zero-frames", nova_generate(num_frames=2, prefix=V_NOVA[:1, :, :0]), r"request\.prefix has shape \(1, 3, 0, 8, 8\) with a zero-sized axis 2")
bad(S, "nova-prefix-wrong-batch", nova_generate(num_frames=2, prefix=V_NOVA[:, :, :1]), r"prefix has batch 2, the request asks for 1")
bad(S, "nova-request-num-steps-too-many", nova_generate(num_steps=17), r"num_steps=17 must be in 1\.\.16")
bad(S, "nova-request-class-label", nova_generate(class_label=3), r"pass `prompt` instead of `class_label`")

# --- CausalVAE3D -------------------------------------------------------------------------

V_VAE = rand(1, 3, 5, 16, 16, seed=5)
Z_VAE = torch.randn(1, 4, 2, 2, 2, generator=torch.Generator().manual_seed(5))

S = "vae3d"
ok(S, "vae-encode-float64-is-cast", lambda m: m.vae.encode(V_VAE.double()), float32_finite)
ok(S, "vae-decode-float64-is-cast", lambda m: m.vae.decode(Z_VAE.double()), float32_finite)
ok(S, "vae-decode-chunk-float64-cache-is-cast",
   lambda m: m.vae.decode_chunk(Z_VAE[:, :, 1:], [c.double() for c in m.vae.decode_chunk(Z_VAE[:, :, :1])[1]]),
   lambda out: float32_finite(out[0]) and float32_finite(out[1]))
bad(S, "vae-encode-uint8", lambda m: m.vae.encode(uint8(V_VAE)), r"video must be a floating-point tensor .*torch\.uint8.*videos are floats in \[-1, 1\]")
bad(S, "vae-encode-int", lambda m: m.vae.encode(V_VAE.long()), r"video must be a floating-point tensor .*torch\.int64")
bad(S, "vae-encode-0-255", lambda m: m.vae.encode(pixels_0_255(V_VAE)), r"video values must lie in \[-1, 1\] \(tolerance 0\.001\), found .*\.\.2\d\d.*videos are floats in \[-1, 1\]")
bad(S, "vae-encode-slightly-out-of-range", lambda m: m.vae.encode(with_value(V_VAE, 1.01)), r"video values must lie in \[-1, 1\] .*found .*\.\.1\.01")
bad(S, "vae-encode-nan", lambda m: m.vae.encode(with_value(V_VAE, NAN)), r"video contains NaN/inf \(1 of 3840 values: 1 NaN")
bad(S, "vae-encode-inf", lambda m: m.vae.encode(with_value(V_VAE, INF)), r"video contains NaN/inf \(1 of 3840 values: 0 NaN, 1 inf")
bad(S, "vae-encode-4d", lambda m: m.vae.encode(V_VAE[0]), r"video must be \[B, 3, T, H, W\], got shape \(3, 5, 16, 16\)")
bad(S, "vae-encode-wrong-channels", lambda m: m.vae.encode(V_VAE[:, :1]), r"video must be \[B, 3, T, H, W\], got shape \(1, 1, 5, 16, 16\)")
bad(S, "vae-encode-zero-batch", lambda m: m.vae.encode(V_VAE[:0]), r"video has shape \(0, 3, 5, 16, 16\) with a zero-sized axis 0")
bad(S, "vae-encode-wrong-frames", lambda m: m.vae.encode(V_VAE[:, :, :4]), r"nearest valid lengths: 1 or 5")
bad(S, "vae-encode-chunk-0-255", lambda m: m.vae.encode_chunk(pixels_0_255(V_VAE)), r"video values must lie in \[-1, 1\]")
bad(S, "vae-encode-posterior-nan", lambda m: m.vae.encode_posterior(with_value(V_VAE, NAN)), r"video contains NaN/inf")
bad(S, "vae-encode-chunked-chunk-0", lambda m: m.vae.encode_chunked(V_VAE, 0), r"chunk_latent_frames must be an integer >= 1, got 0")
bad(S, "vae-decode-int", lambda m: m.vae.decode(Z_VAE.int()), r"latents must be a floating-point tensor .*torch\.int32")
bad(S, "vae-decode-nan", lambda m: m.vae.decode(with_value(Z_VAE, NAN)), r"latents contains NaN/inf \(1 of 32 values: 1 NaN")
bad(S, "vae-decode-wrong-channels", lambda m: m.vae.decode(Z_VAE[:, :3]), r"latents must be \[B, 4, T', h, w\], got shape \(1, 3, 2, 2, 2\)")
bad(S, "vae-decode-zero-frames", lambda m: m.vae.decode(Z_VAE[:, :, :0]), r"latents has shape \(1, 4, 0, 2, 2\) with a zero-sized axis 2")
bad(S, "vae-decode-chunk-inf", lambda m: m.vae.decode_chunk(with_value(Z_VAE, INF)), r"latents contains NaN/inf .*1 inf")
bad(S, "vae-decode-step-nan", lambda m: m.vae.decode_step(with_value(Z_VAE, NAN)), r"latents contains NaN/inf")
bad(S, "vae-decode-chunk-int-cache", lambda m: m.vae.decode_chunk(Z_VAE, [torch.zeros(1, 2, dtype=torch.long)]), r"cache\[0\] must be a floating-point tensor")
bad(S, "vae-decode-chunk-wrong-batch-cache",
    lambda m: m.vae.decode_chunk(Z_VAE, [c.expand(2, *c.shape[1:]) for c in m.vae.decode_chunk(Z_VAE)[1]]),
    r"cache state 0 has shape \(2, .*was the cache made for another batch size")
bad(S, "vae-decode-chunked-chunk-0", lambda m: m.vae.decode_chunked(Z_VAE, 0), r"chunk_latent_frames must be an integer >= 1, got 0")
bad(S, "vae-training-0-255", lambda m: m.vae.training_losses({"video": pixels_0_255(V_VAE)}), r"video values must lie in \[-1, 1\]")
bad(S, "vae-training-uint8", lambda m: m.vae.training_losses({"video": uint8(V_VAE)}), r"video must be a floating-point tensor .*videos are floats")

# --- ARVAE ----------------------------------------------------------------------------------

V_ARVAE = rand(1, 3, 2, 16, 16, seed=6)
Z_ARVAE = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(6))

S = "arvae"
ok(S, "arvae-encode-float16-is-cast", lambda m: m.arvae.encode(V_ARVAE.half()), float32_finite)
ok(S, "arvae-decode-float64-is-cast", lambda m: m.arvae.decode(Z_ARVAE.double()), float32_finite)
bad(S, "arvae-encode-uint8", lambda m: m.arvae.encode(uint8(V_ARVAE)), r"video must be a floating-point tensor .*torch\.uint8.*videos are floats")
bad(S, "arvae-encode-bool", lambda m: m.arvae.encode(V_ARVAE > 0), r"video must be a floating-point tensor .*torch\.bool")
bad(S, "arvae-encode-0-255", lambda m: m.arvae.encode(pixels_0_255(V_ARVAE)), r"video values must lie in \[-1, 1\] \(tolerance 0\.001\), found")
bad(S, "arvae-encode-nan", lambda m: m.arvae.encode(with_value(V_ARVAE, NAN)), r"video contains NaN/inf \(1 of 1536")
bad(S, "arvae-encode-posterior-inf", lambda m: m.arvae.encode_posterior(with_value(V_ARVAE, INF)), r"video contains NaN/inf .*1 inf")
bad(S, "arvae-encode-wrong-frame-size", lambda m: m.arvae.encode(V_ARVAE[..., :8, :8]), r"frame size 8x8 does not match this ARVAE's frame_size 16x16")
bad(S, "arvae-encode-zero-frames", lambda m: m.arvae.encode(V_ARVAE[:, :, :0]), r"video has shape \(1, 3, 0, 16, 16\) with a zero-sized axis 2")
bad(S, "arvae-decode-int", lambda m: m.arvae.decode(Z_ARVAE.long()), r"latents must be a floating-point tensor .*torch\.int64")
bad(S, "arvae-decode-nan", lambda m: m.arvae.decode(with_value(Z_ARVAE, NAN)), r"latents contains NaN/inf \(1 of 32")
bad(S, "arvae-decode-wrong-tokens", lambda m: m.arvae.decode(Z_ARVAE[:, :, :3]), r"latents must be \[B, T, L=4, D=4\], got shape \(1, 2, 3, 4\)")
bad(S, "arvae-decode-3d", lambda m: m.arvae.decode(Z_ARVAE[0]), r"latents must be \[B, T, L=4, D=4\], got shape \(2, 4, 4\)")
bad(S, "arvae-decode-zero-batch", lambda m: m.arvae.decode(Z_ARVAE[:0]), r"latents has shape \(0, 2, 4, 4\) with a zero-sized axis 0")
bad(S, "arvae-decode-chunk-cache-count", lambda m: m.arvae.decode_chunk(Z_ARVAE, [torch.zeros(1, 2, 0, 16)]), r"cache must hold 4 tensors, got 1")
bad(S, "arvae-decode-chunk-cache-shape", lambda m: m.arvae.decode_chunk(Z_ARVAE, [torch.zeros(1, 2, 3, 16)] * 4), r"cache\[0\] must be \[B=1, heads=2, P\*4, head_dim=16\] .*got shape \(1, 2, 3, 16\)")
bad(S, "arvae-decode-chunk-cache-batch", lambda m: m.arvae.decode_chunk(Z_ARVAE, [torch.zeros(2, 2, 4, 16)] * 4), r"cache\[0\] must be \[B=1, .*got shape \(2, 2, 4, 16\)")
bad(S, "arvae-decode-chunk-cache-int", lambda m: m.arvae.decode_chunk(Z_ARVAE, [torch.zeros(1, 2, 4, 16, dtype=torch.long)] * 4), r"cache\[0\] must be a floating-point tensor")
bad(S, "arvae-training-0-255", lambda m: m.arvae.training_losses({"video": pixels_0_255(V_ARVAE)}), r"video values must lie in \[-1, 1\]")

# --- cascade ----------------------------------------------------------------------------------

BASE = torch.randn(1, 4, 2, 1, 1, generator=torch.Generator().manual_seed(7))  # target 2 x 4 x 4 latents (sr 4x)
V_CASCADE = rand(1, 3, 5, 64, 64, seed=7)
TARGET = torch.randn(1, 4, 2, 8, 8, generator=torch.Generator().manual_seed(8))
BASE_FOR_TARGET = torch.randn(1, 4, 2, 2, 2, generator=torch.Generator().manual_seed(9))


def cascade_loss(**batch: Any) -> Callable[[Models], Any]:
    return lambda m: m.cascade.training_losses(batch, generator=torch.Generator().manual_seed(0))["loss"]


S = "cascade"
ok(S, "cascade-refine-float64-base-is-cast", lambda m: m.cascade.refine(BASE.double(), steps=1), float32_finite)
ok(S, "cascade-training-float64-latents", cascade_loss(latents=TARGET.double(), base_latents=BASE_FOR_TARGET.double()), float32_finite)
bad(S, "cascade-refine-nan", lambda m: m.cascade.refine(with_value(BASE, NAN)), r"base_latents contains NaN/inf \(1 of 8 values: 1 NaN")
bad(S, "cascade-refine-inf", lambda m: m.cascade.refine(with_value(BASE, INF)), r"base_latents contains NaN/inf .*1 inf")
bad(S, "cascade-refine-int", lambda m: m.cascade.refine(BASE.long()), r"base_latents must be a floating-point tensor .*torch\.int64")
bad(S, "cascade-refine-wrong-channels", lambda m: m.cascade.refine(BASE[:, :3]), r"base latents must be \[B, 4, t, h, w\], got \(1, 3, 2, 1, 1\)")
bad(S, "cascade-refine-4d", lambda m: m.cascade.refine(BASE[0]), r"base latents must be \[B, 4, t, h, w\], got \(4, 2, 1, 1\)")
bad(S, "cascade-refine-zero-batch", lambda m: m.cascade.refine(BASE[:0]), r"base_latents has shape \(0, 4, 2, 1, 1\) with a zero-sized axis 0")
bad(S, "cascade-refine-steps-0", lambda m: m.cascade.refine(BASE, steps=0), r"steps must be an integer >= 1 or None for the default, got 0")
bad(S, "cascade-refine-steps-too-many", lambda m: m.cascade.refine(BASE, steps=5000), r"steps=5000 exceeds the model's num_timesteps=1000")
bad(S, "cascade-refine-noise-wrong-shape", lambda m: m.cascade.refine(BASE, noise=torch.zeros(1, 4, 2, 2, 2)), r"noise must have the target latents' shape \(1, 4, 2, 4, 4\)")
bad(S, "cascade-refine-noise-nan", lambda m: m.cascade.refine(BASE, noise=torch.full((1, 4, 2, 4, 4), NAN)), r"noise contains NaN/inf \(128 of 128")
bad(S, "cascade-condition-nan", lambda m: m.cascade.condition(with_value(BASE, NAN)), r"base_latents contains NaN/inf")
bad(S, "cascade-training-video-0-255", cascade_loss(video=pixels_0_255(V_CASCADE)), r"video values must lie in \[-1, 1\] \(tolerance 0\.001\), found .*videos are floats")
bad(S, "cascade-training-video-uint8", cascade_loss(video=uint8(V_CASCADE)), r"video must be a floating-point tensor .*torch\.uint8.*videos are floats")
bad(S, "cascade-training-video-nan", cascade_loss(video=with_value(V_CASCADE, NAN)), r"video contains NaN/inf \(1 of 61440")
bad(S, "cascade-training-video-wrong-frames", cascade_loss(video=V_CASCADE[:, :, :4]), r"video has 4 frames; sr mode with this VAE needs 1 \+ 4\*j frames")
bad(S, "cascade-training-latents-nan", cascade_loss(latents=with_value(TARGET, NAN), base_latents=BASE_FOR_TARGET), r"batch\['latents'\] contains NaN/inf")
bad(S, "cascade-training-base-latents-inf", cascade_loss(latents=TARGET, base_latents=with_value(BASE_FOR_TARGET, INF)), r"batch\['base_latents'\] contains NaN/inf")
bad(S, "cascade-training-latents-int", cascade_loss(latents=TARGET.long(), base_latents=BASE_FOR_TARGET), r"batch\['latents'\] must be a floating-point tensor")
bad(S, "cascade-training-latents-wrong-batch", cascade_loss(latents=TARGET.expand(2, -1, -1, -1, -1), base_latents=BASE_FOR_TARGET), r"latents \(2, 4, 2, 8, 8\) do not match base_latents \(1, 4, 2, 2, 2\)")
bad(S, "cascade-training-condition-nan", cascade_loss(latents=TARGET, base_latents=BASE_FOR_TARGET, condition_latents=with_value(TARGET, NAN)), r"batch\['condition_latents'\] contains NaN/inf")
bad(S, "cascade-training-no-inputs", cascade_loss(frames=V_CASCADE), r"batch must hold 'video', or 'latents' and 'base_latents'")
bad(S, "cascade-decoder-encode-uint8", lambda m: CascadeDecoder(m.cascade).encode(uint8(V_CASCADE)), r"video must be a floating-point tensor .*videos are floats")
bad(S, "cascade-decoder-decode-nan", lambda m: CascadeDecoder(m.cascade).decode(with_value(BASE, NAN)), r"base_latents contains NaN/inf")

# --- ONNX runners -------------------------------------------------------------------------------

Z_ONNX = np.random.default_rng(0).standard_normal((1, 4, 2, 2, 3)).astype(np.float32)
T_ONNX = np.random.default_rng(1).standard_normal((1, 3, 4, 4)).astype(np.float32)


def nan_array(x: np.ndarray) -> np.ndarray:
    x = x.copy()
    x.flat[x.size // 2] = np.nan
    return x


def corrupt(m: Models) -> Any:
    m.onnx  # noqa: B018
    path = m.tmp / "corrupt" / "vae_decoder.onnx"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(b"\x08\x07garbage" * 10)
    return m.onnx.OnnxVAEDecoder(path)


def read(m: Models, graph: str, drop: tuple[str, ...], name: str, expected: str | None = None) -> Any:
    return m.onnx.read_graph_metadata(m.onnx_file(f"{name}.onnx", graph, drop), expected or graph)


S = "onnx"
ok(S, "onnx-vae-float64-latents-are-cast", lambda m: m.onnx_vae.decode_chunk(Z_ONNX.astype(np.float64), [Z_ONNX[:, :, :2]]),
   lambda out: out[0].dtype == np.float32 and np.array_equal(out[0], Z_ONNX[:, :3]))  # the graph: video = latents[:, :3]
ok(S, "onnx-vae-bfloat16-tensor-is-cast", lambda m: m.onnx_vae.decode_step(torch.from_numpy(Z_ONNX).bfloat16(),
   [np.zeros((1, 4, 2, 2, 3), np.float32)])[0], lambda out: out.dtype == np.float32)
bad(S, "onnx-vae-missing-cache-metadata", lambda m: m.onnx_runner("vae3d_decoder", "no_cache", ("msc.cache",)),
    r"no_cache\.onnx lacks the metadata 'msc\.cache' that its runner needs", error=ValueError)
bad(S, "onnx-vae-missing-all-metadata", lambda m: m.onnx_runner("vae3d_decoder", "no_meta", ("msc.cache", "msc.latent_spec")),
    r"no_meta\.onnx lacks the metadata 'msc\.latent_spec', 'msc\.cache'")
bad(S, "onnx-arvae-missing-latent-spec", lambda m: m.onnx_runner("arvae_decoder", "arvae_no_spec", ("msc.latent_spec",)),
    r"arvae_no_spec\.onnx lacks the metadata 'msc\.latent_spec'")
bad(S, "onnx-arvae-missing-cache", lambda m: m.onnx_runner("arvae_decoder", "arvae_no_cache", ("msc.cache",)),
    r"arvae_no_cache\.onnx lacks the metadata 'msc\.cache'")
bad(S, "onnx-cascade-missing-config", lambda m: m.onnx_runner("cascade_step", "cascade_no_config", ("msc.config",)),
    r"cascade_step\.onnx lacks the metadata 'msc\.config'")
bad(S, "onnx-read-metadata-missing-latent-spec", lambda m: read(m, "cascade_step", ("msc.latent_spec",), "step_no_spec"),
    r"step_no_spec\.onnx lacks the metadata 'msc\.latent_spec'")
bad(S, "onnx-vae-cache-metadata-not-json", lambda m: m.onnx_runner("vae3d_decoder", "bad_json", **{"msc.cache": "[{"}),
    r"bad_json\.onnx: metadata 'msc\.cache' is not valid JSON")
bad(S, "onnx-vae-cache-metadata-lacks-field", lambda m: m.onnx_runner("vae3d_decoder", "no_channels", **{"msc.cache": '[{"frames": 2, "height_scale": 1, "width_scale": 1}]'}),
    r"no_channels\.onnx: metadata 'msc\.cache' lacks channels")
bad(S, "onnx-vae-cache-metadata-count", lambda m: m.onnx_runner("vae3d_decoder", "two_caches", **{"msc.cache": json.dumps([{"channels": 4, "frames": 2, "height_scale": 1, "width_scale": 1}] * 2)}),
    r"two_caches\.onnx has 2 inputs \(latents, cache_in_0\) but .* has 3 .*'msc\.cache' describes 2 cache tensors")
bad(S, "onnx-vae-latent-spec-invalid", lambda m: m.onnx_runner("vae3d_decoder", "bad_spec", **{"msc.latent_spec": '{"layout": "cube"}'}),
    r"bad_spec\.onnx: metadata 'msc\.latent_spec' cannot be read")
bad(S, "onnx-arvae-cache-metadata-zero-heads", lambda m: m.onnx_runner("arvae_decoder", "zero_heads", **{"msc.cache": '{"layers": 2, "heads": 0, "head_dim": 16, "tokens_per_frame": 4}'}),
    r"zero_heads\.onnx: metadata 'msc\.cache' has invalid heads=0")
bad(S, "onnx-corrupt-file", corrupt, r"vae_decoder\.onnx is not a valid ONNX model .*expected the CausalVAE3D decoder")
bad(S, "onnx-missing-file", lambda m: m.onnx.OnnxVAEDecoder(m.tmp / "nowhere" / "vae_decoder.onnx"),
    r"nowhere/vae_decoder\.onnx not found", error=FileNotFoundError)
bad(S, "onnx-no-graph-metadata", lambda m: read(m, None, (), "foreign", "vae3d_decoder"), r"foreign\.onnx has no 'msc\.graph' metadata")
bad(S, "onnx-wrong-graph-kind", lambda m: m.onnx.OnnxARVAEDecoder(m.onnx_file("kind.onnx", "vae3d_decoder")),
    r"kind\.onnx holds a 'vae3d_decoder' graph, expected 'arvae_decoder'")
bad(S, "onnx-vae-zero-batch", lambda m: m.onnx_vae.decode(Z_ONNX[:0]), r"latents has shape \(0, 4, 2, 2, 3\) with a zero-sized axis 0; every dimension must be at least 1 \(input of .*vae_decoder\.onnx\)")
bad(S, "onnx-vae-zero-frames", lambda m: m.onnx_vae.decode(Z_ONNX[:, :, :0]), r"latents has shape \(1, 4, 0, 2, 3\) with a zero-sized axis 2; every dimension must be at least 1 \(input of .*vae_decoder\.onnx\)")
bad(S, "onnx-vae-zero-width-chunk", lambda m: m.onnx_vae.decode_chunk(Z_ONNX[..., :0]), r"latents has shape \(1, 4, 2, 2, 0\) with a zero-sized axis 4")
bad(S, "onnx-vae-4d", lambda m: m.onnx_vae.decode(Z_ONNX[0]), r"latents must be \[B, 4, T, h, w\] \(5 dimensions\), got shape \(4, 2, 2, 3\) .*vae_decoder\.onnx")
bad(S, "onnx-vae-wrong-channels", lambda m: m.onnx_vae.decode(Z_ONNX[:, :3]), r"latents must be \[B, 4, T, h, w\]: axis 1 must be 4, got shape \(1, 3, 2, 2, 3\)")
bad(S, "onnx-vae-nan", lambda m: m.onnx_vae.decode(nan_array(Z_ONNX)), r"latents contains NaN/inf \(1 of 48 values: 1 NaN.* \(input of .*vae_decoder\.onnx\)")
bad(S, "onnx-vae-int", lambda m: m.onnx_vae.decode(Z_ONNX.astype(np.int64)), r"latents must be a floating-point tensor .*numpy int64.*astype\(np\.float32\)")
bad(S, "onnx-vae-uint8-tensor", lambda m: m.onnx_vae.decode(torch.zeros(1, 4, 2, 2, 3, dtype=torch.uint8)), r"latents must be a floating-point tensor .*torch\.uint8")
bad(S, "onnx-vae-strings", lambda m: m.onnx_vae.decode([["a"]]), r"latents must be \[B, 4, T, h, w\]")
bad(S, "onnx-vae-step-cache-count", lambda m: m.onnx_vae.decode_step(Z_ONNX, []), r"cache must be the 1 arrays a previous call returned, got 0 arrays")
bad(S, "onnx-vae-step-cache-shape", lambda m: m.onnx_vae.decode_step(Z_ONNX, [np.zeros((1, 4, 2, 3, 3), np.float32)]), r"cache\[0\] must be \[1, 4, 2, 2, 3\] .*got shape \(1, 4, 2, 3, 3\)")
bad(S, "onnx-vae-step-cache-nan", lambda m: m.onnx_vae.decode_step(Z_ONNX, [np.full((1, 4, 2, 2, 3), np.nan, np.float32)]), r"cache\[0\] contains NaN/inf")
bad(S, "onnx-vae-chunk-0", lambda m: m.onnx_vae.decode(Z_ONNX, chunk_latent_frames=0), r"chunk_latent_frames must be an integer >= 1 or None for the default, got 0")
bad(S, "onnx-arvae-nan", lambda m: m.onnx_arvae.decode_chunk(nan_array(T_ONNX)), r"latents contains NaN/inf \(1 of 48 .*arvae_decoder\.onnx")
bad(S, "onnx-arvae-wrong-tokens", lambda m: m.onnx_arvae.decode(T_ONNX[:, :, :3]), r"latents must be \[B, T, 4, 4\]: axis 2 must be 4, got shape \(1, 3, 3, 4\)")
bad(S, "onnx-arvae-zero-frames", lambda m: m.onnx_arvae.decode(T_ONNX[:, :0]), r"latents has shape \(1, 0, 4, 4\) with a zero-sized axis 1")
bad(S, "onnx-arvae-uint8", lambda m: m.onnx_arvae.decode(T_ONNX.astype(np.uint8)), r"latents must be a floating-point tensor .*numpy uint8")
bad(S, "onnx-arvae-cache-count", lambda m: m.onnx_arvae.decode_chunk(T_ONNX, [np.zeros((1, 2, 0, 16), np.float32)]), r"cache must be the 4 arrays a previous call returned, got 1 arrays")
bad(S, "onnx-arvae-cache-shape", lambda m: m.onnx_arvae.decode_chunk(T_ONNX, [np.zeros((1, 2, 3, 16), np.float32)] * 4), r"cache\[0\] must be \[B=1, 2, P\*4, 16\]")
bad(S, "onnx-arvae-chunk-0", lambda m: m.onnx_arvae.decode(T_ONNX, chunk_frames=0), r"chunk_frames must be an integer >= 1 or None for the default, got 0")
bad(S, "onnx-cascade-base-nan", lambda m: m.onnx_cascade.decode(with_value(BASE, NAN)), r"base_latents contains NaN/inf \(1 of 8")
bad(S, "onnx-cascade-base-wrong-channels", lambda m: m.onnx_cascade.decode(BASE[:, :2]), r"base latents must be \[B, 4, t, h, w\]")
bad(S, "onnx-cascade-base-zero-batch", lambda m: m.onnx_cascade.refine(BASE[:0]), r"base_latents has shape \(0, 4, 2, 1, 1\) with a zero-sized axis 0")
bad(S, "onnx-cascade-base-int", lambda m: m.onnx_cascade.refine(BASE.int()), r"base_latents must be a floating-point tensor .*torch\.int32")
bad(S, "onnx-cascade-decode-latents-nan", lambda m: m.onnx_cascade.decode_latents(torch.full((1, 4, 2, 2, 2), NAN)), r"latents contains NaN/inf .*vae_decoder\.onnx")


# -----------------------------------------------------------------------------
# the test


FOREIGN = ("/torch/", "/onnxruntime/", "/numpy/")


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.id, marks=[pytest.mark.onnx] if c.surface == "onnx" else []) for c in CASES]
)
def test_bad_input_is_refused_naming_the_argument(case: Case, models: Models) -> None:
    if case.match is None:
        out = case.call(models)
        assert case.check(out), f"{case.id}: unexpected result {out!r}"
        return
    with pytest.raises(Exception) as info:
        case.call(models)
    err = info.value
    assert isinstance(err, case.error), f"{case.id}: {type(err).__name__}: {err}"
    assert isinstance(err, (ValueError, FileNotFoundError)), f"{case.id}: {type(err).__name__}: {err}"
    assert not isinstance(err, (RuntimeError, TypeError, KeyError, IndexError)), f"{case.id}: {type(err).__name__}"
    assert re.search(case.match, str(err)), f"{case.id}: message {str(err)!r} does not match {case.match!r}"
    raised_in = str(info.traceback[-1].path)
    assert not any(part in raised_in for part in FOREIGN), f"{case.id}: raised inside {raised_in}: {err}"


def test_the_corpus_covers_every_surface() -> None:
    counts: dict[str, int] = {}
    for c in CASES:
        counts[c.surface] = counts.get(c.surface, 0) + 1
    assert len({c.id for c in CASES}) == len(CASES), "duplicate case ids"
    assert sum(1 for c in CASES if c.match is not None) >= 100, counts
    assert set(counts) == {"attention/transformer", "ardiffusion", "nova", "vae3d", "arvae", "cascade", "onnx"}


def test_finite_checks_switch_off_and_back(models: Models) -> None:
    """`finite_checks(False)` as a context manager restores the setting; as a call it switches."""
    nan_video = with_value(V_VAE, NAN)
    assert finite_checks_enabled()
    with finite_checks(False):
        assert not finite_checks_enabled()
        out = models.vae.encode(nan_video)  # not checked: NaN goes through (what the switch is for)
        assert torch.isnan(out).any()
    assert finite_checks_enabled()
    try:
        finite_checks(False)
        models.vae.encode(nan_video)
    finally:
        finite_checks(True)
    with pytest.raises(ValueError, match="video contains NaN/inf"):
        models.vae.encode(nan_video)
