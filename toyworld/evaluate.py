"""Score generated toy-world images with the judge: relation and entity accuracy."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
import itertools

import numpy as np

from ..reversion.words import fill
from . import judge, scenes


@dataclass(frozen=True)
class Prompt:
    a: str            # "red circle"
    relation: str     # one of scenes.RELATIONS: what the image should show
    b: str

    def text(self, word: str, articles: bool = True) -> str:
        """The prompt with `word` (a relation word, "<R>", "and", ...) in the relation slot."""
        return fill(scenes.template(self.a, self.b, articles), word)


def held_out_prompts(relations=scenes.RELATIONS, per_relation: int | None = None, seed: int = 0) -> list[Prompt]:
    """Prompts whose object pair was never shown with that relation in training."""
    return _prompts(relations, scenes.held_out_pairs, per_relation, seed)


def training_prompts(relations=scenes.RELATIONS, per_relation: int | None = None, seed: int = 0) -> list[Prompt]:
    """Prompts whose object pair the toy model was trained on with that relation (is a
    failure the model's drawing, or its generalisation to new pairs?)."""
    return _prompts(relations, scenes.training_pairs, per_relation, seed)


def _prompts(relations, pairs_of, per_relation, seed) -> list[Prompt]:
    rng = np.random.default_rng(seed)
    out = []
    for rel in relations:
        pairs = sorted(pairs_of(rel))
        order = rng.permutation(len(pairs))
        if per_relation is not None:
            order = order[:per_relation]
        out += [Prompt(pairs[i][0], rel, pairs[i][1]) for i in order]
    return out


def new_pair_prompts(relation: str, exemplar_names: list[str], n: int, seed: int = 1) -> list[Prompt]:
    """Prompts for `relation` on object pairs the toy model never saw with it in training
    and that are not among the exemplars ("blue circle / red square" names)."""
    used = {tuple(name.split(" / ")) for name in exemplar_names}
    fresh = [p for p in held_out_prompts([relation], seed=seed) if (p.a, p.b) not in used]
    if len(fresh) < n:
        raise ValueError(f"only {len(fresh)} new object pairs for {relation!r}, asked for {n}")
    return fresh[:n]


def score(images, prompts: list[Prompt]) -> dict:
    """images[i] (HxWx3 in [0, 1]) was generated for prompts[i]."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
    return summarise([judge.judge(np.asarray(img), p.a, p.relation, p.b) for img, p in zip(images, prompts)], prompts)


def summarise(verdicts: list[judge.Verdict], prompts: list[Prompt]) -> dict:
    """Relation and entity accuracy of judged images, overall and per relation, and what
    the judge read instead."""
    per_relation = {}
    for rel in sorted({p.relation for p in prompts}):
        vps = [(v, p) for v, p in zip(verdicts, prompts) if p.relation == rel]
        per_relation[rel] = {"relation_accuracy": float(np.mean([v.relation_ok for v, _ in vps])),
                             "inverse_rate": inverse_rate(vps),
                             "entity_accuracy": float(np.mean([v.entities_ok for v, _ in vps])),
                             "n_images": len(vps), **misreads(vps)}
    return {
        "relation_accuracy": float(np.mean([v.relation_ok for v in verdicts])),
        "inverse_rate": inverse_rate(list(zip(verdicts, prompts))),
        "entity_accuracy": float(np.mean([v.entities_ok for v in verdicts])),
        "n_images": len(verdicts),
        "per_relation": per_relation,
        "relations_read": misreads(list(zip(verdicts, prompts)))["relations_read"],
        "seen": [v.seen for v in verdicts],
    }


def inverse_rate(verdicts_and_prompts) -> float:
    """The share of images that drew the asked relation with the objects' roles swapped
    ("A left of B" read as "A right of B", "A inside B" as "A contains B")."""
    return float(np.mean([v.read is not None and v.read[1] == judge.INVERSE[p.relation]
                          for v, p in verdicts_and_prompts]))


def misreads(verdicts_and_prompts) -> dict:
    """What the judge read instead: how often each relation was read ("fewer than 2
    objects" when it found less), and each wrongly drawn object as "asked -> drawn"."""
    relations, objects = Counter(), Counter()
    for v, p in verdicts_and_prompts:
        if v.read is None:
            relations["fewer than 2 objects"] += 1
            continue
        relations[v.read[1]] += 1
        for asked, drawn in ((p.a, v.read[0]), (p.b, v.read[2])):
            if asked != drawn:
                objects[f"{asked} -> {drawn}"] += 1
        for extra in v.extras:
            objects[f"extra {extra}"] += 1
    return {"relations_read": dict(relations.most_common()), "objects_misread": dict(objects.most_common())}


def colourless_prompts(relation: str) -> list[Prompt]:
    """"a circle <relation> a square" for every ordered pair of different shapes: prompts
    that leave the colours open (the confounded-exemplar test)."""
    return [Prompt(a, relation, b) for a, b in itertools.permutations(scenes.SHAPES, 2)]


def score_colourless(images, prompts: list[Prompt], confound: tuple[str, str]) -> dict:
    """images[i] was generated for the colourless prompts[i]. Relation and shape accuracy,
    and the leak rate: the share of images whose first object has colour confound[0] and
    second object confound[1] (the exemplars' unnamed colours; 1/12 by chance)."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
    verdicts = [judge.judge_shapes(np.asarray(img), p.a, p.relation, p.b) for img, p in zip(images, prompts)]
    return {
        "relation_accuracy": float(np.mean([v.relation_ok for v in verdicts])),
        "inverse_rate": inverse_rate(list(zip(verdicts, prompts))),
        "entity_accuracy": float(np.mean([v.shapes_ok for v in verdicts])),
        "leak_rate": float(np.mean([v.colours == tuple(confound) for v in verdicts])),
        "n_images": len(verdicts),
        "seen": [v.seen for v in verdicts],
    }


def judge_misses(n: int, seed: int, degradation: dict | None = None) -> list[tuple[str, str]]:
    """Judge `n` random rendered scenes (relations in turn) and return (caption, what the
    judge read) for each it got wrong. Without `degradation`, scenes alternate between
    32 px and 256 px; with one (a `scenes.DEGRADATIONS` entry), each is `scenes.degrade`d.
    The judge's tests and lab/judge/bench_judge.py both measure it this way."""
    rng = np.random.default_rng(seed)
    misses = []
    for i in range(n):
        scene = scenes.make_scene(rng, scenes.RELATIONS[i % len(scenes.RELATIONS)])
        image = scenes.render(scene)
        if degradation is not None:
            image = scenes.degrade(image, rng, **degradation)
        elif i % 2 == 0:
            image = scenes.upscale(image)
        v = judge.judge(image, scene.a.name, scene.relation, scene.b.name)
        if not (v.relation_ok and v.entities_ok):
            misses.append((scene.caption(), v.seen))
    return misses
