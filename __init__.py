"""ComfyUI-ReVersion: learn a relation token <R> from exemplar images (ReVersion) and use it
in any prompt. See README.md and docs/design.md.

ComfyUI imports this folder as a package (under a name of its choosing) and reads the
names below. Inside the pack every import is package-relative, so the pack's `nodes/`
can never be taken for ComfyUI's `nodes` module, nor ComfyUI's for ours.
"""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from .reversion_comfy import queue_checks

# Every /prompt is checked as a whole graph (files it writes, names, settings) before it
# runs: a refused prompt runs nothing (reversion_comfy/queue_checks.py)
queue_checks.install()

# web/js: front-end helpers (node status text, exact float widgets); web/docs/<NodeClass>.md:
# the pages the front end's node Help panel asks for (/extensions/<pack folder>/docs/...).
WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
