"""A one-relation, one-seed slice of `make bench-quality` (lab/quality/bench_quality.py): it
still runs end to end on the toy model, writes one record per condition and resumes; the
tables and the picture are drawn from its summary."""
from __future__ import annotations

import json

import pytest

from lab.quality import bench_quality as bench
from lab.quality import plot, tables


def test_quality_benchmark_slice_runs_and_resumes(host, tmp_path):
    out, summary = tmp_path / "q.jsonl", tmp_path / "q.json"
    argv = ["--relations", "on top of", "--seeds", "0", "--variants", "full", "no_steer", "--steering-weights",
            "--steps", "4", "--curve", "2", "--lr-curve", "1e-3", "--lr-curve-steps", "2", "3",
            "--images", "2", "--sample-steps", "4", "--out", str(out), "--summary", str(summary)]
    bench.main(argv)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    kinds = sorted((r["exemplars"], r["variant"], r["steps"]) for r in records)
    per_set = [("full", 2), ("full", 4), ("init", 0), ("no_steer", 4), ("none", 0), ("oracle", 0)]
    assert kinds == sorted([("confounded", *k) for k in per_set] + [("diverse", *k) for k in per_set]
                           + [("diverse", "full_lr_0.008", 2), ("diverse", "full_lr_0.008", 3)])
    for r in records:
        assert r["relation"] == "on top of" and r["n_images"] == 2
        assert 0.0 <= r["relation_accuracy"] <= 1.0 and 0.0 <= r["entity_accuracy"] <= 1.0
        assert ("leak_rate" in r) == (r["exemplars"] == "confounded")
    full = next(r for r in records if r["variant"] == "full" and r["steps"] == 4 and r["exemplars"] == "confounded")
    assert set(full["cosine_init_word"]) == {"and"} and -1.0 <= full["cosine_init_word"]["and"] <= 1.0
    assert set(full["cosine_confound_words"]) == {"red", "blue"} and 0.0 <= full["leak_rate"] <= 1.0
    assert full["steering_weight"] == 0.01 and full["focal_alpha"] == 0.5
    assert list(full["vectors"]) == ["clip_l"] and len(full["vectors"]["clip_l"]) == 128   # the toy CLIP's width
    result = json.loads(summary.read_text())
    assert result["variants"]["full"]["overall"]["relation_accuracy"]["n"] == 1
    assert result["confounded"]["full"]["overall"]["leak_rate"]["n"] == 1
    assert set(result["curve"]) == {"2", "4"} and set(result["lr_curve"]["0.008"]) == {"2", "3"}
    # what the steering loss buys: the paired difference full - no_steer of this one run
    final = {(r["exemplars"], r["variant"]): r for r in records if r["steps"] in (0, 4)}
    for exemplar_set in ("diverse", "confounded"):
        effect = result["effects"][exemplar_set]
        assert set(effect) == {"steering loss"}          # the other three need the uniform variants
        diff = final[(exemplar_set, "full")]["relation_accuracy"] - final[(exemplar_set, "no_steer")]["relation_accuracy"]
        assert effect["steering loss"]["relation_accuracy"]["mean"] == pytest.approx(diff, abs=1e-4)
        assert effect["steering loss"]["relation_accuracy"]["n"] == 1
        outcome = effect["steering loss"]["relation_accuracy"]
        assert (outcome["wins"], outcome["ties"], outcome["losses"]) == ((diff > 0) * 1, (diff == 0) * 1, (diff < 0) * 1)
    assert "leak_rate" in result["effects"]["confounded"]["steering loss"]
    # the trained vectors' cosines, per variant: here one run, so its own figures
    full_diverse = final[("diverse", "full")]
    assert result["cosines"]["diverse"]["full"]["init_word"]["mean"] == pytest.approx(full_diverse["cosine_init_word"]["and"], abs=1e-4)
    assert result["cosines"]["confounded"]["full"]["confound_words"]["mean"] == pytest.approx(
        (full["cosine_confound_words"]["red"] + full["cosine_confound_words"]["blue"]) / 2, abs=1e-4)
    assert "oracle" not in result["cosines"]["diverse"]                  # untrained baselines have no vector
    # docs/results.md's tables are printed from this summary: the full method's row carries its figures
    tables_text = tables.render(result)
    full_row = next(line for line in tables_text.splitlines() if line.startswith("| full (paper) |"))
    assert f"**{final[('diverse', 'full')]['relation_accuracy']:.2f}**" in full_row
    steering_row = next(line for line in tables_text.splitlines() if line.startswith("| steering loss (full - no_steer)"))
    # 7 columns (relation, inverse rate, entity: diverse; the same and the leak: confounded); the confounded diff last seen
    assert steering_row.count("(") == 1 + 7 and f"{diff:+.3f}" in steering_row
    bench.main(argv)                                    # everything is there: nothing is redone
    assert len(out.read_text().splitlines()) == len(records)

    # --caption-positives: one more 'full' run, its steering positives only the prepositions
    # the toy encoder was trained on, and its effects against no steering and the paper's 56
    bench.main([*argv, "--caption-positives", "--exemplar-sets", "diverse"])
    narrowed = [json.loads(line) for line in out.read_text().splitlines()][len(records):]
    assert [(r["variant"], r["steps"]) for r in narrowed] == [("full_caption_positives", 4)]
    assert narrowed[0]["positive_words"] == list(bench.caption_prepositions())
    assert len(narrowed[0]["positive_words"]) == 20 and {"on", "inside", "beside"} <= set(narrowed[0]["positive_words"])
    assert not {"left", "right", "between", "toward"} & set(narrowed[0]["positive_words"])
    effect = json.loads(summary.read_text())["effects"]["diverse"]["steering loss, caption-word positives"]
    assert effect["relation_accuracy"]["mean"] == pytest.approx(
        narrowed[0]["relation_accuracy"] - final[("diverse", "no_steer")]["relation_accuracy"], abs=1e-4)
    records += narrowed
    # the README picture draws from the same summary: one effect row each, experiments included
    from PIL import Image
    result = json.loads(summary.read_text())
    picture = Image.open(plot.plot(result, tmp_path / "q.png"))
    assert len(result["effects"]["diverse"]) == 3 and picture.size == (1400, 560 + 80 + 45 * 3)

    # records say which model made them; another model's (or another --images') records are
    # never resumed into one summary: a clear stop, the file untouched
    from comfyui_reversion.toyworld import model as toy_model
    assert {r["model_sha256"] for r in records} == {toy_model.weights_sha256()}
    before = out.read_text()
    with pytest.raises(SystemExit, match="--images 2, this run asks 3"):
        bench.main([*argv[:-4], "--images", "3", "--out", str(out), "--summary", str(summary)])
    out.write_text(before.replace(toy_model.weights_sha256(), "0" * 64))
    with pytest.raises(SystemExit, match="another toy model"):
        bench.main(argv)
    assert out.read_text() == before.replace(toy_model.weights_sha256(), "0" * 64)


def test_caption_positives_draw_only_the_given_words_and_leave_the_product_alone():
    """The caption-positives experiment replaces the trainer's draw of steering positives
    for its run only: inside, draws come from the given words; after, the paper's 56 again."""
    import random
    from comfyui_reversion.reversion import steering, words
    real = steering.sample_positive_words
    with bench.positives_from(("on", "atop", "upon")):
        drawn = {w for _ in range(30) for w in steering.sample_positive_words(random.Random(_), 2)}
        with pytest.raises(ValueError, match="more than the 3 positive words"):
            steering.sample_positive_words(random.Random(0), 4)
    assert drawn == {"on", "atop", "upon"} and steering.sample_positive_words is real
    with bench.positives_from(()):
        assert steering.sample_positive_words is real
    assert set(steering.sample_positive_words(random.Random(0), 4)) <= set(words.relation_words())


def test_quality_benchmark_measures_the_options_beyond_the_paper(host, tmp_path):
    """Swapped-object negatives, several vectors and both, each with its paired difference to
    'full'; every record carries the inverse rate; tables and picture show them."""
    from PIL import Image
    out, summary = tmp_path / "q.jsonl", tmp_path / "q.json"
    bench.main(["--relations", "left of", "--seeds", "0", "--variants", "full", "--steering-weights", "--steps", "4",
                "--images", "2", "--sample-steps", "4", "--exemplar-sets", "diverse", "--baselines", "oracle",
                "--swap-weights", "1", "--vector-counts", "2", "--combos", "1:2", "--out", str(out),
                "--summary", str(summary)])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["variant"] for r in records] == ["oracle", "full", "full_swap_1", "full_vectors_2", "full_swap_1_vectors_2"]
    beyond = records[2:]
    assert [(r.get("swap_weight"), r.get("num_vectors")) for r in beyond] == [(1.0, None), (None, 2), (1.0, 2)]
    assert len(beyond[1]["vectors"]["clip_l"]) == 2 and len(beyond[1]["vectors"]["clip_l"][0]) == 128
    assert all(0.0 <= r["inverse_rate"] <= 1.0 - r["relation_accuracy"] for r in records)
    result = json.loads(summary.read_text())
    swap_effect = result["effects"]["diverse"]["swap 1 (vs full)"]
    assert (swap_effect["with"], swap_effect["without"]) == ("full_swap_1", "full")
    assert swap_effect["inverse_rate"]["mean"] == pytest.approx(beyond[0]["inverse_rate"] - records[1]["inverse_rate"],
                                                                 abs=1e-4)
    assert set(result["effects"]["diverse"]) == {"swap 1 (vs full)", "vectors 2 (vs full)", "swap 1 vectors 2 (vs full)"}
    text = tables.render(result)
    assert "Inverse rate, diverse exemplars" in text and "| full + swap 1, 2 vectors |" in text
    picture = Image.open(plot.plot(result, tmp_path / "q.png"))
    assert picture.size == (1400, 560 + 80 + 45 * 3)
