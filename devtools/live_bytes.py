"""Live tensor bytes over a region of code, and their peak: an independent measure of what a
training step holds, to check the memory plan's estimate against (tests, benchmarks).

Every tensor an op returns inside the region is seen (a TorchDispatchMode); one whose
storage is not one of the op's inputs' is a new allocation, counted until the last tensor
that holds that storage dies (CPython frees a tensor's Python object only once autograd and
every other holder let go of it, so a saved activation counts until backward frees it).
Storages that existed before the region (weights, exemplars) never count; views of them
either. Works on any device, the CPU included; bytes, not the allocator's cached blocks.

    with LiveBytes() as trace:
        loss = step(); loss.backward()
    trace.peak        # most bytes alive at once, beyond what existed before
"""
from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveBytes(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.now = self.peak = 0
        self._holders: dict[int, set[int]] = {}     # storage -> ids of the tensors holding it
        self._sizes: dict[int, int] = {}

    @staticmethod
    def _storage(t: torch.Tensor) -> int:
        return t.untyped_storage()._cdata

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {self._storage(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                key = self._storage(t)
                if key in self._holders:
                    self._hold(key, t)
                elif key not in inputs:                       # a new allocation
                    self._sizes[key] = t.untyped_storage().nbytes()
                    self._holders[key] = set()
                    self.now += self._sizes[key]
                    self.peak = max(self.peak, self.now)
                    self._hold(key, t)
        return out

    def _hold(self, key: int, t: torch.Tensor) -> None:
        holders = self._holders[key]
        if id(t) not in holders:
            holders.add(id(t))
            weakref.finalize(t, self._release, key, id(t))

    def _release(self, key: int, tensor_id: int) -> None:
        holders = self._holders.get(key)
        if holders is None:
            return
        holders.discard(tensor_id)
        if not holders:
            self.now -= self._sizes.pop(key)
            del self._holders[key]


def reachable_tensor_bytes() -> int:
    """Bytes of every distinct tensor storage Python can still reach (after a gc pass): what
    a finished run left behind, where LiveBytes measures inside a region."""
    import gc
    gc.collect()
    seen, total = set(), 0
    for o in gc.get_objects():
        if torch.is_tensor(o) and o.device.type != "meta":
            ptr = o.untyped_storage().data_ptr()
            if ptr not in seen:
                seen.add(ptr)
                total += o.untyped_storage().nbytes()
    return total


def estimate_against_live(model, clip, latents, noise, captions, t) -> dict:
    """The memory plan's estimate against the live bytes of the real step, on `model` and
    `clip` (already loaded): the probes' peak, then per mode (fast, lean) one forward +
    backward of all `latents` in one piece: {"probe_peak": bytes, mode: {"step_peak": bytes,
    "decided": the bytes the plan decides with, less its fixed reserve}}. Used by
    bench/bench_estimate.py and tests/comfy/test_memory.py."""
    from comfyui_reversion.reversion_comfy import guards, memory
    from comfyui_reversion.reversion_comfy.backend import ComfyBackend
    n, pixels = latents.shape[0], latents.shape[-2] * latents.shape[-1]
    out = {}
    with torch.inference_mode(), guards.training_mode():
        backend = ComfyBackend(model, clip, "auto")
        backend.prepare()
        try:
            with guards.frozen_weights(model.model, clip.cond_stage_model):
                with LiveBytes() as probes:
                    backend.plan_memory(latents, captions[0], n)
                out["probe_peak"] = probes.peak
                estimate = backend.last_estimate
                for mode in ("fast", "lean"):
                    backend.plan = memory.MemoryPlan(mode, n, n, mode, {}, None)
                    vectors = {k: v.detach().clone().requires_grad_(True)
                               for k, v in backend.initial_vectors("and").items()}
                    with LiveBytes() as step:
                        backend.denoising_loss(vectors, latents, captions, t, noise).backward()
                    out[mode] = {"step_peak": step.peak,
                                 "decided": estimate.needed(mode, n, pixels) - estimate.RESERVE,
                                 "margin": estimate.MARGIN}
        finally:
            backend.close()
    return out
