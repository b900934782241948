"""Diffusion on the host's terms: the noise schedule and parameterisation of a MODEL, the
model function as the sampler calls it, noisy latents and training targets, the exemplars'
one VAE encode, and images drawn with the stock nodes (previews, samples).

Noise and targets follow the host's own `model_sampling` (patched samplings included):
x = x0 + sigma * noise, and `apply_model` returns the denoised estimate, which
`prediction_and_target` turns into the eps or v prediction of the model's own type.
`apply_model` calls the model the way the sampler does, with the patches other nodes put
on the MODEL (FreeU, attention patches, model wrappers, a model_function_wrapper); the few
that only mean something inside a sampler (CFG functions, denoise masks, sampler-level
wrappers) are named by `sampler_only_patches`, so Train Relation can say it left them out.
"""
from __future__ import annotations

import uuid

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


# model_options entries that need the sampler's state (two predictions for CFG, a mask, the
# sampling loop): no training forward can apply them.
SAMPLER_ONLY_OPTIONS = ("sampler_cfg_function", "sampler_pre_cfg_function", "sampler_post_cfg_function",
                        "sampler_calc_cond_batch_function", "denoise_mask_function")
# wrapper types (comfy.patcher_extension.WrappersMP) around the sampling loop rather than the model
SAMPLER_WRAPPERS = ("outer_sample", "prepare_sampling", "sampler_sample", "predict_noise", "calc_cond_batch")


def _nested_copy(options: dict) -> dict:
    """A copy of nested dicts and lists (the callables and tensors inside are shared)."""
    return {k: _nested_copy(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v
            for k, v in options.items()}


def _merge(into: dict, extra: dict) -> dict:
    for key, value in extra.items():
        if isinstance(value, dict):
            _merge(into.setdefault(key, {}), value)
        elif isinstance(value, list):
            into.setdefault(key, []).extend(value)
        else:
            into[key] = value
    return into


def model_wrappers(model) -> dict:
    """The MODEL's wrappers (hosts from 2025 on; {} before): the model_options' own merged with
    the ModelPatcher's, as the sampler merges them."""
    options = getattr(model, "model_options", {}) or {}
    wrappers = _nested_copy(options.get("transformer_options", {}).get("wrappers", {}))
    return _merge(wrappers, _nested_copy(getattr(model, "wrappers", {}) or {}))


def transformer_options(model, n: int, sigma: torch.Tensor) -> dict:
    """The `transformer_options` the sampler hands the model for a batch of `n` conds: the
    MODEL's own (patches such as FreeU's, attention patches and replacements), its wrappers
    and callbacks, and the per-call entries (cond_or_uncond, sigmas, uuids)."""
    options = getattr(model, "model_options", {}) or {}
    out = _nested_copy(options.get("transformer_options", {}))
    if hasattr(model, "wrappers"):
        out["wrappers"] = model_wrappers(model)
    if hasattr(model, "callbacks"):
        _merge(out.setdefault("callbacks", {}), _nested_copy(model.callbacks or {}))
    out.update(cond_or_uncond=[0] * n, sigmas=sigma, uuids=[uuid.UUID(int=i) for i in range(n)])
    return out


def apply_model(model, x: torch.Tensor, sigma: torch.Tensor, conds: dict) -> torch.Tensor:
    """The denoised estimate of MODEL for `x` at `sigma`, computed the way the sampler computes
    it: the base model's `apply_model` with the MODEL's transformer_options, through its
    `model_function_wrapper` if another node set one."""
    n = x.shape[0]
    c = dict(conds, transformer_options=transformer_options(model, n, sigma))
    wrapper = (getattr(model, "model_options", {}) or {}).get("model_function_wrapper")
    if wrapper is not None:
        return wrapper(model.model.apply_model, {"input": x, "timestep": sigma, "c": c, "cond_or_uncond": [0] * n})
    return model.model.apply_model(x, sigma, **c)


def sampler_only_patches(model) -> list[str]:
    """What other nodes put on MODEL that training cannot apply: model_options entries and
    wrappers that need a sampler (the preview samples do apply them)."""
    options = getattr(model, "model_options", {}) or {}
    left = [k for k in SAMPLER_ONLY_OPTIONS if options.get(k)]
    left += [f"{kind} wrapper" for kind, found in model_wrappers(model).items()
             if kind in SAMPLER_WRAPPERS and any(found.values())]
    return left


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
