"""Tiny SD1.x / SD2.x-v / SDXL models built from ComfyUI's own classes.

Same shapes where they matter (token tables 768/1024/1280 wide, context 768/1024/2048,
SDXL's 2816-d `y`, the real tokenizers, layer choices and pooling), tiny depth elsewhere:
the host's own CLIP wrapper classes (SD1ClipModel, SD2ClipModel, SDXLClipModel) are used
unchanged, with their JSON configs shrunk to 3 layers while they load.
Random weights; built under inference mode, as ComfyUI's loader nodes would.
"""
from __future__ import annotations

import contextlib
import importlib
import json

import torch

TINY_UNET = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "in_channels": 4,
             "use_spatial_transformer": True, "legacy": False, "model_channels": 64,
             "num_res_blocks": [1, 1], "channel_mult": [1, 2], "transformer_depth": [1, 1],
             "transformer_depth_output": [1, 1, 1, 1], "transformer_depth_middle": 1,
             "use_temporal_attention": False, "use_temporal_resblock": False}


@contextlib.contextmanager
def shallow_text_encoders(layers: int = 3, intermediate: int = 64):
    """While active, CLIP configs the host reads keep their width but get `layers` layers."""
    real = json.load

    def shallow(fp, *args, **kwargs):
        cfg = real(fp, *args, **kwargs)
        if isinstance(cfg, dict) and "num_hidden_layers" in cfg and "hidden_size" in cfg:
            cfg = {**cfg, "num_hidden_layers": layers, "intermediate_size": intermediate}
        return cfg

    json.load = shallow
    try:
        yield
    finally:
        json.load = real


def _sd2_clip_module():
    for name in ("comfy.text_encoders.sd2_clip", "comfy.sd2_clip"):   # newer / 2024 host
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ImportError("no sd2_clip module in this ComfyUI")


def _config(family: str):
    import comfy.model_base
    import comfy.supported_models as sm
    unet = dict(TINY_UNET)
    if family == "sd1":
        unet.update(context_dim=768, use_linear_in_transformer=False, adm_in_channels=None)
        return sm.SD15(unet)
    if family == "sd2v":
        class SD20V(sm.SD20):
            def model_type(self, state_dict, prefix=""):
                return comfy.model_base.ModelType.V_PREDICTION
        unet.update(context_dim=1024, use_linear_in_transformer=True, adm_in_channels=None)
        return SD20V(unet)
    if family == "sdxl":
        unet.update(context_dim=2048, use_linear_in_transformer=True, adm_in_channels=2816,
                    num_classes="sequential", transformer_depth=[0, 1], transformer_depth_output=[0, 0, 1, 1])
        return sm.SDXL(unet)
    raise ValueError(family)


def _clip_target(family: str):
    import comfy.sd1_clip as sd1
    import comfy.sdxl_clip as sdxl
    from comfy.supported_models_base import ClipTarget
    if family == "sd1":
        return ClipTarget(sd1.SD1Tokenizer, sd1.SD1ClipModel)
    if family == "sd2v":
        sd2 = _sd2_clip_module()
        return ClipTarget(sd2.SD2Tokenizer, sd2.SD2ClipModel)
    return ClipTarget(sdxl.SDXLTokenizer, sdxl.SDXLClipModel)


def _vae():
    import comfy.sd
    from comfyui_reversion.reversion_comfy.host import accepted
    from comfyui_reversion.toyworld.model import init_weights
    import comfy.ldm.models.autoencoder as ae
    ddconfig = {"double_z": True, "z_channels": 4, "resolution": 64, "in_channels": 3, "out_ch": 3, "ch": 32,
                "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
    config = {"params": {"ddconfig": ddconfig, "embed_dim": 4}}
    model = ae.AutoencoderKL(ddconfig=ddconfig, embed_dim=4)
    init_weights(model, seed=7)
    return comfy.sd.VAE(**accepted(comfy.sd.VAE.__init__, sd=model.state_dict(), config=config, dtype=torch.float32))


def model_patcher(make_config, seed: int, unet_dtype: torch.dtype, init, compute_dtype: torch.dtype | None = None):
    """A ModelPatcher around the UNet `make_config()` describes, weights in `unet_dtype` set
    by `init(module, seed=...)`, as ComfyUI's loaders wrap a checkpoint's model. With
    `compute_dtype`, ComfyUI's cast ops compute in it (how fp8-stored weights run): the
    weights are then made in float32 and stored in `unet_dtype` (fp8 has no random init)."""
    import comfy.model_management as mm
    import comfy.model_patcher
    config = make_config()
    config.set_inference_dtype(unet_dtype, compute_dtype)
    base = config.get_model({}, device="cpu")
    if compute_dtype is None:
        init(base, seed=seed)
    else:
        source = make_config()
        source.set_inference_dtype(torch.float32, None)
        made = source.get_model({}, device="cpu")
        init(made, seed=seed)
        base.diffusion_model.load_state_dict(made.diffusion_model.state_dict())
    return comfy.model_patcher.ModelPatcher(base, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def build(family: str, embedding_directory=None, seed: int = 0, unet_dtype: torch.dtype = torch.float32,
          compute_dtype: torch.dtype | None = None):
    """(MODEL, CLIP, VAE) of a tiny `family` model: "sd1", "sd2v" or "sdxl" (UNet weights
    in `unet_dtype`: fp16 is how SD checkpoints load on most GPUs; fp8 needs a
    `compute_dtype`, as ComfyUI's UNETLoader weight_dtype fp8_e4m3fn / fp8_e5m2 gives)."""
    import comfy.sd
    from comfyui_reversion.toyworld.model import init_weights
    with torch.inference_mode():
        torch.manual_seed(seed)
        model = model_patcher(lambda: _config(family), seed, unet_dtype, init_weights, compute_dtype)
        with shallow_text_encoders():
            clip = comfy.sd.CLIP(target=_clip_target(family), embedding_directory=embedding_directory)
        init_weights(clip.cond_stage_model, seed=seed + 1)
        return model, clip, _vae()
