"""The host's services that training calls: loading models, free memory, the progress bar,
Cancel, and which model is loaded (a fingerprint for checkpoints). Hosts differ in these
functions (and newer releases manage VRAM in new ways), so every call is probed (`hasattr`,
the signature via `accepted`), never a version check, and a missing function degrades to
the plain behaviour instead of crashing: the tested hosts are ComfyUI of 2024-03 and
0.3.75; later releases are expected to work through these probes.
"""
from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging

import torch

import comfy.model_management as mm
import comfy.utils

log = logging.getLogger("ReVersion")


def accepted(fn, **kwargs) -> dict:
    """The subset of kwargs that `fn` takes (host signatures differ between versions)."""
    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


def load_for_training(model, clip) -> None:
    """The whole MODEL and CLIP on the compute device, their patches (LoRA) applied."""
    if hasattr(mm, "load_models_gpu"):
        mm.load_models_gpu([model, clip.patcher], **accepted(mm.load_models_gpu, force_full_load=True))
        return
    log.warning("ReVersion: this ComfyUI has no model_management.load_models_gpu; patching the models "
                "where they are")
    for patcher in (model, clip.patcher):
        if hasattr(patcher, "patch_model"):
            patcher.patch_model(**accepted(patcher.patch_model, device_to=patcher.load_device))


def free_memory(device) -> int | None:
    """Bytes ComfyUI reports free on `device` (after the models it loaded); None if this
    host cannot say (the memory plan then takes the mode asked for, auto as fast)."""
    if not hasattr(mm, "get_free_memory"):
        return None
    return int(mm.get_free_memory(device))


def can_offload(patcher) -> bool:
    """Whether this host can keep part of a loaded model in CPU memory, casting each module's
    weights to the device when it runs (ComfyUI's partial loading: 0.3 and later)."""
    return hasattr(patcher, "partially_unload") and hasattr(patcher, "offload_device")


def offload(patchers, nbytes: int) -> int:
    """Keep up to `nbytes` of the patchers' loaded weights in CPU memory (their modules then
    cast the weights to the device per use, LoRA patches included); returns the bytes moved."""
    moved = 0
    for patcher in patchers:
        if moved >= nbytes:
            break
        if can_offload(patcher):
            moved += int(patcher.partially_unload(patcher.offload_device, nbytes - moved) or 0)
    return moved


def keep_offloaded(patcher, loaded: int) -> int:
    """Move weights back to CPU memory until at most `loaded` bytes of `patcher` stay on the
    device (a sampler run in between loads as much as fits); returns the bytes moved."""
    if not (can_offload(patcher) and hasattr(patcher, "loaded_size")):
        return 0
    extra = int(patcher.loaded_size()) - loaded
    return int(patcher.partially_unload(patcher.offload_device, extra) or 0) if extra > 0 else 0


def loaded_bytes(patcher) -> int | None:
    """Bytes of `patcher`'s weights on its device (None where the host does not say)."""
    return int(patcher.loaded_size()) if hasattr(patcher, "loaded_size") else None


def release_cache() -> None:
    if hasattr(mm, "soft_empty_cache"):
        mm.soft_empty_cache()


def progress_bar(total: int):
    """A ComfyUI progress bar (front-end progress; interrupts raise in server mode)."""
    return comfy.utils.ProgressBar(total)


@contextlib.contextmanager
def progress_held(value: int, total: int):
    """While a training preview samples: every progress report (the sampler's own bar, its
    latent previews) shows the training bar at `value` of `total` instead, so the node's
    bar and the header's percentage never jump back. The host's hook still runs on each
    report, so Cancel still reaches the sampler."""
    hook = getattr(comfy.utils, "PROGRESS_BAR_HOOK", None)
    if hook is None:
        yield
        return

    def held(_value, _total, _preview=None, *args, **kwargs):
        return hook(value, total, None, *args, **kwargs)
    comfy.utils.PROGRESS_BAR_HOOK = held
    try:
        yield
    finally:
        comfy.utils.PROGRESS_BAR_HOOK = hook


def check_interrupted() -> None:
    """Raise ComfyUI's InterruptProcessingException if the user pressed Cancel."""
    if hasattr(mm, "throw_exception_if_processing_interrupted"):
        mm.throw_exception_if_processing_interrupted()


FINGERPRINT_TENSORS, FINGERPRINT_VALUES = 24, 256      # sampled per model: cheap, yet any other model differs


def model_fingerprint(model, clip) -> str:
    """A short hash that tells one MODEL + CLIP from another: sampled values of the unpatched
    weights (a patcher's backup where it patched in place, so full and partial loads agree)
    and the patches on each (keys, strengths, the first values of each patch's weights).
    Checkpoints record it, so a run resumes only on the model that started it."""
    h = hashlib.sha256()
    for patcher in (model, clip.patcher):
        weights = patcher.model.state_dict(keep_vars=True)
        keys = sorted(weights)
        backup = getattr(patcher, "backup", {}) or {}
        for key in keys[:: max(1, len(keys) // FINGERPRINT_TENSORS)][:FINGERPRINT_TENSORS]:
            original = backup.get(key)
            tensor = getattr(original, "weight", original) if original is not None else weights[key]
            h.update(key.encode())
            h.update(_sample(tensor))
        for key in sorted(getattr(patcher, "patches", {}) or {}, key=str):
            for patch in patcher.patches[key]:
                h.update(repr((key, patch[0], patch[2] if len(patch) > 2 else None)).encode())
                h.update(_sample(_first_tensor(patch[1])))
    return h.hexdigest()[:16]


def _sample(tensor) -> bytes:
    if not isinstance(tensor, torch.Tensor):
        return b""
    return tensor.detach().reshape(-1)[:FINGERPRINT_VALUES].float().cpu().numpy().tobytes()


def _first_tensor(data, depth: int = 0):
    """The first tensor in a patch's data (a tensor, a tuple of them, or an adapter object)."""
    if isinstance(data, torch.Tensor) or depth > 3:
        return data
    if hasattr(data, "weights"):                  # comfy.weight_adapter adapters (0.3.x)
        data = data.weights
    if isinstance(data, (tuple, list)):
        for item in data:
            found = _first_tensor(item, depth + 1)
            if isinstance(found, torch.Tensor):
                return found
    return None
