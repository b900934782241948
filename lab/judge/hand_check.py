"""Contact sheet for checking the judge by eye against generated toy-world images.

    python -m lab.judge.hand_check [--n 60]

Samples `n` images from the toy model (stock KSampler) for random held-out prompts, then
writes runs/hand_check/sheet.png (numbered tiles) and runs/hand_check/judge.csv (what the
judge read per tile). Write down what you see on each tile, one line per tile as
`index|what you see` in the judge's words ("red circle above blue square", "blue triangle
supports red circle", "green circle" when only one object shows), then

    python -m lab.judge.hand_check --hand labels.txt

re-samples the same images (same seed), judges them and writes lab/judge/hand_check.csv
(index, prompt, judge, hand), whose agreement lab/judge/bench_judge.py prints.

`--word and` draws the prompts with the init word in the relation slot instead of the true
one (where extra objects are most common: the judge counts every object since issue 25).
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from devtools.pack import REPO


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=60)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--hand", default=None, help="your reading of the sheet: lines `index|what you see`")
    p.add_argument("--csv", default=str(REPO / "lab" / "judge" / "hand_check.csv"),
                   help="with --hand: where to write the joined table")
    p.add_argument("--weights", default=str(REPO / "toyworld" / "toyworld.safetensors"), help="toy model weights")
    p.add_argument("--out", default=str(REPO / "runs" / "hand_check"))
    p.add_argument("--word", default=None, help="the word in the relation slot (default: the true relation's)")
    args = p.parse_args()
    from devtools import host
    host.import_comfy()
    from PIL import Image, ImageDraw

    from comfyui_reversion.toyworld import evaluate, judge
    from comfyui_reversion.toyworld import model as toy_model

    model, clip, vae = toy_model.load(args.weights)
    rng = np.random.default_rng(args.seed)
    prompts = evaluate.held_out_prompts()
    picked = [prompts[i] for i in rng.permutation(len(prompts))[: args.n]]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cell, cols = 128, 10
    sheet = Image.new("RGB", (cols * cell, -(-len(picked) // cols) * (cell + 14)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    hand = {}
    if args.hand:
        for line in Path(args.hand).read_text().splitlines():
            if line.strip():
                index, seen = line.split("|", 1)
                hand[int(index)] = seen.strip()
        missing = sorted(set(range(len(picked))) - set(hand))
        if missing:
            raise SystemExit(f"{args.hand} has no reading for tiles {missing}")
    table = Path(args.csv) if args.hand else out / "judge.csv"
    with open(table, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "prompt", "judge"] + (["hand"] if hand else []))
        for i, prompt in enumerate(picked):
            img = toy_model.sample(model, clip, vae, toy_model.encode(clip, prompt.text(args.word or prompt.relation)),
                                   seed=int(rng.integers(1 << 30)), batch=1)[0].cpu().numpy()
            seen = judge.judge(img, prompt.a, prompt.relation, prompt.b).seen
            writer.writerow([i, prompt.text(args.word or prompt.relation), seen] + ([hand[i]] if hand else []))
            x, y = (i % cols) * cell, (i // cols) * (cell + 14)
            sheet.paste(Image.fromarray((img * 255).round().astype(np.uint8)).resize((cell, cell)), (x, y + 14))
            draw.text((x + 2, y), str(i), fill=(0, 0, 0))
    sheet.save(out / "sheet.png")
    print(f"wrote {out / 'sheet.png'} and {table}")


if __name__ == "__main__":
    main()
