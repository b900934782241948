"""Names, paths and writes (reversion_comfy/store.py): what may be written under a name,
checked when the graph is queued and again before any work; the record that serves an
unchanged graph from the cache until its file is deleted; atomic writes that never leave a
partial file; and a trained relation kept when its own folder cannot be written."""
from __future__ import annotations

import errno
import os

import pytest
import torch

from comfyui_reversion.reversion import relation_file as rf
from comfyui_reversion.reversion.errors import RelationFileError
from conftest import assert_ordinary_mode, checkpoint_state, run_node, small_exemplars, train_inputs


def quick(model, clip, vae, name, **overrides):
    """One update on 32 px exemplars, never overwriting."""
    return train_inputs(model, clip, vae, name, **{"exemplars": small_exemplars(2, 32), "steps": 1,
                                                   "overwrite": False, **overrides})


def test_names_work_as_embedding_names_and_stay_in_their_folder(host, tmp_path):
    from comfyui_reversion.reversion_comfy import store
    assert store.path_in(tmp_path, "painted_on") == (tmp_path / "painted_on.safetensors").resolve()
    assert store.check_name(" painted_on.safetensors ") == "painted_on"
    for bad in ("../escape", "sub/dir", "..", "", "/abs", "a\\b", "my rel", "x" * 65, "кошка"):
        with pytest.raises(RelationFileError, match="invalid relation name"):
            store.path_in(tmp_path, bad)
    assert store.checkpoint_path(tmp_path / "a.safetensors") == tmp_path / "a.resume"


def test_no_file_is_replaced_without_overwrite(host, tmp_path):
    from comfyui_reversion.reversion_comfy import store
    path = store.path_in(tmp_path, "mine")
    store.save_relation(rf.Relation({"clip_l": torch.randn(768)}), path, overwrite=False)
    first = path.read_bytes()
    with pytest.raises(RelationFileError, match="already exists.*overwrite"):
        store.save_relation(rf.Relation({"clip_l": torch.randn(768)}), path, overwrite=False)
    assert path.read_bytes() == first
    store.save_relation(rf.Relation({"clip_l": torch.randn(768)}), path, overwrite=True)
    assert path.read_bytes() != first


def test_written_files_follow_the_umask(host, tmp_path):
    from comfyui_reversion.reversion_comfy import store
    old = os.umask(0o022)
    try:
        path = store.write_atomically(tmp_path / "perm.safetensors", b"x")
        assert_ordinary_mode(path)                    # 0644 (safetensors alone would give 0600)
        os.umask(0o027)
        assert_ordinary_mode(store.write_atomically(path, b"y"))
    finally:
        os.umask(old)


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_a_write_that_fails_part_way_leaves_the_old_file_and_nothing_else(host, tmp_path, monkeypatch, failing):
    """The disk fills up after part of the new bytes went out (or the final rename fails):
    the file that was there keeps its old bytes, and no temporary file is left behind."""
    from comfyui_reversion.reversion_comfy import store
    path = tmp_path / "kept.safetensors"
    path.write_bytes(b"old bytes")

    def fail(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, failing, fail)
    with pytest.raises(OSError, match="No space left"):
        store.write_atomically(path, b"new bytes, longer than the old ones")
    monkeypatch.undo()
    assert path.read_bytes() == b"old bytes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.safetensors"]


def test_the_embeddings_folder_can_be_chosen_among_comfyuis_own(host, monkeypatch, tmp_path):
    from comfyui_reversion.reversion.errors import RelationError
    from comfyui_reversion.reversion_comfy import store
    monkeypatch.setenv("REVERSION_EMBEDDINGS_DIR", str(host.embeddings))
    assert store.relation_path("chosen") == (host.embeddings / "chosen.safetensors").resolve()
    monkeypatch.setenv("REVERSION_EMBEDDINGS_DIR", str(tmp_path))
    with pytest.raises(RelationError, match="not one of ComfyUI's embeddings folders.*extra_model_paths.yaml"):
        store.relation_path("chosen")


def test_an_unfinished_runs_checkpoint_is_protected_a_finished_ones_is_not(host, tmp_path):
    from comfyui_reversion.reversion import checkpoint
    from comfyui_reversion.reversion_comfy import store
    relation = tmp_path / "run.safetensors"
    assert store.checkpoint_conflict(relation, overwrite=False) is None            # none there
    store.checkpoint_path(relation).write_bytes(checkpoint.to_bytes(checkpoint_state(3, 6)))
    assert "unfinished run named 'run' (update 3 of 6); switch 'resume' on" in store.checkpoint_conflict(relation, overwrite=False)
    assert store.checkpoint_conflict(relation, overwrite=True) is None
    store.checkpoint_path(relation).write_bytes(checkpoint.to_bytes(checkpoint_state(6, 6)))
    assert store.checkpoint_conflict(relation, overwrite=False) is None            # finished: free
    store.checkpoint_path(relation).write_bytes(b"torn")                           # unreadable: kept, and said so
    assert "run.resume in" in store.checkpoint_conflict(relation, overwrite=False)
    assert "is not a checkpoint this pack can read" in store.checkpoint_conflict(relation, overwrite=False)


@pytest.mark.parametrize("name,message", [
    ("my rel", "no spaces"),
    ("x" * 65, "1-64 ASCII"),
    ("../escape", "no folders"),
    ("rel/sub", "no folders"),
    ("", "1-64 ASCII"),
    ("trail.", "not ending with '.'"),
    ("CON", "Windows reserves 'CON'"),
    ("nul.txt", "Windows reserves 'nul'"),
    ("Com1", "Windows reserves 'Com1'"),
    ("кошка", "ASCII"),
])
def test_bad_names_are_refused_at_queue_time(host, name, message):
    for node in ("ReVersionTrainRelation", "ReVersionSaveRelation"):
        verdict = host.nodes.NODE_CLASS_MAPPINGS[node].VALIDATE_INPUTS(name=name, overwrite=False)
        assert isinstance(verdict, str) and message in verdict, (node, verdict)


def test_taken_names_are_refused_at_queue_time_before_anything_runs(host):
    (host.embeddings / "taken.safetensors").write_bytes(b"someone else's file")
    for node in ("ReVersionTrainRelation", "ReVersionSaveRelation"):
        cls = host.nodes.NODE_CLASS_MAPPINGS[node]
        verdict = cls.VALIDATE_INPUTS(name="taken", overwrite=False)
        assert isinstance(verdict, str) and "already exists" in verdict and "overwrite" in verdict
        assert cls.VALIDATE_INPUTS(name="taken", overwrite=True) is True
        assert cls.VALIDATE_INPUTS(name="free_name", overwrite=False) is True
    assert (host.embeddings / "taken.safetensors").read_bytes() == b"someone else's file"


def test_existing_relation_is_not_overwritten_and_training_does_not_start(host, tiny):
    model, clip, vae = tiny("sd1")
    path = host.embeddings / "keep_me.safetensors"
    path.write_bytes(rf.to_bytes(rf.Relation({"clip_l": torch.ones(768)})))
    before = path.read_bytes()
    calls = []
    real = vae.encode
    vae.encode = lambda pixels: calls.append(1) or real(pixels)
    try:
        with pytest.raises(RelationFileError, match="already exists.*overwrite"):
            run_node(host, "ReVersionTrainRelation", "train", **train_inputs(model, clip, vae, "keep_me", overwrite=False))
    finally:
        vae.encode = real
    assert path.read_bytes() == before and calls == []


@pytest.mark.parametrize("name", ["../escape", "sub/name", ".."])
def test_names_cannot_escape_the_embeddings_folder(host, tiny, name):
    model, clip, vae = tiny("sd1")
    with pytest.raises(RelationFileError, match="invalid relation name"):
        run_node(host, "ReVersionTrainRelation", "train", **train_inputs(model, clip, vae, name))


def test_a_deleted_relation_file_makes_the_node_run_again(host, tiny):
    """IS_CHANGED: stable while the file is as the last run wrote it, new once it is deleted."""
    model, clip, vae = tiny("sd1")
    cls = host.nodes.NODE_CLASS_MAPPINGS["ReVersionTrainRelation"]
    first = cls.IS_CHANGED(name="requeued")
    run_node(host, "ReVersionTrainRelation", "train", **quick(model, clip, vae, "requeued"))
    assert cls.IS_CHANGED(name="requeued") == first                 # cached: the file is ours
    assert cls.VALIDATE_INPUTS(name="requeued", overwrite=False) is True
    (host.embeddings / "requeued.safetensors").unlink()
    changed = cls.IS_CHANGED(name="requeued")
    assert changed != first                                        # deleted: run again
    run_node(host, "ReVersionTrainRelation", "train", **quick(model, clip, vae, "requeued"))
    assert cls.IS_CHANGED(name="requeued") == changed              # and cached again afterwards


def test_a_failed_write_after_training_keeps_the_relation_and_says_where(host, tiny, monkeypatch):
    import folder_paths
    from comfyui_reversion.reversion_comfy import store
    model, clip, vae = tiny("sd1")
    real_write = store.write_atomically
    target = host.embeddings / "disk_full.safetensors"

    def full_disk(path, data):
        if os.path.abspath(path) == os.path.abspath(target):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path, data)
    monkeypatch.setattr(store, "write_atomically", full_disk)
    with pytest.raises(RelationFileError, match=r"could not write .*No space left on device.*kept at (\S+):") as err:
        run_node(host, "ReVersionTrainRelation", "train", **quick(model, clip, vae, "disk_full", steps=2))
    kept = str(err.value).split("kept at ")[1].split(": move it")[0]
    assert kept.startswith(os.path.join(folder_paths.get_output_directory(), "reversion_recovered"))
    relation = rf.load(kept)
    assert relation.steps == 2 and torch.isfinite(relation.vectors["clip_l"]).all()
    assert not target.exists()
