"""Diffusion on the host's terms: the noise schedule and parameterisation of a MODEL,
noisy latents and training targets, the exemplars' one VAE encode, and images drawn with
the stock nodes (previews, samples).

Noise and targets follow the host's own `model_sampling` (patched samplings included):
x = x0 + sigma * noise, and `apply_model` returns the denoised estimate, which
`prediction_and_target` turns into the eps or v prediction of the model's own type.
"""
from __future__ import annotations

import comfy.model_sampling
import nodes as comfy_nodes          # ComfyUI's stock nodes (this pack never shadows the name)
import torch

from ..reversion.relation_file import Relation
from .text import encode_with_relation


def model_sampling(model):
    """The sigma schedule + parameterisation the host samples this MODEL with.

    Newer hosts route it through `get_model_object` (honours ModelSamplingDiscrete-style
    patches); 2024 hosts keep patches in `object_patches`.
    """
    if hasattr(model, "get_model_object"):
        return model.get_model_object("model_sampling")
    return getattr(model, "object_patches", {}).get("model_sampling", model.model.model_sampling)


def is_v_prediction(ms) -> bool:
    return isinstance(ms, comfy.model_sampling.V_PREDICTION)


def sigma_for_timestep(ms, t: torch.Tensor) -> torch.Tensor:
    """Discrete timestep index (0 = least noise) -> the host's sigma for it."""
    return ms.sigma(t.float())


def noisy_latent(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x = x0 + sigma * noise (k-diffusion form, sigma_data = 1); sigma per batch item.

    Written out rather than `ms.noise_scaling` because the 2024 host does not broadcast a
    per-item sigma there.
    """
    return x0 + noise * sigma.view(-1, *([1] * (x0.ndim - 1)))


def prediction_and_target(ms, x: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor,
                          sigma: torch.Tensor, denoised: torch.Tensor):
    """(model prediction, training target) in the model's own parameterisation.

    The host's `apply_model` returns the denoised estimate D. For eps models the network
    predicts eps = (x - D) / sigma with target `noise` (the ReVersion / diffusers loss); for
    v models it predicts v = (x/(s^2+1) - D) * sqrt(s^2+1)/s with target
    (noise - s*x0)/sqrt(s^2+1) (diffusers' v target in k-diffusion units).
    """
    s = sigma.view(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    if is_v_prediction(ms):
        root = torch.sqrt(s * s + 1.0)
        pred = (x / (s * s + 1.0) - denoised) * root / s
        target = (noise - s * x0) / root
        return pred, target
    return (x - denoised) / s, noise


def vae_encode(vae, images: torch.Tensor, seed: int) -> torch.Tensor:
    """Exemplar IMAGE batch -> raw latents, once per training run (not every step).

    The 2024 host samples the VAE posterior with the global RNG; a seeded, forked RNG makes
    that sample part of "same seed, same result" without touching the host's RNG state."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.no_grad(), torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return vae.encode(images[..., :3]).detach().clone()


def sample_images(model, clip, vae, positive, seed: int, batch: int, size: int, steps: int = 20,
                  cfg: float = 4.0, sampler: str = "euler", scheduler: str = "normal") -> torch.Tensor:
    """`batch` images (IMAGE [B, size, size, 3]) for a CONDITIONING through the stock nodes:
    EmptyLatentImage -> KSampler (negative: the empty prompt) -> VAEDecode, under no_grad."""
    with torch.no_grad():
        (negative,) = comfy_nodes.CLIPTextEncode().encode(clip, "")
        (latent,) = comfy_nodes.EmptyLatentImage().generate(size, size, batch)
        (out,) = comfy_nodes.KSampler().sample(model, seed, steps, cfg, sampler, scheduler, positive, negative, latent)
        return comfy_nodes.VAEDecode().decode(vae, out)[0]


def sample_preview(model, clip, vae, vectors: dict[str, torch.Tensor], prompt: str, seed: int, steps: int,
                   size: int, cfg: float = 5.0) -> torch.Tensor:
    """One image of `prompt` (with <R>) drawn with the current vectors on the model being
    trained (`sample_images`, euler, fixed seed). Uses no random state of the training loop
    (the sampler seeds its own noise), and runs under no_grad rather than inference mode, so
    no inference tensors end up in host caches that the next training update would touch."""
    relation = Relation({k: v.detach() for k, v in vectors.items()}, name="preview")
    with torch.no_grad():
        positive = encode_with_relation(clip, relation, prompt)
    return sample_images(model, clip, vae, positive, seed, 1, size, steps, cfg).float().cpu().clamp(0, 1)
