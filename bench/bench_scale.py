"""Full-size SD memory and speed per memory mode, and the ratio to the paper's procedure.
The parts live in bench/scale_{cpu,estimate,gpu,profile}.py; this file dispatches them.

    python -m bench.bench_scale                 # or: make bench-scale  (CPU, ~15 min on 1 core)
    python -m bench.bench_scale gpu             # on a CUDA machine (bench/gpu_session.sh; docs/results.md)
    python -m bench.bench_scale profile --size 512 --dtype bfloat16   # where an update's time goes (GPU)
    python -m bench.bench_scale profile --tiny --size 64               # the same on tiny models (CPU, tested)
    python -m bench.bench_scale text-bytes      # CLIP bytes saved fast vs lean, bytes left by probes (CPU)
    python -m bench.bench_scale gpu --tiny      # the GPU part on tiny models, runs anywhere (tested)
    python -m bench.bench_scale cpu --tiny --size 64   # the CPU part on tiny models (seconds)

CPU part (writes bench/results/scale.json): full-size SD1.5 (random weights, ComfyUI's own
classes: devtools/full_models.py) at 256 px, micro-batch 2 x 4 accumulation, fp32, 1 thread
(`--threads`), each row in a fresh process (`cpu-row`):
- per memory mode (fast with the whole update of 8 in one forward, as auto picks when it
  fits; fast with one micro-batch of 2 per forward; lean; lean split 2 -> 1 + 1): peak
  resident memory above the
  loaded weights during training (Linux VmHWM, reset via /proc/self/clear_refs before
  it), the memory plan's own estimate, seconds per update, FLOPs per update
  (torch.utils.flop_counter.FlopCounterMode over one micro-batch, x 4);
- the reference: the paper's per-update procedure re-implemented here (fp32, exemplars
  VAE-encoded again every micro-batch, the whole token table trainable with every other row
  restored after the step, one caption per text-encoder call, every saved tensor cloned),
  on the same model, seed, exemplars and random draws: its losses must equal ours, and the
  time ratio ours/reference is reported.

GPU part (`gpu`; bench/gpu_session.sh runs it on a lent GPU): SD1.5 512 px and SDXL
1024 px, micro-batch 2, UNet weights fp32 (text encoder fp32 too: the reference), fp16 and
bf16 (text encoder as ComfyUI loads it there, fp16); each (model, dtype) in a fresh process.
Per memory mode (fast, lean, and the whole 2 x 4 update in one fast forward, as auto runs it
when it fits), after a warm-up run: seconds, FLOPs, peak memory above what was allocated
before (torch.cuda.max_memory_allocated; the loaded weights are `weights_gib`), and the
cosine of the <R> gradient to the fp32 model's on the same inputs with the share of its
entries that are exactly zero (fp16 underflow). Then 4 whole updates per dtype through
Train Relation's path (memory=auto) and, on the fp32 weights, the paper's procedure
(SD1.5 and SDXL): the reference ratio of each dtype's last update. A row's seconds, FLOPs
and peak include train_relation's per-call set-up (loading check, VAE encode, one probe).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from devtools.pack import REPO

from .scale_cpu import CPU_ROWS, cpu_part, cpu_row
from .scale_estimate import estimate_part, text_bytes_part
from .scale_gpu import gpu_case, gpu_part
from .scale_profile import profile_part


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", nargs="?", default="cpu", choices=["cpu", "cpu-row", "estimate", "text-bytes", "gpu", "gpu-case", "profile"])
    p.add_argument("--row", choices=list(CPU_ROWS), help="cpu-row: the row to measure (the cpu part runs each)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--family", default=None, help="cpu: sd1 (default); estimate: sd1,sdxl (default)")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--dtype", default=None, help="gpu-case (default float32), profile (default bfloat16): the model's dtype")
    p.add_argument("--grads", type=Path, help="gpu-case: the fp32 case's gradients (written by it, read by others)")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    from devtools import host
    host.import_comfy("cpu" if args.part.startswith("cpu") or not torch.cuda.is_available() else "cuda")
    if args.part == "cpu":
        cpu_part(args.size, args.out or REPO / "bench" / "results" / "scale.json", args.family or "sd1",
                 args.threads, args.tiny)
    elif args.part == "cpu-row":
        args.out.write_text(json.dumps(cpu_row(args.row, args.size, args.family or "sd1", args.threads, args.tiny)))
    elif args.part == "estimate":
        estimate_part(args.out or REPO / "bench" / "results" / "scale_estimates.json",
                      (args.family or "sd1,sdxl").split(","))
    elif args.part == "text-bytes":
        torch.set_num_threads(args.threads)
        text_bytes_part(args.out or REPO / "bench" / "results" / "scale_text_bytes.json",
                        (args.family or "sd1,sdxl").split(","), args.tiny)
    elif args.part == "gpu-case":
        case = gpu_case(args.family or "sd1", args.size, 2, args.dtype or "float32", args.grads, args.tiny, args.out)
        args.out.write_text(json.dumps(case))
    elif args.part == "profile":
        family, dtype = args.family or "sd1", args.dtype or "bfloat16"
        if not torch.cuda.is_available():
            torch.set_num_threads(args.threads)
        profile_part(args.out or REPO / "bench" / "results" / f"profile_{family}_{dtype}.json", family,
                     args.size, dtype, args.tiny)
    else:
        gpu_part(args.out or REPO / "bench" / "results" / f"scale_gpu{'_tiny' if args.tiny else ''}.json", args.tiny)


if __name__ == "__main__":
    main()
