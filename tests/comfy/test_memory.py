"""Memory planning and the memory modes (reversion_comfy/memory.py, patches.py, backend.py):
batched captions, checkpointed UNet blocks and CLIP layers, pieces of an update, SDPA, the
auto choice, no tensors left behind, and one update of a full-size SD1.5 on the CPU."""
from __future__ import annotations

import pytest
import torch

from comfyui_reversion.reversion.words import STANDIN as R
from conftest import directional_check, prepared_backend, run_node, small_exemplars, train_inputs

GiB = 1024 ** 3


def batch_inputs(backend, n=3, size=8):
    g = torch.Generator().manual_seed(5)
    latents = torch.randn(n, 4, size, size, generator=g)
    captions = [f"a cat {R} a dog", f"cat {R} dog", f"a red cube {R} a blue ball"][:n]
    t = torch.tensor([900, 400, 50][:n])
    return latents, captions, t, torch.randn(latents.shape, generator=g)


def loss_gradient(backend, vectors, inputs, mode, chunk=None):
    from comfyui_reversion.reversion_comfy import memory
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in vectors.items()}
    n = len(inputs[1])
    backend.plan = memory.MemoryPlan(mode, chunk or n, n, mode, {}, None)
    loss = backend.denoising_loss(leaves, *inputs)
    loss.backward()
    return loss.detach(), {k: v.grad for k, v in leaves.items()}


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_one_text_encoder_call_per_micro_batch_equals_one_call_per_caption(host, tiny, family):
    from comfyui_reversion.reversion_comfy import guards
    model, clip, _ = tiny(family)
    with guards.training_mode():
        backend = prepared_backend(model, clip)
        vectors = backend.initial_vectors("and")
        captions = [f"a cat {R} a dog", f"cat {R} dog", f"(a red:1.2) cube {R} a ball"]
        calls = []
        real = clip.encode_from_tokens
        clip.encode_from_tokens = lambda *a, **k: calls.append(1) or real(*a, **k)
        try:
            cond, pooled = backend.captions.encode_batch(vectors, captions)
        finally:
            del clip.encode_from_tokens
        assert len(calls) == 1
        one_by_one = [backend.captions.encode(vectors, c) for c in captions]
    torch.testing.assert_close(cond, torch.cat([c for c, _ in one_by_one]), rtol=1e-5, atol=1e-5)
    if family == "sdxl":
        assert pooled.shape == (3, 1280)
        torch.testing.assert_close(pooled, torch.cat([p for _, p in one_by_one]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_memory_modes_give_the_reference_gradient(host, tiny, family):
    """fast and lean (checkpointed UNet blocks), in one forward or in pieces, all give the
    gradient of the blanket-clone reference (`inplace_safe`, itself checked
    against finite differences), on both hosts despite their in-place code."""
    from comfyui_reversion.reversion_comfy import guards, sampling
    model, clip, _ = tiny(family)
    with guards.training_mode():
        backend = prepared_backend(model, clip)       # weights made autograd-usable before freezing them
        with guards.frozen_weights(model.model, clip.cond_stage_model):
            inputs = batch_inputs(backend)
            vectors = {k: v + 0.01 * torch.randn(v.shape, generator=torch.Generator().manual_seed(1))
                       for k, v in backend.initial_vectors("and").items()}
            backend.plan_memory(inputs[0], inputs[1][0], 3)
            # reference: every saved tensor cloned, no checkpointing, one forward
            leaves = {k: v.detach().clone().requires_grad_(True) for k, v in vectors.items()}
            with guards.inplace_safe():
                cond, pooled = backend.captions.encode_batch(leaves, inputs[1])
                x0 = model.model.process_latent_in(inputs[0])
                sigma = sampling.sigma_for_timestep(backend.ms, inputs[2])
                x = sampling.noisy_latent(x0, inputs[3], sigma)
                denoised = model.model.apply_model(x, sigma, **backend.model_conds(cond, pooled, x))
            pred, target = sampling.prediction_and_target(backend.ms, x, x0, inputs[3], sigma, denoised)
            ref_loss = torch.nn.functional.mse_loss(pred, target)
            ref_loss.backward()
            reference = {k: v.grad for k, v in leaves.items()}
            for mode, chunk in (("fast", None), ("fast", 2), ("lean", None), ("lean", 1), ("lean", 2)):
                loss, grads = loss_gradient(backend, vectors, inputs, mode, chunk)
                assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5), (mode, chunk)
                for k in reference:
                    assert grads[k].abs().max() > 0
                    torch.testing.assert_close(grads[k], reference[k], rtol=1e-4, atol=1e-7, msg=f"{mode} {chunk} {k}")
            backend.close()


def test_lean_gradient_matches_finite_differences(host, tiny):
    from comfyui_reversion.reversion_comfy import guards, memory
    model, clip, _ = tiny("sd1")
    with guards.training_mode():
        backend = prepared_backend(model, clip)       # weights made autograd-usable before freezing them
        with guards.frozen_weights(model.model, clip.cond_stage_model):
            inputs = batch_inputs(backend, n=2)
            start = backend.initial_vectors("and")["clip_l"]
            backend.plan_memory(inputs[0], inputs[1][0], 2)
            backend.plan = memory.MemoryPlan("lean", 1, 2, "lean", {}, None)
            analytic, numeric = directional_check(lambda v: backend.denoising_loss({"clip_l": v}, *inputs), start, h=0.05)
            backend.close()
    assert analytic == pytest.approx(numeric, rel=0.02)


def test_training_runs_on_sdpa_whatever_the_host_attention(host, tiny):
    import comfy.ldm.modules.attention as attention
    model, clip, vae = tiny("sd1")
    calls = []
    host_default = attention.optimized_attention

    def basic(*args, **kwargs):
        if torch.is_grad_enabled():          # training; previews sample (no grad) on the host's choice
            calls.append(1)
        return attention.attention_basic(*args, **kwargs)
    attention.optimized_attention = attention.optimized_attention_masked = basic
    try:
        relation, _, _ = run_node(host, "ReVersionTrainRelation", "train", **train_inputs(model, clip, vae, "sdpa"))
        assert calls == []
        assert attention.optimized_attention is basic                  # restored after training
        assert "SDPA" in relation.measured["memory"]["attention"]
    finally:
        attention.optimized_attention = attention.optimized_attention_masked = host_default


class _Estimate:
    """needed = (fast: 4, lean: 1) GiB per exemplar + 0.5 GiB"""
    def needed(self, mode, batch, pixels):
        return int(((4 if mode == "fast" else 1) * batch + 0.5) * GiB)


@pytest.mark.parametrize("free_gib,mode,chunk", [(40, "fast", 8), (20, "fast", 4), (13, "fast", 3), (9, "fast", 2),
                                                 (3, "lean", 2), (1.6, "lean", 1)])
def test_auto_chooses_from_the_free_memory(free_gib, mode, chunk):
    """An update of 4 micro-batches of 2: fast in the largest balanced forwards that fit
    (the whole update when it fits), down to one micro-batch; then lean, down to one exemplar."""
    from comfyui_reversion.reversion_comfy import memory
    plan = memory.choose_memory("auto", _Estimate(), int(free_gib * GiB), 8, 64 * 64, micro=2)
    assert (plan.mode, plan.chunk, plan.batch) == (mode, chunk, 8)
    assert plan.needed == {"fast": int(8.5 * GiB), "lean": int(2.5 * GiB)}     # at one micro-batch
    assert f"{free_gib:.2f} GiB free" in plan.describe()
    assert ("in one forward" if chunk == 8 else f"in forwards of {chunk}") in plan.describe()
    # asked for by name: one micro-batch per forward whatever is free (lean: less if it must)
    fast = memory.choose_memory("fast", _Estimate(), int(free_gib * GiB), 8, 64 * 64, micro=2)
    assert (fast.mode, fast.chunk) == ("fast", 2)
    lean = memory.choose_memory("lean", _Estimate(), int(free_gib * GiB), 8, 64 * 64, micro=2)
    assert (lean.mode, lean.chunk) == ("lean", min(chunk, 2) if mode == "lean" else 2)


def test_too_little_memory_stops_before_training_with_the_numbers():
    from comfyui_reversion.reversion import errors
    from comfyui_reversion.reversion_comfy import memory
    with pytest.raises(errors.NotEnoughMemory, match=r"needs about 1.50 GiB.*1.00 GiB is free.*smaller exemplar"):
        memory.choose_memory("lean", _Estimate(), 1 * GiB, 4, 64 * 64)


def test_memory_estimate_separates_constant_exemplar_and_pixel_parts():
    """Three probes, (exemplars, latent pixels) = (1, 64), (2, 64), (1, 256): each part is a
    constant, a part per exemplar (cross-attention's caption keys and values: more
    exemplars, not more pixels) and a part per exemplar x pixel; text per caption."""
    from comfyui_reversion.reversion_comfy import memory

    def probe(exemplars, pixels):
        per = exemplars * pixels
        return {"other": 100 + 30 * exemplars + per, "block0": 4 * per + 20 * exemplars, "block1": 2 * per,
                "input0": per, "text": 2 + 2 * exemplars, "text0": 1 + 2 * exemplars, "text1": 1 + 2 * exemplars,
                "textinput": exemplars}
    est = memory.MemoryEstimate({(1, 64): probe(1, 64), (2, 64): probe(2, 64), (1, 256): probe(1, 256)})
    est.MARGIN, est.RESERVE = 1.0, 0
    assert est.fast == (100, 50, 7) and est.outside == (100, 30, 1) and est.largest == (0, 20, 4)
    assert est.text == (4, 6) and est.text_kept == (2, 3) and est.text_layer == (1, 2)
    n, pixels = 2, 4096            # extrapolated far from the probes' sizes, exactly
    assert est.needed("fast", n, pixels) == 100 + (50 + 7 * pixels) * n + 4 + 6 * n
    # lean: the kept inputs, then the larger of the largest block's recompute and the
    # largest text layer's (backward never holds both)
    kept = 100 + (30 + pixels) * n + pixels * n + 2 + 3 * n
    assert est.needed("lean", n, pixels) == kept + (20 + 4 * pixels) * n
    assert est.needed("lean", n, 0) == 100 + 30 * n + 2 + 3 * n + max(20 * n, 1 + 2 * n)


def test_auto_choice_is_reported(host, tiny):
    model, clip, vae = tiny("sd1")
    relation, _, _ = run_node(host, "ReVersionTrainRelation", "train",
                           **train_inputs(model, clip, vae, "auto_report", memory="auto"))
    memory = relation.measured["memory"]
    assert memory["requested"] == "auto" and memory["mode"] == "fast"      # a tiny model fits
    assert 0 < memory["needed_gib"]["lean"] < memory["needed_gib"]["fast"]
    assert "free_gib" in memory
    # measured, so it varies from run to run: shown and logged, never in the relation file
    assert "memory" not in relation.hyperparameters
    assert b"needed_gib" not in (host.embeddings / "auto_report.safetensors").read_bytes()


def test_full_size_sd15_trains_one_lean_update(host):
    """The code path at SD1.5's real width and depth (860M-parameter UNet, 12-layer CLIP-L,
    random weights) at 64 px: the memory probes, the estimate and one lean update (all
    25 top-level UNet blocks checkpointed) of a micro-batch of 2. (Gradient equality of
    the modes is tested on the tiny models of every family, on both hosts.)"""
    from devtools import full_models
    from comfyui_reversion.reversion_comfy import text, training
    from comfyui_reversion.reversion.trainer import TrainConfig
    model, clip, vae = full_models.build("sd1", embedding_directory=[str(host.embeddings)])
    assert full_models.parameter_count(model.model.diffusion_model) == 859_520_964
    assert len(model.model.diffusion_model.input_blocks) + 1 + len(model.model.diffusion_model.output_blocks) == 25
    config = TrainConfig(steps=1, batch_size=2, grad_accum=1, base_lr=1e-3, scale_lr=False, seed=3)
    blocks = []
    import comfy.ldm.modules.diffusionmodules.openaimodel as om
    real = om.forward_timestep_embed
    try:
        om.forward_timestep_embed = lambda *a, **k: blocks.append(torch.is_grad_enabled()) or real(*a, **k)
        with torch.inference_mode():
            result = training.train_relation(model, clip, vae, small_exemplars(2, 64), config, memory="lean")
    finally:
        om.forward_timestep_embed = real
    memory = result.memory
    assert (memory["mode"], memory["chunk"]) == ("lean", 2) and result.steps_done == 1
    assert 0 < memory["needed_gib"]["lean"] < memory["needed_gib"]["fast"]
    assert torch.isfinite(torch.tensor(result.history[0]["loss"]))
    start = clip.cond_stage_model.clip_l.transformer.get_input_embeddings().weight[
        text.text_encoders(clip)[0].single_id("and", "init")].float().cpu()
    assert 0 < (result.vectors["clip_l"] - start).norm() < 1.0
    # 3 probe forwards (25 blocks each, with grad), the training forward: input block 0 (a
    # convolution of the noisy latent, nothing depends on <R>) with grad and 24 checkpointed
    # blocks without, then the 24 recomputed in backward
    assert blocks == [True] * 75 + [True] + [False] * 24 + [True] * 24


@pytest.mark.parametrize("memory", ["auto", "lean"])
def test_a_training_run_leaves_no_tensors_behind(host, tiny, memory):
    """Found on the GPU benchmark: every run leaked what its memory probes (forwards never
    run backward) had saved, fp32 casts of an fp16 CLIP included (~2.9 GiB per SDXL run),
    because the saved-tensor hook kept each saved output tied to its own grad_fn: a cycle
    through C++ that gc cannot free. A second and a third run must end where the first did."""
    from comfyui_reversion.reversion.trainer import TrainConfig
    from comfyui_reversion.reversion_comfy import training
    from devtools.live_bytes import reachable_tensor_bytes as live_tensor_bytes   # imported once, before
    model, clip, vae = tiny("sdxl")
    config = TrainConfig(steps=1, batch_size=2, grad_accum=1, seed=3)
    after = []
    for _ in range(3):
        with torch.inference_mode():
            training.train_relation(model, clip, vae, small_exemplars(2, 64), config, memory=memory)
        after.append(live_tensor_bytes())
    assert after[2] == after[1] == after[0], after


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_lean_keeps_only_the_text_layers_inputs(host, tiny, family):
    """lean checkpoints every CLIP transformer layer as well as the UNet blocks: its forward
    saves, per text layer, only that layer's input (fast saves each layer's activations and,
    with an fp16 CLIP on a GPU, the fp32 cast of every weight). The lean estimate counts the
    layer inputs plus the largest layer, recomputed in backward."""
    from comfyui_reversion.reversion_comfy import guards, memory, text
    model, clip, _ = tiny(family)
    with guards.training_mode():
        backend = prepared_backend(model, clip)
        with guards.frozen_weights(model.model, clip.cond_stage_model):
            latents, captions, t, noise = batch_inputs(backend, n=2)
            backend.plan_memory(latents, captions[0], 2)
            vectors = {k: v.requires_grad_(True) for k, v in backend.initial_vectors("and").items()}
            saved = {}
            for lean in (False, True):
                with backend.guard.measuring():
                    backend._loss(vectors, latents, captions, t, noise, lean=lean)
                saved[lean] = backend.guard.measured()
        backend.close()
    layer_bytes = lambda m: {k: v for k, v in m.items() if k.startswith("text") and k[4:].isdigit()}
    n_layers = sum(len(e.module.transformer.text_model.encoder.layers) for e in text.text_encoders(clip))
    fast, lean = layer_bytes(saved[False]), layer_bytes(saved[True])
    assert len(fast) == n_layers and len(saved[False]) > 0
    # lean: each layer's saved bytes are its input alone (the checkpoint's), so at most 1x its input
    inputs = saved[True]["textinput"]
    assert len(lean) == n_layers and sum(lean.values()) <= inputs < sum(fast.values()) / 4
    est = memory.MemoryEstimate({(1, 64): saved[False], (2, 64): saved[False], (1, 256): saved[False]})   # all constant
    assert est.text_lean[0] < est.text[0] == saved[False].get("text", 0) + sum(fast.values())


def test_text_layer_wrappers_are_removed_and_keep_others(host, tiny):
    """lean wraps each CLIP layer's forward for the duration of a forward only; a wrapper
    another extension had put on a layer instance is back in place afterwards."""
    from comfyui_reversion.reversion_comfy import guards, patches
    model, clip, _ = tiny("sd1")
    layers = list(clip.cond_stage_model.clip_l.transformer.text_model.encoder.layers)
    theirs = layers[0].forward            # a bound method, set as an instance attribute
    layers[0].forward = theirs
    try:
        guard = guards.SavedTensorGuard([clip.cond_stage_model])
        with patches.text_layers(guard, clip.cond_stage_model, checkpoint=True):
            assert all("forward" in layer.__dict__ for layer in layers)
            assert layers[0].forward is not theirs
        assert layers[0].__dict__["forward"] is theirs
        assert all("forward" not in layer.__dict__ for layer in layers[1:])
    finally:
        del layers[0].forward


def test_a_cap_on_exemplars_per_forward_splits_without_changing_the_estimates():
    """`most` (train_relation's max_per_forward, for benchmarks): the plan never puts more
    exemplars in one forward, while `needed` still reports one micro-batch's estimate."""
    from comfyui_reversion.reversion_comfy import memory
    free = int(40 * GiB)
    uncapped = memory.choose_memory("auto", _Estimate(), free, 8, 64 * 64, micro=2)
    for requested, most, mode, chunk in (("auto", 4, "fast", 4), ("auto", 1, "fast", 1), ("lean", 1, "lean", 1),
                                         ("fast", 1, "fast", 1), ("fast", 8, "fast", 2)):
        plan = memory.choose_memory(requested, _Estimate(), free, 8, 64 * 64, micro=2, most=most)
        assert (plan.mode, plan.chunk) == (mode, chunk), (requested, most)
        assert plan.needed == uncapped.needed


@pytest.mark.parametrize("family,full,bound", [("sd1", True, 1.3), ("sd1", False, 1.3), ("sdxl", False, 1.6)])
def test_the_estimate_covers_the_live_peak_and_probes_cost_less_than_a_step(host, tiny, family, full, bound):
    """Checked against an independent measure, the live tensor bytes of the real step
    (devtools/live_bytes.py), in both modes at 256 px: the estimate the plan decides with
    (saved bytes x MARGIN) is never below the step's peak, nor far above it (full-size
    SD1.5: within 30%; on the tiny models constant parts weigh more); and the probes,
    cut into sections, cost less than a full-size training step in either mode."""
    from devtools import full_models
    from devtools.live_bytes import estimate_against_live
    model, clip, _ = full_models.build(family, embedding_directory=[str(host.embeddings)]) if full else tiny(family)
    g = torch.Generator().manual_seed(0)
    n, side = 2, 32
    latents, noise = torch.randn(n, 4, side, side, generator=g), torch.randn(n, 4, side, side, generator=g)
    captions, t = [f"a cat {R} a dog", f"cat {R} dog"], torch.tensor([800, 300])
    found = estimate_against_live(model, clip, latents, noise, captions, t)
    peaks = {}
    for mode in ("fast", "lean"):
        peak, decided = found[mode]["step_peak"], found[mode]["decided"]
        peaks[mode] = peak
        assert peak <= decided <= bound * peak, (mode, peak / GiB, decided / GiB)
    if full:
        assert found["probe_peak"] < min(peaks.values()), (found["probe_peak"] / GiB, peaks)


def test_auto_keeps_weights_in_cpu_memory_only_when_lean_cannot_fit():
    """Past lean, auto offloads: as much of the movable weights as makes room for lean plus
    one block's streamed weights; offload asked for by name keeps all it can; a host that
    cannot offload (movable 0) is refused with the numbers, and offload by name says why."""
    from comfyui_reversion.reversion import errors
    from comfyui_reversion.reversion_comfy import memory
    plan = memory.choose_memory("auto", _Estimate(), int(1.2 * GiB), 8, 64 * 64, micro=2,
                                movable=int(4 * GiB), streamed=int(0.25 * GiB))
    # lean with 2 per forward needs 2.5 GiB (+ 0.25 streamed): 1.55 GiB must move
    assert (plan.mode, plan.chunk, plan.offload) == ("offload", 2, int(2.5 * GiB) + int(0.25 * GiB) - int(1.2 * GiB))
    assert "kept in CPU memory" in plan.describe() and plan.as_dict()["offload_gib"] > 0
    small = memory.choose_memory("auto", _Estimate(), int(1.2 * GiB), 8, 64 * 64, micro=2,
                                 movable=int(0.7 * GiB), streamed=int(0.25 * GiB))
    assert (small.mode, small.chunk) == ("offload", 1)       # not enough to move for 2: one per forward
    with pytest.raises(errors.NotEnoughMemory, match=r"even with 0.20 GiB of weights kept in CPU memory"):
        memory.choose_memory("auto", _Estimate(), int(1.2 * GiB), 8, 64 * 64, micro=2, movable=int(0.2 * GiB))
    named = memory.choose_memory("offload", _Estimate(), int(40 * GiB), 8, 64 * 64, micro=2, movable=int(4 * GiB))
    assert (named.mode, named.chunk, named.offload) == ("offload", 2, int(4 * GiB))
    with pytest.raises(errors.NotEnoughMemory, match="partial unloading"):
        memory.choose_memory("offload", _Estimate(), int(40 * GiB), 8, 64 * 64, micro=2)
    assert memory.choose_memory("auto", _Estimate(), int(40 * GiB), 8, 64 * 64, micro=2,
                                movable=int(4 * GiB)).mode == "fast"    # room: nothing moves


def test_weights_cast_per_use_give_the_same_gradient(host, tiny):
    """What offloading (ComfyUI's partial loading) does to every module it keeps off the
    device: cast the weights to the device at each use. Forced on every module of UNet and
    CLIP, the loss and the <R> gradient are bit for bit those of loaded weights."""
    from comfyui_reversion.reversion_comfy import guards
    model, clip, _ = tiny("sd1")
    results = []
    for cast in (False, True):
        modules = [m for root in (model.model, clip.cond_stage_model) for m in root.modules()
                   if hasattr(m, "comfy_cast_weights")]
        before = [m.comfy_cast_weights for m in modules]
        for m in modules:
            m.comfy_cast_weights = cast or m.comfy_cast_weights
        try:
            with guards.training_mode():
                backend = prepared_backend(model, clip)
                with guards.frozen_weights(model.model, clip.cond_stage_model):
                    inputs = batch_inputs(backend)
                    backend.plan_memory(inputs[0], inputs[1][0], 3)
                    results.append(loss_gradient(backend, backend.initial_vectors("and"), inputs, "lean"))
                backend.close()
        finally:
            for m, flag in zip(modules, before):
                m.comfy_cast_weights = flag
    (loss, grads), (cast_loss, cast_grads) = results
    assert loss == cast_loss and torch.equal(grads["clip_l"], cast_grads["clip_l"])


def test_memory_offload_trains_like_lean_where_the_host_can_offload(host, tiny):
    """memory=offload on the CPU: ComfyUI's partial unloading keeps the weights "off the
    device" (here the same CPU, cast per use), and the relation is bit for bit lean's. A
    preview between updates (the sampler loads as much as fits) does not undo the plan: the
    next update casts per use again. A host without partial unloading (ComfyUI 2024-03)
    refuses it with the reason."""
    from comfyui_reversion.reversion import errors
    from comfyui_reversion.reversion_comfy import host as pack_host
    model, clip, vae = tiny("sdxl")
    inputs = dict(exemplars=small_exemplars(2, 32), preview_every=1, train_seed=4)
    if not pack_host.can_offload(model):
        with pytest.raises(errors.NotEnoughMemory, match="partial unloading"):
            run_node(host, "ReVersionTrainRelation", "train",
                     **train_inputs(model, clip, vae, "offloaded", memory="offload", **inputs))
        return
    lean, _, _ = run_node(host, "ReVersionTrainRelation", "train",
                          **train_inputs(model, clip, vae, "not_offloaded", memory="lean", **inputs))
    first = model.model.diffusion_model.input_blocks[0][0]        # while training: cast per use?
    seen = []
    hook = first.register_forward_pre_hook(lambda m, args: seen.append(m.comfy_cast_weights)
                                           if torch.is_grad_enabled() else None)
    try:
        offloaded, _, _ = run_node(host, "ReVersionTrainRelation", "train",
                                   **train_inputs(model, clip, vae, "offloaded", memory="offload", **inputs))
    finally:
        hook.remove()
    plan = offloaded.measured["memory"]
    assert plan["mode"] == "offload" and plan["offload_gib"] > 0
    assert seen == [False] * 3 + [True, True]        # the three probes before offloading, then both updates
    for key in lean.vectors:
        assert torch.equal(offloaded.vectors[key], lean.vectors[key])
