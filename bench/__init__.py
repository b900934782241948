"""Speed and memory benchmarks of the pack (NOTES.md); run as `python -m bench.<script>`."""
import devtools  # noqa: F401  (registers `comfyui_reversion`)
