"""The lab: experiments on the toy world and their history (README.md). The node pack never
imports it; it imports the pack by its development name (devtools/pack.py)."""
import devtools  # noqa: F401  (registers `comfyui_reversion`)
