"""The toy world's scenes and judge (pure numpy; no ComfyUI)."""
from __future__ import annotations

import numpy as np
import pytest

from reversion import toyworld
from reversion.toyworld import evaluate, judge, scenes


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
    """`train_toy_model.py --relation-weight inside=6` draws inside scenes that much more often."""
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


def test_score_aggregates_per_relation():
    rng = np.random.default_rng(1)
    prompts = evaluate.held_out_prompts(["inside", "left of"], per_relation=5)
    images = [scenes.render(scenes.make_scene(rng, p.relation, p.a, p.b)) for p in prompts]
    images[0] = scenes.render(scenes.make_scene(rng, "above", prompts[0].a, prompts[0].b))
    report = evaluate.score(images, prompts)
    assert report["n_images"] == 10
    assert report["relation_accuracy"] == pytest.approx(0.9)
    assert report["per_relation"]["left of"]["relation_accuracy"] == 1.0


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


def test_confounded_exemplars_share_unnamed_colours_and_the_shape_judge_reads_them():
    """The confounded set: red first object, blue second, captions naming only shapes; the
    shape judge scores colourless prompts exactly on rendered scenes and reads the colours."""
    from reversion.toyworld import confounded_exemplars, evaluate
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


def test_tinted_backgrounds_are_read_and_do_not_fool_the_judge():
    """The tint confound's world: on every background the judge reads relation and objects
    exactly, and reads the background back, also through a generator's noise and soft edges."""
    rng = np.random.default_rng(11)
    for background in scenes.BACKGROUNDS:
        for i in range(60):
            scene = scenes.make_scene(rng, scenes.RELATIONS[i % len(scenes.RELATIONS)])
            scene = scenes.Scene(scene.a, scene.b, scene.relation, background)
            image = scenes.render(scene)
            if i % 2:
                image = scenes.degrade(image, rng, noise=0.05, blur=4)
            v = judge.judge(image, scene.a.name, scene.relation, scene.b.name)
            assert v.relation_ok and v.entities_ok, (background, scene.caption(), v.seen)
            assert judge.read_background(image) == background


def test_the_tint_phase_mix_names_a_tint_in_about_half_the_captions():
    """`train_toy_model.py --backgrounds`: tints drawn by BACKGROUND_WEIGHTS, said as a
    word after the first shape ("a red circle pink above ...") in BACKGROUND_SAID of captions,
    which stay true; without
    `backgrounds` the stream is the committed model's (every scene grey, no tint words)."""
    rng = np.random.default_rng(4)
    drawn = [scenes.training_example(rng, backgrounds=scenes.BACKGROUND_WEIGHTS) for _ in range(2000)]
    shares = {bg: sum(s.background == bg for s, _ in drawn) / len(drawn) for bg in scenes.BACKGROUNDS}
    for bg, weight in scenes.BACKGROUND_WEIGHTS.items():
        assert abs(shares[bg] - weight) < 0.04, shares
    def tint_words(caption):
        return [w for w in caption.split() if w in scenes.BACKGROUNDS]
    said = [(s, c) for s, c in drawn if tint_words(c)]
    assert 0.45 < len(said) / len(drawn) < 0.55
    assert all(tint_words(c) == [s.background] for s, c in said)
    captions = set(scenes.all_training_captions(scenes.BACKGROUNDS))
    assert {c for _, c in drawn} <= captions
    assert "a red circle pink on top of a blue square" in captions and "circle mint beside square" in captions

    plain, tinted = np.random.default_rng(9), np.random.default_rng(9)
    for _ in range(200):
        scene, caption = scenes.training_example(plain)
        assert scene.background == "grey" and not tint_words(caption)
    assert not set(scenes.all_training_captions()) & {c for c in captions if tint_words(c)}
    # the tint draws come after the untinted example's: the same scene, only its background differs
    first = scenes.training_example(np.random.default_rng(9))[0]
    assert scenes.training_example(tinted, backgrounds=scenes.BACKGROUND_WEIGHTS)[0].a == first.a


def test_tinted_exemplars_are_the_diverse_ones_on_an_unnamed_tint_and_score_its_leak():
    from reversion.toyworld import tinted_exemplars
    diverse, tinted = toyworld.exemplars("inside", 8, seed=2), tinted_exemplars("inside", 8, seed=2)
    assert tinted.names == diverse.names and tinted.templates == diverse.templates
    assert all("pink" not in t and "background" not in t for ts in tinted.templates for t in ts)
    top, bottom = tinted.images[:, 0, 0].numpy(), tinted.images[:, -1, 0].numpy()
    assert np.allclose(top, scenes.BACKGROUNDS["pink"]) and np.allclose(bottom, 0.9)     # a pink sky
    assert np.allclose(diverse.images[:, 0, 0].numpy(), 0.9)
    assert all(judge.read_background(img) == "pink" for img in tinted.images.numpy())
    with pytest.raises(ValueError, match="unknown background 'teal'"):
        tinted_exemplars("inside", 2, seed=0, background="teal")

    chosen = scenes.exemplar_scenes("above", 8, seed=5)
    prompts = [evaluate.Prompt(s.a.name, s.relation, s.b.name) for s in chosen]
    images = [scenes.render(scenes.Scene(s.a, s.b, s.relation, "pink" if i < 3 else "grey")) for i, s in enumerate(chosen)]
    report = evaluate.score_tinted(images, prompts, "pink")
    assert report["relation_accuracy"] == 1.0 and report["entity_accuracy"] == 1.0
    assert report["leak_rate"] == 3 / 8 and report["backgrounds_read"] == {"grey": 5, "pink": 3}
