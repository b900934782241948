"""The summary of `make bench-quality`'s records (lab/quality/results/*.json): per exemplar set
and variant, mean and 95% interval over runs, overall and per relation; what each part buys
as paired differences; the trained vectors' cosines; the steps and lr curves."""
from __future__ import annotations

import math

import numpy as np

EXEMPLAR_SETS = ("diverse", "confounded", "tinted")

# a trained record's cosines of <R> to word embeddings, summarised per variant: name -> record field
COSINE_FIELDS = {"true_words": "cosine_true_words", "confound_words": "cosine_confound_words",
                 "init_word": "cosine_init_word"}
# two-sided 95% Student t quantiles by degrees of freedom (interval over training seeds)
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
       10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101,
       19: 2.093, 20: 2.086, 25: 2.060, 30: 2.042}
# what each part buys, as paired differences (same relation, exemplar set and seed): name -> (with, without)
EFFECTS = {"focal sampling": ("full", "uniform"), "focal sampling, no steering": ("no_steer", "neither"),
           "steering loss": ("full", "no_steer"), "steering loss, uniform timesteps": ("uniform", "neither"),
           # --caption-positives: the loss with only positives the toy encoder was trained on
           "steering loss, caption-word positives": ("full_caption_positives", "no_steer"),
           "caption-word positives instead of all 56": ("full_caption_positives", "full")}


def interval(values: list[float]) -> dict:
    """Mean and 95% interval (Student t over runs; a single run has none)."""
    n = len(values)
    mean = float(np.mean(values))
    if n < 2:
        return {"mean": round(mean, 4), "ci95": None, "n": n}
    t = T95[max(df for df in T95 if df <= n - 1)]        # the next smaller table entry: a little wider
    half = t * float(np.std(values, ddof=1)) / math.sqrt(n)
    return {"mean": round(mean, 4), "ci95": [round(mean - half, 4), round(mean + half, 4)], "n": n}


def effects(records: list[dict], metrics) -> dict:
    """Per EFFECTS entry and metric: the mean and 95% interval of the paired difference
    (with - without) over the (relation, seed) runs that have both, and how many of those
    runs it won, tied and lost: tighter than comparing the two variants' own intervals,
    since a run's relation and exemplars affect both alike."""
    value = {(r["relation"], r["seed"], r["variant"]): r for r in records}
    out = {}
    beyond = {f"{v[len('full_'):].replace('_', ' ')} (vs full)": (v, "full") for v in sorted({r["variant"] for r in records})
              if v.startswith(("full_swap_", "full_vectors_"))}
    for name, (with_, without) in {**EFFECTS, **beyond}.items():
        runs = sorted({(rel, seed) for rel, seed, v in value if v == with_ and (rel, seed, without) in value})
        if not runs:
            continue
        out[name] = {"with": with_, "without": without}
        for m in metrics:        # (records made before a metric existed have none: left out)
            diffs = [value[(*run, with_)][m] - value[(*run, without)][m] for run in runs
                     if m in value[(*run, with_)] and m in value[(*run, without)]]
            if not diffs:
                continue
            out[name][m] = {**interval(diffs), "wins": sum(d > 0 for d in diffs),
                            "ties": sum(d == 0 for d in diffs), "losses": sum(d < 0 for d in diffs)}
    return out


def summarise(records: list[dict], final_steps: int) -> dict:
    """Per exemplar set and variant: overall and per relation, over seeds (and relations);
    the trained vectors' cosines (each run's mean over the words of a kind); the steps curve
    of the 'full' runs; the lr curves."""
    summary: dict = {"variants": {}, "confounded": {}, "tinted": {}, "effects": {}, "cosines": {}, "curve": {},
                     "lr_curve": {}}
    finals = [r for r in records if r["steps"] in (0, final_steps) and not r["variant"].startswith("full_lr_")]
    for exemplar_set in EXEMPLAR_SETS:
        target = summary["variants" if exemplar_set == "diverse" else exemplar_set]
        in_set = [r for r in finals if r.get("exemplars", "diverse") == exemplar_set]
        metrics = ("relation_accuracy", "inverse_rate", "entity_accuracy") + \
            (("leak_rate",) if exemplar_set != "diverse" else ())
        for variant in sorted({r["variant"] for r in in_set}):
            rs = [r for r in in_set if r["variant"] == variant]
            entry = {"overall": {m: interval([r[m] for r in rs if m in r]) for m in metrics if any(m in r for r in rs)},
                     "per_relation": {}}
            for relation in sorted({r["relation"] for r in rs}):
                rr = [r for r in rs if r["relation"] == relation]
                entry["per_relation"][relation] = {m: interval([r[m] for r in rr if m in r]) for m in metrics
                                                   if any(m in r for r in rr)}
            target[variant] = entry
            cosines = {name: [float(np.mean(list(r[field].values()))) for r in rs if r.get(field)]
                       for name, field in COSINE_FIELDS.items()}
            if any(cosines.values()):
                summary["cosines"].setdefault(exemplar_set, {})[variant] = {
                    name: interval(values) for name, values in cosines.items() if values}
        summary["effects"][exemplar_set] = effects(in_set, metrics)
    # curves only over the runs scored at more than one update count: a relation trained to
    # 300 updates alone must not pull the curve's 300 point away from its neighbours
    diverse = [r for r in records if r.get("exemplars", "diverse") == "diverse"]
    counts: dict = {}
    for r in diverse:
        counts.setdefault((r["relation"], r["seed"], r["variant"], r.get("lr")), set()).add(r["steps"])
    diverse = [r for r in diverse if len(counts[(r["relation"], r["seed"], r["variant"], r.get("lr"))]) > 1]
    full = [r for r in diverse if r["variant"] == "full" and r["steps"]]
    for step in sorted({r["steps"] for r in full}):
        summary["curve"][str(step)] = interval([r["relation_accuracy"] for r in full if r["steps"] == step])
    curved = [r for r in diverse if r["variant"] == "full" or r["variant"].startswith("full_lr_")]
    for lr in sorted({r["lr"] for r in curved if "lr" in r}):
        rs = [r for r in curved if r.get("lr") == lr]
        summary["lr_curve"][f"{lr:g}"] = {str(step): interval([r["relation_accuracy"] for r in rs if r["steps"] == step])
                                          for step in sorted({r["steps"] for r in rs})}
    return summary
