"""What bench_scale's parts measure with: peak resident memory, FLOPs, parameter bytes, the
exemplars every part trains on, a backend prepared as train_relation prepares one, one
micro-batch's forward + backward, ComfyUI's dtype flags for the block, and saving a report."""
from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

import torch

GiB = 1024 ** 3


def rss_peak_reset() -> int:
    """Return freed heap to the OS (glibc malloc_trim: otherwise a later mode reuses memory
    an earlier one freed, and its peak does not show in RSS), then reset the process's peak
    RSS to the current RSS; returns the current RSS (bytes)."""
    import ctypes
    import gc
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    Path("/proc/self/clear_refs").write_text("5")
    return _status("VmRSS")


def rss_peak() -> int:
    return _status("VmHWM")


def _status(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def exemplars_for(size: int, n: int = 2):
    from comfyui_reversion.reversion import exemplars as ex
    g = torch.Generator().manual_seed(11)
    return ex.Exemplars(torch.rand(n, size, size, 3, generator=g),
                        [["a cat {} a dog", "a photo of a cat {} a dog", "cat {} dog"]] * n)


# ------------------------------------------------------------------ the paper's procedure

def sync() -> None:
    """Wait for the GPU (timings), nothing on the CPU."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@contextlib.contextmanager
def training_backend(model, clip, memory: str):
    """A prepared `ComfyBackend` as `train_relation` sets one up (training mode, host weights
    frozen, SDPA attention), closed after the block."""
    from comfyui_reversion.reversion_comfy import guards, patches
    from comfyui_reversion.reversion_comfy.backend import ComfyBackend
    with torch.inference_mode(), guards.training_mode():
        backend = ComfyBackend(model, clip, memory)
        backend.prepare()
        try:
            with guards.frozen_weights(model.model, clip.cond_stage_model), patches.memory_efficient_attention():
                yield backend
        finally:
            backend.close()


def run_micro_batch(model, clip, vae, exemplars, mode, chunk):
    """One forward + backward of all `exemplars` (a micro-batch of 2, or a whole update of
    8) through the ComfyUI backend in `mode`, in forwards of `chunk`."""
    from comfyui_reversion.reversion.words import STANDIN
    from comfyui_reversion.reversion_comfy import sampling
    from comfyui_reversion.reversion_comfy.memory import MemoryPlan
    with training_backend(model, clip, "fast") as backend:
        latents = sampling.vae_encode(vae, exemplars.images, 0)
        n = latents.shape[0]
        backend.plan_memory(latents, f"a cat {STANDIN} a dog", n)
        backend.plan = MemoryPlan(mode, chunk, n, mode, {}, None)
        vectors = {k: torch.nn.Parameter(v) for k, v in backend.initial_vectors("and").items()}
        g = torch.Generator().manual_seed(0)
        loss = backend.denoising_loss(vectors, latents, [f"a cat {STANDIN} a dog"] * n,
                                      torch.tensor([500, 900] * (n // 2)), torch.randn(latents.shape, generator=g))
        loss.backward()
    return vectors

def bytes_by_dtype(*modules: torch.nn.Module) -> dict[str, int]:
    """Parameter bytes of `modules`, per dtype name ("float16", ...)."""
    out: dict[str, int] = {}
    for m in modules:
        for p in m.parameters():
            key = str(p.dtype).split(".")[-1]
            out[key] = out.get(key, 0) + p.numel() * p.element_size()
    return out


def build_for_gpu(builder, family: str, dtype: torch.dtype):
    """The model in `dtype`: with fp32, the text encoder in fp32 too (the paper's setting and
    the gradients' reference); otherwise the text encoder as ComfyUI loads it on this device
    (fp16 on a GPU)."""
    with comfy_flag("fp32_text_enc", dtype is torch.float32):
        return builder.build(family, unet_dtype=dtype)


@contextlib.contextmanager
def comfy_flag(name: str, value):
    """One of ComfyUI's command-line flags set for the block (the text encoder's dtype flags
    are read when a CLIP is built), put back after it."""
    import comfy.cli_args
    args = comfy.cli_args.args
    before = getattr(args, name, False)
    setattr(args, name, value)
    try:
        yield
    finally:
        setattr(args, name, before)


def save(out: Path, report: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
