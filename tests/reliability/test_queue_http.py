"""Every file a graph will write is checked when it is queued, across all its nodes, over
HTTP on a headless ComfyUI (reversion_comfy/queue_checks.py): a taken Save Relation name, two
nodes writing one file, a file left from before a restart, a name that a running or a
queued prompt writes, NaN settings. Each is refused as a whole prompt (HTTP 400, the
message on each node at fault) and nothing runs: no training, no preview, no file."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import torch

from comfyui_reversion.reversion import relation_file as rf
from conftest import toy_training


def post_prompt(server, graph: dict) -> tuple[int, dict]:
    """(HTTP status, answer) of POST /prompt (NaN allowed in the JSON, as the API accepts)."""
    req = urllib.request.Request(server.url + "/prompt", method="POST", headers={"Content-Type": "application/json"},
                                 data=json.dumps({"prompt": graph, "client_id": server.client_id}).encode())
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def node_message(answer: dict, node_id: str) -> str:
    return " ".join(e.get("details", "") for e in answer["node_errors"][node_id]["errors"])


def assert_nothing_ran(server, before: int) -> None:
    """No prompt was queued (the history grew by nothing, the queue is empty)."""
    time.sleep(0.5)
    queue = server.get("/queue")
    assert queue["queue_running"] == [] and queue["queue_pending"] == []
    assert len(server.get("/history")) == before


def with_preview(graph: dict) -> dict:
    """The graph plus a PreviewImage of the exemplars: an output that does not need the training."""
    graph = json.loads(json.dumps(graph))
    graph["2"]["inputs"]["count"] = 2
    graph["9"] = {"class_type": "PreviewImage", "inputs": {"images": ["2", 1]}}
    return graph


def save_node(name: str, overwrite: bool = False) -> dict:
    return {"class_type": "ReVersionSaveRelation", "inputs": {"relation": ["3", 0], "name": name, "overwrite": overwrite}}


def test_a_taken_save_name_refuses_the_whole_prompt_before_training(server):
    (server.embeddings / "taken_q.safetensors").write_bytes(b"keep me")
    graph = with_preview(toy_training("fresh_q"))
    graph["4"] = save_node("taken_q")
    before = len(server.get("/history"))
    status, answer = post_prompt(server, graph)
    assert status == 400 and set(answer["node_errors"]) == {"3", "4"}
    assert "taken_q.safetensors already exists" in node_message(answer, "4")
    assert "switch 'overwrite' on, or use Load Relation" in node_message(answer, "4")
    assert "not run: node 4 cannot write" in node_message(answer, "3")
    assert_nothing_ran(server, before)
    assert not (server.embeddings / "fresh_q.safetensors").exists()
    assert (server.embeddings / "taken_q.safetensors").read_bytes() == b"keep me"


def test_a_name_this_server_saved_from_another_graph_is_refused_before_training(server):
    """The reported case: Save `mine_q` once; a graph Train `late_mine_q` -> Save `mine_q`
    used to train, write late_mine_q, then fail the save with '(nothing was trained or
    written)'. The unchanged first graph is still served from the cache."""
    first = toy_training("early_q")
    first["4"] = save_node("mine_q")
    assert server.run(first, timeout=300)["status"]["status_str"] == "success"
    written = (server.embeddings / "mine_q.safetensors").read_bytes()
    late = toy_training("late_mine_q")
    late["4"] = save_node("mine_q")
    before = len(server.get("/history"))
    status, answer = post_prompt(server, late)
    assert status == 400
    assert "mine_q.safetensors already exists: this server wrote it from another graph" in node_message(answer, "4")
    assert_nothing_ran(server, before)
    assert not (server.embeddings / "late_mine_q.safetensors").exists()
    assert (server.embeddings / "mine_q.safetensors").read_bytes() == written
    entry = server.run(first, timeout=300)                       # the graph that wrote it: cached
    assert entry["status"]["status_str"] == "success"
    assert {"3", "4"} <= {n for m in entry["status"]["messages"] if m[0] == "execution_cached" for n in m[1]["nodes"]}


def test_two_nodes_writing_one_file_are_refused(server):
    before = len(server.get("/history"))
    graph = toy_training("twice_q")
    graph["4"] = save_node("twice_q", overwrite=True)
    status, answer = post_prompt(server, graph)
    assert status == 400
    for node_id in ("3", "4"):
        assert "nodes 3 (Train Relation) and 4 (Save Relation) both write twice_q.safetensors" in node_message(answer, node_id)
    graph = toy_training("dup_q", overwrite=True)
    graph["5"] = {**graph["3"], "inputs": {**graph["3"]["inputs"], "train_seed": 2}}
    status, answer = post_prompt(server, graph)
    assert status == 400 and "nodes 3 (Train Relation) and 5 (Train Relation) both write dup_q" in node_message(answer, "5")
    assert_nothing_ran(server, before)


def test_a_file_from_before_a_restart_is_refused_visibly_not_a_green_run(server):
    """After a restart this server did not write the file: the unchanged graph used to run
    only its preview and report success. Now nothing runs and the node says why."""
    rf_bytes = rf.to_bytes(rf.Relation({"clip_l": torch.zeros(128)}, name="restart_q"))
    (server.embeddings / "restart_q.safetensors").write_bytes(rf_bytes)
    before = len(server.get("/history"))
    status, answer = post_prompt(server, with_preview(toy_training("restart_q")))
    assert status == 400 and list(answer["node_errors"]) == ["3"]
    assert "restart_q.safetensors already exists" in node_message(answer, "3")
    assert_nothing_ran(server, before)
    assert (server.embeddings / "restart_q.safetensors").read_bytes() == rf_bytes


def test_nan_settings_are_refused_when_queued(server):
    before = len(server.get("/history"))
    for field in ("temperature", "steering_weight", "learning_rate"):
        status, answer = post_prompt(server, toy_training("nan_q", **{field: float("nan")}))
        assert status == 400 and f"{field} nan: give a finite number" in node_message(answer, "3"), answer
    assert_nothing_ran(server, before)
    assert not (server.embeddings / "nan_q.resume").exists()


def test_the_same_training_graph_queued_twice_trains_once(server):
    """A batch count of 2 queues the graph twice: both are accepted, the second is served
    from the cache (not refused as 'already in the queue', not trained again)."""
    # whole numbers as a browser sends them (0, not 0.0): validation turns them into floats
    # before the run, and the graph must still count as the same
    graph = toy_training("batch_q", steps=3, weight_decay=0, focal_alpha=0)
    first, second = server.queue(graph), server.queue(graph)
    assert server.wait(first, timeout=300)["status"]["status_str"] == "success"
    written = (server.embeddings / "batch_q.safetensors").stat().st_mtime_ns
    for prompt_id in (second, server.queue(graph)):              # and once more after both ran
        entry = server.wait(prompt_id, timeout=300)
        assert entry["status"]["status_str"] == "success"
        assert "3" in {n for m in entry["status"]["messages"] if m[0] == "execution_cached" for n in m[1]["nodes"]}
    assert (server.embeddings / "batch_q.safetensors").stat().st_mtime_ns == written


def test_a_name_that_a_running_or_queued_prompt_writes_is_refused(server):
    busy = toy_training("busy_q", steps=100000)
    running_id = server.queue(busy)
    deadline = time.time() + 120
    while not server.running() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(3)                                              # into its training loop
    try:
        status, answer = post_prompt(server, toy_training("busy_q", train_seed=5))
        assert status == 400 and "a run in this server is training 'busy_q' right now" in node_message(answer, "3")
        waiting_id = server.queue(toy_training("later_q"))       # waits behind the running one
        status, answer = post_prompt(server, toy_training("later_q", train_seed=5))
        assert status == 400 and "a prompt already in the queue writes later_q.safetensors" in node_message(answer, "3")
        status, _ = post_prompt(server, toy_training("later_q", train_seed=5, overwrite=True))
        assert status == 200                                   # overwrite on: replacing it in turn is asked for
    finally:
        server.post("/queue", {"clear": True})
        server.post("/interrupt")
        server.wait(running_id, timeout=120)
    assert waiting_id not in server.get("/history")
    assert not (server.embeddings / "busy_q.safetensors").exists()
