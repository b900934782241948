"""Messages say what is true, files hold only what the result depends on (through the
nodes on a real host): a checkpoint that is unreadable, still training, from another model
family or from another model of the same family; the same graph and seed give the same
bytes whatever the memory plan measured; exemplar counts outside the paper's 4-10 warn."""
from __future__ import annotations

import pytest
import torch

from comfyui_reversion.reversion import checkpoint
from comfyui_reversion.reversion.errors import CheckpointError
from conftest import checkpoint_state, run_node, run_node_ui, small_exemplars, toy_training, train_inputs


def inputs(model, clip, vae, name, **overrides):
    """4 updates of 2 exemplars at 32 px, a checkpoint every 2, no previews, never overwriting."""
    return train_inputs(model, clip, vae, name, **{"exemplars": small_exemplars(2, 32), "steps": 4, "overwrite": False,
                                                   "preview_every": 0, "checkpoint_every": 2, **overrides})


def verdict(host, name, **kw):
    return host.nodes.NODE_CLASS_MAPPINGS["ReVersionTrainRelation"].VALIDATE_INPUTS(name=name, **{"overwrite": False, **kw})


@pytest.mark.parametrize("content,told", [
    (b"\x80\x04not a checkpoint", "is not a checkpoint this pack can read: damaged, from another program"),
    (checkpoint.to_bytes({"step": 3}), "missing or wrong: vectors, optimizer"),
])
def test_an_unreadable_checkpoint_is_called_so_not_an_unfinished_run(host, content, told):
    (host.embeddings / "odd_ckpt.resume").write_bytes(content)
    message = verdict(host, "odd_ckpt")
    assert told in message and "delete it" in message
    assert "unfinished" not in message and "update 0 of 0" not in message and "switch 'resume' on" not in message
    with pytest.raises(CheckpointError, match="is not a checkpoint this pack can read"):
        checkpoint.load(host.embeddings / "odd_ckpt.resume")
    (host.embeddings / "odd_ckpt.resume").unlink()


def test_a_run_training_now_is_called_running_not_unfinished(host):
    """While a run trains `now_ckpt`, its periodic checkpoint is not a leftover: another
    graph writing that name is told it is training right now; the same graph part queued
    again (a batch count above 1) passes, to be served from the cache. Afterwards the
    checkpoint is what it is: an unfinished run."""
    from comfyui_reversion.reversion_comfy import queue_checks, store
    path = store.relation_path("now_ckpt")
    store.checkpoint_path(path).write_bytes(checkpoint.to_bytes(checkpoint_state(2, 9)))     # its periodic checkpoint
    same, other = toy_training("now_ckpt"), toy_training("now_ckpt", train_seed=5)
    with store.RUNNING.training(path, queue_checks.graph_signature(same, "3")):
        assert verdict(host, "now_ckpt") is True            # per node: no false "unfinished"
        assert queue_checks.problems(same) == {}
        assert queue_checks.problems(other) == {"3": "a run in this server is training 'now_ckpt' right now; wait "
                                                     "for it to finish, or choose another name"}
    assert "unfinished run named 'now_ckpt' (update 2 of 9); switch 'resume' on" in verdict(host, "now_ckpt")
    # prompts waiting in the queue: the same graph part passes, another is refused
    assert queue_checks.problems(same, queued=[same]) != {}           # the leftover checkpoint, as above
    (store.checkpoint_path(path)).unlink()
    assert queue_checks.problems(same, queued=[same]) == {}
    assert "a prompt already in the queue writes now_ckpt.safetensors" in queue_checks.problems(other, queued=[same])["3"]


def test_a_checkpoint_resumes_only_on_the_model_that_made_it(host, tiny):
    """Stopped after 2 updates on one tiny SD1.x: resuming on SDXL (another family), on
    another SD1.x (other weights) or on the same one with a LoRA-like patch is refused
    by name; on the model itself it continues."""
    from devtools import tiny_models
    model, clip, vae = tiny("sd1")
    run_node(host, "ReVersionTrainRelation", "train", **inputs(model, clip, vae, "whose_ckpt", steps=2))
    (host.embeddings / "whose_ckpt.safetensors").unlink()
    state = checkpoint.load(host.embeddings / "whose_ckpt.resume")
    assert state["model"]["family"] == "SD1.x" and state["model"]["encoders"] == {"clip_l": int(clip.cond_stage_model.clip_l.transformer.get_input_embeddings().weight.shape[1])}
    assert len(state["model"]["weights"]) == 16

    xl_model, xl_clip, xl_vae = tiny("sdxl")
    with pytest.raises(CheckpointError, match=r"made for another model family \(its vectors: clip_l \d+; this model's: "
                                              r"clip_g \d+, clip_l \d+\)"):
        run_node(host, "ReVersionTrainRelation", "train", **inputs(xl_model, xl_clip, xl_vae, "whose_ckpt", resume=True))
    other = tiny_models.build("sd1", embedding_directory=[str(host.embeddings)], seed=7)
    with pytest.raises(CheckpointError, match=r"made with another model \(weights '[0-9a-f]{16}' -> '[0-9a-f]{16}'\): "
                                              r"another checkpoint file, LoRA or patch"):
        run_node(host, "ReVersionTrainRelation", "train", **inputs(*other, "whose_ckpt", resume=True))
    patched = model.clone()
    key = next(k for k in patched.model_state_dict() if k.endswith("weight"))
    patched.add_patches({key: (torch.full_like(patched.model_state_dict()[key], 1e-3),)}, 1.0)
    with pytest.raises(CheckpointError, match="made with another model"):
        run_node(host, "ReVersionTrainRelation", "train", **inputs(patched, clip, vae, "whose_ckpt", resume=True))
    resumed, _, _ = run_node(host, "ReVersionTrainRelation", "train", **inputs(model, clip, vae, "whose_ckpt", resume=True))
    assert resumed.steps == 4


def test_the_same_graph_and_seed_give_the_same_bytes_whatever_the_memory_plan_measured(host, tiny, monkeypatch):
    """The plan's measured numbers (needed_gib, free_gib) used to be stored in the file, so
    the same graph wrote other bytes after other runs. Here the measurement is changed
    between two runs: the files are identical."""
    from comfyui_reversion.reversion_comfy import host as pack_host
    from comfyui_reversion.reversion_comfy import memory
    model, clip, vae = tiny("sd1")
    first = run_node(host, "ReVersionTrainRelation", "train", **inputs(model, clip, vae, "bytes_a", memory="auto"))[0]
    real = memory.MemoryEstimate.needed
    monkeypatch.setattr(memory.MemoryEstimate, "needed", lambda self, *a: real(self, *a) + 2**28)
    monkeypatch.setattr(pack_host, "free_memory", lambda device: 64 * 2**30)
    second = run_node(host, "ReVersionTrainRelation", "train", **inputs(model, clip, vae, "bytes_b", memory="auto"))[0]
    assert first.measured["memory"]["needed_gib"] != second.measured["memory"]["needed_gib"]
    a = (host.embeddings / "bytes_a.safetensors").read_bytes()
    b = (host.embeddings / "bytes_b.safetensors").read_bytes()
    assert a.replace(b"bytes_a", b"bytes_b") == b


def test_exemplar_counts_outside_the_papers_range_warn_but_train(host, tiny):
    model, clip, vae = tiny("sd1")
    out = run_node_ui(host, "ReVersionTrainRelation", "train",
                      **inputs(model, clip, vae, "few_ex", exemplars=small_exemplars(3, 32), steps=1, overwrite=True))
    assert "3 exemplars (the paper uses 4-10" in out["ui"]["text"][0]
    out = run_node_ui(host, "ReVersionTrainRelation", "train",
                      **inputs(model, clip, vae, "four_ex", exemplars=small_exemplars(4, 32), steps=1, overwrite=True))
    assert "exemplars (the paper" not in out["ui"]["text"][0]


def test_a_refused_prompt_keeps_only_the_nodes_at_fault_and_partial_runs_check_their_part(host):
    """on_prompt, as ComfyUI calls it: a taken Save name refuses the whole prompt (cut to the
    nodes at fault and what they need, each writing node's name carrying the reason its
    VALIDATE_INPUTS returns); a run of only some outputs (0.3.x partial execution) is
    checked for those outputs alone."""
    from comfyui_reversion.reversion_comfy import queue_checks, store
    (host.embeddings / "part_taken.safetensors").write_bytes(b"x")
    graph = toy_training("part_fresh")
    graph["4"] = {"class_type": "ReVersionSaveRelation",
                  "inputs": {"relation": ["3", 0], "name": "part_taken", "overwrite": False}}
    graph["9"] = {"class_type": "PreviewImage", "inputs": {"images": ["2", 1]}}
    out = queue_checks.on_prompt({"prompt": graph, "client_id": "x"})
    assert sorted(out["prompt"]) == ["1", "2", "3", "4"] and out["client_id"] == "x"      # the preview is gone
    save = host.nodes.NODE_CLASS_MAPPINGS["ReVersionSaveRelation"]
    assert "part_taken.safetensors already exists" in save.VALIDATE_INPUTS(**{
        k: out["prompt"]["4"]["inputs"][k] for k in ("name", "overwrite")})
    assert out["prompt"]["3"]["inputs"]["name"] == store.REFUSED + "not run: node 4 cannot write"
    assert graph["3"]["inputs"]["name"] == "part_fresh"                                    # the request's graph untouched
    request = {"prompt": graph, "partial_execution_targets": ["3"]}
    assert queue_checks.on_prompt(request) is request


def test_the_graph_signature_sees_what_the_run_sees_and_wired_inputs_wait_for_the_run(host):
    """ComfyUI turns 0 into 0.0 when it validates a FLOAT input: the signature taken when
    queued (as sent) equals the one taken when run (as validated). A wired overwrite or
    name is only known at run time: no queue-time verdict on it."""
    from comfyui_reversion.reversion_comfy import queue_checks, store
    sent = toy_training("sig_q", weight_decay=0, focal_alpha=1)
    validated = toy_training("sig_q", weight_decay=0.0, focal_alpha=1.0)
    assert queue_checks.graph_signature(sent, "3") == queue_checks.graph_signature(validated, "3")
    assert queue_checks.graph_signature(sent, "3") != queue_checks.graph_signature(toy_training("sig_q"), "3")
    (host.embeddings / "wired_q.safetensors").write_bytes(b"x")
    wired = toy_training("wired_q")
    wired["8"] = {"class_type": "PrimitiveBoolean", "inputs": {"value": True}}
    wired["3"]["inputs"]["overwrite"] = ["8", 0]
    assert queue_checks.problems(wired) == {}
    assert store.queue_check(None, False) is True          # a wired name reaches VALIDATE_INPUTS as None
    # a refused partial run keeps no targets that were cut away (else: "Prompt has no outputs")
    refused = queue_checks.on_prompt({"prompt": toy_training("wired_q"), "partial_execution_targets": ["3"]})
    assert "partial_execution_targets" not in refused and "3" in refused["prompt"]
