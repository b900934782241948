"""The workflows a user opens from ComfyUI's Templates dialog (workflows/*.json, UI format),
checked against a running host's /object_info, laid out for reading, served with their
thumbnails, and the toy one run through /prompt."""
from __future__ import annotations

import copy
import json
import urllib.error
import urllib.request

import pytest

from devtools import make_demo_workflow
from devtools import ui_workflow as uw
from devtools.pack import REPO

NAMES = ["sd15_train_relation", "sd15_use_relation", "sdxl_train_relation", "sdxl_use_relation", "toyworld_demo"]


@pytest.fixture(scope="module")
def object_info(server):
    return server.get("/object_info")


def workflow(name: str) -> dict:
    return uw.load(REPO / "workflows" / f"{name}.json")


def fetch(server, path: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(server.url + path, timeout=30) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, "", b""


def by_type(api: dict, class_type: str) -> list[dict]:
    return [n["inputs"] for n in api.values() if n["class_type"] == class_type]


def test_workflows_folder_holds_only_ui_workflows_with_thumbnails():
    assert sorted(p.stem for p in (REPO / "workflows").glob("*.json")) == sorted(NAMES)
    for name in NAMES:
        wf = workflow(name)
        assert wf["version"] == 0.4 and isinstance(wf["nodes"], list) and isinstance(wf["links"], list)
        thumb = REPO / "workflows" / f"{name}.jpg"
        assert thumb.read_bytes()[:3] == b"\xff\xd8\xff"          # a JPEG, as the dialog asks for
    # API-format twins live where the Templates dialog does not look
    for folder in ("example_workflows", "example", "examples", "workflow"):
        assert not (REPO / folder).exists()


def test_every_workflow_matches_the_hosts_node_definitions(object_info):
    for name in NAMES:
        assert uw.check(workflow(name), object_info) == [], name


def test_every_workflow_is_laid_out_for_reading():
    for name in NAMES:
        wf = workflow(name)
        assert uw.layout_problems(wf) == [], name
        notes = [n for n in wf["nodes"] if n["type"] == "Note"]
        assert len(notes) == 1 and len(notes[0]["widgets_values"][0]) > 200, name
        titles = [g["title"] for g in wf["groups"]]
        assert titles[0].startswith("1. ") and len(titles) >= 3, titles
    assert len(workflow("toyworld_demo")["nodes"]) <= 40


# How tall Train Relation grows in Nodes 2.0 once it shows its preview and status: about 1080
# canvas units, read once from the browser test's overlap check before the layout moved (toy
# workflow, 1.58.1: its box from 66 to 712 px at 60% zoom); that check guards it since
TRAIN_GROWN = 1150


def test_nothing_lies_where_train_relation_grows_in_nodes_2_0():
    """The browser test shows it live on the toy workflow (the SD ones need weights): no node
    below Train Relation, in its column, starts within TRAIN_GROWN of its top."""
    for name in NAMES:
        wf = workflow(name)
        for train in (n for n in wf["nodes"] if n["type"] == "ReVersionTrainRelation"):
            (x, y), width = train["pos"], train["size"][0]
            below = [n["id"] for n in wf["nodes"] if n is not train and n["pos"][1] > y
                     and n["pos"][0] < x + width and n["pos"][0] + n["size"][0] > x and n["pos"][1] < y + TRAIN_GROWN]
            assert below == [], (name, below)


def test_widget_values_land_on_the_intended_inputs(object_info):
    for key, ckpt, size in (("sd15", "v1-5-pruned-emaonly.safetensors", 512), ("sdxl", "sd_xl_base_1.0.safetensors", 1024)):
        api = uw.to_api(workflow(f"{key}_train_relation"), object_info)
        assert by_type(api, "CheckpointLoaderSimple")[0]["ckpt_name"] == ckpt
        (ex,) = by_type(api, "ReVersionLoadExemplars")
        assert (ex["folder"], ex["size"], ex["center_crop"]) == ("my_relation", size, False)
        (train,) = by_type(api, "ReVersionTrainRelation")
        assert (train["name"], train["steps"], train["learning_rate"], train["train_seed"]) == ("my_relation", 3000, 2.5e-4, 2023)
        assert train["batch_size"] * train["grad_accum"] == 8 and train["scale_lr"] is True
        assert train["model"][1] == 0 and train["clip"][1] == 1 and train["vae"][1] == 2
        (ks,) = by_type(api, "KSampler")
        assert (ks["seed"], ks["steps"], ks["sampler_name"], ks["scheduler"]) == (0, 30, "dpmpp_2m", "karras")
        (latent,) = by_type(api, "EmptyLatentImage")
        assert (latent["width"], latent["height"]) == (size, size)
        (enc,) = by_type(api, "ReVersionRelationTextEncode")
        assert "<R>" in enc["text"]

        api = uw.to_api(workflow(f"{key}_use_relation"), object_info)
        assert by_type(api, "ReVersionLoadRelation")[0]["relation_file"] == "my_relation.safetensors"
        assert [e["text"] for e in by_type(api, "CLIPTextEncode") if "embedding:" in e["text"]] == \
            ["a cat embedding:my_relation a dog"]
        samplers = by_type(api, "KSampler")
        assert len(samplers) == 2 and samplers[0]["seed"] == samplers[1]["seed"]   # same seed, both routes


def test_toy_workflow_is_the_demo_graph_and_the_api_twin_is_current(object_info):
    assert uw.to_api(workflow("toyworld_demo"), object_info) == make_demo_workflow.build(prompts=2)
    twin = json.loads((REPO / "workflows_api" / "toyworld_demo.json").read_text())
    assert twin == make_demo_workflow.build(), "run `make workflows` (devtools/make_workflows.py)"


def test_the_checker_finds_broken_workflows(object_info):
    good = workflow("sd15_train_relation")
    train = next(n for n in good["nodes"] if n["type"] == "ReVersionTrainRelation")
    i = train["widgets_values"].index(3000)

    swapped = copy.deepcopy(good)                  # steps <-> name: wrong order
    node = next(n for n in swapped["nodes"] if n["id"] == train["id"])
    node["widgets_values"][0], node["widgets_values"][i] = node["widgets_values"][i], node["widgets_values"][0]
    assert any("not a STRING" in p or "not an INT" in p for p in uw.check(swapped, object_info))

    short = copy.deepcopy(good)                    # a widget value missing
    next(n for n in short["nodes"] if n["id"] == train["id"])["widgets_values"].pop()
    assert any("widget values for" in p for p in uw.check(short, object_info))

    out_of_range = copy.deepcopy(good)
    next(n for n in out_of_range["nodes"] if n["id"] == train["id"])["widgets_values"][i] = 0
    assert any("< min" in p for p in uw.check(out_of_range, object_info))

    bad_link = copy.deepcopy(good)                 # CLIP output wired into a MODEL input
    link = next(link for link in bad_link["links"] if link[5] == "MODEL")
    link[2], link[5] = 1, "CLIP"
    assert any("is not CLIP" in p or "CLIP into" in p for p in uw.check(bad_link, object_info))

    unknown = copy.deepcopy(good)
    unknown["nodes"][1]["type"] = "NoSuchNode"
    assert any("unknown node type" in p for p in uw.check(unknown, object_info))

    no_version = copy.deepcopy(good)
    del no_version["version"]
    assert uw.check(no_version, object_info) == ["no 'version': the front end refuses the file"]

    overlapping = copy.deepcopy(good)
    overlapping["nodes"][2]["pos"] = list(overlapping["nodes"][3]["pos"])
    assert uw.layout_problems(overlapping)


def test_templates_route_serves_workflows_and_thumbnails(server):
    status, _, body = fetch(server, "/workflow_templates")
    if status == 404:
        pytest.skip("this host has no custom-node templates route (ComfyUI 2024-03)")
    listed = json.loads(body)
    assert sorted(listed["ComfyUI-ReVersion"]) == sorted(NAMES)
    for name in NAMES:
        status, _, body = fetch(server, f"/api/workflow_templates/ComfyUI-ReVersion/{name}.json")
        assert status == 200 and json.loads(body)["version"] == 0.4
        status, kind, body = fetch(server, f"/api/workflow_templates/ComfyUI-ReVersion/{name}.jpg")
        assert status == 200 and body[:3] == b"\xff\xd8\xff", name


def test_help_pages_are_served_where_the_front_end_asks(server):
    status, _, body = fetch(server, "/extensions/ComfyUI-ReVersion/docs/ReVersionTrainRelation.md")
    assert status == 200 and body.startswith(b"# Train Relation")
    status, _, body = fetch(server, "/extensions/ComfyUI-ReVersion/js/reversion_ui.js")
    assert status == 200 and b"registerExtension" in body
    extensions = server.get("/extensions")
    assert "/extensions/ComfyUI-ReVersion/js/reversion_ui.js" in extensions


def test_toy_workflow_runs_through_prompt_and_a_second_run_does_not_retrain(server, object_info):
    wf = workflow("toyworld_demo")
    train = next(n for n in wf["nodes"] if n["type"] == "ReVersionTrainRelation")
    slots = [name for name, _ in uw.widget_slots(object_info["ReVersionTrainRelation"])]
    train["widgets_values"][slots.index("steps")] = 2
    train["widgets_values"][slots.index("batch_size")] = 2
    train["widgets_values"][slots.index("name")] = "toy_ui_run"
    for node in wf["nodes"]:                       # keep the first pair's three branches only
        if node["type"] == "SaveImage" and not node["widgets_values"][0].endswith(("_00", "/exemplars", "/loss_curve")):
            node["mode"] = 2                        # muted: the front end leaves it out of the prompt
    api = uw.to_api(wf, object_info)
    entry = server.run(api, timeout=900)
    saved = server.image_paths(entry)
    saves = sorted(k for k, v in api.items() if v["class_type"] == "SaveImage")
    assert sorted(saved) == saves and len(saves) == 5
    assert (server.embeddings / "toy_ui_run.safetensors").exists()
    assert entry["outputs"][str(train["id"])]["text"][0].startswith("saved toy_ui_run.safetensors (embedding:toy_ui_run): 2 updates")

    again = server.run(api, timeout=900)
    cached = dict((m[0], m[1]) for m in again["status"]["messages"]).get("execution_cached", {}).get("nodes", [])
    assert str(train["id"]) in cached                # same inputs: served from the cache, no retraining


def test_committed_workflows_are_what_the_generator_makes_from_this_host(object_info):
    from devtools import make_workflows
    workflows, toy_api = make_workflows.build_all(object_info)
    for name, wf in workflows.items():
        assert workflow(name) == wf, f"{name} is stale: run `make workflows` (devtools/make_workflows.py)"
    assert json.loads((REPO / "workflows_api" / "toyworld_demo.json").read_text()) == toy_api
