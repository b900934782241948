"""Seconds per training update of Train Relation on the tiny test models and the toy model.

    python -m bench.bench_train_step [--updates 10]      # or: make bench

One update = `grad_accum` micro-batches of `batch_size` exemplars (here 1 x 2, and the
paper's 4 x 2), each: CLIP encode with the injected vector, UNet forward + backward,
steering loss. Runs on the host named by COMFYUI_PATH (default: the bundled 0.3.75), on the
CPU unless --device cuda. Prints a table; today's figures are in docs/results.md.
"""
from __future__ import annotations

import argparse
import platform
import resource
import time

import torch


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--updates", type=int, default=10)
    p.add_argument("--device", default="cpu")
    p.add_argument("--models", default="sd1,sd2v,sdxl,toy")
    args = p.parse_args()

    from devtools import host as dev_host
    host = dev_host.import_comfy(args.device)
    from comfyui_reversion import toyworld
    from comfyui_reversion.reversion import exemplars as ex
    from comfyui_reversion.reversion.trainer import TrainConfig
    from comfyui_reversion.reversion_comfy.training import train_relation
    from comfyui_reversion.toyworld import model as toy_model
    from devtools import tiny_models

    print(f"host {host.name}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, device {args.device}")
    print(f"{'model':6} {'image':>6} {'accum x batch':>13} {'s/update':>9} {'s/micro-batch':>13}")
    for name in args.models.split(","):
        with torch.inference_mode():
            if name == "toy":
                model, clip, vae = toy_model.load()
                exemplars = toyworld.exemplars("inside", 4, 0)
            else:
                model, clip, vae = tiny_models.build(name)
                exemplars = ex.Exemplars(torch.rand(4, 64, 64, 3), [["a cat {} a dog"]] * 4)
            for accum, batch in ((1, 2), (4, 2)):
                def run(updates):
                    return train_relation(model, clip, vae, exemplars,
                                          TrainConfig(steps=updates, grad_accum=accum, batch_size=batch))
                run(2)                                    # warm-up: loading, first-call overheads
                t = time.perf_counter()
                run(args.updates)
                per_update = (time.perf_counter() - t) / args.updates
                print(f"{name:6} {exemplars.images.shape[1]:>5}px {accum:>6} x {batch:<5} {per_update:>9.3f} "
                      f"{per_update / accum:>13.3f}", flush=True)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
