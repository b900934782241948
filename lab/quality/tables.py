"""The tables of `make bench-quality`, printed as markdown from its summary (docs/results.md
quotes them).

    python -m lab.quality.tables [lab/quality/results/quality.json]

Every figure in the tables is read from the summary (lab/quality/bench_quality.py writes it), so
the tables can be regenerated rather than copied by hand: relation and entity accuracy per
variant and relation (diverse exemplars), the leak rate of each confounded set, what each
part buys (paired differences), the trained vectors' cosines, and the lr / steps curve.
Means of seeds per relation; "all" is mean [95% interval] over runs, then the run count.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from devtools.pack import REPO

from .plot import label, ordered     # one name per variant in the picture and the tables



def fmt(entry: dict | None, digits: int = 2) -> str:
    """'0.87 [0.80, 0.94]' (or just the mean when there is one run)."""
    if not entry:
        return ""
    text = f"{entry['mean']:.{digits}f}"
    if entry.get("ci95"):
        lo, hi = entry["ci95"]
        text += f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    return text


def signed(entry: dict) -> str:
    """A paired difference: '+0.059 [+0.022, +0.096] (11/7/0)' (runs won / tied / lost)."""
    lo, hi = entry["ci95"] or (entry["mean"], entry["mean"])
    return f"{entry['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}] ({entry['wins']}/{entry['ties']}/{entry['losses']})"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def per_relation_table(by_variant: dict, metric: str, extra: str | None = None) -> str:
    """One row per variant: the metric per relation (mean of seeds), then overall with its
    interval and run count (and `extra`, another metric overall, if given)."""
    relations = sorted({rel for entry in by_variant.values() for rel in entry["per_relation"]})
    header = ["variant", *relations, "**all** (mean [95%])", "runs"] + ([f"{extra.replace('_', ' ')}, all"] if extra else [])
    rows = []
    for variant in ordered(by_variant):
        entry = by_variant[variant]
        overall = entry["overall"].get(metric)
        if overall is None:
            continue             # records made before the metric existed
        row = [label(variant), *(fmt({"mean": entry["per_relation"][r][metric]["mean"]})
                                 if metric in entry["per_relation"].get(r, {}) else "" for r in relations),
               f"**{fmt(overall)}**", str(overall["n"])]
        rows.append(row + ([fmt(entry["overall"][extra])] if extra else []))
    return table(header, rows)


def effects_table(effects: dict) -> str:
    columns = [(s, m) for s in ("diverse", "confounded", "tinted") if s in effects
               for m in ("relation_accuracy", "inverse_rate", "entity_accuracy", "leak_rate")
               if any(m in e for e in effects[s].values())]
    header = ["part (with - without)"] + [f"{m.replace('_', ' ')}, {s}" for s, m in columns]
    names = [n for s in effects for n in effects[s]]
    rows = []
    for name in dict.fromkeys(names):
        some = next(effects[s][name] for s in effects if name in effects[s])
        rows.append([f"{name} ({some['with']} - {some['without']})"]
                    + [signed(effects[s][name][m]) if name in effects[s] and m in effects[s][name] else ""
                       for s, m in columns])
    return table(header, rows)


def cosines_table(cosines: dict) -> str:
    header = ["exemplars", "variant", "to the true words", "to the confounding words", 'to the init word "and"']
    rows = [[exemplar_set, label(variant), *(fmt(c.get(k), 3) for k in ("true_words", "confound_words", "init_word"))]
            for exemplar_set, by_variant in cosines.items() for variant, c in
            ((v, by_variant[v]) for v in ordered(by_variant))]
    return table(header, rows)


def curve_table(lr_curve: dict) -> str:
    steps = sorted({int(s) for points in lr_curve.values() for s in points})
    header = ["lr (base x batch)", *map(str, steps)]
    rows = [[lr, *(fmt(points.get(str(s))) for s in steps)] for lr, points in lr_curve.items()]
    return table(header, rows)


def render(summary: dict) -> str:
    parts = []
    if summary.get("variants"):
        parts += ["Relation accuracy, diverse exemplars:", per_relation_table(summary["variants"], "relation_accuracy")]
        if any("inverse_rate" in e["overall"] for e in summary["variants"].values()):
            parts += ["Inverse rate, diverse exemplars (the relation drawn with the objects' roles swapped):",
                      per_relation_table(summary["variants"], "inverse_rate")]
        parts += ["Entity accuracy, diverse exemplars:", per_relation_table(summary["variants"], "entity_accuracy")]
    for key in ("confounded", "tinted"):
        if summary.get(key):
            parts += [f"Leak rate, {key} exemplars (relation accuracy in the last column):",
                      per_relation_table(summary[key], "leak_rate", extra="relation_accuracy")]
    if any(summary.get("effects", {}).values()):
        parts += ["What each part buys (paired differences; runs won / tied / lost):", effects_table(summary["effects"])]
    if summary.get("cosines"):
        parts += ["Cosine of the trained <R> to word embeddings (each run's mean over the words):",
                  cosines_table(summary["cosines"])]
    if summary.get("lr_curve"):
        parts += ["Relation accuracy against updates, 'full' runs (diverse exemplars):", curve_table(summary["lr_curve"])]
    return "\n\n".join(parts) + "\n"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    path = Path(argv[0]) if argv else REPO / "lab" / "quality" / "results" / "quality.json"
    print(render(json.loads(path.read_text())), end="")


if __name__ == "__main__":
    main()
