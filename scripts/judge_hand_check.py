"""Contact sheet for checking the judge by eye against generated toy-world images.

    python scripts/judge_hand_check.py [--n 60]

Samples `n` images from the toy model (stock KSampler) for random held-out prompts, then
writes runs/hand_check/sheet.png (numbered tiles) and runs/hand_check/judge.csv (what the
judge read per tile). Reading the sheet and writing down each tile's objects and relation
gives bench/judge_hand_check.csv, whose agreement BENCHMARKS.md reports.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=60)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--weights", default=None, help="toy model weights (default: the committed ones)")
    p.add_argument("--out", default=str(REPO / "runs" / "hand_check"))
    args = p.parse_args()
    from reversion_comfy import standalone
    standalone.import_comfy()
    from PIL import Image, ImageDraw
    from reversion.toyworld import evaluate, judge
    from reversion_comfy import toy_model

    model, clip, vae = toy_model.load(*([args.weights] if args.weights else []))
    rng = np.random.default_rng(args.seed)
    prompts = evaluate.held_out_prompts()
    picked = [prompts[i] for i in rng.permutation(len(prompts))[: args.n]]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cell, cols = 128, 10
    sheet = Image.new("RGB", (cols * cell, -(-len(picked) // cols) * (cell + 14)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    with open(out / "judge.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "prompt", "judge"])
        for i, prompt in enumerate(picked):
            img = toy_model.sample(model, clip, vae, toy_model.encode(clip, prompt.text(prompt.relation)),
                                   seed=int(rng.integers(1 << 30)), batch=1)[0].cpu().numpy()
            seen = judge.judge(img, prompt.a, prompt.relation, prompt.b).seen
            writer.writerow([i, prompt.text(prompt.relation), seen])
            x, y = (i % cols) * cell, (i // cols) * (cell + 14)
            sheet.paste(Image.fromarray((img * 255).round().astype(np.uint8)).resize((cell, cell)), (x, y + 14))
            draw.text((x + 2, y), str(i), fill=(0, 0, 0))
    sheet.save(out / "sheet.png")
    print(f"wrote {out / 'sheet.png'} and {out / 'judge.csv'}")


if __name__ == "__main__":
    main()
