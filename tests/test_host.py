"""Training and injection on the real ComfyUI host with tiny SD1 / SD2-v / SDXL models.

Nodes are called the way the executor calls them (under torch.inference_mode), with
models built the way loader nodes build them (inference tensors).
"""
from __future__ import annotations

import pytest
import torch

from conftest import run_node, small_exemplars, train_inputs
from reversion import exemplars as ex
from reversion import relation_file as rf

FAMILIES = ["sd1", "sd2v", "sdxl"]


def backend_for(model, clip):
    from reversion_comfy import adapter
    backend = adapter.ComfyBackend(model, clip)
    backend.prepare()
    return backend


# ------------------------------------------------------------------- autograd access

def directional_check(f, x: torch.Tensor, seed: int = 0, h: float = 1e-2):
    """(autograd, central finite difference) of f along a random direction as long as x."""
    from reversion_comfy import adapter
    g = torch.Generator().manual_seed(seed)
    x = x.detach().clone().requires_grad_(True)
    with adapter.inplace_safe():
        f(x).backward()
    d = torch.randn(x.shape, generator=g)
    d = d / d.norm() * x.detach().norm()
    with torch.no_grad():
        numeric = (f(x + h * d).item() - f(x - h * d).item()) / (2 * h)
    return (x.grad * d).sum().item(), numeric


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_gradients_through_host_code_match_finite_differences(host, tiny, family):
    """Backprop through the host's in-place code (CLIP layers; the 2024 UNet) is exact:
    d(text conditioning)/d(relation vector) per encoder, and d(UNet output)/d(conditioning)."""
    from reversion_comfy import adapter
    model, clip, _ = tiny(family)
    g = torch.Generator().manual_seed(1)
    with adapter.training_mode():
        backend = backend_for(model, clip)
        start = backend.initial_vectors("and")
        weights = torch.randn(1, 77, sum(e.width for e in backend.encoders) if family == "sdxl" else 768, generator=g)
        for key in backend.encoder_keys:
            def text_side(v):
                cond, _ = backend.encode({**start, key: v}, f"a cat {adapter.STANDIN} a dog")
                return (cond * weights).sum()
            analytic, numeric = directional_check(text_side, torch.randn(start[key].shape, generator=g))
            assert analytic == pytest.approx(numeric, rel=0.01), key

        cond, pooled = backend.encode(start, f"a cat {adapter.STANDIN} a dog")
        dev = backend.device
        x, sigma = torch.randn(1, 4, 8, 8, generator=g).to(dev), torch.tensor([2.0], device=dev)
        out_weights = torch.randn(1, 4, 8, 8, generator=g).to(dev)
        pooled = None if pooled is None else pooled.to(dev)

        def unet_side(c):
            c = c.to(dev)
            return (model.model.apply_model(x, sigma, **backend.model_conds(c, pooled, x)) * out_weights).sum()
        analytic, numeric = directional_check(unet_side, cond)
        assert analytic == pytest.approx(numeric, rel=0.01)


def test_without_the_guard_host_inplace_ops_break_backprop(host, tiny):
    """Why `inplace_safe` exists: the host's CLIP layers do `x += ...`."""
    from reversion_comfy import adapter
    model, clip, _ = tiny("sd1")
    with adapter.training_mode():
        backend = backend_for(model, clip)
        vec = backend.initial_vectors("and")["clip_l"].requires_grad_(True)
        cond, _ = backend.encode({"clip_l": vec}, f"a cat {adapter.STANDIN} a dog")
        with pytest.raises(RuntimeError, match="inplace"):
            cond.sum().backward()


def test_training_leaves_host_weights_bitwise_unchanged_and_sampling_identical(host, tiny):
    model, clip, vae = tiny("sd1")

    def snapshot():
        return {**{f"unet.{k}": v.clone() for k, v in model.model.state_dict().items()},
                **{f"clip.{k}": v.clone() for k, v in clip.cond_stage_model.state_dict().items()}}

    def sample():
        (pos,) = run_node(host, "CLIPTextEncode", "encode", clip=clip, text="a cat and a dog")
        (neg,) = run_node(host, "CLIPTextEncode", "encode", clip=clip, text="")
        (latent,) = run_node(host, "EmptyLatentImage", "generate", width=64, height=64, batch_size=1)
        (out,) = run_node(host, "KSampler", "sample", model=model, seed=4, steps=3, cfg=3.0, sampler_name="euler",
                          scheduler="normal", positive=pos, negative=neg, latent_image=latent)
        return out["samples"].clone()

    before, image_before = snapshot(), sample()
    run_node(host, "ReVersionTrainRelation", "train", **train_inputs(model, clip, vae, "unchanged"))
    after = snapshot()
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == []
    assert torch.equal(sample(), image_before)


def test_training_after_the_host_moved_weights_outside_inference_mode(host):
    """On a GPU, ComfyUI moves weights made in inference mode with `Module.to()` outside
    it: the parameters then look normal (is_inference() False) but have no version counter,
    which autograd and views need. Reproduced here without a GPU by re-setting `.data`."""
    import tiny_models
    model, clip, vae = tiny_models.build("sd1", embedding_directory=[str(host.embeddings)])
    for module in (model.model, clip.cond_stage_model):
        for p in module.parameters():
            p.data = p.data.clone()                      # what Module.to(device) does
    table = clip.cond_stage_model.clip_l.transformer.get_input_embeddings().weight
    assert not table.is_inference()
    with pytest.raises(RuntimeError, match="version counter"):
        table._version
    before = table.detach().clone()
    relation, _, _ = run_node(host, "ReVersionTrainRelation", "train", **train_inputs(model, clip, vae, "moved"))
    assert relation.steps == 2
    assert torch.equal(clip.cond_stage_model.clip_l.transformer.get_input_embeddings().weight.cpu(), before.cpu())


# ---------------------------------------------------------------- noise and targets

@pytest.mark.parametrize("family,v_pred", [("sd1", False), ("sd2v", True)])
def test_targets_follow_the_hosts_apply_model_convention(host, tiny, family, v_pred):
    """A perfect denoiser (D = x0) gives prediction == target, and the host turns our
    target back into x0 with its own `calculate_denoised`."""
    from reversion_comfy import adapter
    model, _, _ = tiny(family)
    ms = adapter.model_sampling(model)
    assert adapter.is_v_prediction(ms) == v_pred
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    sigma = adapter.sigma_for_timestep(ms, torch.tensor([10, 500, 990]))
    x = adapter.noisy_latent(x0, noise, sigma)
    pred, target = adapter.prediction_and_target(ms, x, x0, noise, sigma, denoised=x0)
    torch.testing.assert_close(pred, target, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ms.calculate_denoised(sigma, target, x), x0, rtol=1e-4, atol=1e-4)
    if not v_pred:
        assert torch.equal(target, noise)              # eps models: the target is the noise


def test_sdxl_gets_its_y_through_extra_conds(host, tiny):
    from reversion_comfy import adapter
    model, clip, _ = tiny("sdxl")
    with adapter.training_mode():
        backend = backend_for(model, clip)
        cond, pooled = backend.encode(backend.initial_vectors("and"), f"a cat {adapter.STANDIN} a dog")
        kw = backend.model_conds(torch.cat([cond] * 2), torch.cat([pooled] * 2), torch.zeros(2, 4, 8, 8))
    assert kw["c_crossattn"].shape == (2, 77, 2048)
    assert kw["y"].shape == (2, 2816)
    # every cond lands on the latent's device (a GPU in practice; "meta" stands in for it here)
    on_meta = backend.model_conds(torch.cat([cond] * 2), torch.cat([pooled] * 2), torch.zeros(2, 4, 8, 8, device="meta"))
    assert {k: v.device.type for k, v in on_meta.items()} == {"c_crossattn": "meta", "y": "meta"}


# ------------------------------------------------------------------ text injection

@pytest.mark.parametrize("family", FAMILIES)
def test_saved_file_through_stock_clip_text_encode_equals_relation_text_encode(host, tiny, family):
    model, clip, vae = tiny(family)
    relation, curve, samples = run_node(host, "ReVersionTrainRelation", "train",
                               **train_inputs(model, clip, vae, f"stock_{family}"))
    assert curve.shape[0] == 1 and curve.shape[-1] == 3
    assert samples.shape[0] == 1 and samples.shape[-1] == 3 and torch.isfinite(samples).all()
    assert (host.embeddings / f"stock_{family}.safetensors").is_file()
    for text in ("a cat <R> a dog", "(a cat:1.2) <R>, a dog in a garden"):
        (ours,) = run_node(host, "ReVersionRelationTextEncode", "encode", clip=clip, relation=relation, text=text)
        (stock,) = run_node(host, "CLIPTextEncode", "encode", clip=clip,
                            text=text.replace("<R>", f"embedding:stock_{family}"))
        assert torch.equal(ours[0][0], stock[0][0])
        if family == "sdxl":
            assert torch.equal(ours[0][1]["pooled_output"], stock[0][1]["pooled_output"])
    (plain,) = run_node(host, "CLIPTextEncode", "encode", clip=clip, text="a cat and a dog")
    assert not torch.equal(ours[0][0], plain[0][0])     # the relation changed something


def test_relation_survives_save_and_load_nodes(host, tiny):
    model, clip, vae = tiny("sd1")
    relation, _, _ = run_node(host, "ReVersionTrainRelation", "train", **train_inputs(model, clip, vae, "roundtrip"))
    run_node(host, "ReVersionSaveRelation", "save", relation=relation, name="roundtrip_copy", overwrite=False)
    (loaded,) = run_node(host, "ReVersionLoadRelation", "load", relation_file="roundtrip_copy.safetensors")
    assert torch.equal(loaded.vectors["clip_l"], relation.vectors["clip_l"])
    assert loaded.steps == 2 and loaded.init_word == "and" and loaded.hyperparameters["lr"] == pytest.approx(1e-2)
    assert set(loaded.final_losses) >= {"loss", "denoise", "steer"}
    assert len(loaded.nearest_words["clip_l"]) == 5 and all(w.isalpha() for w in loaded.nearest_words["clip_l"])


def test_official_learned_embeds_bin_works_in_both_routes(host, tiny):
    _, clip, _ = tiny("sd1")
    vec = torch.randn(768, generator=torch.Generator().manual_seed(9))
    torch.save({"<R>": vec}, host.embeddings / "official_rel.bin")
    (relation,) = run_node(host, "ReVersionLoadRelation", "load", relation_file="official_rel.bin")
    (ours,) = run_node(host, "ReVersionRelationTextEncode", "encode", clip=clip, relation=relation, text="cat <R> stone")
    (stock,) = run_node(host, "CLIPTextEncode", "encode", clip=clip, text="cat embedding:official_rel stone")
    assert torch.equal(ours[0][0], stock[0][0])


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_training_sees_the_conditioning_inference_gets_with_clip_skip(host, tiny, family):
    """With CLIPSetLastLayer(-3), the conditioning the trainer optimises is exactly what
    Relation Text Encode (and stock embedding:name) produce at inference."""
    from reversion_comfy import adapter
    model, clip, _ = tiny(family)
    (skipped,) = run_node(host, "CLIPSetLastLayer", "set_last_layer", clip=clip, stop_at_clip_layer=-3)
    relation = rf.Relation({k: torch.randn(w, generator=torch.Generator().manual_seed(2))
                            for k, w in {e.key: e.width for e in adapter.text_encoders(clip)}.items()})
    (infer,) = run_node(host, "ReVersionRelationTextEncode", "encode", clip=skipped, relation=relation, text="a cat <R> a dog")
    (last,) = run_node(host, "ReVersionRelationTextEncode", "encode", clip=clip, relation=relation, text="a cat <R> a dog")
    with adapter.training_mode():
        backend = backend_for(model, skipped)
        cond, _ = backend.encode(relation.vectors, f"a cat {adapter.STANDIN} a dog")
    torch.testing.assert_close(cond, infer[0][0], rtol=0, atol=1e-6)
    assert not torch.allclose(infer[0][0], last[0][0])


# ------------------------------------------------------------- run-time behaviour

def test_same_seed_same_relation(host, tiny):
    model, clip, vae = tiny("sd1")
    r1, _, _ = run_node(host, "ReVersionTrainRelation", "train", **train_inputs(model, clip, vae, "seed_a", train_seed=7))
    r2, _, _ = run_node(host, "ReVersionTrainRelation", "train", **train_inputs(model, clip, vae, "seed_b", train_seed=7))
    r3, _, _ = run_node(host, "ReVersionTrainRelation", "train", **train_inputs(model, clip, vae, "seed_c", train_seed=8))
    assert torch.equal(r1.vectors["clip_l"], r2.vectors["clip_l"])
    assert not torch.equal(r1.vectors["clip_l"], r3.vectors["clip_l"])


def test_exemplars_are_vae_encoded_once_per_run(host, tiny):
    model, clip, vae = tiny("sd1")
    calls = []
    real = vae.encode
    vae.encode = lambda pixels: calls.append(pixels.shape) or real(pixels)
    try:
        run_node(host, "ReVersionTrainRelation", "train", **train_inputs(model, clip, vae, "once", steps=3, grad_accum=2))
    finally:
        vae.encode = real
    assert calls == [(2, 64, 64, 3)]


def test_progress_bar_and_loss_preview_every_update(host, tiny):
    import comfy.utils
    model, clip, vae = tiny("sd1")
    seen = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, **kw: seen.append((value, total, preview)))
    try:
        run_node(host, "ReVersionTrainRelation", "train", **train_inputs(model, clip, vae, "progress", steps=4))
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    ours = [s for s in seen if s[1] == 4]
    assert [v for v, _, _ in ours] == [1, 2, 3, 4]
    assert all(p is not None and p[0] == "PNG" for _, _, p in ours)


def test_sample_previews_show_beside_the_loss_curve_and_do_not_change_training(host, tiny):
    import comfy.utils
    from reversion_comfy import adapter
    model, clip, vae = tiny("sd1")
    seen = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, **kw: seen.append((value, total, preview)))
    try:
        relation, _, samples = run_node(host, "ReVersionTrainRelation", "train",
                                        **train_inputs(model, clip, vae, "previewed", steps=4, preview_every=2,
                                                       preview_prompt="a dog <R> a cat"))
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    ours = {v: p for v, t, p in seen if t == 4}
    curve_only = ours[1][1].size                  # before the first preview: the loss curve alone
    with_sample = ours[2][1].size                 # then the curve with the sample to its right
    assert with_sample[0] == curve_only[0] + curve_only[1] and with_sample[1] == curve_only[1]
    assert ours[4][1].size == with_sample
    # the same training without previews: identical vector (previews use no training randomness)
    plain, _, _ = run_node(host, "ReVersionTrainRelation", "train",
                           **train_inputs(model, clip, vae, "not_previewed", steps=4, preview_every=0))
    assert torch.equal(plain.vectors["clip_l"], relation.vectors["clip_l"])
    # the samples output is the preview prompt drawn with the final vector at the fixed seed
    size = int(small_exemplars().images.shape[1])
    with torch.inference_mode():
        again = adapter.sample_preview(model, clip, vae, relation.vectors, "a dog <R> a cat", 1, 1, size)
    assert samples.shape == (1, size, size, 3) and torch.equal(samples, again)


def test_interrupt_stops_training_and_writes_nothing(host, tiny):
    import comfy.model_management as mm
    model, clip, vae = tiny("sd1")
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            run_node(host, "ReVersionTrainRelation", "train", **train_inputs(model, clip, vae, "interrupted", steps=50))
    finally:
        mm.interrupt_current_processing(False)
    assert not (host.embeddings / "interrupted.safetensors").exists()


# --------------------------------------------------------------------- bad input

def test_existing_relation_is_not_overwritten_and_training_does_not_start(host, tiny):
    model, clip, vae = tiny("sd1")
    path = host.embeddings / "keep_me.safetensors"
    rf.save(rf.Relation({"clip_l": torch.ones(768)}), path)
    before = path.read_bytes()
    calls = []
    real = vae.encode
    vae.encode = lambda pixels: calls.append(1) or real(pixels)
    try:
        with pytest.raises(rf.RelationFileError, match="already exists.*overwrite"):
            run_node(host, "ReVersionTrainRelation", "train", **train_inputs(model, clip, vae, "keep_me", overwrite=False))
    finally:
        vae.encode = real
    assert path.read_bytes() == before and calls == []


@pytest.mark.parametrize("name", ["../escape", "sub/name", ".."])
def test_names_cannot_escape_the_embeddings_folder(host, tiny, name):
    model, clip, vae = tiny("sd1")
    with pytest.raises(rf.RelationFileError, match="invalid relation name"):
        run_node(host, "ReVersionTrainRelation", "train", **train_inputs(model, clip, vae, name))


def test_prompt_without_relation_marker(host, tiny):
    from reversion_comfy.adapter import RelationError
    _, clip, _ = tiny("sd1")
    relation = rf.Relation({"clip_l": torch.randn(768)})
    with pytest.raises(RelationError, match="no <R>.*'a cat <R> a dog'"):
        run_node(host, "ReVersionRelationTextEncode", "encode", clip=clip, relation=relation, text="a cat and a dog")


@pytest.mark.parametrize("trained,used", [("sd1", "sdxl"), ("sdxl", "sd1"), ("sd2v", "sd1")])
def test_relation_for_another_model_family_is_refused(host, tiny, trained, used):
    from reversion_comfy.adapter import RelationError, text_encoders
    relation = rf.Relation({e.key: torch.randn(e.width) for e in text_encoders(tiny(trained)[1])}, name="other")
    with pytest.raises(RelationError, match="was trained for .* but this CLIP is"):
        run_node(host, "ReVersionRelationTextEncode", "encode", clip=tiny(used)[1], relation=relation, text="a <R> b")


def test_multi_token_init_word_is_refused(host, tiny):
    from reversion_comfy.adapter import RelationError
    model, clip, vae = tiny("sd1")
    with pytest.raises(RelationError, match="init word 'astride' is 2 tokens"):
        run_node(host, "ReVersionTrainRelation", "train", **train_inputs(model, clip, vae, "multi", init_word="astride"))


# ------------------------------------------------------------------------- nodes

def test_every_node_is_a_v1_node_with_tooltips(host):
    ours = {k: v for k, v in host.nodes.NODE_CLASS_MAPPINGS.items() if k.startswith("ReVersion")}
    assert set(ours) == {"ReVersionLoadExemplars", "ReVersionExemplarsFromImages", "ReVersionTrainRelation",
                         "ReVersionRelationTextEncode", "ReVersionSaveRelation", "ReVersionLoadRelation",
                         "ReVersionToyWorldModel", "ReVersionToyWorldExemplars"}
    for name, cls in ours.items():
        assert cls.CATEGORY.startswith("ReVersion") and cls.DESCRIPTION
        assert host.nodes.NODE_DISPLAY_NAME_MAPPINGS[name]
        for section in cls.INPUT_TYPES().values():
            for input_name, spec in section.items():
                assert len(spec) == 2 and spec[1].get("tooltip"), f"{name}.{input_name} has no tooltip"


def test_load_exemplars_node_resolves_folders_in_the_input_folder(host):
    import numpy as np
    from PIL import Image
    folder = host.input / "rel_in_input"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.full((20, 20, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    exemplars, images = run_node(host, "ReVersionLoadExemplars", "load", folder="rel_in_input", size=32,
                                 center_crop=False, template="a {} b")
    assert images.shape == (2, 32, 32, 3) and exemplars.templates == [["a {} b"]] * 2
    with pytest.raises(ex.ExemplarError, match="not found"):
        run_node(host, "ReVersionLoadExemplars", "load", folder="missing_folder", size=32, center_crop=False)
