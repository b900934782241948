"""ComfyUI headless on 127.0.0.1 with the pack installed: the demo workflow over HTTP, and
/interrupt during training."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))


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
    relation = server.embeddings / f"{workflow['3']['inputs']['name']}.safetensors"
    from reversion import relation_file
    rel = relation_file.load(relation)
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
