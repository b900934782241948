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
