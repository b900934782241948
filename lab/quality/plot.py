"""The README's picture of `make bench-quality`: bars with 95% intervals (PIL only).

    python -m lab.quality.plot [lab/quality/results/quality.json] [docs/images/quality.png]

Left panel: relation accuracy per relation (and overall) for the trained variants and the
baselines, diverse exemplars. Right panel: the inverse rate (diverse exemplars: the share
drawn with the objects' roles swapped) and the confounded exemplars' leak rate per variant
(share of images drawn in the exemplars' unnamed colours; 1/12 by chance), where measured.
Bottom: what each part buys, the paired difference in relation accuracy with and without
it (same relation and seed), mean and 95% interval over the diverse runs.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from devtools.pack import REPO

ORDER = ["full", "no_steer", "uniform", "neither", "oracle", "init", "none"]
COLOURS = {"full": (40, 90, 200), "no_steer": (120, 160, 230), "uniform": (40, 150, 70), "neither": (150, 200, 150),
           "oracle": (90, 90, 90), "init": (200, 120, 40), "none": (210, 190, 170)}
LABELS = {"full": "full (paper)", "no_steer": "no steering", "uniform": "uniform t", "neither": "neither",
          "oracle": "true word", "init": 'init "and"', "none": "no word"}
# beyond-the-paper variants (full_swap_W, full_vectors_N, full_swap_W_vectors_N) in turn
EXTRA_COLOURS = [(150, 60, 170), (200, 140, 220), (230, 170, 40), (120, 40, 110), (60, 170, 170), (180, 80, 80)]


def ordered(variants) -> list[str]:
    """The picture's order, then other variants (experiments) in name order."""
    return [v for v in ORDER if v in variants] + sorted(v for v in variants if v not in ORDER)


def label(variant: str) -> str:
    """A variant's name in the picture and the tables."""
    if variant.startswith("full_steer_"):
        return f"full, steering {variant.removeprefix('full_steer_')}"
    if variant == "full_caption_positives":
        return "full, caption-word positives"
    if variant.startswith(("full_swap_", "full_vectors_")):
        parts = variant.removeprefix("full_").split("_")
        named = {parts[i]: parts[i + 1] for i in range(0, len(parts), 2)}
        words = ([f"swap {named['swap']}"] if "swap" in named else []) + \
            ([f"{named['vectors']} vectors"] if "vectors" in named else [])
        return "full + " + ", ".join(words)
    return LABELS.get(variant, variant)


def colour(variant: str, variants) -> tuple:
    extra = [v for v in ordered(variants) if v not in COLOURS]
    return COLOURS.get(variant) or EXTRA_COLOURS[extra.index(variant) % len(EXTRA_COLOURS)]


def bars(draw, box, groups: list[str], values: dict, font, title: str, chance: float | None = None):
    """Grouped bars: values[group][variant] = {"mean", "ci95"}; y axis 0..1."""
    x0, y0, x1, y1 = box
    draw.text((x0, y0 - 28), title, fill=(0, 0, 0), font=font)
    y_of = lambda v: y1 - v * (y1 - y0)                      # noqa: E731
    for t in (0, 0.25, 0.5, 0.75, 1.0):
        draw.line([(x0, y_of(t)), (x1, y_of(t))], fill=(225, 225, 225))
        draw.text((x0 - 42, y_of(t) - 8), f"{t:.2f}", fill=(60, 60, 60), font=font)
    if chance is not None:
        draw.line([(x0, y_of(chance)), (x1, y_of(chance))], fill=(200, 60, 60), width=2)
    width = (x1 - x0) / max(1, len(groups))
    everyone = {v for g in values.values() for v in g}
    for gi, group in enumerate(groups):
        present = [v for v in ordered(everyone) if v in values.get(group, {})]
        bar = width * 0.8 / max(1, len(present))
        for vi, variant in enumerate(present):
            entry = values[group][variant]
            left = x0 + gi * width + width * 0.1 + vi * bar
            draw.rectangle([left, y_of(entry["mean"]), left + bar - 2, y1], fill=colour(variant, everyone))
            if entry.get("ci95"):
                lo, hi = (min(1.0, max(0.0, v)) for v in entry["ci95"])
                mid = left + bar / 2 - 1
                draw.line([(mid, y_of(lo)), (mid, y_of(hi))], fill=(0, 0, 0), width=2)
        draw.text((x0 + gi * width + width * 0.1, y1 + 6), group, fill=(0, 0, 0), font=font)
    draw.rectangle([x0, y0, x1, y1], outline=(120, 120, 120))


def effect_bars(draw, box, effects: dict, font, span: float = 0.2):
    """Horizontal bars from 0 to each effect's mean (x axis -span..+span), with its interval."""
    x0, y0, x1, y1 = box
    label_w, value_w = 330, 170           # effect names on the left, figures on the right
    x_of = lambda v: x0 + label_w + (max(-span, min(span, v)) + span) / (2 * span) * (x1 - x0 - label_w - value_w)  # noqa: E731
    draw.text((x0, y0 - 28), "what each part buys: paired difference in relation accuracy, diverse exemplars "
              "(mean, 95% interval; runs won / tied / lost)", fill=(0, 0, 0), font=font)
    for t in (-span, -span / 2, 0, span / 2, span):
        draw.line([(x_of(t), y0), (x_of(t), y1)], fill=(120, 120, 120) if t == 0 else (225, 225, 225))
        draw.text((x_of(t) - 18, y1 + 4), f"{t:+.2f}", fill=(60, 60, 60), font=font)
    row = (y1 - y0) / max(1, len(effects))
    for i, (name, e) in enumerate(effects.items()):
        acc = e["relation_accuracy"]
        top, bottom = y0 + i * row + row * 0.2, y0 + (i + 1) * row - row * 0.2
        fill = COLOURS.get(e["with"], (130, 100, 180))            # experiment variants: one colour
        pair = f" ({e['with']} - {e['without']})" if e["with"] in LABELS else ""   # long names: the name says it
        draw.text((x0, top), name + pair, fill=(0, 0, 0), font=font)
        draw.rectangle([min(x_of(0), x_of(acc["mean"])), top, max(x_of(0), x_of(acc["mean"])), bottom], fill=fill)
        if acc.get("ci95"):
            mid = (top + bottom) / 2
            draw.line([(x_of(acc["ci95"][0]), mid), (x_of(acc["ci95"][1]), mid)], fill=(0, 0, 0), width=2)
        draw.text((x1 - value_w + 20, top), f"{acc['mean']:+.3f}  {acc['wins']}/{acc['ties']}/{acc['losses']}",
                  fill=(0, 0, 0), font=font)


def plot(summary: dict, out: Path) -> Path:
    from PIL import Image, ImageDraw

    from comfyui_reversion.reversion_comfy.loss_plot import font as _font
    font = _font(16)
    effects = summary.get("effects", {}).get("diverse", {})
    effects_h = 45 * len(effects)
    img = Image.new("RGB", (1400, 560 + (80 + effects_h if effects else 0)), "white")
    draw = ImageDraw.Draw(img)
    diverse = summary.get("variants", {})
    relations = sorted({r for v in diverse.values() for r in v["per_relation"]})
    per_group = {rel: {v: diverse[v]["per_relation"][rel]["relation_accuracy"] for v in diverse
                       if rel in diverse[v]["per_relation"]} for rel in relations}
    per_group["all"] = {v: diverse[v]["overall"]["relation_accuracy"] for v in diverse}
    bars(draw, (70, 60, 940, 470), relations + ["all"], per_group, font,
         "relation accuracy, diverse exemplars (mean, 95% interval over seeds)")
    confounded = summary.get("confounded", {})
    right = {"inverse": {v: diverse[v]["overall"]["inverse_rate"] for v in diverse if "inverse_rate" in diverse[v]["overall"]},
             "leak": {v: confounded[v]["overall"]["leak_rate"] for v in confounded}}
    right = {k: v for k, v in right.items() if v}
    bars(draw, (1030, 60, 1370, 470), list(right), right, font,
         " and ".join({"inverse": "inverse rate", "leak": "confounded: leak rate"}[k] for k in right),
         chance=1 / 12 if "leak" in right else None)
    x, y, everyone = 70, 515, set(diverse) | set(confounded)
    for variant in ordered(everyone):
        text = label(variant)
        w = 36 + int(draw.textlength(text, font=font))
        if x + w > 1380:
            x, y = 70, y + 26
        draw.rectangle([x, y, x + 18, y + 18], fill=colour(variant, everyone))
        draw.text((x + 24, y), text, fill=(0, 0, 0), font=font)
        x += w
    if "leak" in right:
        draw.text((1030, 490), "red line: chance (1/12)", fill=(200, 60, 60), font=font)
    if effects:
        effect_bars(draw, (70, 600, 1370, 600 + effects_h), effects, font)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)
    return out


if __name__ == "__main__":
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "lab" / "quality" / "results" / "quality.json"
    dst = Path(sys.argv[2]) if len(sys.argv) > 2 else REPO / "docs" / "images" / "quality.png"
    print(plot(json.loads(src.read_text()), dst))
