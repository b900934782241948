"""The ComfyUI side of ComfyUI-ReVersion: everything that touches ComfyUI internals, one
module per concern, so a host change touches one file.

    host.py       the host's services: model loading, free memory, progress bar, Cancel, fingerprint
    guards.py     autograd through host code: inference mode, in-place writes, frozen weights
    patches.py    temporary patches of host code (UNet blocks, CLIP layers, attention)
    memory.py     memory planning: estimates, fast/lean/offload, exemplars per forward
    text.py       text encoding with the relation: injection, prompts with <R>
    sampling.py   noise schedule, targets, the VAE encode, images from the stock nodes
    backend.py    ComfyBackend: the trainer's Backend for a MODEL + CLIP
    training.py   the entry points: train_relation (the loop) and train_and_save (the node's run)
    keeping.py    a run's checkpoint writes, and what survives when one fails
    queue_checks.py  the whole graph checked when queued; a refused prompt runs nothing
    progress.py   what the node and the console show while it trains
    loss_plot.py  the loss-curve picture
    store.py      names, paths, overwriting, the written-file record, fallback writes

`reversion/` (the method) never imports ComfyUI; the modules here do, at import time, so
they are imported only once a host is running (inside ComfyUI, or after
`devtools.host.import_comfy()` in tests and tools).
"""
