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

from comfyui_reversion import toyworld
from comfyui_reversion.reversion.words import PLACEHOLDER, fill
from comfyui_reversion.toyworld import evaluate, scenes
from conftest import run_node

# contact, containment and a direction. At these 300 updates "above" and "left of" stay near
# this test's 0.7 x oracle (bench-quality, committed model, 3 seeds: 0.67 and 0.79 against the
# true word's 1.00 and 0.99; some "above" images touch, i.e. "on top of", some "left of" ones
# put A on the right): lab/quality/results/quality.json, per relation of "full" and "oracle".
RELATIONS = ["on top of", "inside", "below"]
PROMPTS, IMAGES_PER_PROMPT = 8, 4
TRAIN = dict(steps=300, batch_size=8, grad_accum=1, learning_rate=6.25e-4, scale_lr=True, weight_decay=1e-2,
             steering_weight=0.01, num_positives=4, temperature=0.07, focal_alpha=0.5, init_word="and",
             train_seed=2023, overwrite=True, preview_every=0)
CHANCE = 1 / len(scenes.RELATIONS)


def fixed_denoising_loss(model, clip, vae, exemplars, vectors, draws: int = 8) -> float:
    """Mean denoising loss of `vectors` on the exemplars at fixed timesteps and noise."""
    import torch
    from comfyui_reversion.reversion_comfy.guards import training_mode
    from comfyui_reversion.reversion_comfy.sampling import vae_encode
    from conftest import prepared_backend
    g = torch.Generator().manual_seed(0)
    with training_mode(), torch.no_grad():
        backend = prepared_backend(model, clip)
        latents = vae_encode(vae, exemplars.images, seed=0)
        captions = [fill(t[0], backend.standin) for t in exemplars.templates]
        losses = []
        for t in torch.linspace(100, 900, draws).long():
            noise = torch.randn(latents.shape, generator=g)
            losses.append(backend.denoising_loss(vectors, latents, captions, t.repeat(len(captions)), noise).item())
    return sum(losses) / len(losses)


@pytest.fixture(scope="module")
def measured(host, toy):
    from comfyui_reversion.reversion_comfy.backend import ComfyBackend
    from comfyui_reversion.toyworld import model as toy_model
    model, clip, vae = toy
    results = {}
    for relation in RELATIONS:
        exemplars = toyworld.exemplars(relation, 8, seed=0)
        rel, _, _ = run_node(host, "ReVersionTrainRelation", "train", model=model, clip=clip, vae=vae,
                          exemplars=exemplars, name=f"learned_{relation.replace(' ', '_')}", **TRAIN)
        init = ComfyBackend(model, clip).initial_vectors("and")
        results[relation] = {"loss_init": fixed_denoising_loss(model, clip, vae, exemplars, init),
                             "loss_learned": fixed_denoising_loss(model, clip, vae, exemplars, rel.vectors)}
        prompts = evaluate.new_pair_prompts(relation, exemplars.names, PROMPTS)
        conditions = {
            "R": lambda p: run_node(host, "ReVersionRelationTextEncode", "encode", clip=clip, relation=rel,
                                    text=p.text(PLACEHOLDER))[0],
            "oracle": lambda p: toy_model.encode(clip, p.text(relation)),
            "init": lambda p: toy_model.encode(clip, p.text("and")),
        }
        for name, conditioning in conditions.items():
            images, judged = [], []
            for i, p in enumerate(prompts):
                batch = toy_model.sample(model, clip, vae, conditioning(p), seed=100 + i, batch=IMAGES_PER_PROMPT)
                images += list(batch.cpu().numpy())
                judged += [p] * IMAGES_PER_PROMPT
            results[relation][name] = evaluate.score(images, judged)
        print(relation, {k: (v["relation_accuracy"], v["entity_accuracy"]) if isinstance(v, dict) else v
                         for k, v in results[relation].items()})
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


@pytest.mark.parametrize("relation", RELATIONS)
def test_denoising_loss_falls_on_the_fixed_exemplar_set(measured, relation):
    """Same exemplars, timesteps and noise: the learned <R> denoises them better than the
    init word it started from."""
    r = measured[relation]
    assert r["loss_learned"] < 0.97 * r["loss_init"]
