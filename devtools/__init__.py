"""Development tools: not part of the node pack (ComfyUI never imports them).

    pack.py               the pack's import name outside ComfyUI (`comfyui_reversion`)
    host.py               import a ComfyUI checkout outside ComfyUI (tests, lab, tools)
    install_hosts.py      install the two real ComfyUI test hosts under .hosts/
    headless.py           start a headless ComfyUI with the pack and talk HTTP to it
    tiny_models.py        tiny SD1.x / SD2.x-v / SDXL models from ComfyUI's own classes
    full_models.py        full-size SD1.5 / SDXL (random weights) from ComfyUI's own classes
    ui_workflow.py        UI-format workflows from a host's /object_info, and their checks
    make_workflows.py     writes workflows/*.json (+ thumbnails) and workflows_api/
    make_demo_workflow.py the demo graph (API format)
    demo.py               `make demo`
    live_bytes.py         live tensor bytes over a region (the memory estimate's check)

Run them from the repository root as modules (`python -m devtools.demo`); importing this
package registers the pack's import name (pack.py).
"""
from . import pack  # noqa: F401  (registers `comfyui_reversion`)
