"""How exact and how robust the toy-world judge is; prints the figures BENCHMARKS.md reports.

    python bench/bench_judge.py [--hand-check bench/judge_hand_check.csv]

1. Rendered scenes: 1000 random scenes (all relations), judged at 32 px and 256 px.
2. Degraded scenes: 240 scenes per degradation of `scenes.DEGRADATIONS` (noise, soft edges,
   tinted background, all three).
3. Generated images: agreement with a hand check (the CSV written from
   scripts/judge_hand_check.py's contact sheet: columns index, prompt, judge, hand).
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from reversion.toyworld import judge, scenes  # noqa: E402


def judged_right(image, scene) -> bool:
    v = judge.judge(image, scene.a.name, scene.relation, scene.b.name)
    return v.relation_ok and v.entities_ok


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hand-check", default=str(REPO / "bench" / "judge_hand_check.csv"))
    args = p.parse_args()

    rng = np.random.default_rng(2024)
    ok = 0
    for i in range(1000):
        scene = scenes.make_scene(rng, scenes.RELATIONS[i % len(scenes.RELATIONS)])
        img = scenes.render(scene)
        ok += judged_right(img if i % 2 else scenes.upscale(img), scene)
    print(f"rendered scenes: {ok}/1000 judged exactly right")

    for kind, kwargs in scenes.DEGRADATIONS.items():
        rng = np.random.default_rng(7)
        ok = 0
        for i in range(240):
            scene = scenes.make_scene(rng, scenes.RELATIONS[i % len(scenes.RELATIONS)])
            ok += judged_right(scenes.degrade(scenes.render(scene), rng, **kwargs), scene)
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
        print(f"no hand check at {path} (see scripts/judge_hand_check.py)")


if __name__ == "__main__":
    main()
