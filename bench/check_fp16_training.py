"""Train Relation with fp16 UNet weights (how SD checkpoints load on most GPUs).

    python -m bench.check_fp16_training --device cuda

Builds the tiny SD1.x / SDXL test models with fp16 UNet weights, trains <R> for a few
updates and prints the losses and how far the (fp32) relation vector moved: finite losses
and a moving vector mean gradients cross the fp16 UNet correctly.
"""
from __future__ import annotations

import argparse

import torch


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--updates", type=int, default=5)
    args = p.parse_args()
    from devtools import host
    host.import_comfy(args.device)
    from comfyui_reversion.reversion import exemplars as ex
    from comfyui_reversion.reversion.trainer import TrainConfig
    from comfyui_reversion.reversion_comfy.backend import ComfyBackend
    from comfyui_reversion.reversion_comfy.training import train_relation
    from devtools import tiny_models

    for family in ("sd1", "sdxl"):
        with torch.inference_mode():
            model, clip, vae = tiny_models.build(family, unet_dtype=torch.float16)
            exemplars = ex.Exemplars(torch.rand(2, 64, 64, 3), [["a cat {} a dog"]] * 2)
            start = ComfyBackend(model, clip).initial_vectors("and")
            result = train_relation(model, clip, vae, exemplars,
                                    TrainConfig(steps=args.updates, grad_accum=1, base_lr=1e-2, scale_lr=False))
        moved = {k: round((result.vectors[k] - start[k]).norm().item(), 4) for k in start}
        losses = [round(r["loss"], 4) for r in result.history]
        finite = all(torch.isfinite(torch.tensor(losses))) and all(torch.isfinite(v).all() for v in result.vectors.values())
        print(f"{family}: unet dtype {model.model.get_dtype()}, losses {losses}, vector moved {moved}, "
              f"{'OK' if finite and all(m > 0 for m in moved.values()) else 'FAILED'}", flush=True)


if __name__ == "__main__":
    main()
