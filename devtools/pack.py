"""The pack's import name in tests, the lab and these tools: the one place that sets it up.

ComfyUI imports the pack folder as a package under a name of its choosing (the folder's
name, or its path), and inside the pack every import is package-relative. Outside
ComfyUI the pack is `comfyui_reversion`: `register()` makes that name the repository
folder without running its `__init__.py` (which imports the nodes, and with them
ComfyUI), so `comfyui_reversion.reversion` (the method) imports with no ComfyUI at all.
`load_into_host()` then does what ComfyUI's own loader does once a host is imported
(`devtools.host.import_comfy`): runs the pack's `__init__.py` and registers its nodes and
web folder with the host.

Never import the pack's packages by their bare names (`reversion`, `nodes`, ...): that
would load a second copy of them, and `nodes` is ComfyUI's.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NAME = "comfyui_reversion"


def register():
    """The pack as package `comfyui_reversion` (its `__init__.py` not run yet)."""
    if NAME not in sys.modules:
        spec = importlib.util.spec_from_file_location(NAME, REPO / "__init__.py",
                                                      submodule_search_locations=[str(REPO)])
        sys.modules[NAME] = importlib.util.module_from_spec(spec)
    return sys.modules[NAME]


def load_into_host():
    """Load the pack into the imported host the way ComfyUI's `load_custom_node` does: run
    its `__init__.py`, add its nodes to the host's node list and its web folder to the
    folders the server serves. Returns the pack module."""
    import nodes as comfy_nodes         # ComfyUI's, after devtools.host.import_comfy()
    module = register()
    if not hasattr(module, "NODE_CLASS_MAPPINGS"):
        module.__spec__.loader.exec_module(module)
    comfy_nodes.NODE_CLASS_MAPPINGS.update(module.NODE_CLASS_MAPPINGS)
    comfy_nodes.NODE_DISPLAY_NAME_MAPPINGS.update(module.NODE_DISPLAY_NAME_MAPPINGS)
    if hasattr(comfy_nodes, "EXTENSION_WEB_DIRS"):
        comfy_nodes.EXTENSION_WEB_DIRS[NAME] = str((REPO / module.WEB_DIRECTORY).resolve())
    return module


register()
