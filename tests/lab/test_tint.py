"""The tint confound (lab/tint/tint.py, unfinished): tinted skies the judge reads through, the
tint training mix, tinted exemplars and their leak, the tint phase of the toy-model script,
and the tint columns of the gate, the probe and bench-quality (their slices)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from comfyui_reversion import toyworld
from comfyui_reversion.toyworld import evaluate, scenes
from lab.tint import tint


def test_tinted_skies_are_read_and_do_not_fool_the_judge():
    """On every sky the tint judge reads relation and objects exactly, and reads the tint
    back, also through a generator's noise and soft edges."""
    rng = np.random.default_rng(11)
    for background in tint.BACKGROUNDS:
        for i in range(60):
            scene = scenes.make_scene(rng, scenes.RELATIONS[i % len(scenes.RELATIONS)])
            image = tint.render(scene, background)
            if i % 2:
                image = scenes.degrade(image, rng, noise=0.05, blur=4)
            v = tint.judge_tinted(image, scene.a.name, scene.relation, scene.b.name)
            assert v.relation_ok and v.entities_ok, (background, scene.caption(), v.seen)
            assert tint.read_background(image) == background


def test_the_tint_mix_names_a_tint_in_about_half_the_captions():
    """Tints drawn by BACKGROUND_WEIGHTS, said as a word after the first shape ("a red circle
    pink above ...") in BACKGROUND_SAID of captions, which stay true; the scene drawn is the
    untinted stream's (the tint draws come after it)."""
    rng = np.random.default_rng(4)
    drawn = [tint.training_example(rng) for _ in range(2000)]
    shares = {bg: sum(b == bg for _, b, _ in drawn) / len(drawn) for bg in tint.BACKGROUNDS}
    for bg, weight in tint.BACKGROUND_WEIGHTS.items():
        assert abs(shares[bg] - weight) < 0.04, shares

    def tint_words(caption):
        return [w for w in caption.split() if w in tint.BACKGROUNDS]
    said = [(b, c) for _, b, c in drawn if tint_words(c)]
    assert 0.45 < len(said) / len(drawn) < 0.55
    assert all(tint_words(c) == [b] for b, c in said)
    captions = set(tint.all_training_captions(tint.BACKGROUNDS))
    assert {c for _, _, c in drawn} <= captions
    assert "a red circle pink on top of a blue square" in captions and "circle mint beside square" in captions
    assert not set(scenes.all_training_captions()) & {c for c in captions if tint_words(c)}
    first = scenes.training_example(np.random.default_rng(9))[0]
    assert tint.training_example(np.random.default_rng(9))[0] == first


def test_tinted_exemplars_are_the_diverse_ones_on_an_unnamed_tint_and_score_its_leak():
    diverse, tinted = toyworld.exemplars("inside", 8, seed=2), tint.tinted_exemplars("inside", 8, seed=2)
    assert tinted.names == diverse.names and tinted.templates == diverse.templates
    assert all("pink" not in t and "background" not in t for ts in tinted.templates for t in ts)
    top, bottom = tinted.images[:, 0, 0].numpy(), tinted.images[:, -1, 0].numpy()
    assert np.allclose(top, tint.BACKGROUNDS["pink"]) and np.allclose(bottom, 0.9)     # a pink sky
    assert np.allclose(diverse.images[:, 0, 0].numpy(), 0.9)
    assert all(tint.read_background(img) == "pink" for img in tinted.images.numpy())
    with pytest.raises(ValueError, match="unknown background 'teal'"):
        tint.tinted_exemplars("inside", 2, seed=0, background="teal")

    chosen = scenes.exemplar_scenes("above", 8, seed=5)
    prompts = [evaluate.Prompt(s.a.name, s.relation, s.b.name) for s in chosen]
    images = [tint.render(s, "pink" if i < 3 else "grey") for i, s in enumerate(chosen)]
    report = tint.score_tinted(images, prompts, "pink")
    assert report["relation_accuracy"] == 1.0 and report["entity_accuracy"] == 1.0
    assert report["leak_rate"] == 3 / 8 and report["backgrounds_read"] == {"grey": 5, "pink": 3}


def test_the_tint_phase_starts_from_exported_weights_and_trains_the_new_tint_words(host, tmp_path):
    """`make toy-model-tint`'s recipe in miniature: a model trained without tints, then
    --backgrounds from its weights: the tint words, never in a caption before, get rows that
    train (Adam moves most coordinates by ~lr; weight decay alone would not show in fp16),
    and a word no caption has keeps its row."""
    import safetensors.torch
    from comfyui_reversion.toyworld import model as toy_model
    from lab.toy_model import train
    first, tinted = tmp_path / "first", tmp_path / "tint"
    train.main(["--steps", "1", "--batch", "2", "--run-dir", str(first), "--out", str(first / "model.safetensors")])
    train.main(["--steps", "2", "--batch", "8", "--warmup", "1", "--backgrounds", "--background-said", "1",
                "--init-weights", str(first / "model.safetensors"), "--run-dir", str(tinted),
                "--out", str(tinted / "model.safetensors")])
    key = "clip.text_model.embeddings.token_embedding.weight"
    before = safetensors.torch.load_file(str(first / "model.safetensors"))[key]
    after = safetensors.torch.load_file(str(tinted / "model.safetensors"))[key]
    tokenizer = toy_model.clip_target().tokenizer().clip_l
    ids = {w: [t for t, _ in tokenizer.tokenize_with_weights(w)[0] if t not in (49406, 49407)]
           for w in ("pink", "mint", "zebra")}
    for word in ("pink", "mint"):
        assert len(ids[word]) == 1 and (before[ids[word]] != after[ids[word]]).float().mean() > 0.5, word
    assert torch.equal(before[ids["zebra"]], after[ids["zebra"]])
    with pytest.raises(SystemExit, match="--background-said needs --backgrounds"):
        train.main(["--steps", "1", "--background-said", "0.5", "--run-dir", str(tmp_path / "x")])


def test_the_probe_sees_the_committed_model_ignore_a_tint_word(toy):
    """The committed model never saw a tint word, so pink or mint in its caption only jostles
    the sky a little (~0.01, an unknown word before the relation word); a model that followed
    the word would move it by ~1.4, as the colour word moves its object ~0.5."""
    from lab.toy_model import probe_binding
    model, clip, _vae = toy
    report = probe_binding.probe(model, clip, "above", n=6, sigmas=(5.0,), backgrounds=True)
    assert report["colour"][5.0] > 0.1 and report["tint"][5.0] < 0.05


def test_the_gate_script_reports_the_backgrounds_drawn(host, tmp_path):
    """--backgrounds adds the backgrounds drawn for prompts that name none (shares summing to
    1) and, per tint, the share drawn on it when the prompt names it."""
    from lab.toy_model import gate
    out = tmp_path / "gate.json"
    gate.main(["--relations", "above", "--per-relation", "1", "--per-prompt", "1", "--steps", "2",
               "--backgrounds", "--json", str(out)])
    report = json.loads(out.read_text())
    unsaid, said = report["backgrounds"]["unsaid"], report["backgrounds"]["said"]
    assert set(unsaid) == set(said) == set(tint.BACKGROUNDS) and sum(unsaid.values()) == pytest.approx(1.0)
    assert all(0.0 <= s["drawn_on_it"] <= 1.0 and 0.0 <= s["relation_accuracy"] <= 1.0 for s in said.values())


def test_bench_quality_scores_the_tinted_set_with_its_leak(host, tmp_path):
    """The tinted exemplar set from a copy of the toy weights (--weights): the diverse set's
    prompts, scored with the share drawn on the exemplars' pink."""
    import shutil
    from comfyui_reversion.toyworld import model as toy_model
    from lab.quality import bench_quality
    out, summary = tmp_path / "q.jsonl", tmp_path / "q.json"
    weights = shutil.copy(toy_model.WEIGHTS, tmp_path / "copy.safetensors")
    bench_quality.main(["--relations", "on top of", "--seeds", "0", "--variants", "full", "no_steer",
                        "--steering-weights", "--steps", "4", "--images", "2", "--sample-steps", "4",
                        "--exemplar-sets", "tinted", "--weights", str(weights), "--out", str(out),
                        "--summary", str(summary)])
    tinted = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted((r["variant"], r["steps"]) for r in tinted) == sorted(
        [("full", 4), ("no_steer", 4), ("init", 0), ("none", 0), ("oracle", 0)])
    for r in tinted:
        assert r["exemplars"] == "tinted" and 0.0 <= r["leak_rate"] <= 1.0
        assert sum(r["backgrounds_read"].values()) == 2 and set(r["backgrounds_read"]) <= set(tint.BACKGROUNDS)
        assert r["leak_rate"] == r["backgrounds_read"].get("pink", 0) / r["n_images"]     # the leak is the pink share
    full_tinted = next(r for r in tinted if r["variant"] == "full")
    assert set(full_tinted["cosine_confound_words"]) == {"pink"}
    assert json.loads(summary.read_text())["tinted"]["oracle"]["overall"]["leak_rate"]["n"] == 1
