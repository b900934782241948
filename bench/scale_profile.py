"""bench_scale's profile part: where the time of one update goes (torch.profiler), and the
forward + backward alone per variant (`python -m bench.bench_scale profile`)."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from .measure import build_for_gpu, exemplars_for, save, sync, training_backend


PROFILE_VARIANTS = {     # name: what changes for the timing
    "ours": "Train Relation's forward + backward of one whole update (fast, all exemplars in one forward)",
    "cudnn.benchmark": "the same with cuDNN's convolution autotuner on",
}


def profile_part(out: Path, family: str, size: int, dtype_name: str, tiny: bool, updates: int = 4) -> dict:
    """Where the time of one update goes, for issue 7's gap to the FLOP floor (on a GPU; on
    the CPU with `tiny` to test it): whole updates through Train Relation's path under
    torch.profiler (memory=auto; the last two profiled), giving the wall time per update, the device's
    busy time (kernels; its idle share says whether the update is bound by Python/launch
    overhead rather than by the GPU), kernel launches, host-device syncs (`.item()`,
    `float(t)`, copies to the CPU) and the top ops; then the whole update's forward +
    backward alone, per PROFILE_VARIANTS, each timed 3 times after a warm-up, with the
    saved-tensor hooks' calls and their own (Python) seconds."""
    from devtools import full_models
    from devtools import tiny_models
    from torch.profiler import ProfilerActivity, profile
    from comfyui_reversion.reversion.trainer import TrainConfig
    from comfyui_reversion.reversion_comfy import training
    cuda = torch.cuda.is_available()
    dtype = getattr(torch, dtype_name)
    model, clip, vae = build_for_gpu(tiny_models if tiny else full_models, family, dtype)
    exemplars = exemplars_for(size, 8)
    config = TrainConfig(steps=updates, batch_size=2, grad_accum=4, seed=2023)

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    prof = profile(activities=activities)        # on for the last two updates (earlier ones warm up)
    stamps = []

    def tick(step, total, record, vectors):
        sync()
        stamps.append(time.perf_counter())
        if step == total - 2:
            prof.start()
        elif step == total:
            prof.stop()
    sync()
    stamps.append(time.perf_counter())
    with torch.inference_mode():
        result = training.train_relation(model, clip, vae, exemplars, config, tick, memory="auto")
    events = prof.key_averages()

    def device_us(e):
        return getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0) or 0

    def count(*names):
        return sum(e.count for e in events if e.key in names) / 2          # per profiled update
    wall = (stamps[-1] - stamps[-3]) / 2
    busy = sum(device_us(e) for e in events) / 2 / 1e6 if cuda else None
    by_device = sorted(events, key=device_us, reverse=True) if cuda else []
    by_cpu = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
    report = {
        "family": family, "size": size, "dtype": dtype_name, "tiny": tiny, "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if cuda else "cpu", "plan": result.memory,
        "update_seconds": [round(b - a, 4) for a, b in zip(stamps, stamps[1:])],
        "profiled_update_seconds": round(wall, 4),
        "device_busy_seconds": round(busy, 4) if cuda else None,
        "device_idle_share": round(1 - busy / wall, 3) if cuda else None,
        "per_update": {
            "cpu_ops": round(sum(e.count for e in events if e.key.startswith("aten::")) / 2),
            "kernel_launches": count("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx"),
            "item_syncs": count("aten::_local_scalar_dense"),
            "equal_syncs": count("aten::equal"),
            "stream_syncs": count("cudaStreamSynchronize", "cudaDeviceSynchronize"),
            "memcpy": count("cudaMemcpyAsync", "cudaMemcpy"),
        },
        "top_device_ops": [{"op": e.key, "ms": round(device_us(e) / 2e3, 3), "count": e.count // 2}
                           for e in by_device[:15]],
        "top_cpu_ops": [{"op": e.key, "self_cpu_ms": round(e.self_cpu_time_total / 2e3, 3), "count": e.count // 2}
                        for e in by_cpu[:15]],
    }
    print({k: v for k, v in report.items() if not k.startswith("top")}, flush=True)
    report["forward_backward"] = forward_backward_variants(model, clip, vae, exemplars)
    save(out, report)
    return report


def forward_backward_variants(model, clip, vae, exemplars, reps: int = 3) -> dict:
    """The whole update's denoising forward + backward alone (no steering, optimizer or
    loop), in one forward of all exemplars, per PROFILE_VARIANTS: seconds of each of `reps`
    runs after a warm-up, and the guard's pack/unpack calls and seconds in them per run (the
    Python cost of the in-place guard, on the CPU's critical path)."""
    from comfyui_reversion.reversion.words import STANDIN
    from comfyui_reversion.reversion_comfy import sampling
    out = {}
    caption = f"a cat {STANDIN} a dog"
    with training_backend(model, clip, "fast") as backend:
        latents = sampling.vae_encode(vae, exemplars.images, 0)
        n = latents.shape[0]
        g = torch.Generator().manual_seed(0)
        t, noise = torch.tensor([500, 900] * (n // 2)), torch.randn(latents.shape, generator=g)
        backend.plan_memory(latents, caption, n)
        guard, calls = backend.guard, {"pack": 0, "unpack": 0, "seconds": 0.0}

        def timed(fn, name):
            def hook(x):
                start = time.perf_counter()
                try:
                    return fn(x)
                finally:
                    calls[name] += 1
                    calls["seconds"] += time.perf_counter() - start
            return hook
        guard.pack, guard.unpack = timed(guard.pack, "pack"), timed(guard.unpack, "unpack")   # this backend's
        benchmark = torch.backends.cudnn.benchmark
        for name in PROFILE_VARIANTS:
            torch.backends.cudnn.benchmark = name == "cudnn.benchmark"
            seconds = []
            try:
                for rep in range(reps + 1):
                    vectors = {k: torch.nn.Parameter(v) for k, v in backend.initial_vectors("and").items()}
                    calls.update(pack=0, unpack=0, seconds=0.0)
                    sync()
                    start = time.perf_counter()
                    backend.denoising_loss(vectors, latents, [caption] * n, t, noise).backward()
                    sync()
                    seconds.append(time.perf_counter() - start)
            finally:
                torch.backends.cudnn.benchmark = benchmark
            out[name] = {"seconds": [round(s, 4) for s in seconds[1:]], "what": PROFILE_VARIANTS[name],
                         "hook_calls": {k: calls[k] for k in ("pack", "unpack")},
                         "hook_seconds": round(calls["seconds"], 4)}
            print(name, out[name], flush=True)
    return out
