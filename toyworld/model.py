"""The toy-world text-to-image model, built from ComfyUI's own classes.

- UNet: ComfyUI's `UNetModel` inside a `BaseModel` (v-prediction, SD's discrete schedule),
  latent 4 x 32 x 32 where channels 0-2 are the scene's RGB pixels in [-1, 1].
- Text encoder: ComfyUI's `SDClipModel` (CLIP-L tokenizer, full 49408-row token table,
  width 128), wrapped in the stock `comfy.sd.CLIP`, so `CLIPTextEncode`, `embedding:name`
  and our trainer run on it unchanged.
- VAE: ComfyUI's `AutoencoderKL` with hand-set weights that compute an exact 8x8 average
  pool (encode) and an 8x nearest-neighbour upscale (decode). Nothing to train, and the stock
  `VAEEncode`/`VAEDecode` map 256 px scenes to latents and back.

Weights: `toyworld.safetensors` beside this file (trained by `lab/toy_model/train.py`,
`make toy-model`).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import comfy.latent_formats
import comfy.ldm.models.autoencoder as ae
import comfy.model_base
import comfy.model_management as mm
import comfy.model_patcher
import comfy.sd
import comfy.sd1_clip as sd1
import comfy.supported_models_base
import nodes as comfy_nodes          # ComfyUI's stock nodes (this pack never shadows the name)
import numpy as np
import safetensors.torch
import torch

from ..reversion_comfy.host import accepted
from ..reversion_comfy.sampling import sample_images

HERE = Path(__file__).resolve().parent
WEIGHTS = HERE / "toyworld.safetensors"
CLIP_CONFIG = HERE / "toy_clip.json"

LATENT_SIZE = 32          # = scenes.SIZE: one latent pixel per scene pixel
IMAGE_SIZE = LATENT_SIZE * 8
TEXT_WIDTH = 128

UNET_CONFIG = {
    "use_checkpoint": False, "image_size": LATENT_SIZE, "in_channels": 4, "out_channels": 4,
    "model_channels": 32, "channel_mult": [1, 2, 2, 2], "num_res_blocks": [1, 1, 1, 1],
    # attention only at the two lowest resolutions (8x8, 4x4) and in the middle
    "transformer_depth": [0, 0, 1, 1], "transformer_depth_output": [0, 0, 0, 0, 1, 1, 1, 1],
    "transformer_depth_middle": 1, "context_dim": TEXT_WIDTH, "num_heads": -1, "num_head_channels": 32,
    "use_spatial_transformer": True, "use_linear_in_transformer": True, "legacy": False,
    "adm_in_channels": None, "use_temporal_attention": False, "use_temporal_resblock": False,
}
VAE_CHANNELS = 64         # GroupNorm(32) groups of 2 channels: (+x, -x) pairs, see pixel_vae_state_dict


# ------------------------------------------------------------------------------ config

def model_config_class():
    """A `supported_models_base.BASE` subclass describing the toy model to ComfyUI."""

    class ToyLatent(comfy.latent_formats.LatentFormat):
        scale_factor = 1.0
        # channels 0-2 are RGB in [-1, 1]: live previews show the exact picture
        latent_rgb_factors = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]]

        def __init__(self):
            self.latent_rgb_factors = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]]

    class ToyWorld(comfy.supported_models_base.BASE):
        unet_config = {"context_dim": TEXT_WIDTH, "model_channels": 32}
        unet_extra_config = {}
        latent_format = ToyLatent
        supported_inference_dtypes = [torch.float32]

        def model_type(self, state_dict, prefix=""):
            return comfy.model_base.ModelType.V_PREDICTION

    return ToyWorld


def clip_target(embedding_key: str = "clip_l"):
    """ClipTarget(tokenizer, clip) for the stock `comfy.sd.CLIP` wrapper."""

    def inner_tokenizer(embedding_directory=None, tokenizer_data={}, **_):
        return sd1.SDTokenizer(**accepted(sd1.SDTokenizer, embedding_directory=embedding_directory,
                                          embedding_size=TEXT_WIDTH, embedding_key=embedding_key,
                                          tokenizer_data=tokenizer_data))

    class ToyTokenizer(sd1.SD1Tokenizer):
        def __init__(self, embedding_directory=None, tokenizer_data={}, **_):
            super().__init__(**accepted(sd1.SD1Tokenizer.__init__, embedding_directory=embedding_directory,
                                        tokenizer_data=tokenizer_data, clip_name="l", tokenizer=inner_tokenizer))

    def inner_clip(device="cpu", dtype=None, model_options={}, **_):
        return sd1.SDClipModel(**accepted(sd1.SDClipModel.__init__, device=device, dtype=dtype,
                                          model_options=model_options, textmodel_json_config=str(CLIP_CONFIG),
                                          layer="last", return_projected_pooled=False))

    class ToyClip(sd1.SD1ClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}, **_):
            super().__init__(**accepted(sd1.SD1ClipModel.__init__, device=device, dtype=dtype,
                                        model_options=model_options, clip_name="l", clip_model=inner_clip))

    return comfy.supported_models_base.ClipTarget(ToyTokenizer, ToyClip)


# ------------------------------------------------------------------------------- parts

def new_unet(device=None, dtype=torch.float32, config: dict | None = None):
    """An uninitialised toy `BaseModel` (call `init_weights` or load a state dict); `config`
    replaces UNET_CONFIG (the lab's variants)."""
    config = model_config_class()(dict(config or UNET_CONFIG))
    config.set_inference_dtype(dtype, None)
    return config.get_model({}, device=device)


def new_clip(embedding_directory=None):
    """The stock `comfy.sd.CLIP` wrapper around an uninitialised toy text encoder."""
    with torch.no_grad():
        return comfy.sd.CLIP(target=clip_target(), embedding_directory=embedding_directory)


def init_weights(module: torch.nn.Module, seed: int = 0) -> None:
    """ComfyUI's ops skip weight init; give every layer torch's default init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            for base in type(m).__mro__:
                if base.__module__.startswith("torch.nn") and hasattr(base, "reset_parameters"):
                    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=g)))
                    base.reset_parameters(m)
                    break
            if isinstance(m, torch.nn.Embedding):
                m.weight.normal_(0, 0.02, generator=g)


def vae_config() -> dict:
    ddconfig = {"double_z": True, "z_channels": 4, "resolution": IMAGE_SIZE, "in_channels": 3,
                "out_ch": 3, "ch": VAE_CHANNELS, "ch_mult": [1, 1, 1, 1], "num_res_blocks": 0,
                "attn_resolutions": [], "dropout": 0.0}
    return {"params": {"ddconfig": ddconfig, "embed_dim": 4}}


def pixel_vae_state_dict() -> dict[str, torch.Tensor]:
    """Weights that make ComfyUI's AutoencoderKL an exact avg-pool / nearest-upscale pair.

    Residual branches (ResnetBlock.conv2, AttnBlock.proj_out) are zero, so every block is
    the identity. Downsample convs average 2x2, upsample convs copy. The final GroupNorm
    is the only non-linear part left: each RGB value travels as a (+c*x, -c*x) pair in one
    norm group, so the group mean is 0, and with c = 1e-6 the group variance (~1e-12) is
    negligible next to the norm's eps (1e-6): the norm then just multiplies by
    c / sqrt(eps). The shift of +20 puts SiLU in its linear range (SiLU(y) = y to 1e-8
    there) and conv_out removes it again. Error: ~1e-6 per pixel, in float32.
    """
    cfg = vae_config()["params"]
    model = ae.AutoencoderKL(ddconfig=cfg["ddconfig"], embed_dim=cfg["embed_dim"])
    sd = {k: torch.zeros_like(v, dtype=torch.float32) for k, v in model.state_dict().items()}
    c, shift = 1e-6, 20.0
    gain = 1.0 / (c / 1e-3)                 # undo the norm's c / sqrt(eps) scaling

    def centre(key, out_ch, in_ch, value):
        sd[key][out_ch, in_ch, 1, 1] = value

    def identity_conv(key):
        for ch in range(VAE_CHANNELS):
            centre(key, ch, ch, 1.0)

    def pairs_in(key, n):                    # x_k -> channels (2k, 2k+1) = (+c x_k, -c x_k)
        for k in range(n):
            centre(key, 2 * k, k, c)
            centre(key, 2 * k + 1, k, -c)

    def pairs_out(norm, conv, n):            # GroupNorm affine + conv_out read the pairs back
        for k in range(n):
            sd[f"{norm}.weight"][2 * k] = gain
            sd[f"{norm}.bias"][2 * k] = shift
            centre(f"{conv}.weight", k, 2 * k, 1.0)
            sd[f"{conv}.bias"][k] = -shift

    for key in sd:                           # GroupNorm weights inside blocks: harmless ones
        if key.endswith("norm1.weight") or key.endswith("norm2.weight") or key.endswith(".norm.weight"):
            sd[key].fill_(1.0)
    # encoder: 3 -> pairs, three 2x2 averaging downsamples, pairs -> 4 latent channels
    pairs_in("encoder.conv_in.weight", 3)
    for level in range(3):
        w = sd[f"encoder.down.{level}.downsample.conv.weight"]
        for ch in range(VAE_CHANNELS):
            w[ch, ch, 0:2, 0:2] = 0.25
    pairs_out("encoder.norm_out", "encoder.conv_out", 3)
    sd["encoder.conv_out.bias"][4:8] = -30.0     # log-variance: posterior std e^-15
    for k in range(8):
        sd["quant_conv.weight"][k, k, 0, 0] = 1.0
    for k in range(4):
        sd["post_quant_conv.weight"][k, k, 0, 0] = 1.0
    # decoder: 4 -> pairs, three copying upsamples, pairs -> RGB
    pairs_in("decoder.conv_in.weight", 3)
    for level in range(1, 4):
        identity_conv(f"decoder.up.{level}.upsample.conv.weight")
    pairs_out("decoder.norm_out", "decoder.conv_out", 3)
    return sd


def new_vae(device=None):
    return comfy.sd.VAE(**accepted(comfy.sd.VAE.__init__, sd=pixel_vae_state_dict(), config=vae_config(),
                                   dtype=torch.float32, device=device))


# ----------------------------------------------------------------------- whole model

def split_state_dict(sd: dict) -> tuple[dict, dict]:
    unet = {k[len("unet."):]: v for k, v in sd.items() if k.startswith("unet.")}
    clip = {k[len("clip."):]: v for k, v in sd.items() if k.startswith("clip.")}
    return unet, clip


def latents_of(images) -> torch.Tensor:
    """Rendered scenes (HxWx3 in [0, 1], 32 px) as the toy model's latents (N, 4, 32, 32):
    the pixel VAE's latent is the image in [-1, 1] in channels 0-2, channel 3 zero."""
    rgb = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2) * 2 - 1
    return torch.cat([rgb, torch.zeros_like(rgb[:, :1])], 1)


def weights_sha256(path: Path | str = WEIGHTS) -> str:
    """sha256 of a toy weights file: which model a gate report or a benchmark record is about."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load(path: Path | str = WEIGHTS, embedding_directory=None, config: dict | None = None):
    """(MODEL, CLIP, VAE) of the toy world, as ComfyUI objects, from a weights file
    (`config`: the UNet config it was trained with, if not UNET_CONFIG)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"toy-world weights not found at {path}; they are committed with the pack "
            f"(re-create them with `make toy-model`)")
    unet_sd, clip_sd = split_state_dict(safetensors.torch.load_file(str(path)))
    base = new_unet(device=mm.unet_offload_device(), config=config)
    missing, unexpected = base.diffusion_model.load_state_dict(
        {k: v.float() for k, v in unet_sd.items()}, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"toy weights do not match the toy UNet: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model = comfy.model_patcher.ModelPatcher(base, load_device=mm.get_torch_device(),
                                             offload_device=mm.unet_offload_device())
    clip = new_clip(embedding_directory=embedding_directory)
    clip.cond_stage_model.clip_l.transformer.load_state_dict(clip_sd, strict=True)
    return model, clip, new_vae()


def sample(model, clip, vae, positive, seed: int, batch: int, steps: int = 20, cfg: float = 4.0,
           sampler: str = "euler", scheduler: str = "normal"):
    """`batch` images (IMAGE tensor, 256 px) for a CONDITIONING through the stock nodes
    (`sampling.sample_images`), run the way the executor runs them (inference mode)."""
    with torch.inference_mode():
        return sample_images(model, clip, vae, positive, seed, batch, IMAGE_SIZE, steps, cfg, sampler, scheduler)


def encode(clip, text: str):
    """Stock CLIPTextEncode."""
    with torch.inference_mode():
        return comfy_nodes.CLIPTextEncode().encode(clip, text)[0]
