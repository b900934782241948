"""The host's services that training calls: loading models, free memory, the progress bar,
Cancel. Hosts differ in these functions' signatures, so keyword arguments go through
`accepted` (a probe of the signature, never a version check).
"""
from __future__ import annotations

import inspect

import comfy.model_management as mm
import comfy.utils


def accepted(fn, **kwargs) -> dict:
    """The subset of kwargs that `fn` takes (host signatures differ between versions)."""
    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


def load_for_training(model, clip) -> None:
    """The whole MODEL and CLIP on the compute device: backprop through partially loaded
    weights is untested."""
    mm.load_models_gpu([model, clip.patcher], **accepted(mm.load_models_gpu, force_full_load=True))


def free_memory(device) -> int:
    """Bytes ComfyUI reports free on `device` (after the models it loaded)."""
    return int(mm.get_free_memory(device))


def release_cache() -> None:
    mm.soft_empty_cache()


def progress_bar(total: int):
    """A ComfyUI progress bar (front-end progress; interrupts raise in server mode)."""
    return comfy.utils.ProgressBar(total)


def check_interrupted() -> None:
    """Raise ComfyUI's InterruptProcessingException if the user pressed Cancel."""
    mm.throw_exception_if_processing_interrupted()
