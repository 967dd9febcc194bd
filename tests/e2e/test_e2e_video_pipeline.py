"""`VideoPipeline`: a generator, its tokenizer and their latent normalisation as one model,
built through the entry-point registries (msc-core imports no concrete model).

- save_pretrained / from_pretrained give the same videos (AR-Diffusion on AR-VAE tokens,
  AR-Diffusion and NOVA on 3D-VAE latents);
- `stream(request)` yields the frames of `pipeline(request)` (<= 1e-5), and the first
  frame arrives before the generator starts denoising the last frame (instrumented);
- a continuation prefix (video frames) is encoded, kept and continued, past the
  generator's training length;
- a generator whose latent grid or channels do not fit the tokenizer is refused, naming
  both;
- the ONNX Runtime decoder (the tokenizer's exported decoder) decodes as PyTorch does.
"""

from __future__ import annotations

import pytest
import torch

from msc_ar.ardiffusion import ARDiffusion, ARDiffusionConfig
from msc_ar.nova import NOVA, NovaConfig
from msc_core import GenerationRequest
from msc_core.interfaces import SchedulerParams
from msc_core.latents import LatentNormalization
from msc_core.pipeline import VideoPipeline
from msc_core.testing import perturb_parameters
from msc_tokenizers import ARVAE, ARVAEConfig, CausalVAE3D, CausalVAE3DConfig


def normalization_for(layout: str, channels: int) -> LatentNormalization:
    return LatentNormalization(layout=layout, shift=tuple(0.1 * c for c in range(channels)),
                               scale=tuple(0.5 + 0.25 * c for c in range(channels)), bound=4.0, clips=8)


def vae_tokenizer() -> CausalVAE3D:
    torch.manual_seed(0)
    return perturb_parameters(CausalVAE3D(CausalVAE3DConfig.preset("tiny")), seed=0, scale=0.02).eval()


def arvae_tokenizer() -> ARVAE:
    torch.manual_seed(0)  # 16x16 frames, 4x4 patches, one token per patch: tokens on a 4x4 grid
    return ARVAE(ARVAEConfig.preset("tiny", num_latent_tokens=16)).eval()


def ardiffusion_on(spec_layout: str, **data) -> ARDiffusion:
    torch.manual_seed(1)
    if spec_layout == "grid":
        data = {**dict(input_layout="grid", channels=4, num_frames=3, height=2, width=2), **data}
    else:
        data = {**dict(input_layout="tokens", channels=4, num_frames=3, tokens_per_frame=16, latent_grid=(4, 4)), **data}
    transformer = dict(patch_size=1, pool=2, max_pool=None)
    model = ARDiffusion(ARDiffusionConfig.preset("tiny", data=data, transformer=transformer, tokenizer_path="unused"))
    return perturb_parameters(model, seed=2, scale=0.05).eval()


def nova_on_vae() -> NOVA:
    torch.manual_seed(1)
    config = NovaConfig.tiny(in_channels=4, sample_size=(2, 2), patch_size=1, num_frames=3, tokenizer_path="unused")
    return NOVA(config).eval()


CASES = {
    "ardiffusion-arvae": lambda: (ardiffusion_on("tokens"), arvae_tokenizer(), "tokens", 7),
    "ardiffusion-vae3d": lambda: (ardiffusion_on("grid"), vae_tokenizer(), "grid", 9),
    "nova-vae3d": lambda: (nova_on_vae(), vae_tokenizer(), "grid", 9),
}


def request_for(name: str, frames: int, **changes) -> GenerationRequest:
    steps = 4 if name.startswith("ardiffusion") else 2  # NOVA: set-by-set steps per frame
    scheduler = SchedulerParams(offset=2) if name.startswith("ardiffusion") else SchedulerParams()
    return GenerationRequest(num_frames=frames, seed=3, num_steps=steps, scheduler=scheduler, **changes)


@pytest.fixture(params=sorted(CASES))
def case(request):
    generator, tokenizer, layout, frames = CASES[request.param]()
    pipeline = VideoPipeline(generator, tokenizer, normalization_for(layout, 4))
    return request.param, pipeline, frames


def test_save_and_load_give_the_same_video(case, tmp_path) -> None:
    name, pipeline, frames = case
    video = pipeline(request_for(name, frames))
    assert video.shape[:3] == (1, 3, frames) and video.abs().max() <= 1
    loaded = VideoPipeline.from_pretrained(pipeline.save_pretrained(tmp_path / "pipe"))
    assert type(loaded.generator) is type(pipeline.generator) and loaded.normalization == pipeline.normalization
    assert torch.equal(loaded(request_for(name, frames)), video)


def test_stream_yields_the_frames_of_the_whole_call_and_the_first_one_early(case) -> None:
    name, pipeline, frames = case
    whole = pipeline(request_for(name, frames))
    events: list[tuple[str, int]] = []
    if name.startswith("ardiffusion"):  # which frames each AD iteration denoises
        generate_frames = pipeline.generator.generate_frames

        def instrumented(request):
            return generate_frames(request, on_iteration=lambda n, first, last: events.append(("denoise", last)))

        pipeline.generator.generate_frames = instrumented
    streamed = []
    for frame in pipeline.stream(request_for(name, frames), on_latent_frame=lambda i: events.append(("latent", i))):
        events.append(("frame", len(streamed)))
        streamed.append(frame)
    assert len(streamed) == frames
    assert (torch.stack(streamed, dim=2) - whole).abs().max() <= 1e-5
    if name.startswith("ardiffusion"):
        last_latent = max(i for kind, i in events if kind == "denoise")
        first_frame = events.index(("frame", 0))
        start_of_last = next(k for k, (kind, i) in enumerate(events) if kind == "denoise" and i == last_latent)
        assert first_frame < start_of_last  # frame 0 reached the writer before the last frame was touched


def test_a_prefix_is_kept_and_continued_past_the_training_length(case) -> None:
    name, pipeline, frames = case
    prefix_frames = 5 if pipeline.latent_spec.layout == "grid" else 2
    torch.manual_seed(4)
    prefix = torch.rand(1, 3, prefix_frames, 16 if name.endswith("arvae") else 16, 16) * 2 - 1
    # past the generator's 3 latent frames: VAE 1 + 4 * 3 = 13 video frames, AR-VAE 6 frames
    total = 13 if pipeline.latent_spec.layout == "grid" else 6
    video = pipeline(request_for(name, total, prefix=prefix))
    assert video.shape[2] == total
    # the prefix frames are the tokenizer's reconstruction of the prefix (encoded, kept, decoded)
    with torch.no_grad():
        reconstruction = pipeline.tokenizer.decode(pipeline.tokenizer.encode(prefix)).clamp(-1, 1)
    assert (video[:, :, :prefix_frames] - reconstruction).abs().max() <= 1e-4


def test_a_generator_that_does_not_fit_the_tokenizer_is_refused_naming_both() -> None:
    tokenizer = arvae_tokenizer()  # tokens on a 4x4 grid
    wrong_grid = ardiffusion_on("tokens", latent_grid=(2, 8))
    with pytest.raises(ValueError, match=r"latent_grid=\(2, 8\) but the tokenizer's tokens lie on a \(4, 4\) grid"):
        VideoPipeline(wrong_grid, tokenizer)
    with pytest.raises(ValueError, match="the tokenizer makes tokens latents, the model reads input_layout='grid'"):
        VideoPipeline(ardiffusion_on("grid"), tokenizer)
    with pytest.raises(ValueError, match="latent normalization has 3 channels, the tokenizer's latents 4"):
        VideoPipeline(ardiffusion_on("tokens"), tokenizer, normalization_for("tokens", 3))


def test_onnx_decoder_decodes_as_pytorch(tmp_path) -> None:
    pytest.importorskip("onnxruntime", reason="ONNX Runtime is the msc-cascade[onnx] extra")
    from msc_cascade.onnx_export import export_vae_decoder

    generator, tokenizer, layout, frames = CASES["ardiffusion-vae3d"]()
    directory = VideoPipeline(generator, tokenizer, normalization_for(layout, 4)).save_pretrained(tmp_path / "pipe")
    export_vae_decoder(tokenizer, directory / "tokenizer" / "decoder.onnx")
    torch_pipeline = VideoPipeline.from_pretrained(directory)
    onnx_pipeline = VideoPipeline.from_pretrained(directory, decoder="onnx")
    request = request_for("ardiffusion-vae3d", frames)
    assert (onnx_pipeline(request) - torch_pipeline(request)).abs().max() <= 1e-4
    streamed = torch.stack(list(onnx_pipeline.stream(request)), dim=2)
    assert (streamed - torch_pipeline(request)).abs().max() <= 1e-4


def test_a_cascade_refiner_decodes_the_generated_base_latents(tmp_path) -> None:
    from msc_cascade.cascade_model import CascadeConfig, CascadeModel
    from msc_core.checkpoint import save_pretrained

    tokenizer = vae_tokenizer()
    vae_dir = save_pretrained(tokenizer, tmp_path / "vae")
    torch.manual_seed(5)  # super-resolution: the generator's 2x2 base latents -> 8x8 latents, 64x64 video
    cascade = CascadeModel(CascadeConfig(
        mode="sr", vae_path=str(vae_dir), sample_steps=2, num_frames=5, height=64, width=64,
        dit=dict(latent_channels=4, dim=32, depth=2, num_heads=2, window=2, chunk=2, timestep_frequency_dim=32),
    ))
    perturb_parameters(cascade.dit, seed=6, scale=0.2)
    norm = normalization_for("grid", 4)
    pipeline = VideoPipeline(ardiffusion_on("grid"), tokenizer, norm, refiner=cascade.eval())
    request = request_for("ardiffusion-vae3d", 5)
    video = pipeline(request)
    assert video.shape == (1, 3, 5, 64, 64)
    with torch.no_grad():  # by hand: generate base latents, map them back, refine with the seed, decode
        base = norm.denormalize(pipeline.generator.generate(pipeline.latent_request(request)))
        refined = cascade.refine(base, generator=torch.Generator().manual_seed(request.seed))
        expected = tokenizer.decode_chunked(refined, 1).clamp(-1, 1)
    assert (video - expected).abs().max() <= 1e-5
    loaded = VideoPipeline.from_pretrained(pipeline.save_pretrained(tmp_path / "pipe"))
    assert loaded.refiner is not None and torch.equal(loaded(request), video)
    with pytest.raises(ValueError, match="a cascade refiner needs whole windows"):
        next(pipeline.stream(request))


@pytest.mark.parametrize("name", ["ardiffusion-vae3d", "nova-vae3d"])
def test_clamp_latents_bounds_samples_by_the_measured_bound_and_waits_for_it(name) -> None:
    """`clamp_latents`: x0 estimates clamped to the bound measured on the data, so the sample
    (the last x0 estimate) lies within it; a job may set it before its driver has measured
    the normalisation (tokenizer_path set), but sampling without a bound is refused."""
    generator = CASES[name]()[0]
    bound = 0.05  # far below what the untrained generator produces
    measured = normalization_for("grid", 4).model_copy(update={"bound": bound})
    free = generator.generate(request_for(name, 3))
    assert free.abs().max() > bound
    config = generator.config.model_copy(update={"clamp_latents": True, "latent_normalization": measured})
    clamped = type(generator)(config)
    clamped.load_state_dict(generator.state_dict())
    sample = clamped.eval().generate(request_for(name, 3))
    assert sample.abs().max() <= bound + 1e-6
    config_cls = type(generator.config)
    waiting = config_cls.model_validate({**generator.config.model_dump(), "clamp_latents": True})
    unmeasured = type(generator)(waiting).eval()
    with pytest.raises(ValueError, match="clamp_latents needs latent_normalization with a measured bound"):
        unmeasured.generate(request_for(name, 3))
    with pytest.raises(ValueError, match="clamp_latents needs latent_normalization with a measured bound"):
        config_cls.model_validate({**generator.config.model_dump(), "clamp_latents": True, "tokenizer_path": None})
