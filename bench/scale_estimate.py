"""bench_scale's estimate and text-bytes parts: the memory plan at full size on the CPU, as a GPU
would run it, and what auto would choose on 4-24 GiB cards."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from devtools.live_bytes import reachable_tensor_bytes

from .measure import GiB, bytes_by_dtype, comfy_flag, save, training_backend


def estimate_part(out: Path, families=("sd1", "sdxl")):
    """The memory plan's estimate (three probe forwards) for SD1.5 at 512 px and SDXL at
    1024 px, micro-batch 2, UNet weights fp16 computing in fp16 (no manual cast, as on a
    GPU), CLIP stored fp16 and computed fp32 (as ComfyUI runs it on a GPU: the casts of its
    weights are saved for backward); and what auto would choose with 4-24 GiB cards,
    where free = card - weights - 1 GiB (ComfyUI's own reserve and the CUDA context; an
    assumption)."""
    from devtools import full_models
    from comfyui_reversion.reversion.errors import NotEnoughMemory
    from comfyui_reversion.reversion.words import STANDIN
    from comfyui_reversion.reversion_comfy.memory import choose_memory
    torch.set_num_threads(1)
    report = {"assumption": "free = card - weights - 1 GiB (negative: the weights do not fit; offload moves "
                            "them); estimates from CPU probes, UNet fp16, CLIP stored fp16 and computed fp32 "
                            "(as on a GPU); 2 x 4 exemplars per update",
              "models": {}}
    for family, size in [(f, {"sd1": 512, "sdxl": 1024}[f]) for f in families]:
        with comfy_flag("fp16_text_enc", True):
            model, clip, vae = full_models.build(family, unet_dtype=torch.float16)
        weights = sum(bytes_by_dtype(model.model, clip.cond_stage_model).values())
        with training_backend(model, clip, "auto") as backend:
            backend.plan_memory(torch.zeros(2, 4, size // 8, size // 8), f"a cat {STANDIN} a dog", 2)
        needed = backend.plan.needed
        row = {"size": size, "weights_gib": round(weights / GiB, 2),
               "needed_gib": {k: round(v / GiB, 2) for k, v in needed.items()},
               "lean_one_exemplar_gib": None, "choice": {}}
        estimate = backend.last_estimate
        row["lean_one_exemplar_gib"] = round(estimate.needed("lean", 1, (size // 8) ** 2) / GiB, 2)
        # the fitted parts in GiB: UNet (constant, per exemplar, per exemplar x latent pixel);
        # text (constant, per caption)
        row["estimate_parts"] = {k: [v / GiB for v in getattr(estimate, k)]
                                 for k in ("fast", "outside", "inputs", "largest", "text", "text_lean")}
        movable, streamed = backend.offloadable()
        row["offloadable_gib"] = round(movable / GiB, 2)
        for card in (4, 6, 8, 12, 16, 24):
            free = int((card - 1) * GiB - weights)
            try:
                plan = choose_memory("auto", estimate, free, 8, (size // 8) ** 2, micro=2, movable=movable,
                                     streamed=streamed)
                row["choice"][f"{card} GiB"] = f"{plan.mode}, {plan.chunk} per forward" + (
                    f", {plan.offload / GiB:.1f} GiB of weights in CPU memory" if plan.mode == "offload" else "")
            except NotEnoughMemory:
                row["choice"][f"{card} GiB"] = "refused before training"
        report["models"][family] = row
        print(family, row, flush=True)
        del model, clip, vae, backend
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    return report


def text_bytes_part(out: Path, families=("sd1", "sdxl"), tiny: bool = False) -> dict:
    """Two effects of the memory fixes, at full size on the CPU, as the GPU runs them (UNet
    fp16, CLIP stored fp16 and computed fp32): the text encoders' bytes saved for backward in
    one training forward of 2 captions, fast (every layer's activations and fp32 weight
    casts) against lean (CLIP layers checkpointed: their inputs only); and the tensor bytes
    still reachable after a whole `plan_memory` (two probe forwards never run backward:
    a saved-tensor hook that keeps a node's output alive leaked them, see SavedTensorGuard)."""
    from devtools import full_models
    from devtools import tiny_models
    from comfyui_reversion.reversion.words import STANDIN
    report = {"what": "GiB; UNet fp16, CLIP stored fp16 and computed fp32; latent 8x8", "models": {}}
    caption = f"a cat {STANDIN} a dog"
    for family in families:
        with comfy_flag("fp16_text_enc", True):
            model, clip, vae = (tiny_models if tiny else full_models).build(family, unet_dtype=torch.float16)
        row = {}
        with training_backend(model, clip, "auto") as backend:
            latents = torch.zeros(2, 4, 8, 8)
            before = reachable_tensor_bytes()
            backend.plan_memory(latents, caption, 2)
            row["left_after_plan_memory_gib"] = round((reachable_tensor_bytes() - before) / GiB, 4)
            for mode in ("fast", "lean"):
                vectors = {k: v.requires_grad_(True) for k, v in backend.initial_vectors("and").items()}
                g = torch.Generator().manual_seed(0)
                with backend.guard.measuring():
                    backend._loss(vectors, latents, [caption] * 2, torch.tensor([500, 900]),
                                  torch.randn(latents.shape, generator=g), lean=mode == "lean")
                regions = backend.guard.measured()
                row[f"text_saved_{mode}_gib"] = round(
                    sum(v for k, v in regions.items() if k.startswith("text")) / GiB, 4)
        report["models"][family] = row
        print(family, row, flush=True)
        del model, clip, vae, backend
    save(out, report)
    return report
