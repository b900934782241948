"""Full-size SD1.5 / SD2.1-v / SDXL built from ComfyUI's own classes, random weights.

Width and depth are the real ones: the UNet configs below are the ones ComfyUI's
`comfy.model_detection` assigns to these checkpoints (the same dicts in both bundled hosts),
given to the host's `comfy.supported_models` classes; the text encoders are the host's own
CLIP wrappers with their unmodified JSON configs (12-layer CLIP-L, 24-layer CLIP-H,
32-layer CLIP-G); the VAE is SD's 4-level KL autoencoder. Nothing is downloaded: weights
are torch's default init (random), so these models are for memory, speed and code-path
checks, never for image quality. Built under inference mode, as ComfyUI's loaders build.

Parameters (fp32 bytes x 4): SD1.5 UNet 860M + CLIP-L 123M; SD2.1 UNet 866M + CLIP-H 340M;
SDXL UNet 2.57G + CLIP-L 123M + CLIP-G 695M. Use `unet_dtype=torch.float16` to halve RAM.
"""
from __future__ import annotations

import torch

from . import tiny_models

_COMMON = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
           "legacy": False, "in_channels": 4, "model_channels": 320,
           "use_temporal_attention": False, "use_temporal_resblock": False}
UNET = {
    "sd1": {**_COMMON, "adm_in_channels": None, "num_res_blocks": [2, 2, 2, 2],
            "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4],
            "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 8,
            "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]},
    "sd2v": {**_COMMON, "adm_in_channels": None, "num_res_blocks": [2, 2, 2, 2],
             "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4],
             "transformer_depth_middle": 1, "use_linear_in_transformer": True, "context_dim": 1024,
             "num_head_channels": 64, "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]},
    "sdxl": {**_COMMON, "num_classes": "sequential", "adm_in_channels": 2816, "num_res_blocks": [2, 2, 2],
             "transformer_depth": [0, 0, 2, 2, 10, 10], "channel_mult": [1, 2, 4], "transformer_depth_middle": 10,
             "use_linear_in_transformer": True, "context_dim": 2048, "num_head_channels": 64,
             "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10]},
}
VAE_DDCONFIG = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}


def _config(family: str):
    import comfy.model_base
    import comfy.supported_models as sm
    unet = dict(UNET[family])
    if family == "sd1":
        return sm.SD15(unet)
    if family == "sd2v":
        class SD21V(sm.SD20):
            def model_type(self, state_dict, prefix=""):
                return comfy.model_base.ModelType.V_PREDICTION
        return SD21V(unet)
    if family == "sdxl":
        return sm.SDXL(unet)
    raise ValueError(family)


def _vae(full: bool):
    if not full:
        return tiny_models._vae()
    import comfy.ldm.models.autoencoder as ae
    import comfy.sd
    from comfyui_reversion.reversion_comfy.host import accepted
    from comfyui_reversion.toyworld.model import init_weights
    model = ae.AutoencoderKL(ddconfig=VAE_DDCONFIG, embed_dim=4)
    init_weights(model, seed=7)
    config = {"params": {"ddconfig": VAE_DDCONFIG, "embed_dim": 4}}
    return comfy.sd.VAE(**accepted(comfy.sd.VAE.__init__, sd=model.state_dict(), config=config, dtype=torch.float32))


def build(family: str, embedding_directory=None, seed: int = 0, unet_dtype: torch.dtype = torch.float32,
          clip_dtype: torch.dtype | None = None, full_vae: bool = False, compute_dtype: torch.dtype | None = None):
    """(MODEL, CLIP, VAE) of a full-size `family` model ("sd1", "sd2v", "sdxl"), random
    weights; the VAE is the tiny test VAE unless `full_vae` (SD's real VAE architecture).
    fp8 `unet_dtype` needs a `compute_dtype` (see tiny_models.model_patcher)."""
    import comfy.sd
    from comfyui_reversion.reversion_comfy.host import accepted
    with torch.inference_mode():
        torch.manual_seed(seed)
        model = tiny_models.model_patcher(lambda: _config(family), seed, unet_dtype, fast_random_init, compute_dtype)
        kwargs = accepted(comfy.sd.CLIP.__init__, model_options={"dtype": clip_dtype}) if clip_dtype else {}
        clip = comfy.sd.CLIP(target=tiny_models._clip_target(family), embedding_directory=embedding_directory,
                             **kwargs)
        fast_random_init(clip.cond_stage_model, seed=seed + 1)
        return model, clip, _vae(full_vae)


def fast_random_init(module: torch.nn.Module, seed: int = 0) -> None:
    """Random weights at the scale of torch's default init, ~10x faster than per-layer
    `reset_parameters` for a billion parameters on a slow CPU: every weight is a window of
    one shared pool of N(0,1) values (odd length, so rows differ), scaled by 1/sqrt(fan_in);
    biases and norm shifts 0, norm scales 1; embeddings N(0, 0.02) (CLIP's init)."""
    g = torch.Generator().manual_seed(seed)
    pool = torch.randn(1_000_003, generator=g)
    offset = 0
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if p.ndim <= 1:
                p.fill_(1.0 if leaf == "weight" else 0.0)
                continue
            fan_in = p[0].numel()
            scale = 0.02 if "embedding" in name else fan_in ** -0.5
            flat = p.view(-1)
            done = 0
            while done < flat.numel():
                start = offset % pool.numel()
                n = min(flat.numel() - done, pool.numel() - start)
                flat[done:done + n].copy_(pool[start:start + n]).mul_(scale)
                done += n
                offset += n + 7919
        for b in module.buffers():
            if b.is_floating_point() and not torch.isfinite(b).all():
                b.zero_()


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
