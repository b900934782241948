"""Train Relation with fp16 UNet weights (how SD checkpoints load on most GPUs).

    python bench/check_fp16_training.py --device cuda

Builds the tiny SD1.x / SDXL test models with fp16 UNet weights, trains <R> for a few
updates and prints the losses and how far the (fp32) relation vector moved: finite losses
and a moving vector mean gradients cross the fp16 UNet correctly.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--updates", type=int, default=5)
    args = p.parse_args()
    from reversion_comfy import standalone
    standalone.import_comfy(args.device)
    import tiny_models
    from reversion import exemplars as ex
    from reversion.trainer import TrainConfig
    from reversion_comfy import adapter

    for family in ("sd1", "sdxl"):
        with torch.inference_mode():
            model, clip, vae = tiny_models.build(family, unet_dtype=torch.float16)
            exemplars = ex.Exemplars(torch.rand(2, 64, 64, 3), [["a cat {} a dog"]] * 2)
            start = adapter.ComfyBackend(model, clip).initial_vectors("and")
            result = adapter.train_relation(model, clip, vae, exemplars,
                                            TrainConfig(steps=args.updates, grad_accum=1, base_lr=1e-2, scale_lr=False))
        moved = {k: round((result.vectors[k] - start[k]).norm().item(), 4) for k in start}
        losses = [round(r["loss"], 4) for r in result.history]
        finite = all(torch.isfinite(torch.tensor(losses))) and all(torch.isfinite(v).all() for v in result.vectors.values())
        print(f"{family}: unet dtype {model.model.get_dtype()}, losses {losses}, vector moved {moved}, "
              f"{'OK' if finite and all(m > 0 for m in moved.values()) else 'FAILED'}", flush=True)


if __name__ == "__main__":
    main()
