"""The precision contract (msc-core README, "Precision and devices"), on CPU, for every kind.

For AR-Diffusion (grid and tokens), NOVA, the 3D VAE, the AR-VAE and the cascade: one
training step (`training_losses` + backward) and one generate / refine / encode+decode,
(a) under `torch.autocast("cpu", dtype=torch.bfloat16)` and (b) with bf16 parameters,
are finite and within a stated relative error of float32. The diffusion state stays
float32 (generated videos and refined latents come back in float32), and one seed gives
the same initial noise whatever the parameters' dtype. The MSC transformer under
`torch.compile` (inductor) equals eager.

Tolerances: bf16 keeps 8 mantissa bits (relative rounding 2^-9 = 0.2% per value). Measured
on these tiny models (relative L2 error against float32): losses <= 0.5%, AR-Diffusion
videos ~0.6%, cascade latents ~1.3%, tokenizer reconstructions ~1.7%. `REL_TOL = 5%`
leaves a 3x margin over the worst and still fails on a state kept in bf16 over many
steps or a wrong cast (errors of order 1).
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch

from msc_ar.nova import NOVA, NovaConfig
from msc_cascade.cascade_model import CascadeConfig, CascadeModel
from msc_core import GenerationRequest
from msc_core.checkpoint import save_pretrained
from msc_core.interfaces import SchedulerParams
from msc_ar.ardiffusion import ARDiffusion, ARDiffusionConfig
from msc_core.testing import HostReads, perturb_parameters
from msc_tokenizers import ARVAE, ARVAEConfig, CausalVAE3D, CausalVAE3DConfig

REL_TOL = 0.05  # relative L2 error of a bf16 output or loss against float32 (see the module docstring)
MODES = ("autocast", "bf16-parameters")


def relative_error(x: torch.Tensor, reference: torch.Tensor) -> float:
    return float((x.float() - reference).norm() / reference.norm())


def in_mode(model: torch.nn.Module, mode: str) -> tuple[torch.nn.Module, contextlib.AbstractContextManager]:
    """`model` (a copy) and the context a step runs in: fp32, bf16 autocast or bf16 parameters."""
    if mode == "fp32":
        return copy.deepcopy(model), contextlib.nullcontext()
    if mode == "autocast":
        return copy.deepcopy(model), torch.autocast("cpu", dtype=torch.bfloat16)
    return copy.deepcopy(model).to(torch.bfloat16), contextlib.nullcontext()


# the tiny models of tests/e2e/test_e2e_video_pipeline.py (pytest's importlib mode cannot import it)
def vae_tokenizer() -> CausalVAE3D:
    torch.manual_seed(0)
    return perturb_parameters(CausalVAE3D(CausalVAE3DConfig.preset("tiny")), seed=0, scale=0.02).eval()


def arvae_tokenizer() -> ARVAE:
    torch.manual_seed(0)
    return ARVAE(ARVAEConfig.preset("tiny", num_latent_tokens=16)).eval()


def ardiffusion_on(layout: str) -> ARDiffusion:
    torch.manual_seed(1)
    if layout == "grid":
        data = dict(input_layout="grid", channels=4, num_frames=3, height=2, width=2)
    else:
        data = dict(input_layout="tokens", channels=4, num_frames=3, tokens_per_frame=16, latent_grid=(4, 4))
    transformer = dict(patch_size=1, pool=2, max_pool=None)
    model = ARDiffusion(ARDiffusionConfig.preset("tiny", data=data, transformer=transformer, tokenizer_path="unused"))
    return perturb_parameters(model, seed=2, scale=0.05).eval()


def nova_model() -> NOVA:
    torch.manual_seed(1)
    config = NovaConfig.tiny(in_channels=4, sample_size=(2, 2), patch_size=1, num_frames=3, tokenizer_path="unused")
    return perturb_parameters(NOVA(config), seed=2, scale=0.05).eval()


def cascade_model(tmp_path) -> CascadeModel:
    vae_dir = save_pretrained(vae_tokenizer(), tmp_path / "vae")
    torch.manual_seed(5)
    model = CascadeModel(CascadeConfig(
        mode="sr", vae_path=str(vae_dir), sample_steps=2, num_frames=5, height=32, width=32, conditioning="pixel",
        dit=dict(latent_channels=4, dim=32, depth=2, num_heads=2, window=2, chunk=2, timestep_frequency_dim=32),
    ))
    perturb_parameters(model.dit, seed=6, scale=0.2)
    return model.eval()


def _uniform(*shape: int, seed: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def generator_step(model, mode: str, batch, request, **generate_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, generated) of one training step and one generation in `mode`."""
    model, context = in_mode(model, mode)
    with context:
        model.train()
        loss = model.training_losses(batch, generator=torch.Generator().manual_seed(1))["loss"]
        loss.backward()
        assert all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in model.parameters())
        model.eval()
        video = model.generate(request, **generate_kwargs)
    return loss.detach().float(), video


def check_against_fp32(run) -> dict[str, dict[str, float]]:
    reference = run("fp32")
    errors = {}
    for mode in MODES:
        outputs = run(mode)
        errors[mode] = {}
        for name, out, ref in zip(("loss", "output", "output2"), outputs, reference):
            assert bool(torch.isfinite(out).all()), f"{mode}: {name} is not finite"
            errors[mode][name] = relative_error(out, ref)
            assert errors[mode][name] <= REL_TOL, f"{mode}: {name} relative error {errors[mode][name]:.4f} > {REL_TOL}"
    return errors


@pytest.mark.parametrize("layout", ["grid", "tokens"])
def test_ardiffusion_in_bf16_matches_fp32_and_keeps_a_float32_state(layout) -> None:
    model = ardiffusion_on(layout)
    latents = torch.randn(*((2, 4, 3, 2, 2) if layout == "grid" else (2, 3, 16, 4)),
                          generator=torch.Generator().manual_seed(0))
    request = GenerationRequest(num_frames=3, seed=3, num_steps=4, scheduler=SchedulerParams(offset=2))

    def run(mode):
        loss, video = generator_step(model, mode, {"latents": latents}, request)
        assert video.dtype == torch.float32  # the DDIM state, not the parameters' dtype
        return loss, video

    check_against_fp32(run)


def test_nova_in_bf16_matches_fp32() -> None:
    model = nova_model()
    latents = torch.randn(2, 4, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    request = GenerationRequest(num_frames=3, seed=3, num_steps=2)
    check_against_fp32(lambda mode: generator_step(model, mode, {"latents": latents}, request, diffusion_steps=10))


@pytest.mark.parametrize("kind", ["vae3d", "arvae"])
def test_tokenizers_train_encode_and_decode_in_bf16(kind) -> None:
    tokenizer, video = (vae_tokenizer(), _uniform(1, 3, 5, 16, 16, seed=0)) if kind == "vae3d" else \
        (arvae_tokenizer(), _uniform(1, 3, 2, 16, 16, seed=0))

    def run(mode):
        model, context = in_mode(tokenizer, mode)
        with context:
            model.train()
            torch.manual_seed(5)  # the posterior sample's noise (global RNG, float32)
            loss = model.training_losses({"video": video})["loss"]
            loss.backward()
            model.eval()
            with torch.no_grad():
                latents = model.encode(video)
                reconstruction = model.decode(latents)
        return loss.detach().float(), latents, reconstruction

    check_against_fp32(run)


def test_cascade_trains_and_refines_in_bf16(tmp_path) -> None:
    """The regression: `model.to(torch.bfloat16).refine(...)` raised "expected m1 and m2 to
    have the same dtype" (the condition was float32, the DiT bf16)."""
    cascade = cascade_model(tmp_path)
    video = _uniform(1, 3, 5, 32, 32, seed=0)
    base = torch.randn(1, 4, 2, 2, 2, generator=torch.Generator().manual_seed(1))

    def run(mode):
        model, context = in_mode(cascade, mode)
        with context:
            model.train()
            loss = model.training_losses({"video": video}, generator=torch.Generator().manual_seed(2))["loss"]
            loss.backward()
            model.eval()
            refined = model.refine(base, generator=torch.Generator().manual_seed(3))
        assert refined.dtype == torch.float32
        return loss.detach().float(), refined

    check_against_fp32(run)


def test_one_seed_gives_the_same_initial_noise_whatever_the_parameters_dtype() -> None:
    """Noise is drawn in float32 from a CPU generator seeded by the request and only then
    moved: after AD's first iteration the frames that have not started denoising are the
    initial noise, bit-identical for float32 and bf16 parameters (before the contract the
    bf16 model rounded its noise to bf16)."""
    request = GenerationRequest(num_frames=3, seed=3, num_steps=4, scheduler=SchedulerParams(offset=2))
    first: dict[str, torch.Tensor] = {}
    for name, model in (("fp32", ardiffusion_on("grid")), ("bf16", ardiffusion_on("grid").to(torch.bfloat16))):
        model.generate(request, on_step=lambda n, video, name=name: first.setdefault(name, video.clone()))
    waiting = first["fp32"][:, :, -1]  # the last frame waits while the first one starts
    generator = torch.Generator().manual_seed(3)
    noise = [torch.randn(1, 4, 2, 2, generator=generator) for _ in range(3)][-1]  # the sampler's draws, frame by frame
    assert first["bf16"].dtype == torch.float32
    assert not torch.equal(first["fp32"][:, :, 0], first["bf16"][:, :, 0])  # the moving frame differs ...
    assert torch.equal(waiting, noise) and torch.equal(first["bf16"][:, :, -1], noise)  # ... the waiting one is the noise


@pytest.mark.slow
def test_msc_transformer_compiled_equals_eager() -> None:
    backbone = ardiffusion_on("grid").backbone.eval()
    x = torch.randn(2, 4, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([[0, 10, 500], [999, 3, 7]])
    with torch.no_grad():
        eager = backbone(x, t, None)
        compiled = torch.compile(backbone, backend="inductor")(x, t, None)
    assert (compiled - eager).abs().max() <= 1e-4


# -----------------------------------------------------------------------------
# no host sync per denoising step


def test_host_reads_counts_value_reads() -> None:
    x = torch.arange(3)
    with HostReads() as reads:
        int(x[0]), x.tolist(), bool(x.any()), x.sum().item()
        x + 1  # no read
    assert reads.count == 4


@pytest.mark.parametrize("kind", ["ardiffusion", "nova", "cascade"])
def test_sampler_reads_no_tensor_value_per_denoising_step(kind, tmp_path) -> None:
    """Every value check runs once per plan: doubling the denoising steps adds no read of a
    tensor into Python (each would be a host sync on a GPU)."""
    if kind == "ardiffusion":
        model = ardiffusion_on("grid")
        run = lambda steps: model.generate(  # noqa: E731
            GenerationRequest(num_frames=3, seed=3, num_steps=steps, scheduler=SchedulerParams(offset=2)))
    elif kind == "nova":
        model = nova_model()
        run = lambda steps: model.generate(GenerationRequest(num_frames=3, seed=3, num_steps=2),  # noqa: E731
                                           diffusion_steps=steps)
    else:
        model = cascade_model(tmp_path)
        base = torch.randn(1, 4, 2, 2, 2, generator=torch.Generator().manual_seed(1))
        run = lambda steps: model.refine(base, steps=steps, generator=torch.Generator().manual_seed(3))  # noqa: E731
    counts = {}
    for steps in (4, 8):
        with HostReads() as reads:
            run(steps)
        counts[steps] = reads
    assert counts[8].count == counts[4].count, counts[8].where


# -----------------------------------------------------------------------------
# on CUDA (`@pytest.mark.gpu`: skipped with the reason where CUDA is unavailable; run by bench/gpu.sh)

GPU_TOL = 1e-2  # fp32 on CUDA vs CPU: cuDNN convolutions and reductions reorder sums (TF32 stays off)


@pytest.fixture
def no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["ardiffusion", "nova", "cascade"])
def test_one_seed_gives_the_same_video_on_cpu_and_cuda(kind, tmp_path, no_tf32) -> None:
    """The seeding policy: noise from a CPU generator seeded by the request, then moved."""
    outputs = []
    for device in ("cpu", "cuda"):
        if kind == "ardiffusion":
            model = ardiffusion_on("grid").to(device)
            out = model.generate(GenerationRequest(num_frames=3, seed=3, num_steps=4, scheduler=SchedulerParams(offset=2)))
        elif kind == "nova":
            model = nova_model().to(device)
            out = model.generate(GenerationRequest(num_frames=3, seed=3, num_steps=2), diffusion_steps=10)
        else:
            model = cascade_model(tmp_path / device).to(device)
            base = torch.randn(1, 4, 2, 2, 2, generator=torch.Generator().manual_seed(1)).to(device)
            out = model.refine(base, generator=torch.Generator().manual_seed(3))
        outputs.append(out.float().cpu())
    assert relative_error(outputs[1], outputs[0]) <= GPU_TOL


@pytest.mark.gpu
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", ["grid", "tokens"])
def test_ardiffusion_bf16_on_cuda_matches_fp32(layout, mode, no_tf32) -> None:
    model = ardiffusion_on(layout)
    latents = torch.randn(*((2, 4, 3, 2, 2) if layout == "grid" else (2, 3, 16, 4)),
                          generator=torch.Generator().manual_seed(0))
    request = GenerationRequest(num_frames=3, seed=3, num_steps=4, scheduler=SchedulerParams(offset=2))
    loss_ref, video_ref = generator_step(model, "fp32", {"latents": latents}, request)
    cuda_model, context = in_mode(model, mode)
    cuda_model = cuda_model.cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16) if mode == "autocast" else contextlib.nullcontext():
        cuda_model.train()
        loss = cuda_model.training_losses({"latents": latents.cuda()}, generator=torch.Generator().manual_seed(1))["loss"]
        loss.backward()
        cuda_model.eval()
        video = cuda_model.generate(request)
    assert video.dtype == torch.float32
    assert relative_error(loss.detach().float().cpu(), loss_ref) <= REL_TOL
    assert relative_error(video.cpu(), video_ref) <= REL_TOL


@pytest.mark.gpu
def test_msc_attention_streaming_on_cuda_equals_full_forward(no_tf32) -> None:
    """`auto` on CUDA (NATTEN when installed, with its padded-query cached path; else tiled)."""
    from msc_core.attention import MSCAttention, MSCAttentionConfig

    torch.manual_seed(0)
    module = MSCAttention(MSCAttentionConfig(dim=64, num_heads=4, window=5, temporal_window=3, pool=2,
                                             temporal_stride=2, noise_embed_dim=16)).cuda()
    reference = MSCAttention(module.config.replace(backend="reference")).cuda()
    reference.load_state_dict(module.state_dict())
    x = torch.randn(2, 6, 12, 12, 64, device="cuda")
    noise = torch.randint(0, 1000, (2, 6), device="cuda")
    with torch.no_grad():
        full = reference(x, noise)
        cache = module.new_cache()
        streamed = torch.cat([module(x[:, t : t + 1], noise[:, t : t + 1], cache=cache, update_cache=True)
                              for t in range(6)], dim=1)
    torch.testing.assert_close(streamed, full, rtol=0, atol=1e-4)


@pytest.mark.gpu
def test_cuda_sampler_syncs_do_not_grow_with_steps() -> None:
    """CUDA's own account of synchronising calls (`set_sync_debug_mode`), doubled steps."""
    import warnings

    model = ardiffusion_on("grid").cuda()
    counts = {}
    for steps in (4, 8):
        request = GenerationRequest(num_frames=3, seed=3, num_steps=steps, scheduler=SchedulerParams(offset=2))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                model.generate(request)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts[steps] = sum("synchroniz" in str(w.message) for w in caught)
    assert counts[8] == counts[4], counts
