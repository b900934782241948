"""Beyond the paper (issue 25) on the host's model: the swapped-object term gives one gradient
in every memory mode (SD1, SD2-v, SDXL), relations of several vectors train through every
mode and resume, and their files work in the stock `embedding:name` syntax exactly as in
Relation Text Encode (SD1, SD2-v, SDXL's two encoders)."""
from __future__ import annotations

import pytest
import torch

from comfyui_reversion.reversion import relation_file as rf
from comfyui_reversion.reversion.swap import SwapTerm, ranking
from comfyui_reversion.reversion.words import STANDIN as R
from conftest import prepared_backend, run_node, run_node_ui, small_exemplars, train_inputs

FAMILIES = ["sd1", "sd2v", "sdxl"]


@pytest.mark.parametrize("family", FAMILIES)
def test_the_swap_term_gives_one_gradient_in_every_memory_mode(host, tiny, family):
    """Reference: both captions' per-exemplar errors in one plain forward and the formula of
    swap.py; then fast and lean, in one forward and in pieces of 1 and 2 exemplars (each
    with its swapped caption in the same forward)."""
    from comfyui_reversion.reversion_comfy import guards, memory
    model, clip, _ = tiny(family)
    g = torch.Generator().manual_seed(5)
    latents = torch.randn(3, 4, 8, 8, generator=g)
    own = [f"a cat {R} a dog", f"{R} between a box and a ball", f"a red cube {R} a blue ball"]
    swapped = [f"a dog {R} a cat", None, f"a blue ball {R} a red cube"]
    t, noise = torch.tensor([900, 400, 50]), torch.randn(latents.shape, generator=g)
    with guards.training_mode():
        backend = prepared_backend(model, clip)
        with guards.frozen_weights(model.model, clip.cond_stage_model):
            vectors = {k: v + 0.01 * torch.randn(v.shape, generator=torch.Generator().manual_seed(1))
                       for k, v in backend.initial_vectors("and").items()}
            backend.plan_memory(latents, own[0], 6)
            leaves = {k: v.clone().requires_grad_(True) for k, v in vectors.items()}
            e_own = backend._errors(leaves, latents, own, t, noise)
            e_swap = backend._errors(leaves, latents[[0, 2]], [swapped[0], swapped[2]], t[[0, 2]], noise[[0, 2]])
            weight = 3.0
            ref = e_own.mean() + weight * ranking(e_own[[0, 2]], e_swap, margin=0.5).mean()
            ref.backward()
            assert (ranking(e_own[[0, 2]], e_swap, margin=0.5) > 0).all()    # the term is active here
            reference = {k: v.grad for k, v in leaves.items()}
            for mode, chunk in (("fast", 6), ("fast", 2), ("lean", 6), ("lean", 2), ("lean", 3)):
                backend.plan = memory.MemoryPlan(mode, chunk, 6, mode, {}, None)
                leaves = {k: v.clone().requires_grad_(True) for k, v in vectors.items()}
                loss = backend.denoising_loss(leaves, latents, own, t, noise,
                                              swap=SwapTerm(swapped, weight, margin=0.5))
                loss.backward()
                assert loss.item() == pytest.approx(ref.item(), rel=1e-5), (mode, chunk)
                for k in reference:
                    torch.testing.assert_close(leaves[k].grad, reference[k], rtol=1e-4, atol=1e-7,
                                               msg=f"{mode} {chunk} {k}")
            backend.close()


@pytest.mark.parametrize("family", FAMILIES)
def test_several_vectors_through_stock_embedding_syntax_equal_relation_text_encode(host, tiny, family):
    """Train Relation with num_vectors 3 and the swap term: the file holds [3, D] per encoder;
    stock CLIPTextEncode with embedding:name gives the conditioning Relation Text Encode gives,
    bit for bit (the 3 vectors take 3 token places); Load Relation reads the same vectors."""
    model, clip, vae = tiny(family)
    name = f"three_{family}"
    out = run_node_ui(host, "ReVersionTrainRelation", "train",
                      **train_inputs(model, clip, vae, name, num_vectors=3, swap_weight=1.0))
    relation = out["result"][0]
    assert relation.count == 3 and all(v.shape[0] == 3 for v in relation.vectors.values())
    assert relation.hyperparameters["num_vectors"] == 3 and relation.hyperparameters["swap_weight"] == 1.0
    assert "swapped-object negatives on 2 of 2 exemplars" in out["ui"]["text"][0]
    assert not torch.equal(*[next(iter(relation.vectors.values()))[i] for i in (0, 1)])   # the rows learned apart
    (loaded,) = run_node(host, "ReVersionLoadRelation", "load", relation_file=f"{name}.safetensors")
    for k, v in relation.vectors.items():
        assert torch.equal(loaded.vectors[k], v)
    for text in ("a cat <R> a dog", "(a cat:1.2) <R>, a dog in a garden <R> a hat"):
        (ours,) = run_node(host, "ReVersionRelationTextEncode", "encode", clip=clip, relation=loaded, text=text)
        (stock,) = run_node(host, "CLIPTextEncode", "encode", clip=clip, text=text.replace("<R>", f"embedding:{name}"))
        assert torch.equal(ours[0][0], stock[0][0]), text
        if family == "sdxl":
            assert torch.equal(ours[0][1]["pooled_output"], stock[0][1]["pooled_output"])
    (one,) = run_node(host, "ReVersionRelationTextEncode", "encode", clip=clip, text="a cat <R> a dog",
                      relation=rf.Relation({k: v[0] for k, v in relation.vectors.items()}, name="first"))
    assert one[0][0].shape == ours[0][0].shape and not torch.equal(one[0][0], stock[0][0])


@pytest.mark.parametrize("memory", ["fast", "lean", "offload"])
def test_several_vectors_and_the_swap_term_train_and_resume_in_every_mode(host, tiny, memory):
    """2 updates, then resumed to 4, equals 4 updates in one run (vectors of [2, D] and the
    swap term included); a resume with another num_vectors is refused with the setting named.
    (offload on a host without partial unloading, ComfyUI 2024-03: refused, as without them.)"""
    from comfyui_reversion.reversion import errors
    from comfyui_reversion.reversion_comfy import host as pack_host
    model, clip, vae = tiny("sd1")
    common = dict(num_vectors=2, swap_weight=0.5, memory=memory, checkpoint_every=1)
    if memory == "offload" and not pack_host.can_offload(model):
        with pytest.raises(errors.NotEnoughMemory, match="partial unloading"):
            run_node(host, "ReVersionTrainRelation", "train", **train_inputs(model, clip, vae, "no_offload", **common))
        return
    (whole, _, _) = run_node(host, "ReVersionTrainRelation", "train",
                             **train_inputs(model, clip, vae, f"whole_{memory}", steps=4, **common))
    run_node(host, "ReVersionTrainRelation", "train", **train_inputs(model, clip, vae, f"split_{memory}", steps=2, **common))
    (split, _, _) = run_node(host, "ReVersionTrainRelation", "train",
                             **train_inputs(model, clip, vae, f"split_{memory}", steps=4, resume=True, **common))
    assert whole.vectors["clip_l"].shape == (2, 768)
    torch.testing.assert_close(split.vectors["clip_l"], whole.vectors["clip_l"], rtol=1e-5, atol=1e-6)
    with pytest.raises(Exception, match=r"num_vectors 2 -> 3"):
        run_node(host, "ReVersionTrainRelation", "train",
                 **train_inputs(model, clip, vae, f"split_{memory}", steps=6, resume=True, **{**common, "num_vectors": 3}))


def test_templates_that_cannot_swap_are_named_on_the_node(host, tiny):
    model, clip, vae = tiny("sd1")
    exemplars = small_exemplars(templates=("{} between a cat and a dog",))
    out = run_node_ui(host, "ReVersionTrainRelation", "train",
                      **train_inputs(model, clip, vae, "no_swap", exemplars=exemplars, swap_weight=1.0))
    assert "swapped-object negatives on 0 of 2 exemplars (the others' templates have no object on both sides" \
           in out["ui"]["text"][0]
