"""Diffusion on the host's terms (reversion_comfy/sampling.py, backend.py): the noise
schedule is the model's own, targets follow its parameterisation, SDXL's extra conditioning
comes from the model, the loss of a 16-bit model is taken in float32, and the exemplars
are VAE-encoded once per run."""
from __future__ import annotations

import math

import pytest
import torch

from comfyui_reversion.reversion.words import STANDIN
from conftest import prepared_backend, run_node, train_inputs


def sd_sigmas(timesteps) -> list[float]:
    """sigma_t = sqrt((1 - abar_t) / abar_t) of Stable Diffusion's schedule ("scaled
    linear" betas from 0.00085 to 0.012 over 1000 steps), computed here in float64."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    abar = torch.cumprod(1 - betas, 0)
    return [math.sqrt((1 - abar[t]) / abar[t]) for t in timesteps]


@pytest.mark.parametrize("family", ["sd1", "sd2v", "sdxl"])
def test_timesteps_map_to_the_models_own_sigmas(host, tiny, family):
    """Timestep 0 is the least noise and 999 the most, on the model's own schedule: an
    off-by-one (or a reversed index) would miss these values."""
    from comfyui_reversion.reversion_comfy import sampling
    model, _, _ = tiny(family)
    t = [0, 1, 500, 998, 999]
    got = sampling.sigma_for_timestep(sampling.model_sampling(model), torch.tensor(t)).double().tolist()
    assert got == pytest.approx(sd_sigmas(t), rel=2e-4)
    assert got[0] == pytest.approx(0.02916, rel=1e-3) and got[-1] == pytest.approx(14.6146, rel=1e-3)


@pytest.mark.parametrize("family,v_pred", [("sd1", False), ("sd2v", True)])
def test_targets_follow_the_hosts_apply_model_convention(host, tiny, family, v_pred):
    """A perfect denoiser (D = x0) gives prediction == target, and the host turns our
    target back into x0 with its own `calculate_denoised`."""
    from comfyui_reversion.reversion_comfy import sampling
    model, _, _ = tiny(family)
    ms = sampling.model_sampling(model)
    assert sampling.is_v_prediction(ms) == v_pred
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    sigma = sampling.sigma_for_timestep(ms, torch.tensor([10, 500, 990]))
    x = sampling.noisy_latent(x0, noise, sigma)
    pred, target = sampling.prediction_and_target(ms, x, x0, noise, sigma, denoised=x0)
    torch.testing.assert_close(pred, target, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ms.calculate_denoised(sigma, target, x), x0, rtol=1e-4, atol=1e-4)
    if not v_pred:
        assert torch.equal(target, noise)              # eps models: the target is the noise


def test_sdxl_gets_its_y_through_extra_conds(host, tiny):
    from comfyui_reversion.reversion_comfy import guards
    model, clip, _ = tiny("sdxl")
    with guards.training_mode():
        backend = prepared_backend(model, clip)
        cond, pooled = backend.captions.encode(backend.initial_vectors("and"), f"a cat {STANDIN} a dog")
        kw = backend.model_conds(torch.cat([cond] * 2), torch.cat([pooled] * 2), torch.zeros(2, 4, 8, 8))
    assert kw["c_crossattn"].shape == (2, 77, 2048)
    assert kw["y"].shape == (2, 2816)
    # every cond lands on the latent's device (a GPU in practice; "meta" stands in for it here)
    on_meta = backend.model_conds(torch.cat([cond] * 2), torch.cat([pooled] * 2), torch.zeros(2, 4, 8, 8, device="meta"))
    assert {k: v.device.type for k, v in on_meta.items()} == {"c_crossattn": "meta", "y": "meta"}


def test_exemplars_are_vae_encoded_once_per_run(host, tiny):
    model, clip, vae = tiny("sd1")
    calls = []
    real = vae.encode
    vae.encode = lambda pixels: calls.append(pixels.shape) or real(pixels)
    try:
        run_node(host, "ReVersionTrainRelation", "train", **train_inputs(model, clip, vae, "once", steps=3, grad_accum=2))
    finally:
        vae.encode = real
    assert calls == [(2, 64, 64, 3)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_16_bit_model_is_trained_on_a_float32_loss(host, dtype):
    """With the UNet's weights in 16 bits (how checkpoints load on most GPUs) the UNet runs
    in 16 bits, but the denoising loss is taken in float32: its value matches a float64
    computation from the same prediction, which a 16-bit mean would miss by ~1e-3."""
    from comfyui_reversion.reversion_comfy import guards, sampling
    from devtools import tiny_models
    model, clip, _ = tiny_models.build("sd1", embedding_directory=[str(host.embeddings)], unet_dtype=dtype)
    assert model.model.get_dtype() == dtype
    g = torch.Generator().manual_seed(2)
    latents, noise = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    captions, t = [f"a cat {STANDIN} a dog"] * 2, torch.tensor([200, 800])
    ran_in = []
    first_block = model.model.diffusion_model.input_blocks[0][0]          # the UNet's first convolution
    hook = first_block.register_forward_hook(lambda module, args, out: ran_in.append(out.dtype))
    with guards.training_mode():
        backend = prepared_backend(model, clip)
        vectors = {k: v.requires_grad_(True) for k, v in backend.initial_vectors("and").items()}
        backend.plan_memory(latents, captions[0], 2)
        loss = backend.denoising_loss(vectors, latents, captions, t, noise)
        loss.backward()
        # the same forward, by hand, to read the 16-bit prediction and target
        with torch.no_grad():
            cond, pooled = backend.captions.encode_batch(vectors, captions)
            x0 = model.model.process_latent_in(latents)
            sigma = sampling.sigma_for_timestep(backend.ms, t).to(x0)
            x = sampling.noisy_latent(x0, noise.to(x0), sigma)
            denoised = model.model.apply_model(x, sigma, **backend.model_conds(cond, pooled, x))
            pred, target = sampling.prediction_and_target(backend.ms, x, x0, noise.to(x0), sigma, denoised)
        backend.close()
    hook.remove()
    assert set(ran_in) == {dtype} and loss.dtype == torch.float32
    exact = torch.nn.functional.mse_loss(pred.double(), target.double()).item()
    assert loss.item() == pytest.approx(exact, rel=1e-5)
    assert torch.isfinite(vectors["clip_l"].grad).all() and vectors["clip_l"].grad.abs().sum() > 0
