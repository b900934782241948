"""Write workflows/*.json (UI format, what ComfyUI's Templates dialog opens) with a .jpg
thumbnail beside each, and workflows_api/toyworld_demo.json (API format, for devtools/demo.py
and the server tests; outside workflows/ so the Templates dialog does not list it).

    python -m devtools.make_workflows [--object-info FILE] [--check]   (make workflows)

Widget order, defaults and sockets come from the `/object_info` of a real host (a headless
ComfyUI is started unless --object-info names a saved copy), so the files follow the node
definitions. --check only reports whether the committed files are up to date.

Workflows:
    sd15_train_relation   exemplar folder -> Train Relation on an SD1.5 checkpoint -> try <R>
    sd15_use_relation     a saved relation two ways: Load Relation -> Relation Text Encode,
                          and the stock CLIP Text Encode with embedding:NAME, same seed
    sdxl_train_relation   the same on SDXL
    sdxl_use_relation
    toyworld_demo         the toy world end to end (no downloads): train, then each prompt
                          with <R>, with the true word and with the init word
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from . import headless, host, make_demo_workflow
from . import ui_workflow as uw
from .pack import REPO

WORKFLOWS = REPO / "workflows"
API_DIR = REPO / "workflows_api"
RELATION = "my_relation"
COLOURS = {"model": "#3f789e", "data": "#8A8", "train": "#b06634", "use": "#88A", "sample": "#a1309b",
           "shared": "#444"}

MODELS = {
    "sd15": {"label": "SD1.5", "ckpt": "v1-5-pruned-emaonly.safetensors", "size": 512,
             "sample": {"steps": 30, "cfg": 7.0, "sampler_name": "dpmpp_2m", "scheduler": "karras"},
             "train": {}},
    "sdxl": {"label": "SDXL", "ckpt": "sd_xl_base_1.0.safetensors", "size": 1024,
             "sample": {"steps": 30, "cfg": 6.0, "sampler_name": "dpmpp_2m", "scheduler": "karras"},
             # same effective batch as the paper (2 x 4) in less memory
             "train": {"batch_size": 1, "grad_accum": 8}},
}

# Notes: one line per paragraph or list item (the Note widget wraps them to its width).
TRAIN_NOTE = """{label}: learn a relation <R> from your own images

1. Put 4-10 images that share one relation in ComfyUI/input/{relation}/, with a text.json such as {{"0.jpg": ["a cat {{}} a dog"]}} ({{}} marks where the relation goes), or type one shared caption in 'template' (group 2).
2. Pick your {label} checkpoint in group 1.
3. Queue. Train Relation shows its progress, a loss curve and the time left; the server console logs a line every few updates. Paper settings: 3000 updates (hours on a GPU; try 300 first).
4. The relation is saved as models/embeddings/{relation}.safetensors. Group 4 samples with it; afterwards use it in any prompt as embedding:{relation} (see the '{key}_use_relation' template).

Queue again with the same inputs: nothing retrains (the seed stays fixed). After a ComfyUI restart the name counts as taken: use the '{key}_use_relation' template, or switch 'overwrite' on to train again.
"""

USE_NOTE = """{label}: use a saved relation

Two equivalent routes, side by side with the same seed:
2a. Load Relation -> Relation Text Encode: write <R> where the relation goes.
2b. The stock CLIP Text Encode with embedding:{relation} in its place.
Both give the same conditioning, so the two images match.

Pick your {label} checkpoint (group 1) and the relation file (after training a new one, press R to refresh the list).
"""

TOY_NOTE = """Toy world: the whole method in minutes on a CPU, nothing to download

The built-in toy model draws two coloured shapes in a relation. Group 1 renders exemplars of one relation ('{relation}'); group 2 learns <R> from them ({steps} updates, a few minutes on a CPU) and writes models/embeddings/{name}.safetensors.

Group 4 then draws new object pairs three ways with the same seed:
- <R> (learned)
- the true word (oracle)
- the init word 'and' (where <R> started)
If <R> learned the relation, its row looks like the oracle row, not like the 'and' row.
"""


def sample_chain(g, m, ckpt, positive, negative, latent, x, y, save_size, prefix, **save_options) -> list:
    """KSampler (seed 0, the model's sampler settings) -> VAEDecode -> SaveImage at column `x`,
    row `y`, wired to the checkpoint loader's MODEL and VAE; returns the three nodes."""
    ks = g.node("KSampler", (x, y), (340, 280), seed=0, **m["sample"])
    g.link(ckpt, 0, ks, "model")
    g.link(positive, 0, ks, "positive")
    g.link(negative, 0, ks, "negative")
    g.link(latent, 0, ks, "latent_image")
    dec = g.node("VAEDecode", (x, y + 340), (340, 50))
    g.link(ks, 0, dec, "samples")
    g.link(ckpt, 2, dec, "vae")
    save = g.node("SaveImage", (x + 400, y), save_size, filename_prefix=prefix, **save_options)
    g.link(dec, 0, save, "images")
    return [ks, dec, save]


def train_workflow(info: dict, key: str) -> dict:
    m = MODELS[key]
    g = uw.UIGraph(info)
    g.note(TRAIN_NOTE.format(label=m["label"], relation=RELATION, key=key), (0, 0), (460, 400))
    ckpt = g.node("CheckpointLoaderSimple", (0, 540), (460, 100), ckpt_name=m["ckpt"])
    g.group(f"1. Checkpoint ({m['label']})", [ckpt], COLOURS["model"])

    ex = g.node("ReVersionLoadExemplars", (560, 80), (380, 170), folder=RELATION, size=m["size"],
                center_crop=False, template="")
    ex_preview = g.node("PreviewImage", (560, 330), (380, 380), title="Exemplars")
    g.link(ex, "images", ex_preview, "images")
    g.group("2. Exemplars", [ex, ex_preview], COLOURS["data"])

    # tall: the live loss-curve preview (with the time left) is drawn below the widgets
    train = g.node("ReVersionTrainRelation", (1040, 80), (400, 840), name=RELATION, **m["train"])
    for name, out in (("model", 0), ("clip", 1), ("vae", 2)):
        g.link(ckpt, out, train, name)
    g.link(ex, "exemplars", train, "exemplars")
    curve = g.node("PreviewImage", (1500, 80), (560, 460), title="Loss curve")
    g.link(train, "loss_curve", curve, "images")
    g.group("3. Train <R>", [train, curve], COLOURS["train"])

    y = 1400                      # below Train Relation as Nodes 2.0 grows it (preview + status: ~1100)
    pos = g.node("ReVersionRelationTextEncode", (1040, y), (400, 180), title="Prompt with <R>",
                 text="a cat <R> a dog")
    g.link(ckpt, 1, pos, "clip")
    g.link(train, "relation", pos, "relation")
    neg = g.node("CLIPTextEncode", (1040, y + 240), (400, 160), title="Negative prompt",
                 text="blurry, low quality")
    g.link(ckpt, 1, neg, "clip")
    latent = g.node("EmptyLatentImage", (1040, y + 460), (400, 110), width=m["size"], height=m["size"],
                    batch_size=4)
    chain = sample_chain(g, m, ckpt, pos, neg, latent, 1500, y, (480, 520), f"reversion/{RELATION}")
    g.group("4. Try <R> in a prompt", [pos, neg, latent, *chain], COLOURS["sample"])
    return g.to_json()


def use_workflow(info: dict, key: str) -> dict:
    m = MODELS[key]
    g = uw.UIGraph(info)
    g.note(USE_NOTE.format(label=m["label"], relation=RELATION), (0, 0), (460, 330))
    ckpt = g.node("CheckpointLoaderSimple", (0, 470), (460, 100), ckpt_name=m["ckpt"])
    g.group(f"1. Checkpoint ({m['label']})", [ckpt], COLOURS["model"])

    load = g.node("ReVersionLoadRelation", (560, 80), (400, 80), relation_file=f"{RELATION}.safetensors")
    enc_r = g.node("ReVersionRelationTextEncode", (560, 220), (400, 180), title="Prompt with <R>",
                   text="a cat <R> a dog")
    g.link(ckpt, 1, enc_r, "clip")
    g.link(load, 0, enc_r, "relation")
    g.group("2a. Load Relation", [load, enc_r], COLOURS["use"])
    enc_e = g.node("CLIPTextEncode", (560, 580), (400, 180), title=f"Prompt with embedding:{RELATION}",
                   text=f"a cat embedding:{RELATION} a dog")
    g.link(ckpt, 1, enc_e, "clip")
    g.group("2b. embedding:NAME", [enc_e], COLOURS["use"])

    neg = g.node("CLIPTextEncode", (1060, 80), (400, 160), title="Negative prompt", text="blurry, low quality")
    g.link(ckpt, 1, neg, "clip")
    latent = g.node("EmptyLatentImage", (1060, 300), (400, 110), width=m["size"], height=m["size"], batch_size=2)
    g.group("3. Shared", [neg, latent], COLOURS["shared"])

    outs = []
    for row, (enc, label) in enumerate(((enc_r, "<R> via Relation Text Encode"),
                                        (enc_e, f"embedding:{RELATION}"))):
        outs += sample_chain(g, m, ckpt, enc, neg, latent, 1560, 80 + row * 620, (460, 520),
                             f"reversion/{RELATION}_{'R' if row == 0 else 'embedding'}", title=label)
    g.group("4. Same seed, two routes: the images match", outs, COLOURS["sample"])
    return g.to_json()


CONDITION_TITLES = {"R": "<R> (learned)", "word": "true word (oracle)", "init": "init word 'and'"}


def toy_workflow(info: dict, api: dict) -> dict:
    """Lay out an API-format toy demo graph (make_demo_workflow.build) for reading; node ids kept."""
    g = uw.UIGraph(info)
    train_inputs = api["3"]["inputs"]
    relation = api["2"]["inputs"]["relation"]

    def widgets(node_id):
        return {k: v for k, v in api[node_id]["inputs"].items() if not isinstance(v, list)}

    made = {}

    def add(node_id, pos, size, title=None):
        made[node_id] = g.node(api[node_id]["class_type"], pos, size, title=title, node_id=int(node_id),
                               **widgets(node_id))
        return made[node_id]

    add("1", (0, 500), (460, 110))
    add("2", (0, 680), (460, 130))
    add("4", (0, 880), (460, 480), title="Exemplars")
    g.group("1. Toy model, exemplars", [made[k] for k in ("1", "2", "4")], COLOURS["data"])
    add("3", (560, 80), (400, 840))               # tall: room for the live loss-curve preview
    # below the node's own preview with room: Nodes 2.0 grows Train Relation to ~1100 units
    # once it shows the loss/sample preview and its status
    add("5", (560, 1320), (460, 380), title="Loss curve")
    g.group("2. Train <R>", [made["3"], made["5"]], COLOURS["train"])
    add("6", (1120, 80), (400, 130), title="Negative prompt")
    add("7", (1120, 290), (400, 110))
    g.group("3. Shared sampling inputs", [made["6"], made["7"]], COLOURS["shared"])

    branches = [k for k in api if int(k) >= 8]
    x0, row_h, y = 1620, 360, 80
    for p in range(len(branches) // 12):
        block = []
        for c in range(3):
            enc, ks, dec, save = branches[p * 12 + c * 4: p * 12 + c * 4 + 4]
            cond = make_demo_workflow.CONDITIONS[c]
            yy = y + c * row_h
            block += [add(enc, (x0, yy), (420, 130), title=CONDITION_TITLES[cond]),
                      add(ks, (x0 + 480, yy), (320, 280)),
                      add(dec, (x0 + 860, yy), (220, 50)),
                      add(save, (x0 + 1140, yy), (320, 300), title=CONDITION_TITLES[cond])]
        text = api[branches[p * 12]]["inputs"]["text"]
        g.group(f"4.{p + 1} New pair: {text}", block, COLOURS["sample"])
        y += 3 * row_h + 140

    for node_id, node in api.items():
        for name, value in node["inputs"].items():
            if isinstance(value, list):
                g.link(made[value[0]], value[1], made[node_id], name)
    g.note(TOY_NOTE.format(relation=relation, steps=train_inputs["steps"], name=train_inputs["name"]),
           (0, 0), (460, 360))
    return g.to_json()


# ------------------------------------------------------------------------------ thumbnails
def thumbnail(workflow: dict, info: dict, width: int = 768, height: int = 480):
    """A picture of the graph: groups, nodes with titles, links."""
    from PIL import Image, ImageDraw, ImageFont
    boxes = [(n["pos"][0], n["pos"][1] - uw.TITLE_HEIGHT, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
             for n in workflow["nodes"]]
    boxes += [(g["bounding"][0], g["bounding"][1], g["bounding"][0] + g["bounding"][2],
               g["bounding"][1] + g["bounding"][3]) for g in workflow["groups"]]
    x0, y0 = min(b[0] for b in boxes) - 20, min(b[1] for b in boxes) - 20
    x1, y1 = max(b[2] for b in boxes) + 20, max(b[3] for b in boxes) + 20
    scale = min(width / (x1 - x0), height / (y1 - y0))
    ox, oy = (width - (x1 - x0) * scale) / 2, (height - (y1 - y0) * scale) / 2

    def p(x, y):
        return ox + (x - x0) * scale, oy + (y - y0) * scale

    try:
        font = ImageFont.load_default(size=max(9, int(34 * scale)))
        gfont = ImageFont.load_default(size=max(10, int(44 * scale)))
    except TypeError:
        font = gfont = ImageFont.load_default()
    img = Image.new("RGB", (width, height), (32, 32, 32))
    d = ImageDraw.Draw(img)
    for grp in workflow["groups"]:
        x, y, w, h = grp["bounding"]
        colour = tuple(int(grp.get("color", "#3f789e").lstrip("#").ljust(6, "0")[i:i + 2], 16)
                       if len(grp.get("color", "")) == 7 else 120 for i in (0, 2, 4))
        d.rectangle([*p(x, y), *p(x + w, y + h)], fill=tuple(c // 3 + 20 for c in colour), outline=colour)
        d.text(p(x + 10, y + 4), grp["title"], fill=(235, 235, 235), font=gfont)
    by_id = {n["id"]: n for n in workflow["nodes"]}
    for _, src, s_slot, dst, d_slot, _ in workflow["links"]:
        a, b = by_id[src], by_id[dst]
        d.line([p(a["pos"][0] + a["size"][0], a["pos"][1] + 14 + 20 * s_slot),
                p(b["pos"][0], b["pos"][1] + 14 + 20 * d_slot)], fill=(150, 200, 150), width=1)
    for n in workflow["nodes"]:
        x, y = n["pos"]
        w, h = n["size"]
        note = n["type"] == "Note"
        d.rectangle([*p(x, y - uw.TITLE_HEIGHT), *p(x + w, y + h)], fill=(101, 85, 51) if note else (53, 53, 53),
                    outline=(10, 10, 10))
        d.rectangle([*p(x, y - uw.TITLE_HEIGHT), *p(x + w, y)], fill=(68, 51, 34) if note else (34, 34, 34))
        title = n.get("title") or info.get(n["type"], {}).get("display_name") or n["type"]
        d.text(p(x + 8, y - uw.TITLE_HEIGHT + 4), title,
               fill=(230, 230, 230), font=font)
    return img


# ------------------------------------------------------------------------------------ main
def object_info_from_host() -> dict:
    with tempfile.TemporaryDirectory(prefix="reversion_object_info_") as tmp:
        with headless.ComfyServer(host.comfyui_path(), Path(tmp)) as server:
            return server.get("/object_info")


def build_all(info: dict) -> tuple[dict[str, dict], dict]:
    toy_api_full = make_demo_workflow.build()
    toy_ui = toy_workflow(info, make_demo_workflow.build(prompts=2))
    return ({"sd15_train_relation": train_workflow(info, "sd15"), "sd15_use_relation": use_workflow(info, "sd15"),
             "sdxl_train_relation": train_workflow(info, "sdxl"), "sdxl_use_relation": use_workflow(info, "sdxl"),
             "toyworld_demo": toy_ui}, toy_api_full)


def dumps(obj) -> str:
    return json.dumps(obj, indent=1) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--object-info", help="a saved /object_info JSON (default: start a headless host)")
    p.add_argument("--save-object-info", help="also write the /object_info used here to this file")
    p.add_argument("--check", action="store_true", help="exit 1 if a committed file differs")
    args = p.parse_args()
    info = json.loads(Path(args.object_info).read_text()) if args.object_info else object_info_from_host()
    if args.save_object_info:
        Path(args.save_object_info).write_text(json.dumps(info))
    workflows, toy_api = build_all(info)
    outputs = {WORKFLOWS / f"{name}.json": dumps(wf) for name, wf in workflows.items()}
    outputs[API_DIR / "toyworld_demo.json"] = dumps(toy_api)
    if args.check:
        stale = [str(path.relative_to(REPO)) for path, text in outputs.items()
                 if not path.exists() or path.read_text() != text]
        print("stale: " + ", ".join(stale) if stale else "workflows up to date")
        sys.exit(1 if stale else 0)
    for path, text in outputs.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(REPO)}")
    for name, wf in workflows.items():
        problems = uw.check(wf, info) + uw.layout_problems(wf)
        if problems:
            print(f"{name}: " + "; ".join(problems))
        thumbnail(wf, info).save(WORKFLOWS / f"{name}.jpg", quality=88)
        print(f"wrote workflows/{name}.jpg")


if __name__ == "__main__":
    main()
