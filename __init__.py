"""ComfyUI-ReVersion: learn a relation token <R> from exemplar images (ReVersion) and use it
in any prompt. See README.md and docs/design.md."""
import os
import sys

# `reversion` (the method) and `reversion_comfy` (the host adapter) are imported by absolute
# name everywhere, inside ComfyUI as in tests. Appended, not prepended, so ComfyUI's own
# top-level modules (`nodes`, `utils`, ...) keep precedence over this folder's.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.append(_HERE)

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

# web/js: front-end helpers (node status text, exact float widgets); web/docs/<NodeClass>.md:
# the pages the front end's node Help panel asks for (/extensions/<pack folder>/docs/...).
WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
