"""Checkpoints and resume through Train Relation on a real host (tiny SD1.x model): Cancel
keeps the completed updates, resume reaches the uninterrupted result bit for bit on the
CPU, a checkpoint only continues its own run, and a saved relation can be trained further."""
from __future__ import annotations

import pytest
import torch

from comfyui_reversion.reversion import checkpoint
from comfyui_reversion.reversion import exemplars as ex
from comfyui_reversion.reversion.errors import CheckpointError, RelationError, RelationFileError
from conftest import run_node, small_exemplars, train_inputs


def inputs(model, clip, vae, name, **overrides):
    """conftest's inputs for 6 updates of 2 x 2 with a checkpoint every 2, never overwriting."""
    return train_inputs(model, clip, vae, name, **{"exemplars": small_exemplars(size=32), "steps": 6, "grad_accum": 2,
                                                   "train_seed": 11, "overwrite": False, "checkpoint_every": 2,
                                                   **overrides})


@pytest.fixture
def cancel_in_update(monkeypatch):
    """cancel_in_update(u, n): the n-th interrupt check of update u (counted once the
    progress bar shows update u - 1) raises Cancel. Checks: before the update, before each
    UNet block of its forward(s), before its backward, and the progress callback's."""
    import comfy.model_management as mm
    from comfyui_reversion.reversion_comfy import host as pack_host

    def arm(update, n):
        shown, checks = {"step": 0}, {"n": 0}
        real_progress = pack_host.progress_bar

        def progress(total):
            bar = real_progress(total)
            real_update = bar.update_absolute

            def update_absolute(step, *a, **k):
                shown["step"] = step
                return real_update(step, *a, **k)
            bar.update_absolute = update_absolute
            return bar

        def check():
            if shown["step"] == update - 1:
                checks["n"] += 1
                if checks["n"] == n:
                    raise mm.InterruptProcessingException()
        monkeypatch.setattr(pack_host, "progress_bar", progress)
        monkeypatch.setattr(pack_host, "check_interrupted", check)
    return arm


def test_cancel_keeps_a_checkpoint_and_resume_gives_the_uninterrupted_result(host, tiny, cancel_in_update,
                                                                                monkeypatch):
    import comfy.model_management as mm
    from comfyui_reversion.reversion_comfy import host as pack_host
    model, clip, vae = tiny("sd1")
    whole, _, _ = run_node(host, "ReVersionTrainRelation", "train", **inputs(model, clip, vae, "ckpt_whole"))

    # inside the 4th update's forward (its checks: before the update, then before UNet
    # blocks 1 and 2), after 3 complete ones
    cancel_in_update(4, 3)
    with pytest.raises(mm.InterruptProcessingException):
        run_node(host, "ReVersionTrainRelation", "train", **inputs(model, clip, vae, "ckpt_cut"))
    assert not (host.embeddings / "ckpt_cut.safetensors").exists()
    state = checkpoint.load(host.embeddings / "ckpt_cut.resume")
    assert state["step"] == 3 and len(state["history"]) == 3

    # a new run of that name neither starts over silently nor ignores the checkpoint
    cls = host.nodes.NODE_CLASS_MAPPINGS["ReVersionTrainRelation"]
    verdict = cls.VALIDATE_INPUTS(name="ckpt_cut", overwrite=False, resume=False)
    assert isinstance(verdict, str) and "switch 'resume' on" in verdict
    monkeypatch.setattr(pack_host, "check_interrupted", lambda: None)
    with pytest.raises(RelationFileError, match=r"holds a checkpoint of an unfinished run named 'ckpt_cut' \(update 3 of 6\)"):
        run_node(host, "ReVersionTrainRelation", "train", **inputs(model, clip, vae, "ckpt_cut"))

    resumed, _, _ = run_node(host, "ReVersionTrainRelation", "train", **inputs(model, clip, vae, "ckpt_cut", resume=True))
    assert torch.equal(resumed.vectors["clip_l"], whole.vectors["clip_l"])
    assert resumed.steps == 6 and resumed.final_losses == whole.final_losses


def test_resume_refuses_other_settings_and_other_exemplars_before_training(host, tiny, monkeypatch):
    from comfyui_reversion.reversion import trainer
    model, clip, vae = tiny("sd1")
    run_node(host, "ReVersionTrainRelation", "train", **inputs(model, clip, vae, "ckpt_strict", steps=2))
    monkeypatch.setattr(trainer, "train", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(CheckpointError, match=r"other settings \(seed 11 -> 12\)"):
        run_node(host, "ReVersionTrainRelation", "train",
                 **inputs(model, clip, vae, "ckpt_strict", steps=4, train_seed=12, resume=True, overwrite=True))
    other = ex.from_images(torch.rand(2, 32, 32, 3), ["a cat {} a dog"])
    with pytest.raises(CheckpointError, match="other exemplars"):
        run_node(host, "ReVersionTrainRelation", "train",
                 **inputs(model, clip, vae, "ckpt_strict", steps=4, exemplars=other, resume=True, overwrite=True))
    with pytest.raises(CheckpointError, match="no checkpoint never_ran.resume"):
        run_node(host, "ReVersionTrainRelation", "train", **inputs(model, clip, vae, "never_ran", resume=True))


def test_a_finished_run_can_be_extended_by_raising_steps(host, tiny):
    model, clip, vae = tiny("sd1")
    six, _, _ = run_node(host, "ReVersionTrainRelation", "train", **inputs(model, clip, vae, "ckpt_six"))
    run_node(host, "ReVersionTrainRelation", "train", **inputs(model, clip, vae, "ckpt_grow", steps=4))
    grown, _, _ = run_node(host, "ReVersionTrainRelation", "train",
                           **inputs(model, clip, vae, "ckpt_grow", steps=6, resume=True, overwrite=True))
    assert grown.steps == 6 and torch.equal(grown.vectors["clip_l"], six.vectors["clip_l"])


def test_continue_from_a_saved_relation(host, tiny):
    model, clip, vae = tiny("sd1")
    first, _, _ = run_node(host, "ReVersionTrainRelation", "train", **inputs(model, clip, vae, "cont_a", steps=2))
    more, _, _ = run_node(host, "ReVersionTrainRelation", "train",
                          **inputs(model, clip, vae, "cont_b", steps=2, init_relation=first))
    assert more.steps == 4 and more.hyperparameters["continued_from"] == {"relation": "cont_a", "steps": 2}
    assert not torch.equal(more.vectors["clip_l"], first.vectors["clip_l"])
    # a relation for another model family is refused before training
    _, xl_clip, _ = tiny("sdxl")
    xl_model, _, xl_vae = tiny("sdxl")
    with pytest.raises(RelationError, match="was trained for"):
        run_node(host, "ReVersionTrainRelation", "train",
                 **inputs(xl_model, xl_clip, xl_vae, "cont_xl", steps=1, init_relation=first,
                          exemplars=ex.from_images(torch.rand(2, 64, 64, 3), ["a cat {} a dog"])))
