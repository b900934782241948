"""ComfyUI side of ComfyUI-ReVersion: everything that touches ComfyUI internals.

- `adapter.py`: what relation training and injection need from the host (inference mode,
  model sampling, embedding injection, apply_model, memory management, progress). A host
  change should touch this file only.
- `toy_model.py`: the toy-world model built from ComfyUI's own classes.
- `standalone.py`: importing ComfyUI outside its own process (tests, scripts, bench).

`reversion/` (the method) never imports ComfyUI; this package does, lazily.
"""
