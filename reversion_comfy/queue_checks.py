"""Checks of the whole graph when it is queued, before anything runs.

ComfyUI validates each node on its own (VALIDATE_INPUTS) and, when a node fails, drops only
the outputs that depend on it and runs the rest: a taken Save Relation name let the
training run for nothing, and a Train Relation refused after a restart gave a green run
that trained nothing. Files are a property of the whole graph, so this module checks them
across all its nodes, in ComfyUI's on_prompt hook (it sees every /prompt request first):

- every relation file a node will write: the name, an existing file, an unfinished or
  stopped run's checkpoint, a run training that name now (store.queue_check); a file this
  server wrote passes only for the graph part that wrote it (`graph_signature`: it will be
  served from the cache), not for another graph that would find it taken after running;
- two nodes of the graph writing the same file;
- a run training it now, or a prompt already in the queue that writes it, from another
  graph part (the same graph part queued again, a batch count above 1, is served from the
  cache and passes; an overwriting node passes too);
- Train Relation's number settings are finite (JSON allows NaN, which passes every range check).

When any check fails, the whole prompt is refused: it is cut down to the nodes at fault
(and what they depend on), and their name input is replaced by a marked message that their
VALIDATE_INPUTS returns (store.queue_check), so /prompt answers 400 with the message on
each node at fault, the front end marks them, and nothing runs.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path

from . import store

log = logging.getLogger("ReVersion")

WRITERS = {"ReVersionTrainRelation": "Train Relation", "ReVersionSaveRelation": "Save Relation"}
FINITE_INPUTS = ("learning_rate", "weight_decay", "steering_weight", "temperature", "focal_alpha", "swap_weight")
NOT_RUNNING = object()


def writers(prompt: dict) -> list[tuple[str, str, dict]]:
    """(node id, class type, inputs) of the prompt's nodes that write a relation file."""
    return [(str(i), n.get("class_type"), n.get("inputs") or {}) for i, n in prompt.items()
            if isinstance(n, dict) and n.get("class_type") in WRITERS]


def _literal(value, kind):
    return value if isinstance(value, kind) and not isinstance(value, list) else None


def problems(prompt: dict, queued: list[dict] = ()) -> dict[str, str]:
    """node id -> what is wrong, for every writing node of `prompt` at fault; `queued`: the
    prompts already running or waiting in the queue."""
    found: dict[str, str] = {}
    targets: dict[Path, list[tuple[str, str]]] = {}         # relation path -> [(node id, class)]
    for node_id, cls, inputs in writers(prompt):
        if cls == "ReVersionTrainRelation":
            bad = [f"{k} {inputs[k]}" for k in FINITE_INPUTS
                   if isinstance(inputs.get(k), float) and not math.isfinite(inputs[k])]
            if bad:
                found[node_id] = f"{', '.join(bad)}: give a finite number (the widget's range)"
                continue
        name = _literal(inputs.get("name"), str)
        if name is None or name.startswith(store.REFUSED):         # set by another node: known at run time
            continue
        if isinstance(inputs.get("overwrite"), list) or isinstance(inputs.get("resume"), list):
            continue                                  # wired: only known at run time (claim checks then)
        overwrite = bool(_literal(inputs.get("overwrite"), bool))
        verdict = store.queue_check(name, overwrite, new_run=cls == "ReVersionTrainRelation"
                                    and not _literal(inputs.get("resume"), bool))
        if verdict is not True:
            found[node_id] = verdict
            continue
        path = store.relation_path(name)
        signature = graph_signature(prompt, node_id)
        running = store.RUNNING.graph(path, default=NOT_RUNNING)      # one read: the worker may end it now
        if running is not NOT_RUNNING and running is not None and running != signature:
            found[node_id] = store.RUNNING.RUNNING_NOW.format(path.stem)
            continue
        wrote = store.WRITTEN.graph(path)
        if not overwrite and wrote is not None and wrote != signature:
            found[node_id] = (f"{path.name} already exists: this server wrote it from another graph (or other "
                              f"inputs) earlier; choose another name, or switch 'overwrite' on")
            continue
        targets.setdefault(path, []).append((node_id, cls, signature))
    for path, nodes in targets.items():
        if len(nodes) > 1:
            listed = " and ".join(f"{node_id} ({WRITERS[cls]})" for node_id, cls, _ in nodes)
            for node_id, _, _ in nodes:
                found.setdefault(node_id, f"nodes {listed} both write {path.name}: give each its "
                                          f"own name (one would replace or refuse the other's file)")
    # prompts in the queue: the same graph part again (a batch count above 1) will be served
    # from the cache; another graph part writing the same file would find it taken
    earlier: dict[Path, set] = {}
    for q in queued:
        for node_id, _, inputs in writers(q):
            if _valid_name(_literal(inputs.get("name"), str)):
                earlier.setdefault(store.relation_path(inputs["name"]), set()).add(graph_signature(q, node_id))
    for path, nodes in targets.items():
        for node_id, cls, signature in nodes:
            overwrite = _literal(prompt[node_id]["inputs"].get("overwrite"), bool)
            if earlier.get(path, {signature}) != {signature} and not overwrite:
                found.setdefault(node_id, f"a prompt already in the queue writes {path.name}; wait "
                                          f"for it, choose another name, or switch 'overwrite' on")
    return found


def graph_signature(prompt: dict | None, node_id) -> str | None:
    """A hash of a node and everything it depends on in `prompt` (classes and literal inputs,
    node ids left out): the same for the same graph part whatever the ids. A writing node
    records it with its file; at queue time a file this server wrote passes only for the
    graph part that wrote it (served from the cache), not for another that would write
    there after running."""
    if not isinstance(prompt, dict) or str(node_id) not in prompt:
        return None
    done: dict[str, str] = {}

    def sign(i: str) -> str:
        if i not in done:
            node = prompt.get(i) or {}
            inputs = {k: (["link", sign(str(v[0])), int(v[1])] if _is_link(v) else _canonical(v))
                      for k, v in sorted((node.get("inputs") or {}).items())}
            done[i] = hashlib.sha256(json.dumps([node.get("class_type"), inputs], sort_keys=True,
                                                default=str).encode()).hexdigest()[:16]
        return done[i]
    return sign(str(node_id))


def _is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[1], (int, float))


def _canonical(value):
    """A literal input as validation leaves it: ComfyUI converts INT/FLOAT inputs in place
    (a browser sends 1.0 as 1, the run sees 1.0), so numbers hash as floats; a wrapped
    {"__value__": ...} as its value."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dict) and set(value) == {"__value__"}:
        return _canonical(value["__value__"])
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def _valid_name(name) -> bool:
    try:
        return isinstance(name, str) and bool(store.check_name(name))
    except ValueError:
        return False


def needed(prompt: dict, node_ids) -> set[str]:
    """The nodes `node_ids` and every node they depend on."""
    keep, todo = set(), [str(i) for i in node_ids]
    while todo:
        node_id = todo.pop()
        if node_id in keep or node_id not in prompt:
            continue
        keep.add(node_id)
        todo += [str(v[0]) for v in (prompt[node_id].get("inputs") or {}).values() if isinstance(v, list) and v]
    return keep


def refused(prompt: dict, found: dict[str, str]) -> dict:
    """The prompt cut down to the nodes at fault and their inputs, each writing node's name
    replaced by the marked message its VALIDATE_INPUTS returns."""
    keep = needed(prompt, found)
    out = {}
    for node_id in keep:
        node = {**prompt[node_id], "inputs": dict(prompt[node_id].get("inputs") or {})}
        if node.get("class_type") in WRITERS:     # at fault, or upstream of one that is: neither may run
            why = found.get(node_id) or f"not run: {', '.join(f'node {i}' for i in sorted(found))} cannot write"
            node["inputs"]["name"] = store.REFUSED + why
        out[node_id] = node
    return out


def on_prompt(json_data: dict) -> dict:
    """ComfyUI's on_prompt handler: the request, or the request with its prompt refused."""
    try:
        prompt = json_data.get("prompt")
        if not isinstance(prompt, dict) or not writers(prompt):
            return json_data
        targets = json_data.get("partial_execution_targets")     # 0.3.x: run only some outputs
        if isinstance(targets, list) and targets:
            part = needed(prompt, targets)
            found = problems({k: v for k, v in prompt.items() if k in part}, _queued())
        else:
            found = problems(prompt, _queued())
        if found:
            log.warning("[ReVersion] prompt refused before running: %s",
                        "; ".join(f"node {k}: {v}" for k, v in sorted(found.items())))
            out = {**json_data, "prompt": refused(prompt, found)}
            out.pop("partial_execution_targets", None)    # every node left is at fault: validate them all
            return out
    except Exception:                       # never break /prompt for other graphs
        log.exception("[ReVersion] the queue-time check failed; the prompt goes on unchecked")
    return json_data


def _queued() -> list[dict]:
    """The prompts running or waiting in this server's queue, each cut to the outputs it
    will execute (those that passed validation) and what they need."""
    try:
        import server
        running, pending = server.PromptServer.instance.prompt_queue.get_current_queue()
    except Exception:
        return []
    out = []
    for item in [*running, *pending]:
        if len(item) > 2 and isinstance(item[2], dict):
            runs = item[4] if len(item) > 4 and isinstance(item[4], (list, set, tuple)) else None
            part = needed(item[2], runs) if runs else set(item[2])    # the outputs it will execute
            out.append({k: v for k, v in item[2].items() if k in part})
    return out


def install() -> bool:
    """Register `on_prompt` with the running server (once); False where there is none."""
    try:
        import server
        instance = server.PromptServer.instance
    except (ImportError, AttributeError):
        return False
    if not hasattr(instance, "add_on_prompt_handler"):
        return False
    if on_prompt not in getattr(instance, "on_prompt_handlers", []):
        instance.add_on_prompt_handler(on_prompt)
    return True
