"""Relation learning happens: on the committed toy-world model, <R> trained from exemplars
whose captions never name the relation draws that relation for new object pairs.

For each relation: train <R> with Train Relation (the node, as a graph would run it), then
sample the same new object pairs with three prompts and the same seeds, through the stock
KSampler, and judge every image:
    "A <R> B"            the learned relation
    "A <true word> B"    the oracle
    "A and B"            the untrained init word
"""
from __future__ import annotations

import pytest

from conftest import run_node
from reversion import toyworld
from reversion.toyworld import evaluate, scenes

RELATIONS = ["inside", "on top of"]
PROMPTS, IMAGES_PER_PROMPT = 8, 4
TRAIN = dict(steps=300, batch_size=8, grad_accum=1, learning_rate=2.5e-4, scale_lr=True, weight_decay=1e-2,
             steering_weight=0.01, num_positives=4, temperature=0.07, focal_alpha=0.5, init_word="and",
             seed=2023, overwrite=True)
CHANCE = 1 / len(scenes.RELATIONS)


@pytest.fixture(scope="module")
def measured(host, toy):
    from reversion_comfy import toy_model
    model, clip, vae = toy
    results = {}
    for relation in RELATIONS:
        exemplars = toyworld.exemplars(relation, 8, seed=0)
        rel, _ = run_node(host, "ReVersionTrainRelation", "train", model=model, clip=clip, vae=vae,
                          exemplars=exemplars, name=f"learned_{relation.replace(' ', '_')}", **TRAIN)
        prompts = evaluate.new_pair_prompts(relation, exemplars.names, PROMPTS)
        conditions = {
            "R": lambda p: run_node(host, "ReVersionRelationTextEncode", "encode", clip=clip, relation=rel,
                                    text=p.text("<R>"))[0],
            "oracle": lambda p: toy_model.encode(clip, p.text(relation)),
            "init": lambda p: toy_model.encode(clip, p.text("and")),
        }
        results[relation] = {}
        for name, conditioning in conditions.items():
            images, judged = [], []
            for i, p in enumerate(prompts):
                batch = toy_model.sample(model, clip, vae, conditioning(p), seed=100 + i, batch=IMAGES_PER_PROMPT)
                images += list(batch.cpu().numpy())
                judged += [p] * IMAGES_PER_PROMPT
            results[relation][name] = evaluate.score(images, judged)
        print(relation, {k: (v["relation_accuracy"], v["entity_accuracy"]) for k, v in results[relation].items()})
    return results


@pytest.mark.parametrize("relation", RELATIONS)
def test_learned_relation_approaches_the_true_word(measured, relation):
    r = measured[relation]
    assert r["R"]["n_images"] == PROMPTS * IMAGES_PER_PROMPT
    assert r["R"]["relation_accuracy"] >= 0.7 * r["oracle"]["relation_accuracy"]


@pytest.mark.parametrize("relation", RELATIONS)
def test_learned_relation_beats_chance_and_the_init_word(measured, relation):
    r = measured[relation]
    assert r["R"]["relation_accuracy"] >= CHANCE + 0.3
    assert r["R"]["relation_accuracy"] >= r["init"]["relation_accuracy"] + 0.3


@pytest.mark.parametrize("relation", RELATIONS)
def test_learned_relation_keeps_the_objects(measured, relation):
    r = measured[relation]
    assert r["R"]["entity_accuracy"] >= r["oracle"]["entity_accuracy"] - 0.15
