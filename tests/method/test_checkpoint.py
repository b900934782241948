"""The checkpoint format and resuming a run (reversion/checkpoint.py), on the pure-torch
backend of test_trainer: Cancel mid-update, then resume, gives the uninterrupted run bit
for bit; a checkpoint only continues the run it was made for."""
from __future__ import annotations

import pickle

import pytest
import torch

from comfyui_reversion.reversion import checkpoint, errors, trainer
from test_trainer import TEMPLATES, LinearBackend, latents_of


class Cancelled(Exception):
    pass


def cancel_at(check: int):
    """An interrupt hook that raises when the run reaches its `check`-th check."""
    calls = {"n": 0}

    def interrupt():
        calls["n"] += 1
        if calls["n"] == check:
            raise Cancelled()
    return interrupt


def test_cancel_mid_update_then_resume_equals_the_uninterrupted_run(tmp_path):
    cfg = trainer.TrainConfig(steps=9, batch_size=2, grad_accum=3, seed=4)
    whole = trainer.train(LinearBackend(), latents_of(3), TEMPLATES, cfg)

    path = tmp_path / "rel.resume"
    saves = []

    def save(state, when):
        saves.append(state["step"])
        path.write_bytes(checkpoint.to_bytes(state))
    keep = checkpoint.Checkpointing(save=save, every=2, fingerprint="fp")
    # each update checks twice (before its forward, before its backward): check 12 is
    # update 6's, after its forward
    with pytest.raises(Cancelled):
        trainer.train(LinearBackend(), latents_of(3), TEMPLATES, cfg, interrupt=cancel_at(12), checkpointing=keep)
    assert saves == [2, 4, 5]                    # every 2 updates, then the 5 complete ones on Cancel
    state = checkpoint.load(path)
    assert state["step"] == 5 and len(state["history"]) == 5 and checkpoint.progress(state) == (5, 9)

    resumed = trainer.train(LinearBackend(), latents_of(3), TEMPLATES, cfg,
                            checkpointing=checkpoint.Checkpointing(save=save, every=2, fingerprint="fp",
                                                                   resume_from=state))
    assert torch.equal(resumed.vectors["clip_l"], whole.vectors["clip_l"])      # bit for bit
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in whole.history]
    assert resumed.steps_done == 9


@pytest.mark.parametrize("change,message", [
    (dict(fingerprint="other"), "other exemplars"),
    (dict(config=trainer.TrainConfig(steps=9, batch_size=2, grad_accum=3, seed=5)), r"seed 4 -> 5"),
    (dict(config=trainer.TrainConfig(steps=9, batch_size=2, grad_accum=3, seed=4, temperature=0.5)),
     r"temperature 0.07 -> 0.5"),
    (dict(config=trainer.TrainConfig(steps=3, batch_size=2, grad_accum=3, seed=4)), "already at update 3 of the 3"),
    (dict(config=trainer.TrainConfig(steps=9, batch_size=2, grad_accum=3, seed=4, num_vectors=2)), r"num_vectors 1 -> 2"),
    (dict(config=trainer.TrainConfig(steps=9, batch_size=2, grad_accum=3, seed=4, swap_weight=0.3)),
     r"swap_weight 0.0 -> 0.3"),
])
def test_a_checkpoint_only_resumes_the_same_run(change, message):
    cfg = trainer.TrainConfig(steps=3, batch_size=2, grad_accum=3, seed=4)
    states = []
    trainer.train(LinearBackend(), latents_of(2), [["cat {} dog"]] * 2, cfg,
                  checkpointing=checkpoint.Checkpointing(save=lambda state, when: states.append(state), every=3, fingerprint="fp"))
    with pytest.raises(errors.CheckpointError, match=message):
        checkpoint.check_compatible(states[-1], change.get("config", cfg).as_dict(), change.get("fingerprint", "fp"))


def test_checkpoint_files_are_plain_data_and_bad_ones_say_what_to_do(tmp_path):
    states = []
    trainer.train(LinearBackend(), latents_of(2), [["cat {} dog"]] * 2, trainer.TrainConfig(steps=1, grad_accum=1),
                  checkpointing=checkpoint.Checkpointing(save=lambda state, when: states.append(state), every=1, fingerprint="fp"))
    good = tmp_path / "good.resume"
    good.write_bytes(checkpoint.to_bytes(states[-1]))
    assert checkpoint.load(good)["fingerprint"] == "fp"
    with pytest.raises(errors.CheckpointError, match="no checkpoint missing.resume.*switch 'resume' off"):
        checkpoint.load(tmp_path / "missing.resume")
    unreadable = "is not a checkpoint this pack can read: damaged, from another program, or not plain data; delete it"
    (tmp_path / "torn.resume").write_bytes(good.read_bytes()[:50])
    with pytest.raises(errors.CheckpointError, match=unreadable):
        checkpoint.load(tmp_path / "torn.resume")

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))
    (tmp_path / "evil.resume").write_bytes(pickle.dumps({"format": checkpoint.FORMAT, "x": Evil()}))
    with pytest.raises(errors.CheckpointError, match=unreadable):
        checkpoint.load(tmp_path / "evil.resume")
    torch.save({"format": 99}, tmp_path / "future.resume")
    with pytest.raises(errors.CheckpointError, match=unreadable + r".*no format 1 marker"):
        checkpoint.load(tmp_path / "future.resume")
    # the pack's format with fields missing or of the wrong kind: named, not a KeyError later
    torch.save({"format": checkpoint.FORMAT, "step": 3}, tmp_path / "partial.resume")
    with pytest.raises(errors.CheckpointError, match=r"missing or wrong: vectors, optimizer, .*fingerprint"):
        checkpoint.load(tmp_path / "partial.resume")
    wrong = {**states[-1], "format": checkpoint.FORMAT, "config": {"steps": "many"}}
    torch.save(wrong, tmp_path / "wrong.resume")
    with pytest.raises(errors.CheckpointError, match=r"missing or wrong: config.steps"):
        checkpoint.load(tmp_path / "wrong.resume")
    (tmp_path / "folder.resume").mkdir()
    with pytest.raises(errors.CheckpointError, match="folder.resume .* is a folder, not a checkpoint: move or delete it"):
        checkpoint.load(tmp_path / "folder.resume")


def test_a_checkpoint_resumes_only_on_its_model_family_and_weights():
    """Vectors of another width, or another model's fingerprint, are refused by name (not a
    'size of tensor a (128) must match (768)' from deep inside the restore)."""
    cfg = trainer.TrainConfig(steps=3, batch_size=2, grad_accum=1, seed=4)
    states = []
    model = {"family": "SD1.x", "encoders": {"clip_l": 768}, "weights": "aaaa"}
    trainer.train(LinearBackend(), latents_of(2), [["cat {} dog"]] * 2, cfg,
                  checkpointing=checkpoint.Checkpointing(save=lambda state, when: states.append(state), every=1,
                                                         fingerprint="fp", model=model))
    state = states[0]
    assert state["model"] == model and state["stopped"] == ""
    with pytest.raises(errors.CheckpointError, match=r"another model family \(its vectors: clip_l 16; this model's: clip_l 128\)"):
        checkpoint.check_compatible(state, cfg.as_dict(), "fp", vectors={"clip_l": torch.zeros(128)})
    with pytest.raises(errors.CheckpointError, match=r"another model \(weights 'aaaa' -> 'bbbb'\): another checkpoint file, LoRA"):
        checkpoint.check_compatible(state, cfg.as_dict(), "fp", model={**model, "weights": "bbbb"})
    checkpoint.check_compatible(state, cfg.as_dict(), "fp", model=model, vectors={"clip_l": torch.zeros(16)})
    checkpoint.check_compatible({**state, "model": {}}, cfg.as_dict(), "fp", model=model)   # older files: no record


def test_the_fingerprint_is_the_exemplars_pixels_and_templates():
    images = torch.rand(2, 8, 8, 3, generator=torch.Generator().manual_seed(0))
    base = checkpoint.fingerprint(images, [["a {} b"], ["c {} d"]])
    assert base == checkpoint.fingerprint(images.clone(), [["a {} b"], ["c {} d"]])
    assert base != checkpoint.fingerprint(images, [["a {} b"], ["c {} e"]])
    changed = images.clone()
    changed[0, 0, 0, 0] += 1e-3
    assert base != checkpoint.fingerprint(changed, [["a {} b"], ["c {} d"]])


def test_a_checkpoint_from_before_the_swap_term_and_several_vectors_resumes_as_it_was():
    """Checkpoints written before swap_weight, swap_margin and num_vectors existed ran with
    none of them: they resume with those settings at their defaults, and only so."""
    cfg = trainer.TrainConfig(steps=3, batch_size=2, grad_accum=1, seed=4)
    states = []
    trainer.train(LinearBackend(), latents_of(2), [["cat {} dog"]] * 2, cfg,
                  checkpointing=checkpoint.Checkpointing(save=lambda state, when: states.append(state), every=1,
                                                         fingerprint="fp"))
    older = {**states[0], "config": {k: v for k, v in states[0]["config"].items()
                                     if k not in ("swap_weight", "swap_margin", "num_vectors")}}
    more = trainer.TrainConfig(steps=5, batch_size=2, grad_accum=1, seed=4)
    checkpoint.check_compatible(older, more.as_dict(), "fp")
    with pytest.raises(errors.CheckpointError, match=r"swap_weight 0.0 -> 1.0"):
        checkpoint.check_compatible(older, trainer.TrainConfig(steps=5, batch_size=2, grad_accum=1, seed=4,
                                                               swap_weight=1.0).as_dict(), "fp")
