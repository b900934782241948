"""Models as other nodes left them (reversion_comfy/sampling.apply_model): training sees the
model function the sampler uses. A LoRA on MODEL and CLIP trains exactly like the same
weights merged by hand; FreeU and a model_function_wrapper act in the training forward;
what only a sampler can apply (a CFG function) is named on the node, not dropped silently."""
from __future__ import annotations

import pytest
import torch

from comfyui_reversion.reversion.words import STANDIN
from conftest import prepared_backend, run_node, run_node_ui, sample_latent, small_exemplars, train_inputs


def update_gradient(model, clip, seed=5):
    """(loss, d loss / d relation vector) of one fixed update of three exemplars."""
    from comfyui_reversion.reversion_comfy import guards
    g = torch.Generator().manual_seed(seed)
    latents, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    captions, t = [f"a cat {STANDIN} a dog", f"cat {STANDIN} dog", f"a red cube {STANDIN} a ball"], \
        torch.tensor([900, 400, 50])
    with guards.training_mode():
        backend = prepared_backend(model, clip)
        with guards.frozen_weights(model.model, clip.cond_stage_model):
            backend.plan_memory(latents, captions[0], 3)
            vectors = {k: v.requires_grad_(True) for k, v in backend.initial_vectors("and").items()}
            loss = backend.denoising_loss(vectors, latents, captions, t, noise)
            loss.backward()
        backend.close()
    return loss.item(), {k: v.grad for k, v in vectors.items()}


def lora(model, clip, rank=2, seed=0, kind="lora"):
    """A LoRA or LoHa (kohya key names, the loader's own mapping) for one attention weight of
    the UNet and one MLP weight of the text encoder, and the delta each adds to its weight."""
    import comfy.lora
    g = torch.Generator().manual_seed(seed)
    state, deltas = {}, {}
    weights = {**{f"model.{k}": v for k, v in model.model.state_dict().items()},
               **{f"clip.{k}": v for k, v in clip.cond_stage_model.state_dict().items()}}
    for prefix, keys in (("model.", comfy.lora.model_lora_keys_unet(model.model, {})),
                         ("clip.", comfy.lora.model_lora_keys_clip(clip.cond_stage_model, {}))):
        want = "attn2.to_k.weight" if prefix == "model." else "mlp.fc1.weight"
        name, key = next((n, k) for n, k in sorted(keys.items())
                         if isinstance(k, str) and k.endswith(want) and n.startswith("lora_"))
        out_features, in_features = weights[prefix + key].shape

        def pair():
            return torch.randn(out_features, rank, generator=g) * 0.3, torch.randn(rank, in_features, generator=g) * 0.3
        up, down = pair()
        state[f"{name}.alpha"] = torch.tensor(float(rank))                     # alpha = rank: scale 1
        if kind == "lora":
            state.update({f"{name}.lora_up.weight": up, f"{name}.lora_down.weight": down})
            deltas[prefix + key] = up @ down
        else:                                                                  # LoHa: a Hadamard product of two
            up2, down2 = pair()
            state.update({f"{name}.hada_w1_a": up, f"{name}.hada_w1_b": down,
                          f"{name}.hada_w2_a": up2, f"{name}.hada_w2_b": down2})
            deltas[prefix + key] = (up @ down) * (up2 @ down2)
    return state, deltas


@pytest.mark.parametrize("kind", ["lora", "loha"])
def test_a_lora_trains_like_the_same_weights_merged_by_hand(host, kind):
    """LoraLoader's patches (MODEL and CLIP; LoRA or LoHa) are applied when the models load
    for training: the loss and the <R> gradient equal those of a copy with the patch merged
    into its weights by hand; sampling afterwards is what it was before training."""
    import comfy.sd
    from devtools import tiny_models
    model, clip, _ = tiny_models.build("sd1", embedding_directory=[str(host.embeddings)], seed=4)
    merged_model, merged_clip, _ = tiny_models.build("sd1", embedding_directory=[str(host.embeddings)], seed=4)
    state, deltas = lora(model, clip, kind=kind)
    patched_model, patched_clip = comfy.sd.load_lora_for_models(model, clip, state, 1.0, 1.0)
    assert len(patched_model.patches) == 1 and len(patched_clip.patcher.patches) == 1
    with torch.inference_mode():
        for key, delta in deltas.items():
            part, name = key.split(".", 1)
            module = merged_model.model if part == "model" else merged_clip.cond_stage_model
            weight = module.state_dict()[name]                 # merged in float32, rounded once, as ComfyUI does
            weight.copy_((weight.float() + delta).to(weight.dtype))

    before = sample_latent(host, patched_model, patched_clip)
    loss, grads = update_gradient(patched_model, patched_clip)
    plain_loss, plain_grads = update_gradient(model, clip)
    merged_loss, merged_grads = update_gradient(merged_model, merged_clip)
    assert loss == pytest.approx(merged_loss, rel=1e-5) and loss != pytest.approx(plain_loss, rel=1e-4)
    torch.testing.assert_close(grads["clip_l"], merged_grads["clip_l"], rtol=1e-4, atol=1e-7)
    assert not torch.allclose(grads["clip_l"], plain_grads["clip_l"], rtol=1e-3)
    assert len(patched_model.patches) == 1 and len(patched_clip.patcher.patches) == 1
    assert torch.equal(sample_latent(host, patched_model, patched_clip), before)


def test_freeu_acts_in_the_training_forward(host, tiny):
    """FreeU_V2 patches the UNet's output blocks through the MODEL's transformer_options: the
    training forward calls the patch (with grad) and its loss is the patched model's."""
    from comfy_extras.nodes_freelunch import FreeU_V2
    model, clip, _ = tiny("sd1")
    (patched,) = FreeU_V2().patch(model, b1=1.3, b2=1.4, s1=0.9, s2=0.2)
    options = patched.model_options["transformer_options"]["patches"]
    real, calls = options["output_block_patch"][0], []

    def counted(h, hsp, transformer_options):
        calls.append(torch.is_grad_enabled())
        return real(h, hsp, transformer_options)
    options["output_block_patch"][0] = counted
    patched_loss, grads = update_gradient(patched, clip)
    plain_loss, _ = update_gradient(model, clip)
    assert calls and any(calls) and patched_loss != pytest.approx(plain_loss, rel=1e-4)
    assert torch.isfinite(grads["clip_l"]).all() and grads["clip_l"].abs().sum() > 0


def test_a_model_function_wrapper_wraps_the_training_forward(host, tiny):
    """A node's unet wrapper function (ModelPatcher.set_model_unet_function_wrapper) sees
    every training forward, as it sees every sampling step; here it doubles the output."""
    model, clip, _ = tiny("sd1")
    wrapped, seen = model.clone(), []

    def wrapper(apply_model, args):
        seen.append(args["input"].shape[0])
        return 2 * apply_model(args["input"], args["timestep"], **args["c"])
    wrapped.set_model_unet_function_wrapper(wrapper)
    doubled, grads = update_gradient(wrapped, clip)
    plain, plain_grads = update_gradient(model, clip)
    assert seen == [1, 3]                      # the memory plan's probe forward, then the update
    assert doubled != pytest.approx(plain, rel=1e-3)
    assert not torch.allclose(grads["clip_l"], plain_grads["clip_l"])


def test_what_only_a_sampler_can_apply_is_named_on_the_node(host, tiny):
    """A CFG function needs a sampler's two predictions: training cannot apply it, so Train
    Relation trains without it and says so (the preview samples do apply it)."""
    model, clip, vae = tiny("sd1")
    cfg_patched = model.clone()
    cfg_patched.set_model_sampler_cfg_function(lambda args: args["cond"])
    out = run_node_ui(host, "ReVersionTrainRelation", "train",
                      **train_inputs(cfg_patched, clip, vae, "cfg_patched", exemplars=small_exemplars(2, 32)))
    assert out["ui"]["text"][0].endswith("; not applied in training (sampler-only): sampler_cfg_function")
    plain = run_node_ui(host, "ReVersionTrainRelation", "train",
                        **train_inputs(model, clip, vae, "cfg_plain", exemplars=small_exemplars(2, 32)))
    assert "not applied" not in plain["ui"]["text"][0]
    assert torch.equal(out["result"][0].vectors["clip_l"], plain["result"][0].vectors["clip_l"])


@pytest.mark.parametrize("fp8", [torch.float8_e4m3fn, torch.float8_e5m2])
@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_fp8_stored_weights_train_like_the_same_values_in_float32(host, family, fp8):
    """UNet weights stored in fp8 (UNETLoader's weight_dtype) and computed through ComfyUI's
    cast ops: the <R> gradient points where a float32 model holding the same fp8-rounded
    weights sends it (cosine >= 0.99)."""
    from devtools import tiny_models
    stored, clip8, _ = tiny_models.build(family, embedding_directory=[str(host.embeddings)], seed=6, unet_dtype=fp8,
                                         compute_dtype=torch.float32)
    rounded, clip32, _ = tiny_models.build(family, embedding_directory=[str(host.embeddings)], seed=6)
    low = stored.model.diffusion_model.state_dict()
    assert fp8 in {v.dtype for v in low.values()}
    with torch.inference_mode():
        for name, value in rounded.model.diffusion_model.state_dict().items():
            value.copy_(value.to(low[name].dtype).to(value.dtype))
    loss8, grads8 = update_gradient(stored, clip8)
    loss32, grads32 = update_gradient(rounded, clip32)
    assert loss8 == pytest.approx(loss32, rel=1e-4)
    for key in grads32:
        cosine = torch.nn.functional.cosine_similarity(grads8[key].flatten(), grads32[key].flatten(), dim=0)
        assert cosine >= 0.99, (key, float(cosine))


def test_a_lora_stays_applied_when_its_weights_are_offloaded(host):
    """memory=offload keeps patched modules in CPU memory with their LoRA applied per use
    (ComfyUI's LowVramPatch): the relation is bit for bit the lean one on the same patched
    model. Hosts without partial unloading refuse offload, with the reason."""
    import comfy.sd
    from comfyui_reversion.reversion_comfy import host as pack_host
    from devtools import tiny_models
    from comfyui_reversion.reversion.errors import NotEnoughMemory
    model, clip, vae = tiny_models.build("sd1", embedding_directory=[str(host.embeddings)], seed=4)
    state, _ = lora(model, clip)
    patched_model, patched_clip = comfy.sd.load_lora_for_models(model, clip, state, 1.0, 1.0)
    inputs = dict(exemplars=small_exemplars(2, 32), preview_every=0)
    if not pack_host.can_offload(model):          # ComfyUI 2024-03: no partial unloading
        with pytest.raises(NotEnoughMemory, match="partial unloading"):
            run_node(host, "ReVersionTrainRelation", "train", **train_inputs(
                patched_model, patched_clip, vae, "lora_offload", memory="offload", **inputs))
        return
    lean, _, _ = run_node(host, "ReVersionTrainRelation", "train",
                          **train_inputs(patched_model, patched_clip, vae, "lora_lean", memory="lean", **inputs))
    offloaded, _, _ = run_node(host, "ReVersionTrainRelation", "train",
                               **train_inputs(patched_model, patched_clip, vae, "lora_offload", memory="offload",
                                              **inputs))
    assert offloaded.measured["memory"]["mode"] == "offload"
    assert torch.equal(offloaded.vectors["clip_l"], lean.vectors["clip_l"])


@pytest.mark.parametrize("sampling", ["v_prediction", "eps"])
def test_model_sampling_discrete_sets_the_training_target(host, tiny, sampling):
    """ModelSamplingDiscrete (v_prediction on an eps model, eps on a v one) changes what the
    model predicts: training takes its targets from the patched sampling, so the loss
    changes, and the MODEL's patches are as before after training."""
    from comfy_extras.nodes_model_advanced import ModelSamplingDiscrete
    from comfyui_reversion.reversion_comfy import sampling as pack_sampling
    model, clip, _ = tiny("sd1" if sampling == "v_prediction" else "sd2v")
    (patched,) = ModelSamplingDiscrete().patch(model, sampling, False)
    patches = dict(patched.object_patches)
    assert pack_sampling.is_v_prediction(pack_sampling.model_sampling(patched)) == (sampling == "v_prediction")
    assert pack_sampling.is_v_prediction(pack_sampling.model_sampling(model)) != (sampling == "v_prediction")
    patched_loss, _ = update_gradient(patched, clip)
    plain_loss, _ = update_gradient(model, clip)
    assert patched_loss != pytest.approx(plain_loss, rel=1e-3)
    assert patched.object_patches == patches
