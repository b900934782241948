"""`scripts/train_toy_model.py`: growing a trained 8x8-attention toy model into the variant with
16x16 attention (the grown model must start out computing exactly what the old one did), a
checkpoint past --steps left alone, and the --relation-weight flags."""
from __future__ import annotations

import pytest
import torch

from conftest import load_script


def test_a_grown_toy_model_starts_as_the_model_it_grew_from(host, tmp_path):
    from reversion_comfy import toy_model
    train = load_script("scripts/train_toy_model.py")
    small, grown = tmp_path / "small", tmp_path / "grown"
    train.main(["--steps", "2", "--batch", "2", "--run-dir", str(small), "--out", str(small / "model.safetensors")])
    train.main(["--steps", "0", "--attention-16", "--grow-from", str(small / "checkpoint.pt"),
                "--run-dir", str(grown), "--out", str(grown / "model.safetensors")])

    # a checkpoint past --steps is left alone: nothing trained, --out not overwritten
    train.main(["--steps", "1", "--run-dir", str(small), "--out", str(tmp_path / "earlier.safetensors")])
    assert not (tmp_path / "earlier.safetensors").exists()

    before, after = toy_model.load(small / "model.safetensors")[0], toy_model.load(grown / "model.safetensors")[0]
    new_keys = set(after.model.diffusion_model.state_dict()) - set(before.model.diffusion_model.state_dict())
    assert toy_model.ATTENTION_16_KEY in new_keys and len(new_keys) > 20   # two transformers more
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
    trained = toy_model.load(grown / "model.safetensors")[0].model.diffusion_model.state_dict()
    proj_out = [v for k, v in trained.items() if k in new_keys and ".proj_out." in k]
    assert proj_out and all(0 < v.abs().max() < 1e-4 for v in proj_out)


def test_relation_weight_flags_replace_the_default_mix():
    from reversion.toyworld import scenes
    train = load_script("scripts/train_toy_model.py")
    weights = train.relation_weights_arg(["inside=6", "on top of=0"], scenes)
    assert weights == {**scenes.RELATION_WEIGHTS, "inside": 6.0, "on top of": 0.0}
    for bad in ("inside", "inside=-1", "inside=x", "besides=2"):
        with pytest.raises(SystemExit, match="RELATION=W"):
            train.relation_weights_arg([bad], scenes)
