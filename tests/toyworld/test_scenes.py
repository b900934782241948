"""The toy world's scenes (toyworld/scenes.py, toyworld/__init__.py): deterministic, with
captions true of their scenes, held-out pairs never trained on, the training mix, and the
exemplar sets (pure numpy; no ComfyUI)."""
from __future__ import annotations

import numpy as np
import pytest

from comfyui_reversion import toyworld
from comfyui_reversion.toyworld import evaluate, scenes


def test_scenes_are_deterministic_and_captions_never_leak_into_exemplar_templates():
    a = toyworld.exemplars("on top of", 6, seed=4)
    b = toyworld.exemplars("on top of", 6, seed=4)
    assert np.array_equal(a.images.numpy(), b.images.numpy()) and a.templates == b.templates
    words = {w for syn in scenes.SYNONYMS.values() for phrase in syn for w in phrase.split()} - {"of", "to", "the"}
    for templates in a.templates:
        assert all(t.count("{}") == 1 and not (set(t.split()) & words) for t in templates)
    assert a.images.shape == (6, 256, 256, 3)


def test_held_out_pairs_are_never_drawn_for_training():
    rng = np.random.default_rng(0)
    for _ in range(3000):
        scene, caption = scenes.training_example(rng)
        if scene.relation in scenes.RELATIONS:
            assert (scene.a.name, scene.b.name) not in scenes.held_out_pairs(scene.relation)
            assert caption.split()[-1] in scenes.SHAPES


def test_relation_weights_set_the_training_mix():
    """`python -m lab.toy_model.train --relation-weight inside=6` draws inside scenes that much more often."""
    def inside_share(weights):
        rng = np.random.default_rng(2)
        drawn = [scenes.training_example(rng, relation_weights=weights)[0].relation for _ in range(1500)]
        return sum(r == "inside" for r in drawn) / sum(r in scenes.RELATIONS for r in drawn)
    default = inside_share(None)
    assert 1.5 / 7 - 0.04 < default < 1.5 / 7 + 0.04
    assert 6 / 11.5 - 0.05 < inside_share({**scenes.RELATION_WEIGHTS, "inside": 6}) < 6 / 11.5 + 0.05
    only = {r: float(r == "inside") for r in scenes.RELATIONS}
    assert 0.9 < inside_share(only) < 1     # the rest: side-by-side scenes (left of / right of)


def test_training_prompts_are_the_pairs_the_gate_does_not_use():
    held = evaluate.held_out_prompts(["inside"])
    trained = evaluate.training_prompts(["inside"])
    assert {(p.a, p.b) for p in trained} == set(scenes.training_pairs("inside"))
    assert len(trained) + len(held) == len(scenes.object_pairs())
    assert not {(p.a, p.b) for p in trained} & {(p.a, p.b) for p in held}
    assert len(evaluate.training_prompts(["inside", "above"], per_relation=3)) == 6


def test_training_captions_are_true_of_their_scenes():
    """Synonyms, side-by-side words and colourless captions all describe the scene drawn."""
    rng = np.random.default_rng(5)
    kinds = {"colourless": 0, "side by side": 0}
    for _ in range(2000):
        scene, caption = scenes.training_example(rng)
        words = caption.replace("a ", " ").split()
        shapes = [w for w in words if w in scenes.SHAPES]
        assert shapes == [scene.a.shape, scene.b.shape], caption
        colours = [w for w in words if w in scenes.COLOURS]
        assert colours in ([], [scene.a.colour, scene.b.colour]), caption
        kinds["colourless"] += not colours
        said = " ".join(w for w in words if w not in scenes.SHAPES and w not in scenes.COLOURS)
        if said in scenes.SIDE_BY_SIDE:
            kinds["side by side"] += 1
            assert scene.relation in ("left of", "right of"), caption
        else:
            assert said in scenes.SYNONYMS.get(scene.relation, (scenes.UNRELATED,)), caption
    assert 0.10 < kinds["colourless"] / 2000 < 0.20 and kinds["side by side"] > 40
    assert set(caption for caption in scenes.all_training_captions()) >= {"a red circle on top of a blue square",
                                                                          "circle beside square"}


@pytest.mark.parametrize("seed", range(3))
def test_inner_object_sits_inside_with_a_margin_and_on_top_of_touches(seed):
    rng = np.random.default_rng(seed)
    for _ in range(50):
        s = scenes.make_scene(rng, "inside")
        assert s.a.size in range(7, 10) and s.b.size in range(19, 24)
        assert (scenes.obj_mask(s.a) <= scenes._erode(scenes.obj_mask(s.b))).all()
        t = scenes.make_scene(rng, "on top of")
        assert scenes.touching(scenes.obj_mask(t.a), scenes.obj_mask(t.b))
        assert not (scenes.obj_mask(t.a) & scenes.obj_mask(t.b)).any()
        assert {t.a.size, t.b.size} <= set(scenes.OBJECT_SIZES)
