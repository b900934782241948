"""A training run on the host (reversion_comfy/training.py), through Train Relation as a
graph runs it: the same seed gives the same relation and the same bytes, previews do not
change training, and Cancel stops it within one UNet block with nothing written."""
from __future__ import annotations

import threading
import time

import pytest
import torch

from conftest import run_node, small_exemplars, train_inputs


def test_same_seed_same_relation(host, tiny):
    model, clip, vae = tiny("sd1")
    r1, _, _ = run_node(host, "ReVersionTrainRelation", "train", **train_inputs(model, clip, vae, "seed_a", train_seed=7))
    r2, _, _ = run_node(host, "ReVersionTrainRelation", "train", **train_inputs(model, clip, vae, "seed_b", train_seed=7))
    r3, _, _ = run_node(host, "ReVersionTrainRelation", "train", **train_inputs(model, clip, vae, "seed_c", train_seed=8))
    assert torch.equal(r1.vectors["clip_l"], r2.vectors["clip_l"])
    assert not torch.equal(r1.vectors["clip_l"], r3.vectors["clip_l"])


def test_same_seed_gives_a_byte_identical_file(host, tiny):
    model, clip, vae = tiny("sd1")
    path = host.embeddings / "bytes_same.safetensors"
    run_node(host, "ReVersionTrainRelation", "train", **train_inputs(model, clip, vae, "bytes_same", train_seed=5))
    first = path.read_bytes()
    time.sleep(1.1)            # a wall-clock field would now differ
    run_node(host, "ReVersionTrainRelation", "train",
             **train_inputs(model, clip, vae, "bytes_same", train_seed=5))
    assert path.read_bytes() == first
    run_node(host, "ReVersionTrainRelation", "train",
             **train_inputs(model, clip, vae, "bytes_same", train_seed=6))
    assert path.read_bytes() != first


def test_sample_previews_show_beside_the_loss_curve_and_do_not_change_training(host, tiny, monkeypatch):
    import comfy.utils
    from comfyui_reversion.reversion_comfy import sampling, training
    model, clip, vae = tiny("sd1")
    seen, drawn = [], []
    monkeypatch.setattr(training, "sample_preview", lambda *a, **k: drawn.append(1) or sampling.sample_preview(*a, **k))
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, **kw: seen.append((value, total, preview)))
    try:
        relation, _, samples = run_node(host, "ReVersionTrainRelation", "train",
                                        **train_inputs(model, clip, vae, "previewed", steps=4, preview_every=2,
                                                       preview_prompt="a dog <R> a cat"))
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    assert len(drawn) == 2            # at updates 2 and 4; the last is the samples output, not drawn again
    ours = {v: p for v, t, p in seen if t == 4}
    curve_only = ours[1][1].size                  # before the first preview: the loss curve alone
    with_sample = ours[2][1].size                 # then the curve with the sample to its right
    assert with_sample[0] == curve_only[0] + curve_only[1] and with_sample[1] == curve_only[1]
    assert ours[4][1].size == with_sample
    # the same training without previews: identical vector (previews use no training randomness)
    plain, _, _ = run_node(host, "ReVersionTrainRelation", "train",
                           **train_inputs(model, clip, vae, "not_previewed", steps=4, preview_every=0))
    assert torch.equal(plain.vectors["clip_l"], relation.vectors["clip_l"])
    # the samples output is the preview prompt drawn with the final vector at the fixed seed
    size = int(small_exemplars().images.shape[1])
    with torch.inference_mode():
        again = sampling.sample_preview(model, clip, vae, relation.vectors, "a dog <R> a cat", 1, 1, size)
    assert samples.shape == (1, size, size, 3) and torch.equal(samples, again)


def test_interrupt_stops_training_and_writes_nothing(host, tiny):
    import comfy.model_management as mm
    model, clip, vae = tiny("sd1")
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            run_node(host, "ReVersionTrainRelation", "train", **train_inputs(model, clip, vae, "interrupted", steps=50))
    finally:
        mm.interrupt_current_processing(False)
    assert not (host.embeddings / "interrupted.safetensors").exists()


def test_cancel_is_honoured_within_one_unet_block(host, tiny, monkeypatch):
    """Cancel (ComfyUI's interrupt flag) mid-update stops training at the next UNet block,
    even when memory=auto sends the whole update (16 micro-batches of 2) through the model
    in one forward. Prints the latency."""
    import comfy.ldm.modules.diffusionmodules.openaimodel as om
    import comfy.model_management as mm
    model, clip, vae = tiny("sd1")
    blocks = []            # (time, exemplars) of every UNet block run with grad
    real = om.forward_timestep_embed

    def counted(ts, x, *a, **k):
        if torch.is_grad_enabled():
            blocks.append((time.perf_counter(), x.shape[0]))
        return real(ts, x, *a, **k)
    monkeypatch.setattr(om, "forward_timestep_embed", counted)
    state = {}

    def press_cancel():
        while sum(n == 32 for _, n in blocks) < 3:      # three blocks into the update's forward
            time.sleep(0.0005)
        state["t"], state["blocks"] = time.perf_counter(), len(blocks)
        mm.interrupt_current_processing(True)
    presser = threading.Thread(target=press_cancel, daemon=True)
    presser.start()
    try:
        with pytest.raises(mm.InterruptProcessingException):
            run_node(host, "ReVersionTrainRelation", "train",
                     **train_inputs(model, clip, vae, "cancelled", steps=5, grad_accum=16, batch_size=2,
                                    memory="auto", exemplars=small_exemplars(2, 32), overwrite=False))
        stopped = time.perf_counter()
    finally:
        mm.interrupt_current_processing(False)
        presser.join(5)
    per_forward = sum(n == 1 for _, n in blocks)         # the memory probe's forward of one exemplar
    training = [t for t, n in blocks if n == 32]          # auto chose one forward of the whole update
    assert per_forward > 5 and 3 <= len(training) < per_forward   # stopped inside that forward...
    assert len(blocks) - state["blocks"] <= 1                     # ...at most the block under way
    assert not (host.embeddings / "cancelled.safetensors").exists()
    print(f"\ninterrupt latency: {stopped - state['t']:.3f} s (one block of 32 exemplars "
          f"~{(training[-1] - training[0]) / max(1, len(training) - 1):.3f} s)")


def test_model_management_is_probed_not_assumed(host, tiny, monkeypatch):
    """Newer ComfyUI releases manage VRAM in new ways: every call the pack makes into model
    management is probed. Seen through a model management that has only a load_models_gpu
    without force_full_load (no get_free_memory, soft_empty_cache or interrupt check),
    training still runs, auto taking fast since it cannot know the free memory."""
    from types import SimpleNamespace

    import comfy.model_management as mm
    from comfyui_reversion.reversion_comfy import host as pack_host
    model, clip, vae = tiny("sd1")
    loads = []

    def load_models_gpu(models, memory_required=0):
        loads.append(len(models))
        return mm.load_models_gpu(models, memory_required)
    monkeypatch.setattr(pack_host, "mm", SimpleNamespace(load_models_gpu=load_models_gpu))
    relation, _, _ = run_node(host, "ReVersionTrainRelation", "train",
                              **train_inputs(model, clip, vae, "probed_host", memory="auto", preview_every=0))
    assert relation.steps == 2 and torch.isfinite(relation.vectors["clip_l"]).all()
    assert relation.measured["memory"]["mode"] == "fast" and loads == [2]     # MODEL + CLIP
