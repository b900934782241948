"""The toy world's scenes and judge (pure numpy; no ComfyUI)."""
from __future__ import annotations

import numpy as np
import pytest

from reversion import toyworld
from reversion.toyworld import evaluate, judge, scenes


def test_judge_is_exact_on_1000_random_rendered_scenes():
    rng = np.random.default_rng(2024)
    wrong = []
    for i in range(1000):
        relation = scenes.RELATIONS[i % len(scenes.RELATIONS)]
        scene = scenes.make_scene(rng, relation)
        image = scenes.render(scene) if i % 2 else scenes.upscale(scenes.render(scene))
        v = judge.judge(image, scene.a.name, relation, scene.b.name)
        if not (v.relation_ok and v.entities_ok):
            wrong.append((scene.caption(), v.seen))
    assert wrong == []


def perturb(img: np.ndarray, rng, noise=0.0, blur=0, tint=(0.0, 0.0, 0.0)) -> np.ndarray:
    """What a small diffusion model's output looks like: 256 px, soft edges, noise, tint."""
    big = scenes.upscale(img).astype(np.float32)
    if blur:
        k = 2 * blur + 1                       # box blur of the 256 px image: soft edges
        pad = np.pad(big, ((blur, blur), (blur, blur), (0, 0)), mode="edge")
        big = sum(pad[dy:dy + big.shape[0], dx:dx + big.shape[1]] for dy in range(k) for dx in range(k)) / k ** 2
    big = big + np.asarray(tint, np.float32) + rng.normal(0, noise, big.shape).astype(np.float32)
    return np.clip(big, 0, 1)


@pytest.mark.parametrize("kind,kwargs", [
    ("noise", {"noise": 0.08}),
    ("soft edges", {"blur": 6}),
    ("tinted background", {"tint": (0.06, -0.04, 0.07)}),
    ("all three", {"noise": 0.05, "blur": 4, "tint": (-0.05, 0.03, 0.05)}),
])
def test_judge_is_robust_to_what_generators_draw(kind, kwargs):
    rng = np.random.default_rng(7)
    ok = 0
    n = 240
    for i in range(n):
        relation = scenes.RELATIONS[i % len(scenes.RELATIONS)]
        scene = scenes.make_scene(rng, relation)
        v = judge.judge(perturb(scenes.render(scene), rng, **kwargs), scene.a.name, relation, scene.b.name)
        ok += v.relation_ok and v.entities_ok
    assert ok / n >= 0.95, f"{kind}: {ok}/{n}"


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


def test_score_aggregates_per_relation():
    rng = np.random.default_rng(1)
    prompts = evaluate.held_out_prompts(["inside", "left of"], per_relation=5)
    images = [scenes.render(scenes.make_scene(rng, p.relation, p.a, p.b)) for p in prompts]
    images[0] = scenes.render(scenes.make_scene(rng, "above", prompts[0].a, prompts[0].b))
    report = evaluate.score(images, prompts)
    assert report["n_images"] == 10
    assert report["relation_accuracy"] == pytest.approx(0.9)
    assert report["per_relation"]["left of"]["relation_accuracy"] == 1.0
