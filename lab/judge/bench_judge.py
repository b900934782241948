"""How exact and how robust the toy-world judge is; prints the figures docs/results.md reports.

    python -m lab.judge.bench_judge [--hand-check lab/judge/hand_check.csv]

1. Rendered scenes: 1000 random scenes (all relations), judged at 32 px and 256 px.
2. Degraded scenes: 240 scenes per degradation of `scenes.DEGRADATIONS` (noise, soft edges,
   tinted background, all three).
3. Generated images: agreement with a hand check (the CSV written from
   lab/judge/hand_check.py's contact sheet: columns index, prompt, judge, hand).
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

from comfyui_reversion.toyworld import evaluate, scenes
from devtools.pack import REPO


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hand-check", default=str(REPO / "lab" / "judge" / "hand_check.csv"))
    args = p.parse_args()

    misses = evaluate.judge_misses(1000, seed=2024)
    print(f"rendered scenes: {1000 - len(misses)}/1000 judged exactly right {misses or ''}")
    for kind, kwargs in scenes.DEGRADATIONS.items():
        ok = 240 - len(evaluate.judge_misses(240, seed=7, degradation=kwargs))
        print(f"{kind}: {ok}/240 ({ok / 240:.1%})")

    path = Path(args.hand_check)
    if path.is_file():
        rows = list(csv.DictReader(path.open()))
        agree = sum(r["judge"].strip() == r["hand"].strip() for r in rows)
        print(f"generated images, judge vs hand check: {agree}/{len(rows)} agree ({agree / len(rows):.1%})")
        for r in rows:
            if r["judge"].strip() != r["hand"].strip():
                print(f"  #{r['index']} {r['prompt']!r}: judge {r['judge']!r}, hand {r['hand']!r}")
    else:
        print(f"no hand check at {path} (see lab/judge/hand_check.py)")


if __name__ == "__main__":
    main()
