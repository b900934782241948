"""Text encoding with the relation (reversion_comfy/text.py): training sees exactly the
conditioning inference gets, and every prompt, template, init word or relation that cannot
work is refused before anything trains."""
from __future__ import annotations

import pytest
import torch

from comfyui_reversion.reversion import relation_file as rf
from comfyui_reversion.reversion.words import STANDIN
from conftest import prepared_backend, run_node, small_exemplars, train_inputs


@pytest.fixture
def no_training(monkeypatch):
    """Fails the test if an update starts: the error must come before training."""
    from comfyui_reversion.reversion import trainer

    def refuse(*a, **k):
        raise AssertionError("training started although the input was bad")
    monkeypatch.setattr(trainer, "train", refuse)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_training_sees_the_conditioning_inference_gets_with_clip_skip(host, tiny, family):
    """With CLIPSetLastLayer(-3), the conditioning the trainer optimises is exactly what
    Relation Text Encode (and stock embedding:name) produce at inference."""
    from comfyui_reversion.reversion_comfy import guards, text
    model, clip, _ = tiny(family)
    (skipped,) = run_node(host, "CLIPSetLastLayer", "set_last_layer", clip=clip, stop_at_clip_layer=-3)
    relation = rf.Relation({k: torch.randn(w, generator=torch.Generator().manual_seed(2))
                            for k, w in {e.key: e.width for e in text.text_encoders(clip)}.items()})
    (infer,) = run_node(host, "ReVersionRelationTextEncode", "encode", clip=skipped, relation=relation, text="a cat <R> a dog")
    (last,) = run_node(host, "ReVersionRelationTextEncode", "encode", clip=clip, relation=relation, text="a cat <R> a dog")
    with guards.training_mode():
        backend = prepared_backend(model, skipped)
        cond, _ = backend.captions.encode(relation.vectors, f"a cat {STANDIN} a dog")
    torch.testing.assert_close(cond, infer[0][0], rtol=0, atol=1e-6)
    assert not torch.allclose(infer[0][0], last[0][0])


def test_prompt_without_relation_marker(host, tiny):
    from comfyui_reversion.reversion.errors import RelationError
    _, clip, _ = tiny("sd1")
    relation = rf.Relation({"clip_l": torch.randn(768)})
    with pytest.raises(RelationError, match="no <R>.*'a cat <R> a dog'"):
        run_node(host, "ReVersionRelationTextEncode", "encode", clip=clip, relation=relation, text="a cat and a dog")


@pytest.mark.parametrize("trained,used", [("sd1", "sdxl"), ("sdxl", "sd1"), ("sd2v", "sd1")])
def test_relation_for_another_model_family_is_refused(host, tiny, trained, used):
    from comfyui_reversion.reversion.errors import RelationError
    from comfyui_reversion.reversion_comfy.text import text_encoders
    relation = rf.Relation({e.key: torch.randn(e.width) for e in text_encoders(tiny(trained)[1])}, name="other")
    with pytest.raises(RelationError, match="was trained for .* but this CLIP is"):
        run_node(host, "ReVersionRelationTextEncode", "encode", clip=tiny(used)[1], relation=relation, text="a <R> b")


def test_multi_token_init_word_is_refused(host, tiny):
    from comfyui_reversion.reversion.errors import RelationError
    model, clip, vae = tiny("sd1")
    with pytest.raises(RelationError, match="init word 'astride' is 2 tokens"):
        run_node(host, "ReVersionTrainRelation", "train", **train_inputs(model, clip, vae, "multi", init_word="astride"))


@pytest.mark.parametrize("template,message", [
    (" ".join(["a big red cat"] * 20) + " {} a dog", r"is \d+ tokens for the clip_[lg] tokenizer; .*at most 75.*shorten it"),
    ("a wexmondays cat {} a dog", "contains 'wexmondays', the word this pack uses internally"),
])
def test_templates_are_checked_against_every_tokenizer_before_the_first_update(host, tiny, no_training, template,
                                                                               message):
    from comfyui_reversion.reversion.errors import RelationError
    for family in ("sd1", "sdxl"):
        model, clip, vae = tiny(family)
        exemplars = small_exemplars(2, 32, ["a cat {} a dog", template])
        before = sorted(host.embeddings.iterdir())
        with pytest.raises(RelationError, match=message) as err:
            run_node(host, "ReVersionTrainRelation", "train",
                     **train_inputs(model, clip, vae, f"never_{family}", exemplars=exemplars, overwrite=False))
        assert "{}" in str(err.value) or "wexmondays" in str(err.value)   # quotes the user's template
        assert sorted(host.embeddings.iterdir()) == before


def test_prompts_with_the_stand_in_word_are_refused_not_turned_into_the_relation(host, tiny):
    from comfyui_reversion.reversion.errors import RelationError
    _, clip, _ = tiny("sd1")
    relation = rf.Relation({"clip_l": torch.randn(768) * 0.1})
    with pytest.raises(RelationError, match="contains 'wexmondays'"):
        run_node(host, "ReVersionRelationTextEncode", "encode", clip=clip, relation=relation,
                 text="wexmondays, a cat <R> a dog")
    # the common trigger word 'ohwx' is an ordinary word now
    (cond,) = run_node(host, "ReVersionRelationTextEncode", "encode", clip=clip, relation=relation,
                       text="ohwx, a cat <R> a dog")
    (plain,) = run_node(host, "CLIPTextEncode", "encode", clip=clip, text="ohwx, a cat and a dog")
    assert cond[0][0].shape == plain[0][0].shape and not torch.equal(cond[0][0], plain[0][0])
