"""`make demo` (python -m devtools.demo): learn a toy relation in a headless ComfyUI and measure it.

Starts ComfyUI (COMFYUI_PATH, default the bundled 0.3.75 host) with this pack installed,
runs workflows_api/toyworld_demo.json over HTTP, judges every generated image and writes

    demo_output/grid.png     exemplars | with <R> | with the init word | with the true word
    demo_output/report.json  relation, relation_accuracy, oracle_relation_accuracy,
                             init_relation_accuracy, entity_accuracy, n_images, train_seconds, ...
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from PIL import Image, ImageDraw

from comfyui_reversion.reversion import relation_file      # the pack's import name: devtools/pack.py
from comfyui_reversion.toyworld import evaluate

from . import headless, host, make_demo_workflow
from .pack import REPO

LABELS = {"R": "<R> (learned)", "init": "init word 'and'", "word": "true word (oracle)"}


def load_images(paths) -> list[np.ndarray]:
    return [np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255 for p in paths]


def grid(rows: list[tuple[str, list[np.ndarray]]], cell: int = 128, label_width: int = 170) -> "Image.Image":
    cols = max(len(images) for _, images in rows)
    canvas = Image.new("RGB", (label_width + cols * (cell + 4), len(rows) * (cell + 4) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, (label, images) in enumerate(rows):
        y = 4 + r * (cell + 4)
        draw.text((6, y + cell // 2 - 6), label, fill=(0, 0, 0))
        for c, img in enumerate(images):
            tile = Image.fromarray((img * 255).round().astype(np.uint8)).resize((cell, cell), Image.NEAREST)
            canvas.paste(tile, (label_width + c * (cell + 4), y))
    return canvas


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workflow", default=str(REPO / "workflows_api" / "toyworld_demo.json"))
    p.add_argument("--out", default=str(REPO / "demo_output"))
    p.add_argument("--keep-workdir", action="store_true", help="keep the server's folders (outputs, log)")
    args = p.parse_args(argv)

    t0 = time.time()
    workflow = json.loads(Path(args.workflow).read_text())
    branches = make_demo_workflow.prompts_of(workflow)
    relation = workflow["2"]["inputs"]["relation"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="reversion_demo_"))
    print(f"starting headless ComfyUI ({host.comfyui_path()}) ...", flush=True)
    try:
        with headless.ComfyServer(host.comfyui_path(), workdir) as server:
            print(f"running {Path(args.workflow).name}: train <R> for '{relation}', then sample "
                  f"{len(branches)} branches ...", flush=True)
            entry = server.run(workflow, timeout=1800)
            saved = server.image_paths(entry)
            rel = relation_file.load(server.embeddings / f"{workflow['3']['inputs']['name']}.safetensors")
            shutil.copy(server.log_path, out / "server.log")
        by_condition: dict[str, tuple[list, list]] = {c: ([], []) for c in make_demo_workflow.CONDITIONS}
        first_images: dict[str, list] = {c: [] for c in by_condition}
        for node_id, (cond, prompt) in sorted(branches.items(), key=lambda kv: int(kv[0])):
            images = load_images(saved[node_id])
            by_condition[cond][0].extend(images)
            by_condition[cond][1].extend([prompt] * len(images))
            first_images[cond].append(images[0])
        scores = {c: evaluate.score(imgs, prompts) for c, (imgs, prompts) in by_condition.items()}
        exemplars = load_images(saved["4"])
        grid([("exemplars", exemplars)] + [(LABELS[c], first_images[c]) for c in ("R", "init", "word")]).save(out / "grid.png")
        report = {
            "relation": relation,
            "relation_accuracy": scores["R"]["relation_accuracy"],
            "oracle_relation_accuracy": scores["word"]["relation_accuracy"],
            "init_relation_accuracy": scores["init"]["relation_accuracy"],
            "entity_accuracy": scores["R"]["entity_accuracy"],
            "oracle_entity_accuracy": scores["word"]["entity_accuracy"],
            "init_entity_accuracy": scores["init"]["entity_accuracy"],
            "n_images": scores["R"]["n_images"],
            # shown on the node (the relation file holds no timings: same seed, same bytes)
            "train_seconds": entry.get("outputs", {}).get("3", {}).get("train_seconds", [None])[0],
            "train_steps": rel.steps,
            "final_losses": {k: rel.final_losses[k] for k in ("loss", "denoise", "steer")},
            "nearest_words": rel.nearest_words.get("clip_l", []),
            "prompts": sorted({f"{p.a} <R> {p.b}" for _, p in branches.values()}),
            "judge_reads_R": scores["R"]["seen"],
            "wall_seconds": round(time.time() - t0, 1),
            "comfyui": str(host.comfyui_path()),
        }
        (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    finally:
        if not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    summary = {k: report[k] for k in ("relation", "relation_accuracy", "oracle_relation_accuracy",
                                      "init_relation_accuracy", "entity_accuracy", "n_images", "train_seconds",
                                      "wall_seconds")}
    print(json.dumps(summary, indent=1))
    print(f"wrote {out / 'grid.png'} and {out / 'report.json'}")


if __name__ == "__main__":
    main()
