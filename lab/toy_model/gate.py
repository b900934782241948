"""Quality gate of the toy-world model: stock ComfyUI sampling, judged on held-out prompts.

    python -m lab.toy_model.gate [--weights toyworld/toyworld.safetensors]

Every prompt pairs two objects that the model never saw with that relation in training.
Images come from the stock nodes (CLIPTextEncode -> KSampler -> VAEDecode) on the toy
model; the judge reads relation and objects back. Prints JSON with relation_accuracy and
entity_accuracy, overall and per relation, the number of images and the weights file's
sha256; `--json` also writes it (`make toy-gate` writes lab/toy_model/results/toy_gate.json).

The gate: relation and entity accuracy >= 0.90 overall and >= 0.80 for every relation,
with at least 2 seeds per held-out prompt.

`--backgrounds` (for the tint model of `make toy-model-tint`) also reports the backgrounds
drawn for the gate's prompts, which name no tint, and, per tint, the share drawn on it when
the prompt names it ("a red circle pink above a blue square").
"""
from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import torch

from devtools.pack import REPO

from ..tint import tint


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=str(REPO / "toyworld" / "toyworld.safetensors"))
    p.add_argument("--per-prompt", type=int, default=2, help="images per held-out prompt")
    p.add_argument("--per-relation", type=int, default=None,
                   help="only this many held-out prompts per relation (a quick look; the gate uses all)")
    p.add_argument("--relations", nargs="+", default=None,
                   help="only these relations' held-out prompts (a look at one relation; the gate uses all)")
    p.add_argument("--training-pairs", action="store_true",
                   help="prompts on object pairs trained with their relation instead of held-out ones "
                        "(tells drawing from generalisation; the gate uses held-out pairs)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--group", type=int, default=16,
                   help="prompts sampled together in one KSampler batch (one conditioning per image; "
                        "seed = --seed + group index). 1: one KSampler call per prompt")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    p.add_argument("--backgrounds", action="store_true",
                   help="also report the backgrounds drawn, unsaid and named (the tint model)")
    p.add_argument("--json", default=None, help="also write the report here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from devtools import host
    host.import_comfy(args.device)
    from comfyui_reversion.toyworld import evaluate, scenes
    from comfyui_reversion.toyworld import model as toy_model

    t0 = time.time()
    model, clip, vae = toy_model.load(args.weights)
    pick = evaluate.training_prompts if args.training_pairs else evaluate.held_out_prompts
    prompts = pick(args.relations or scenes.RELATIONS, per_relation=args.per_relation)

    def generate(text_of):
        """Images for every prompt (`text_of(prompt)` its text), `--per-prompt` each, in prompt order."""
        images, judged = [], []
        for i in range(0, len(prompts), args.group):
            group = prompts[i:i + args.group]
            positive = batched_conditioning([toy_model.encode(clip, text_of(p)) for p in group], args.per_prompt)
            imgs = toy_model.sample(model, clip, vae, positive, args.seed + i // args.group,
                                    len(group) * args.per_prompt, args.steps, args.cfg).cpu().numpy()
            images += list(imgs)
            judged += [p for p in group for _ in range(args.per_prompt)]
        return images, judged

    images, judged = generate(lambda p: p.text(p.relation))
    report = (tint.score if args.backgrounds else evaluate.score)(images, judged)
    report.pop("seen")
    report.update(gate(report, args.per_prompt, args.per_relation, args.relations, args.training_pairs))
    if args.backgrounds:
        report["backgrounds"] = backgrounds_report(images, generate)
    import safetensors
    with safetensors.safe_open(str(args.weights), "pt") as f:
        meta = f.metadata() or {}
    report.update(weights=str(args.weights), weights_sha256=toy_model.weights_sha256(args.weights),
                  weights_training_steps=int(meta["steps"]) if "steps" in meta else None,
                  images_per_prompt=args.per_prompt,
                  seeds=f"{args.seed} + group index (one KSampler call per group of {args.group} prompts, "
                        f"a batch of {args.per_prompt} per prompt)",
                  sampler=f"euler/normal {args.steps} steps cfg {args.cfg}", seconds=round(time.time() - t0, 1))
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


def backgrounds_report(unsaid_images, generate) -> dict:
    """What the tint model draws: the share of each background for prompts that name none
    (the base rate of the tinted-exemplar leak), and per tint the share drawn on it when
    the prompt names it (`tint.score_tinted`'s leak rate), with relation accuracy there too."""
    unsaid = Counter(tint.read_background(img) for img in unsaid_images)
    out = {"unsaid": {bg: round(unsaid[bg] / len(unsaid_images), 4) for bg in tint.BACKGROUNDS}, "said": {}}
    for bg in tint.BACKGROUNDS:
        said = tint.score_tinted(*generate(lambda p: tint.with_background(p.text(p.relation), bg)), bg)
        out["said"][bg] = {"drawn_on_it": round(said["leak_rate"], 4), "relation_accuracy": round(said["relation_accuracy"], 4)}
    return out


def batched_conditioning(conds: list, repeat: int) -> list:
    """One CONDITIONING whose batch holds each prompt's cond `repeat` times, in order: the
    sampler gives latent i the cond at batch index i (a batch of 1 would be repeated)."""
    tensors = [c[0][0].repeat(repeat, 1, 1) for c in conds]
    extras = dict(conds[0][0][1])
    if extras.get("pooled_output") is not None:
        extras["pooled_output"] = torch.cat([c[0][1]["pooled_output"].repeat(repeat, 1) for c in conds])
    return [[torch.cat(tensors), extras]]


GATE_OVERALL, GATE_PER_RELATION = 0.90, 0.80


def gate(report: dict, per_prompt: int, per_relation, relations=None, training_pairs=False) -> dict:
    """Whether the report meets the gate (a subset of prompts or one seed never counts)."""
    failures = [f"{k} {report[k]:.3f} < {GATE_OVERALL}" for k in ("relation_accuracy", "entity_accuracy")
                if report[k] < GATE_OVERALL]
    for rel, r in report["per_relation"].items():
        failures += [f"{rel}: {k} {r[k]:.3f} < {GATE_PER_RELATION}" for k in ("relation_accuracy", "entity_accuracy")
                     if r[k] < GATE_PER_RELATION]
    if per_prompt < 2:
        failures.append("fewer than 2 seeds per prompt")
    if per_relation is not None:
        failures.append("not every held-out prompt (--per-relation)")
    if relations is not None:
        failures.append("not every relation (--relations)")
    if training_pairs:
        failures.append("trained object pairs, not held-out ones (--training-pairs)")
    return {"gate": {"overall_min": GATE_OVERALL, "per_relation_min": GATE_PER_RELATION,
                     "passed": not failures, "failures": failures}}


if __name__ == "__main__":
    main()
