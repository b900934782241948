"""bench_scale's GPU part: fp32/fp16/bf16 memory, speed and gradient fidelity per memory mode,
each (model, dtype) in a fresh process (`python -m bench.bench_scale gpu`)."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from devtools.pack import REPO

from .measure import GiB, build_for_gpu, bytes_by_dtype, count_flops, exemplars_for, run_micro_batch, save, sync
from .reference import reference_train


GPU_MODES = (           # (row, memory mode, micro-batches in the one forward)
    ("fast", "fast", 1),
    ("lean", "lean", 1),
    ("fast, whole update", "fast", 4),   # the 2 x 4 update in one forward, as auto runs it when it fits
)


def gpu_part(out: Path, tiny: bool = False):
    """fp32/fp16/bf16 memory, speed and gradient fidelity per mode (CUDA; `tiny`: tiny models
    on whatever device ComfyUI picked, small images, to test this code). Each (model,
    dtype) runs in a fresh process (`gpu-case`): its peak memory then holds no earlier
    model (ComfyUI keeps references to unloaded ones). fp32 runs first: its gradients are
    the cosine's reference and its paper-procedure update times the ratio's."""
    import subprocess
    import tempfile
    cuda = torch.cuda.is_available()
    cases = [("sd1", 64, 2)] if tiny else [("sd1", 512, 2), ("sdxl", 1024, 2)]
    dtypes = ("float32", "bfloat16") if tiny else ("float32", "float16", "bfloat16")
    report = {"device": torch.cuda.get_device_name() if cuda else "cpu", "tiny": tiny, "torch": torch.__version__,
              "complete": False, "rows": [], "updates": [], "failed": []}
    with tempfile.TemporaryDirectory() as tmp:
        for family, size, batch in cases:
            reference = None
            for dtype in dtypes:
                part = Path(tmp) / f"{family}_{dtype}.json"
                cmd = [sys.executable, "-m", "bench.bench_scale", "gpu-case", "--family", family,
                       "--size", str(size), "--dtype", dtype, "--grads", str(Path(tmp) / f"{family}_grads.pt"),
                       "--out", str(part)] + (["--tiny"] if tiny else [])
                failed = subprocess.run(cmd, cwd=REPO).returncode != 0
                case = json.loads(part.read_text()) if part.is_file() else {"rows": [], "updates": None}
                report["rows"] += case["rows"]
                if failed or case["updates"] is None:
                    report["failed"].append(f"{family} {dtype}")
                    save(out, report)
                    continue
                updates = case["updates"]
                reference = reference or updates.get("reference_update_seconds")
                if reference:
                    updates["time_ratio_to_fp32_reference_last_update"] = round(
                        updates["update_seconds"][-1] / reference[-1], 3)
                report["updates"].append(updates)
                print(updates, flush=True)
                save(out, report)      # after every case: a run stopped at its time limit keeps what it measured
    report["complete"] = not report["failed"]
    save(out, report)
    return report


def gpu_case(family: str, size: int, batch: int, dtype_name: str, grads_path: Path, tiny: bool,
             out: Path | None = None) -> dict:
    """One model in one dtype, in this process: each mode's forward + backward timed after
    a warm-up run (kernel choice, loading), peak memory above what was allocated before it
    (the loaded weights), FLOPs, the <R> gradient (and its cosine to the fp32 case's, read
    from `grads_path`; the fp32 case writes it); then whole updates timed one by one."""
    from devtools import full_models
    from devtools import tiny_models
    cuda = torch.cuda.is_available()
    dtype = getattr(torch, dtype_name)
    model, clip, vae = build_for_gpu(tiny_models if tiny else full_models, family, dtype)
    weights = sum(bytes_by_dtype(model.model, clip.cond_stage_model).values())
    clip_bytes = bytes_by_dtype(clip.cond_stage_model)
    reference = torch.load(grads_path) if dtype is not torch.float32 and grads_path.is_file() else None
    grads, rows = {}, []

    for mode, memory_mode, micro_batches in GPU_MODES:
        n = batch * micro_batches
        exemplars = exemplars_for(size, n)
        run_micro_batch(model, clip, vae, exemplars, memory_mode, n)      # warm-up
        sync()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() if cuda else 0
        t = time.perf_counter()
        vectors = run_micro_batch(model, clip, vae, exemplars, memory_mode, n)
        sync()
        seconds = time.perf_counter() - t
        peak = torch.cuda.max_memory_allocated() if cuda else 0
        flops = count_flops(lambda: run_micro_batch(model, clip, vae, exemplars, memory_mode, n))
        row = {"family": family, "size": size, "dtype": dtype_name, "mode": mode, "exemplars": n,
               "weights_gib": round(weights / GiB, 3),
               "clip_weights_gib_by_dtype": {k: round(v / GiB, 3) for k, v in clip_bytes.items()},
               "seconds": round(seconds, 4), "seconds_per_micro_batch": round(seconds * batch / n, 4),
               "tflop": round(flops / 1e12, 3), "achieved_tflop_per_s": round(flops / seconds / 1e12, 1),
               "allocated_before_gib": round(before / GiB, 3) if cuda else None,
               "max_memory_allocated_gib": round(peak / GiB, 3) if cuda else None,
               "peak_above_before_gib": round((peak - before) / GiB, 3) if cuda else None}
        grads[mode] = {k: v.grad.detach().float().cpu() for k, v in vectors.items()}
        # underflow shows as exact zeros in the fp32 vector's gradient (loss scaling's cue)
        row["grad_zero_fraction"] = {k: round(float((g == 0).float().mean()), 5) for k, g in grads[mode].items()}
        if reference is not None:
            row["grad_cosine_to_fp32"] = {k: round(float(torch.nn.functional.cosine_similarity(
                g.flatten(), reference[mode][k].flatten(), dim=0)), 5) for k, g in grads[mode].items()}
        rows.append(row)
        print(row, flush=True)
        if out is not None:          # after every row: a case stopped later keeps its rows
            out.write_text(json.dumps({"rows": rows, "updates": None}))
    if dtype is torch.float32:
        torch.save(grads, grads_path)
    updates = timed_updates(model, clip, vae, size, dtype, cuda)
    updates["family"] = family
    return {"rows": rows, "updates": updates}

def timed_updates(model, clip, vae, size, dtype, cuda, updates=4) -> dict:
    """Whole updates (2 x 4) timed one by one (the first also warms up): Train Relation's
    path with memory=auto in `dtype`, and with fp32 weights also the paper's procedure
    (reference_train) on the same model."""
    from comfyui_reversion.reversion.trainer import TrainConfig
    from comfyui_reversion.reversion_comfy import training
    config = TrainConfig(steps=updates, batch_size=2, grad_accum=4, seed=2023)
    exemplars = exemplars_for(size)

    out = {"size": size, "dtype": str(dtype).split(".")[-1], "updates": updates}
    if dtype is torch.float32:
        seconds: list[float] = []
        with torch.inference_mode():
            losses, _ = reference_train(model, clip, vae, exemplars, config, seconds)
        out["reference_update_seconds"] = [round(t, 3) for t in seconds]
        out["reference_losses"] = losses
    seconds, last = [], [time.perf_counter()]

    def tick(step, total, record, vectors):
        sync()
        seconds.append(time.perf_counter() - last[0])
        last[0] = time.perf_counter()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    sync()
    last[0] = time.perf_counter()
    with torch.inference_mode():
        result = training.train_relation(model, clip, vae, exemplars, config, tick, memory="auto")
    out.update(plan=result.memory, update_seconds=[round(t, 3) for t in seconds],
               losses=[r["loss"] for r in result.history],
               max_memory_allocated_gib=round(torch.cuda.max_memory_allocated() / GiB, 3) if cuda else None)
    return out
