"""The toy world's judge and scores (toyworld/judge.py, evaluate.py): exact on rendered
scenes, robust to what a small generator draws, and the colourless-prompt judge of the
confounded exemplars (pure numpy; no ComfyUI)."""
from __future__ import annotations

import numpy as np
import pytest

from comfyui_reversion.toyworld import evaluate, judge, scenes


def test_judge_is_exact_on_1000_random_rendered_scenes():
    assert evaluate.judge_misses(1000, seed=2024) == []


@pytest.mark.parametrize("kind,kwargs", scenes.DEGRADATIONS.items())
def test_judge_is_robust_to_what_generators_draw(kind, kwargs):
    n = 240
    misses = evaluate.judge_misses(n, seed=7, degradation=kwargs)
    assert (n - len(misses)) / n >= 0.95, f"{kind}: {misses}"


def test_judge_reports_wrong_relations_and_wrong_objects():
    rng = np.random.default_rng(3)
    scene = scenes.make_scene(rng, "above", "red circle", "blue square")
    img = scenes.render(scene)
    assert judge.judge(img, "red circle", "above", "blue square").relation_ok
    assert not judge.judge(img, "red circle", "below", "blue square").relation_ok
    assert not judge.judge(img, "red circle", "above", "blue triangle").entities_ok
    assert judge.judge(img, "blue square", "below", "red circle").relation_ok     # roles follow colours
    blank = np.full((32, 32, 3), 0.9, np.float32)
    assert judge.judge(blank, "red circle", "above", "blue square") == judge.Verdict(False, False, "nothing")


def test_score_aggregates_per_relation():
    rng = np.random.default_rng(1)
    prompts = evaluate.held_out_prompts(["inside", "left of"], per_relation=5)
    images = [scenes.render(scenes.make_scene(rng, p.relation, p.a, p.b)) for p in prompts]
    images[0] = scenes.render(scenes.make_scene(rng, "above", prompts[0].a, prompts[0].b))
    report = evaluate.score(images, prompts)
    assert report["n_images"] == 10
    assert report["relation_accuracy"] == pytest.approx(0.9)
    assert report["per_relation"]["left of"]["relation_accuracy"] == 1.0


def test_confounded_exemplars_share_unnamed_colours_and_the_shape_judge_reads_them():
    """The confounded set: red first object, blue second, captions naming only shapes; the
    shape judge scores colourless prompts exactly on rendered scenes and reads the colours."""
    from comfyui_reversion.toyworld import confounded_exemplars
    ex = confounded_exemplars("inside", 8, seed=0)
    assert all(n.startswith("red ") and " / blue " in n for n in ex.names)
    assert all("red" not in t and "blue" not in t and "{}" in t for ts in ex.templates for t in ts)
    for relation in scenes.RELATIONS:
        chosen = scenes.confounded_scenes(relation, 12, seed=3)
        prompts = [evaluate.Prompt(s.a.shape, relation, s.b.shape) for s in chosen]
        result = evaluate.score_colourless([scenes.render(s) for s in chosen], prompts, ("red", "blue"))
        assert (result["relation_accuracy"], result["entity_accuracy"], result["leak_rate"]) == (1.0, 1.0, 1.0)
        other = evaluate.score_colourless([scenes.render(s) for s in chosen], prompts, ("blue", "red"))
        assert other["leak_rate"] == 0.0
    wrong = scenes.render(scenes.make_scene(np.random.default_rng(0), "above", "green circle", "yellow square"))
    v = evaluate.judge.judge_shapes(wrong, "circle", "below", "square")
    assert v.shapes_ok and not v.relation_ok and v.colours == ("green", "yellow")


def _with(image, *extra: "scenes.Obj"):
    """The image with more objects painted on it."""
    image = image.copy()
    for o in extra:
        image[scenes.obj_mask(o)] = scenes.COLOURS[o.colour]
    return image


def test_every_object_counts_a_duplicate_or_a_third_object_is_an_entity_error():
    """'a red triangle left of a blue circle' drawn with a second red triangle, or with a
    green square besides: the relation of the two is read as before, the entities are wrong
    and the report names the extra object (the judge used to keep the largest blob per colour)."""
    scene = scenes.Scene(scenes.Obj("triangle", "red", 4, 2, 8), scenes.Obj("circle", "blue", 4, 20, 9), "left of")
    clean = scenes.render(scene)
    ok = judge.judge(clean, "red triangle", "left of", "blue circle")
    assert (ok.entities_ok, ok.relation_ok, ok.extras) == (True, True, ())
    for extra, name in ((scenes.Obj("triangle", "red", 20, 12, 7), "red triangle"),
                        (scenes.Obj("square", "green", 20, 12, 7), "green square")):
        for image in (_with(clean, extra), scenes.upscale(_with(clean, extra))):
            v = judge.judge(image, "red triangle", "left of", "blue circle")
            assert (v.entities_ok, v.relation_ok, v.extras) == (False, True, (name,)), v
            assert v.seen == f"red triangle left of blue circle + {name}"
    prompt = evaluate.Prompt("red triangle", "left of", "blue circle")
    report = evaluate.score([clean, _with(clean, scenes.Obj("triangle", "red", 20, 12, 7))], [prompt, prompt])
    assert report["entity_accuracy"] == 0.5 and report["relation_accuracy"] == 1.0
    assert report["per_relation"]["left of"]["objects_misread"] == {"extra red triangle": 1}


def test_a_container_cut_in_two_by_its_inner_object_is_one_object():
    """Pieces of an object's colour inside its convex hull are the object (an inner shape
    that reaches the container's edge splits its ring), not extras."""
    container = scenes.Obj("square", "blue", 6, 6, 20)
    inner = scenes.Obj("square", "red", 14, 8, 8)
    image = scenes.render(scenes.Scene(inner, container, "inside"))
    image[13, 6:8] = image[22, 6:8] = scenes.BACKGROUND    # a notch above and below cuts off the strip left of it
    masks = judge.colour_masks(image)
    assert len([c for c in judge._components(masks["blue"]) if c.sum() >= judge.MIN_PIXELS]) == 2
    v = judge.judge(image, "red square", "inside", "blue square")
    assert v.extras == () and v.entities_ok and v.relation_ok, v


def test_inverse_rate_counts_the_relation_drawn_with_the_roles_swapped():
    rng = np.random.default_rng(5)
    asked = [evaluate.Prompt("red circle", r, "blue square") for r in ("left of", "above", "inside", "on top of")]
    swapped = {"left of": "right of", "above": "below", "inside": "inside", "on top of": "on top of"}
    images = []
    for p in asked:
        if p.relation in ("inside", "on top of"):        # B inside / on top of A: A contains / supports B
            s = scenes.make_scene(rng, swapped[p.relation], "blue square", "red circle")
        else:
            s = scenes.make_scene(rng, swapped[p.relation], p.a, p.b)
        images.append(scenes.render(s))
    report = evaluate.score(images, asked)
    assert report["relation_accuracy"] == 0.0 and report["inverse_rate"] == 1.0
    assert report["relations_read"] == {"right of": 1, "below": 1, "contains": 1, "supports": 1}
    assert evaluate.score([scenes.render(scenes.make_scene(rng, "below", "red circle", "blue square"))],
                          [asked[0]])["inverse_rate"] == 0.0     # another wrong relation is not an inverse
