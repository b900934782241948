"""Nothing trained is ever lost (reversion_comfy/keeping.py, store.py), through Train
Relation on a real host (tiny SD1.x): a full disk or a folder in the way for the
checkpoint, the relation or both, and a run that stops part-way while its checkpoint
cannot be written. Each case says where the learned vector went, and it is there."""
from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch

from comfyui_reversion.reversion import checkpoint
from comfyui_reversion.reversion import relation_file as rf
from comfyui_reversion.reversion.errors import RelationFileError, TrainingDiverged
from conftest import run_node, run_node_ui, small_exemplars, train_inputs


def inputs(model, clip, vae, name, **overrides):
    """4 updates of 2 exemplars at 32 px, no previews."""
    return train_inputs(model, clip, vae, name, **{"exemplars": small_exemplars(2, 32), "steps": 4,
                                                   "overwrite": False, "preview_every": 0, **overrides})


@pytest.fixture
def nearly_full(monkeypatch):
    """nearly_full(folder, room): writes into `folder` fail with ENOSPC once a file is
    larger than `room` bytes (part of it written first, as a disk that fills up does)."""
    from comfyui_reversion.reversion_comfy import store
    real = store._write_bytes
    rooms = {}

    def write(f, data):
        room = rooms.get(Path(f.name).parent.resolve())
        if room is not None and len(data) > room:
            f.write(data[:room])
            f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")
        real(f, data)
    monkeypatch.setattr(store, "_write_bytes", write)
    return lambda folder, room: rooms.__setitem__(Path(folder).resolve(), room)


def test_a_checkpoint_that_cannot_be_written_does_not_throw_the_training_away(host, tiny, nearly_full):
    """Room for the relation (about 2 KB) but not for the checkpoint (about 14 KB): with a
    checkpoint only at the end, and with one every update; the relation is written, the
    summary and the log warn, no partial file is left."""
    model, clip, vae = tiny("sd1")
    nearly_full(host.embeddings, 4096)
    for every in (0, 1):
        name = f"full_disk_{every}"
        out = run_node_ui(host, "ReVersionTrainRelation", "train", **inputs(model, clip, vae, name, checkpoint_every=every))
        relation = rf.load(host.embeddings / f"{name}.safetensors")
        assert relation.steps == 4 and torch.equal(relation.vectors["clip_l"], out["result"][0].vectors["clip_l"])
        summary = out["ui"]["text"][0]
        assert f"warning: checkpoint {name}.resume could not be written" in summary and "No space left" in summary
        assert not (host.embeddings / f"{name}.resume").exists()
        assert not list(host.embeddings.glob(f".{name}*"))            # no temporary file left


def test_a_folder_in_the_way_of_the_checkpoint(host, tiny):
    model, clip, vae = tiny("sd1")
    (host.embeddings / "dir_ckpt.resume").mkdir()
    # without overwrite: refused before anything runs, saying what is there
    cls = host.nodes.NODE_CLASS_MAPPINGS["ReVersionTrainRelation"]
    verdict = cls.VALIDATE_INPUTS(name="dir_ckpt", overwrite=False)
    assert "dir_ckpt.resume in" in verdict and "is a folder, not a checkpoint: move or delete it" in verdict
    # with overwrite: the checkpoint cannot go there, the training still ends in its relation
    out = run_node_ui(host, "ReVersionTrainRelation", "train", **inputs(model, clip, vae, "dir_ckpt", overwrite=True))
    assert rf.load(host.embeddings / "dir_ckpt.safetensors").steps == 4
    assert "warning: checkpoint dir_ckpt.resume could not be written" in out["ui"]["text"][0]


def test_a_relation_that_cannot_be_written_goes_to_the_recovery_folder_else_the_temp_folder(host, tiny, nearly_full,
                                                                                             monkeypatch, tmp_path):
    import folder_paths
    model, clip, vae = tiny("sd1")
    (host.embeddings / "dir_rel.safetensors").mkdir()          # a folder where the file goes
    recovery = Path(folder_paths.get_output_directory()) / "reversion_recovered"
    (recovery / "dir_rel.safetensors").mkdir(parents=True)      # and one where its fallback would go
    with pytest.raises(RelationFileError, match=r"could not write .*dir_rel.safetensors .*the trained relation was "
                                                r"kept at .*reversion_recovered/dir_rel-1.safetensors: move it") as e:
        run_node(host, "ReVersionTrainRelation", "train", **inputs(model, clip, vae, "dir_rel", overwrite=True))
    kept = Path(str(e.value).split("kept at ")[1].split(":")[0])
    assert kept.parent == recovery and rf.load(kept).steps == 4
    # the output folder full too: the system temp folder
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    nearly_full(recovery, 100)
    with pytest.raises(RelationFileError, match=r"kept at .*" + str(tmp_path)):
        run_node(host, "ReVersionTrainRelation", "train", **inputs(model, clip, vae, "dir_rel", overwrite=True))
    assert rf.load(tmp_path / "reversion_recovered" / "dir_rel.safetensors").steps == 4


def poison_update(monkeypatch, at: int):
    """The tiny model's denoising loss turns NaN from update `at` (a 16-bit overflow)."""
    from comfyui_reversion.reversion_comfy.backend import ComfyBackend
    real, calls = ComfyBackend.denoising_loss, {"n": 0}

    def poisoned(self, *args):
        calls["n"] += 1
        loss = real(self, *args)
        return loss * float("nan") if calls["n"] >= at else loss
    monkeypatch.setattr(ComfyBackend, "denoising_loss", poisoned)


def test_a_nan_loss_stops_at_its_update_and_the_checkpoint_stays_finite(host, tiny, monkeypatch):
    model, clip, vae = tiny("sd1")
    poison_update(monkeypatch, 3)
    with pytest.raises(TrainingDiverged) as stop:
        run_node(host, "ReVersionTrainRelation", "train", **inputs(model, clip, vae, "nan_run", checkpoint_every=0))
    message = str(stop.value)
    assert "training stopped at update 3 of 4: the loss became NaN (denoise nan, steer " in message
    assert "Likely cause: 16-bit overflow" in message and "use bf16 or fp32" in message
    assert "the last good state (update 2) is kept in" in message and "nan_run.resume" in message
    assert "switch 'overwrite' on to train again with other settings" in message
    assert not (host.embeddings / "nan_run.safetensors").exists()
    state = checkpoint.load(host.embeddings / "nan_run.resume")
    assert state["step"] == 2 and all(torch.isfinite(v).all() for v in state["vectors"].values())
    # it cannot be resumed as it was, so its last good vector is also a relation file, ready to use
    kept = Path(message.split("and its vector as a relation at ")[1].split(" (move it")[0])
    assert kept.parent.name == "reversion_recovered"
    assert torch.equal(rf.load(kept).vectors["clip_l"], state["vectors"]["clip_l"]) and rf.load(kept).steps == 2
    # the next queue says what happened, not "unfinished: switch resume on"
    cls = host.nodes.NODE_CLASS_MAPPINGS["ReVersionTrainRelation"]
    verdict = cls.VALIDATE_INPUTS(name="nan_run", overwrite=False)
    assert "stopped itself at update 3 of 4" in verdict and "switch 'overwrite' on" in verdict
    assert "switch 'resume' on" not in verdict


def test_a_stopped_run_whose_checkpoint_cannot_be_written_is_recovered(host, tiny, monkeypatch, nearly_full):
    import folder_paths
    model, clip, vae = tiny("sd1")
    poison_update(monkeypatch, 3)
    nearly_full(host.embeddings, 4096)
    with pytest.raises(TrainingDiverged, match=r"checkpoint nan_full.resume could not be written when stopped "
                                               r"\(update 2\): No space left.*the last good vector was kept at ") as stop:
        run_node(host, "ReVersionTrainRelation", "train", **inputs(model, clip, vae, "nan_full", checkpoint_every=0))
    kept = Path(str(stop.value).split("was kept at ")[1].split(": move")[0])
    assert kept.parent == Path(folder_paths.get_output_directory()) / "reversion_recovered"
    recovered = rf.load(kept)
    assert recovered.steps == 2 and torch.isfinite(recovered.vectors["clip_l"]).all()


def test_divergence_inside_the_widget_limits_stops_while_it_happens(host, toy):
    """The reported case: lr 1.0 with scale_lr, 4 x 4, no weight decay, 8 updates on the toy
    model. It used to run all 8 and then call the preview's vector 'a broken file'."""
    model, clip, vae = toy
    exemplars = host.node("ReVersionToyWorldExemplars").make(relation="above", count=4, scene_seed=0)[0]
    with pytest.raises(TrainingDiverged, match=r"training stopped at update [1-7] of 8: the vector \[clip_l\] is "
                                               r"running away.*learning rate too high \(now 16 = 1 x batch 4 x "
                                               r"accumulation 4 with scale_lr") as stop:
        run_node(host, "ReVersionTrainRelation", "train",
                 **inputs(model, clip, vae, "runaway", exemplars=exemplars, steps=8, batch_size=4, grad_accum=4,
                          learning_rate=1.0, scale_lr=True, weight_decay=0.0, checkpoint_every=0))
    assert "file is broken" not in str(stop.value)


def test_a_failure_after_training_leaves_the_relation_written(host, tiny, monkeypatch):
    """The final samples are drawn after the relation file is written: a sampler that fails
    there (out of memory, a broken upstream patch) costs the picture, not the training."""
    from comfyui_reversion.reversion_comfy import training

    def failing(*args, **kwargs):
        raise RuntimeError("sampler failed")
    monkeypatch.setattr(training, "sample_preview", failing)
    model, clip, vae = tiny("sd1")
    with pytest.raises(RuntimeError, match="sampler failed"):
        run_node(host, "ReVersionTrainRelation", "train", **inputs(model, clip, vae, "after_fail"))
    assert rf.load(host.embeddings / "after_fail.safetensors").steps == 4
