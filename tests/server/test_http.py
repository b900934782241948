"""A headless ComfyUI on 127.0.0.1 with the pack installed the way a user installs it (in
custom_nodes/, loaded by ComfyUI's own loader), driven over HTTP: the demo workflow,
/interrupt during training, and bad input as anyone who can reach /prompt sends it."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_reversion.reversion import relation_file as rf
from conftest import PACK_NODES, error_of, toy_training
from devtools.pack import REPO


def test_comfyuis_own_loader_loads_the_pack(server):
    """What tests in-process do with devtools.pack, ComfyUI does here itself: the pack folder
    in custom_nodes/, imported under ComfyUI's name for it, every node listed."""
    info = server.get("/object_info")
    assert PACK_NODES <= set(info)
    assert info["ReVersionTrainRelation"]["category"] == "ReVersion"
    ours = [line for line in server.log_text().splitlines() if "ComfyUI-ReVersion" in line]
    assert ours and not any("IMPORT FAILED" in line for line in ours)        # the import-times list
    assert not any(".py\"" in line or ".py'" in line for line in ours)      # no traceback through the pack


def demo_workflow(steps: int, keep_branches=("_00",)) -> dict:
    """workflows_api/toyworld_demo.json with fewer training steps and only some branches saved."""
    workflow = json.loads((REPO / "workflows_api" / "toyworld_demo.json").read_text())
    workflow["3"]["inputs"].update(steps=steps, batch_size=2)
    for node_id in list(workflow):
        prefix = workflow[node_id]["inputs"].get("filename_prefix", "")
        if workflow[node_id]["class_type"] == "SaveImage" and "/exemplars" not in prefix \
                and "/loss_curve" not in prefix and not prefix.endswith(keep_branches):
            del workflow[node_id]         # unreferenced nodes upstream are not executed
    return workflow


def test_demo_workflow_trains_and_samples_over_http(server):
    workflow = demo_workflow(steps=3)
    entry = server.run(workflow, timeout=900)
    saved = server.image_paths(entry)
    save_nodes = [k for k, v in workflow.items() if v["class_type"] == "SaveImage"]
    assert sorted(saved) == sorted(save_nodes)                      # every SaveImage produced files
    exemplars = [np.asarray(Image.open(p)) for p in saved["4"]]
    assert len(exemplars) == 8 and exemplars[0].shape == (256, 256, 3)
    for node_id in save_nodes:
        if node_id not in ("4", "5"):
            images = [np.asarray(Image.open(p)) for p in saved[node_id]]
            assert len(images) == workflow["7"]["inputs"]["batch_size"]
            assert all(img.shape == (256, 256, 3) and img.std() > 5 for img in images)
    rel = rf.load(server.embeddings / f"{workflow['3']['inputs']['name']}.safetensors")
    assert rel.steps == 3 and rel.family == "toy world" and rel.init_word == "and"
    messages = [m[0] for m in entry["status"]["messages"]]
    assert "execution_start" in messages and "execution_error" not in messages


def test_interrupt_during_training_stops_cleanly(server):
    workflow = demo_workflow(steps=100000, keep_branches=())
    workflow["3"]["inputs"]["name"] = "never_finished"
    prompt_id = server.queue(workflow)
    deadline = time.time() + 120
    while not server.running() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(5)                                   # into the training loop
    server.post("/interrupt")
    entry = server.wait(prompt_id, timeout=120)
    messages = dict((m[0], m[1]) for m in entry["status"]["messages"])
    assert entry["status"]["status_str"] == "error"
    assert messages["execution_interrupted"]["node_type"] == "ReVersionTrainRelation"
    assert not (server.embeddings / "never_finished.safetensors").exists()
    # the server is healthy afterwards: a short run succeeds
    assert server.run(demo_workflow(steps=1, keep_branches=()), timeout=300)["status"]["status_str"] == "success"


def test_http_directory_escape_is_refused_without_a_listing(server):
    graph = {"1": {"class_type": "ReVersionLoadExemplars",
                   "inputs": {"folder": "../../../../etc", "size": 64, "center_crop": False}},
             "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 1]}}}
    entry = server.wait(server.queue(graph), timeout=120)
    message = error_of(entry)
    assert "outside ComfyUI's input folder" in message and "REVERSION_EXEMPLAR_ROOTS" in message
    assert "passwd" not in json.dumps(entry)


def test_http_bad_names_are_refused_when_queued(server):
    with pytest.raises(RuntimeError, match="no spaces"):
        server.queue(toy_training("my rel"))
    with pytest.raises(RuntimeError, match="Windows reserves 'NUL'"):
        server.queue(toy_training("NUL"))


def cached_nodes(entry: dict) -> list[str]:
    return [n for m in entry["status"]["messages"] if m[0] == "execution_cached" for n in m[1]["nodes"]]


def test_http_requeue_is_cached_until_the_relation_file_is_deleted(server):
    path = server.embeddings / "requeue_http.safetensors"
    server.run(toy_training("requeue_http"), timeout=300)
    written = path.stat().st_mtime_ns
    entry = server.run(toy_training("requeue_http"), timeout=300)       # unchanged graph: from the cache
    assert "3" in cached_nodes(entry) and path.stat().st_mtime_ns == written
    path.unlink()
    entry = server.run(toy_training("requeue_http"), timeout=300)       # deleted: trained and written again
    assert "3" not in cached_nodes(entry)
    assert path.exists() and rf.load(path).steps == 1
    assert "3" in cached_nodes(server.run(toy_training("requeue_http"), timeout=300))   # and cached again


def test_http_broken_relation_file_fails_with_the_reason(server):
    from safetensors.torch import save_file
    save_file({"emb_params": torch.full((1, 128), float("nan"))}, str(server.embeddings / "nan_http.safetensors"))
    graph = {"1": {"class_type": "ReVersionToyWorldModel", "inputs": {}},
             "2": {"class_type": "ReVersionLoadRelation", "inputs": {"relation_file": "nan_http.safetensors"}},
             "3": {"class_type": "ReVersionRelationTextEncode",
                   "inputs": {"clip": ["1", 1], "relation": ["2", 0], "text": "a red circle <R> a blue square"}},
             "4": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["3", 0]}},
             "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 256, "height": 256, "batch_size": 1}},
             "6": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["3", 0], "negative": ["4", 0],
                                                        "latent_image": ["5", 0], "seed": 0, "steps": 1, "cfg": 1.0,
                                                        "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
             "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
             "8": {"class_type": "PreviewImage", "inputs": {"images": ["7", 0]}}}
    entry = server.wait(server.queue(graph), timeout=300)
    assert entry["status"]["status_str"] == "error"
    assert "NaN/Inf value(s): the file is broken" in error_of(entry)
