"""Write workflows_api/toyworld_demo.json: the demo graph, in ComfyUI's API format.

    python -m devtools.make_demo_workflow [--relation "on top of"]

Toy World Model + Toy World Exemplars -> Train Relation -> for each of a few new object
pairs (never shown with this relation, not in the exemplars), three branches with the same
seed: Relation Text Encode "A <R> B", CLIPTextEncode "A <true word> B" (oracle) and
"A and B" (the init word) -> KSampler -> VAEDecode -> SaveImage. The graph is plain JSON:
load it in ComfyUI (Load, API format) or POST it to /prompt.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from comfyui_reversion import toyworld      # the pack's import name: devtools/pack.py
from comfyui_reversion.toyworld import evaluate, scenes

from .pack import REPO

CONDITIONS = ("R", "word", "init")      # <R>, the true relation word (oracle), the init word
PREFIX = "reversion_demo"
TRAIN = {"steps": 300, "batch_size": 8, "grad_accum": 1, "learning_rate": 6.25e-4, "scale_lr": True,
         "weight_decay": 0.01, "steering_weight": 0.01, "num_positives": 4, "temperature": 0.07,
         "focal_alpha": 0.5, "init_word": "and", "train_seed": 2023,
         # the optional widgets too, so the UI workflow and this graph agree input for input
         "memory": "auto", "checkpoint_every": 100, "resume": False, "preview_every": 50, "preview_prompt": "",
         "preview_steps": 12, "swap_weight": 0.0, "num_vectors": 1}
SAMPLE = {"steps": 20, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}


def build(relation="on top of", prompts=6, images_per_prompt=4, exemplar_count=8, exemplar_seed=0,
          name=None, train=None) -> dict:
    train = {**TRAIN, **(train or {})}
    name = name or f"toy_{relation.replace(' ', '_')}"
    g = {
        "1": {"class_type": "ReVersionToyWorldModel", "inputs": {}},
        "2": {"class_type": "ReVersionToyWorldExemplars",
              "inputs": {"relation": relation, "count": exemplar_count, "scene_seed": exemplar_seed}},
        "3": {"class_type": "ReVersionTrainRelation",
              "inputs": {"model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "exemplars": ["2", 0],
                         "name": name, "overwrite": True, **train}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["2", 1], "filename_prefix": f"{PREFIX}/exemplars"}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["3", 1], "filename_prefix": f"{PREFIX}/loss_curve"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "7": {"class_type": "EmptyLatentImage", "inputs": {"width": 256, "height": 256, "batch_size": images_per_prompt}},
    }
    next_id = 8
    names = toyworld.exemplars(relation, exemplar_count, exemplar_seed).names
    for i, p in enumerate(evaluate.new_pair_prompts(relation, names, prompts)):
        for cond in CONDITIONS:
            enc, ks, dec, save = (str(next_id + k) for k in range(4))
            next_id += 4
            if cond == "R":
                g[enc] = {"class_type": "ReVersionRelationTextEncode",
                          "inputs": {"clip": ["1", 1], "relation": ["3", 0], "text": p.text("<R>")}}
            else:
                word = relation if cond == "word" else train["init_word"]
                g[enc] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": p.text(word)}}
            g[ks] = {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": 100 + i, "positive": [enc, 0],
                                                          "negative": ["6", 0], "latent_image": ["7", 0], **SAMPLE}}
            g[dec] = {"class_type": "VAEDecode", "inputs": {"samples": [ks, 0], "vae": ["1", 2]}}
            g[save] = {"class_type": "SaveImage", "inputs": {"images": [dec, 0], "filename_prefix": f"{PREFIX}/{cond}_{i:02d}"}}
    return g


def prompts_of(workflow: dict) -> dict[str, tuple[str, evaluate.Prompt]]:
    """SaveImage node id -> (condition, prompt) for the sampling branches of a demo graph."""
    relation = workflow["2"]["inputs"]["relation"]
    out = {}
    for node_id, node in workflow.items():
        prefix = node["inputs"].get("filename_prefix", "") if node["class_type"] == "SaveImage" else ""
        cond = prefix.rsplit("/", 1)[-1].split("_")[0]
        if cond not in CONDITIONS:
            continue
        ks = workflow[workflow[node["inputs"]["images"][0]]["inputs"]["samples"][0]]
        text = workflow[ks["inputs"]["positive"][0]]["inputs"]["text"]
        a, b = _objects(text)
        out[node_id] = (cond, evaluate.Prompt(a, relation, b))
    return out


def _objects(text: str) -> tuple[str, str]:
    words = text.replace("a ", " ").split()
    names = [f"{c} {s}" for c, s in zip(words, words[1:]) if c in scenes.COLOURS and s in scenes.SHAPES]
    return names[0], names[-1]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--relation", default="on top of", choices=scenes.RELATIONS)
    p.add_argument("--out", default=str(REPO / "workflows_api" / "toyworld_demo.json"))
    args = p.parse_args()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(build(args.relation), indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
