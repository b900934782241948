"""The toy-model lab (lab/toy_model/): growing a trained 8x8-attention toy model into the
variant with 16x16 attention (the grown model must start out computing exactly what the old
one did), runs started from exported weights, the training mix and loss-weight flags, the
binding probe on the committed model, and the gate script on a slice."""
from __future__ import annotations

import pytest
import torch

from lab.toy_model import gate as gate_script
from lab.toy_model import probe_binding
from lab.toy_model import train as train_script


def test_a_grown_toy_model_starts_as_the_model_it_grew_from(host, tmp_path):
    from comfyui_reversion.toyworld import model as toy_model
    train = train_script
    small, grown = tmp_path / "small", tmp_path / "grown"
    train.main(["--steps", "2", "--batch", "2", "--run-dir", str(small), "--out", str(small / "model.safetensors")])
    train.main(["--steps", "0", "--attention-16", "--grow-from", str(small / "checkpoint.pt"),
                "--run-dir", str(grown), "--out", str(grown / "model.safetensors")])

    # a checkpoint past --steps is left alone: nothing trained, --out not overwritten
    train.main(["--steps", "1", "--run-dir", str(small), "--out", str(tmp_path / "earlier.safetensors")])
    assert not (tmp_path / "earlier.safetensors").exists()

    before = toy_model.load(small / "model.safetensors")[0]
    after = toy_model.load(grown / "model.safetensors", config=train.unet_config(attention_16=True))[0]
    new_keys = set(after.model.diffusion_model.state_dict()) - set(before.model.diffusion_model.state_dict())
    assert train.ATTENTION_16_KEY in new_keys and len(new_keys) > 20   # two transformers more
    torch.manual_seed(0)
    x, sigma, context = torch.randn(2, 4, 32, 32), torch.tensor([0.5, 8.0]), torch.randn(2, 77, toy_model.TEXT_WIDTH)
    with torch.no_grad():
        expected = before.model.apply_model(x, sigma, c_crossattn=context)
        actual = after.model.apply_model(x, sigma, c_crossattn=context)
    assert expected.abs().max() > 0.1
    assert torch.equal(actual, expected)

    # one update later (lr 5e-6 in the warm-up) the new layers have moved off zero, a little:
    # they train, and they started at zero in the trained weights too, not only in the EMA
    train.main(["--steps", "1", "--batch", "2", "--attention-16", "--run-dir", str(grown),
                "--out", str(grown / "model.safetensors")])
    trained = toy_model.load(grown / "model.safetensors", config=train.unet_config(attention_16=True))[0] \
        .model.diffusion_model.state_dict()
    proj_out = [v for k, v in trained.items() if k in new_keys and ".proj_out." in k]
    assert proj_out and all(0 < v.abs().max() < 1e-4 for v in proj_out)


def test_relation_weight_flags_replace_the_default_mix():
    from comfyui_reversion.toyworld import scenes
    train = train_script
    weights = train.relation_weights_arg(["inside=6", "on top of=0"], scenes)
    assert weights == {**scenes.RELATION_WEIGHTS, "inside": 6.0, "on top of": 0.0}
    for bad in ("inside", "inside=-1", "inside=x", "besides=2"):
        with pytest.raises(SystemExit, match="RELATION=W"):
            train.relation_weights_arg([bad], scenes)


def test_a_run_started_from_exported_weights_begins_with_exactly_those_weights(host, tmp_path):
    import safetensors.torch
    train = train_script
    first, second = tmp_path / "first", tmp_path / "second"
    train.main(["--steps", "2", "--batch", "2", "--run-dir", str(first), "--out", str(first / "model.safetensors")])
    train.main(["--steps", "0", "--init-weights", str(first / "model.safetensors"),
                "--run-dir", str(second), "--out", str(second / "model.safetensors")])
    before = safetensors.torch.load_file(str(first / "model.safetensors"))
    after = safetensors.torch.load_file(str(second / "model.safetensors"))
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # --export-only --raw writes the checkpoint's parameters, which after 2 steps are not yet
    # their EMA (the probe figures on "raw weights" in lab/toy_model/NOTES.md come from such exports)
    train.main(["--export-only", "--raw", "--run-dir", str(first), "--out", str(first / "raw.safetensors")])
    raw = safetensors.torch.load_file(str(first / "raw.safetensors"))
    assert raw.keys() == before.keys() and any(not torch.equal(raw[k], before[k]) for k in raw)
    with pytest.raises(SystemExit, match="--raw goes with --export-only"):
        train.main(["--raw", "--run-dir", str(first), "--out", str(tmp_path / "never.safetensors")])
    assert not (tmp_path / "never.safetensors").exists()


def test_edge_weights_put_the_loss_on_outlines():
    import numpy as np
    from comfyui_reversion.toyworld import scenes
    train = train_script
    scene = scenes.make_scene(np.random.default_rng(0), "above", "red circle", "blue square")
    x0 = torch.from_numpy(scenes.render(scene)).permute(2, 0, 1)[None] * 2 - 1
    w = train.edge_weights(x0, 5.0)[0, 0]
    assert w.shape == (scenes.SIZE, scenes.SIZE) and abs(w.mean().item() - 1) < 1e-5
    high, low = w.max(), w.min()
    assert torch.isclose(high / low, torch.tensor(5.0))
    square = torch.from_numpy(scenes.obj_mask(scene.b))
    inner = torch.from_numpy(scenes._erode(scenes.obj_mask(scene.b)))     # the square less its outline
    outline = square & ~inner
    assert torch.all(w[outline] == high) and torch.all(w[inner] == low)
    assert w[0, 0] == low                                                    # background far from both
    assert train.edge_weights(x0, 1.0).eq(1).all()


def test_inner_weights_weigh_the_inner_object_of_inside_scenes_only():
    import numpy as np
    from comfyui_reversion.toyworld import scenes
    train = train_script
    rng = np.random.default_rng(0)
    inside, above = scenes.make_scene(rng, "inside"), scenes.make_scene(rng, "above")
    w = train.inner_weights([inside, above], 10.0)
    assert w.shape == (2, 1, scenes.SIZE, scenes.SIZE)
    assert torch.all(w[1] == 1)                                              # no inner object: plain
    a = inside.a
    box = torch.zeros(scenes.SIZE, scenes.SIZE, dtype=torch.bool)
    box[a.top - 1:a.top + a.size + 1, a.left - 1:a.left + a.size + 1] = True
    assert abs(w[0].mean().item() - 1) < 1e-5
    assert torch.isclose(w[0, 0][box].min() / w[0, 0][~box].max(), torch.tensor(10.0))
    assert torch.all(w[0, 0][box] == w[0, 0][box][0]) and torch.all(w[0, 0][~box] == w[0, 0][~box][0])


def test_the_binding_probe_sees_the_committed_model_use_the_shape_word_of_above(toy):
    """lab/toy_model/probe_binding.py: the committed model draws "above" with both shapes right
    (the gate), so its drawing of the first object must follow that object's shape word: with
    the word swapped, the prediction moves further than its own error from the true scene."""
    probe = probe_binding
    model, clip, _vae = toy
    report = probe.probe(model, clip, "above", n=6, sigmas=(1.0,))
    assert report["shape"][1.0] > 0.03
    assert report["error"][1.0] < report["shape"][1.0]


def test_the_gate_script_reports_and_refuses_a_partial_gate(host, tmp_path):
    """lab/toy_model/gate.py on a slice (one prompt per relation, one seed, 2 sampler steps):
    the report is written and the gate says why a slice cannot pass."""
    import json
    out = tmp_path / "gate.json"
    gate_script.main(["--relations", "above", "inside", "--per-relation", "1", "--per-prompt", "1", "--steps", "2",
                      "--json", str(out)])
    report = json.loads(out.read_text())
    assert report["n_images"] == 2 and set(report["per_relation"]) == {"above", "inside"}
    assert not report["gate"]["passed"] and "backgrounds" not in report
    assert {"fewer than 2 seeds per prompt", "not every relation (--relations)"} <= set(report["gate"]["failures"])
