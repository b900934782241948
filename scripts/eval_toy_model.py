"""Quality gate of the toy-world model: stock ComfyUI sampling, judged on held-out prompts.

    python scripts/eval_toy_model.py [--weights models/toyworld.safetensors]

Every prompt pairs two objects that the model never saw with that relation in training.
Images come from the stock nodes (CLIPTextEncode -> KSampler -> VAEDecode) on the toy
model; the judge reads relation and objects back. Prints JSON with relation_accuracy and
entity_accuracy (the gate: both >= 0.90).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=str(REPO / "models" / "toyworld.safetensors"))
    p.add_argument("--per-prompt", type=int, default=2, help="images per held-out prompt")
    p.add_argument("--per-relation", type=int, default=None,
                   help="only this many held-out prompts per relation (a quick look; the gate uses all)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--json", default=None, help="also write the report here")
    args = p.parse_args(argv)

    from reversion_comfy import standalone
    standalone.import_comfy(args.device)
    from reversion_comfy import toy_model
    from reversion.toyworld import evaluate

    t0 = time.time()
    model, clip, vae = toy_model.load(args.weights)
    prompts = evaluate.held_out_prompts(per_relation=args.per_relation)
    images, judged = [], []
    for i, prompt in enumerate(prompts):
        imgs = toy_model.sample(model, clip, vae, toy_model.encode(clip, prompt.text(prompt.relation)),
                                args.seed + i, args.per_prompt, args.steps, args.cfg).cpu().numpy()
        images += list(imgs)
        judged += [prompt] * len(imgs)
    report = evaluate.score(images, judged)
    report.pop("seen")
    report.update(weights=str(args.weights), sampler=f"euler/normal {args.steps} steps cfg {args.cfg}",
                  seconds=round(time.time() - t0, 1))
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
