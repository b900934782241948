"""Memory strategy of training (issue 7): batched captions, frozen host weights, narrow
in-place guard, checkpointed UNet blocks, micro-batch splitting, SDPA, the auto choice,
and one update of a full-size SD1.5 on the CPU."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import load_script, run_node, small_exemplars, train_inputs
from test_host import directional_check

from reversion_comfy.adapter import STANDIN as R  # noqa: E402  the stand-in token for <R>

GiB = 1024 ** 3


def prepared(model, clip, memory="fast"):
    from reversion_comfy import adapter
    backend = adapter.ComfyBackend(model, clip, memory)
    backend.prepare()
    return backend


def batch_inputs(backend, n=3, size=8):
    g = torch.Generator().manual_seed(5)
    latents = torch.randn(n, 4, size, size, generator=g)
    captions = [f"a cat {R} a dog", f"cat {R} dog", f"a red cube {R} a blue ball"][:n]
    t = torch.tensor([900, 400, 50][:n])
    return latents, captions, t, torch.randn(latents.shape, generator=g)


def loss_gradient(backend, vectors, inputs, mode, chunk=None):
    from reversion_comfy import adapter
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in vectors.items()}
    n = len(inputs[1])
    backend.plan = adapter.MemoryPlan(mode, chunk or n, n, mode, {}, None)
    loss = backend.denoising_loss(leaves, *inputs)
    loss.backward()
    return loss.detach(), {k: v.grad for k, v in leaves.items()}


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_one_text_encoder_call_per_micro_batch_equals_one_call_per_caption(host, tiny, family):
    from reversion_comfy import adapter
    model, clip, _ = tiny(family)
    with adapter.training_mode():
        backend = prepared(model, clip)
        vectors = backend.initial_vectors("and")
        captions = [f"a cat {R} a dog", f"cat {R} dog", f"(a red:1.2) cube {R} a ball"]
        calls = []
        real = clip.encode_from_tokens
        clip.encode_from_tokens = lambda *a, **k: calls.append(1) or real(*a, **k)
        try:
            cond, pooled = backend.encode_batch(vectors, captions)
        finally:
            del clip.encode_from_tokens
        assert len(calls) == 1
        one_by_one = [backend.encode(vectors, c) for c in captions]
    torch.testing.assert_close(cond, torch.cat([c for c, _ in one_by_one]), rtol=1e-5, atol=1e-5)
    if family == "sdxl":
        assert pooled.shape == (3, 1280)
        torch.testing.assert_close(pooled, torch.cat([p for _, p in one_by_one]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_memory_modes_give_the_reference_gradient(host, tiny, family):
    """fast and lean (checkpointed UNet blocks), in one forward or in pieces, all give the
    gradient of the blanket-clone reference (`inplace_safe`, itself checked
    against finite differences), on both hosts despite their in-place code."""
    from reversion_comfy import adapter
    model, clip, _ = tiny(family)
    with adapter.training_mode():
        backend = prepared(model, clip)       # weights made autograd-usable before freezing them
        with adapter.frozen_weights(model.model, clip.cond_stage_model):
            inputs = batch_inputs(backend)
            vectors = {k: v + 0.01 * torch.randn(v.shape, generator=torch.Generator().manual_seed(1))
                       for k, v in backend.initial_vectors("and").items()}
            backend.plan_memory(inputs[0], inputs[1][0], 3)
            # reference: every saved tensor cloned, no checkpointing, one forward
            leaves = {k: v.detach().clone().requires_grad_(True) for k, v in vectors.items()}
            with adapter.inplace_safe():
                cond, pooled = backend.encode_batch(leaves, inputs[1])
                x0 = model.model.process_latent_in(inputs[0])
                sigma = adapter.sigma_for_timestep(backend.ms, inputs[2])
                x = adapter.noisy_latent(x0, inputs[3], sigma)
                denoised = model.model.apply_model(x, sigma, **backend.model_conds(cond, pooled, x))
            pred, target = adapter.prediction_and_target(backend.ms, x, x0, inputs[3], sigma, denoised)
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
    from reversion_comfy import adapter
    model, clip, _ = tiny("sd1")
    with adapter.training_mode():
        backend = prepared(model, clip)       # weights made autograd-usable before freezing them
        with adapter.frozen_weights(model.model, clip.cond_stage_model):
            inputs = batch_inputs(backend, n=2)
            start = backend.initial_vectors("and")["clip_l"]
            backend.plan_memory(inputs[0], inputs[1][0], 2)
            backend.plan = adapter.MemoryPlan("lean", 1, 2, "lean", {}, None)
            analytic, numeric = directional_check(lambda v: backend.denoising_loss({"clip_l": v}, *inputs), start, h=0.05)
            backend.close()
    assert analytic == pytest.approx(numeric, rel=0.02)


def test_clones_only_where_the_host_modifies_saved_tensors_in_place(host, tiny):
    """CLIP's layers do `x += ...` in both hosts; the UNet only in the 2024 host. Elsewhere
    nothing is cloned and the guard's in-place check (`unpack`) stays on."""
    from reversion_comfy import adapter
    model, clip, _ = tiny("sd1")
    with adapter.training_mode():
        backend = prepared(model, clip)
        backend.plan_memory(torch.zeros(1, 4, 8, 8), f"a cat {R} a dog", 1)
        found = backend.guard.clone_modules
        backend.close()
    clip_modules = set(clip.cond_stage_model.modules())
    unet_modules = set(model.model.diffusion_model.modules())
    assert found and found <= clip_modules | unet_modules
    assert 0 < len(found & clip_modules) < len(clip_modules) // 4
    import comfy.ldm.modules.attention as attention
    import inspect
    unet_inplace = "x += n" in inspect.getsource(attention.BasicTransformerBlock)   # removed in 2025
    assert bool(found & unet_modules) == unet_inplace
    assert all(not isinstance(m, torch.nn.Linear) for m in found)


def test_training_freezes_host_weights_and_restores_their_flags(host):
    """A model built outside inference mode has requires_grad=True weights: training must
    not compute their gradients, and must hand them back as they were."""
    import tiny_models
    model, clip, vae = tiny_models.build("sd1", embedding_directory=[str(host.embeddings)])
    with torch.inference_mode(False):
        for module in (model.model, clip.cond_stage_model):
            for name, p in list(module.named_parameters()):
                module.get_submodule(name.rpartition(".")[0])._parameters[name.rpartition(".")[2]] = \
                    torch.nn.Parameter(p.detach().clone(), requires_grad=True)
    params = lambda: [p for m in (model.model, clip.cond_stage_model) for p in m.parameters()]
    params()[0].requires_grad_(False)
    flags = [p.requires_grad for p in params()]
    run_node(host, "ReVersionTrainRelation", "train", **train_inputs(model, clip, vae, "frozen"))
    assert all(p.grad is None for p in params())
    assert [p.requires_grad for p in params()] == flags and not flags[0] and flags[1]


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
        assert "SDPA" in relation.hyperparameters["memory"]["attention"]
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
    from reversion_comfy import adapter
    plan = adapter.choose_memory("auto", _Estimate(), int(free_gib * GiB), 8, 64 * 64, micro=2)
    assert (plan.mode, plan.chunk, plan.batch) == (mode, chunk, 8)
    assert plan.needed == {"fast": int(8.5 * GiB), "lean": int(2.5 * GiB)}     # at one micro-batch
    assert f"{free_gib:.2f} GiB free" in plan.describe()
    assert ("in one forward" if chunk == 8 else f"in forwards of {chunk}") in plan.describe()
    # asked for by name: one micro-batch per forward whatever is free (lean: less if it must)
    fast = adapter.choose_memory("fast", _Estimate(), int(free_gib * GiB), 8, 64 * 64, micro=2)
    assert (fast.mode, fast.chunk) == ("fast", 2)
    lean = adapter.choose_memory("lean", _Estimate(), int(free_gib * GiB), 8, 64 * 64, micro=2)
    assert (lean.mode, lean.chunk) == ("lean", min(chunk, 2) if mode == "lean" else 2)


def test_too_little_memory_stops_before_training_with_the_numbers():
    from reversion_comfy import adapter
    with pytest.raises(adapter.RelationError, match=r"needs about 1.50 GiB.*1.00 GiB is free.*smaller exemplar"):
        adapter.choose_memory("lean", _Estimate(), 1 * GiB, 4, 64 * 64)


def test_memory_estimate_is_linear_in_exemplars_and_pixels():
    from reversion_comfy import adapter
    probes = {256: {"text": 10, "other": 100 + 256, "block0": 4 * 256, "block1": 2 * 256, "input0": 256},
              1024: {"text": 10, "other": 100 + 1024, "block0": 4 * 1024, "block1": 2 * 1024, "input0": 1024}}
    est = adapter.MemoryEstimate(probes)
    est.MARGIN, est.RESERVE = 1.0, 0
    assert est.needed("fast", 2, 4096) == 100 + 7 * 4096 * 2 + 20
    assert est.needed("lean", 2, 4096) == 100 + (1 + 1 + 4) * 4096 * 2 + 20
    # text bytes split by layer (the wrapper's labels): per caption, not per pixel, in both modes
    for p in probes.values():
        p.update({"text": 4, "text0": 3, "text1": 3, "textinput": 1})
    probes[1024]["text1"] = 5          # a larger probe saves more text: must not be read as UNet pixels
    est = adapter.MemoryEstimate(probes)
    est.MARGIN, est.RESERVE = 1.0, 0
    assert est.needed("fast", 2, 4096) == 100 + 7 * 4096 * 2 + 2 * (4 + 3 + 3)
    assert est.needed("lean", 2, 4096) == 100 + (1 + 1 + 4) * 4096 * 2 + 2 * (4 + 1 + 3)


def test_auto_choice_is_reported(host, tiny):
    model, clip, vae = tiny("sd1")
    relation, _, _ = run_node(host, "ReVersionTrainRelation", "train",
                           **train_inputs(model, clip, vae, "auto_report", memory="auto"))
    memory = relation.hyperparameters["memory"]
    assert memory["requested"] == "auto" and memory["mode"] == "fast"      # a tiny model fits
    assert 0 < memory["needed_gib"]["lean"] < memory["needed_gib"]["fast"]
    assert "free_gib" not in memory           # varies from run to run: shown on the node, not stored


def test_full_size_sd15_trains_one_lean_update(host):
    """The code path at SD1.5's real width and depth (860M-parameter UNet, 12-layer CLIP-L,
    random weights) at 64 px: the memory probes, the estimate and one lean update (all
    25 top-level UNet blocks checkpointed) of a micro-batch of 2. (Gradient equality of
    the modes is tested on the tiny models of every family, on both hosts.)"""
    import full_models
    from reversion_comfy import adapter
    from reversion.trainer import TrainConfig
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
            result = adapter.train_relation(model, clip, vae, small_exemplars(2, 64), config, memory="lean")
    finally:
        om.forward_timestep_embed = real
    memory = result.memory
    assert (memory["mode"], memory["chunk"]) == ("lean", 2) and result.steps_done == 1
    assert 0 < memory["needed_gib"]["lean"] < memory["needed_gib"]["fast"]
    assert torch.isfinite(torch.tensor(result.history[0]["loss"]))
    start = clip.cond_stage_model.clip_l.transformer.get_input_embeddings().weight[
        adapter.text_encoders(clip)[0].single_id("and", "init")].float().cpu()
    assert 0 < (result.vectors["clip_l"] - start).norm() < 1.0
    # 2 probe forwards (25 blocks each, with grad), the training forward: input block 0 (a
    # convolution of the noisy latent, nothing depends on <R>) with grad and 24 checkpointed
    # blocks without, then the 24 recomputed in backward
    assert blocks == [True] * 50 + [True] + [False] * 24 + [True] * 24


def test_gpu_benchmark_part_runs_on_tiny_models(host, tmp_path):
    """bench/bench_scale.py's GPU part (fp16/bf16 memory, time, gradient cosine to fp32),
    here on tiny models on the CPU so that the script is known to run when a GPU is lent."""
    bench = load_script("bench/bench_scale.py")
    report = bench.gpu_part(tmp_path / "gpu.json", tiny=True)
    assert (tmp_path / "gpu.json").is_file()
    rows = report["rows"]
    assert {(r["family"], r["dtype"], r["mode"]) for r in rows} == {
        ("sd1", d, m) for d in ("float32", "bfloat16") for m in ("fast", "lean", "fast, whole update")}
    assert {r["exemplars"] for r in rows if r["mode"] == "fast, whole update"} == {8}
    # whole updates through Train Relation's path, and the paper's procedure on the fp32 weights
    fp32, bf16 = report["updates"]
    assert fp32["losses"] == pytest.approx(fp32["reference_losses"], rel=1e-5)
    assert len(bf16["update_seconds"]) == 4 and bf16["plan"]["requested"] == "auto"
    assert report["complete"] and not report["failed"]
    assert all(r["tflop"] > 0 and r["seconds"] > 0 for r in rows)
    assert all(u["time_ratio_to_fp32_reference_last_update"] > 0 for u in (fp32, bf16))
    for r in rows:
        assert all(0 <= z < 0.5 for z in r["grad_zero_fraction"].values()), r     # a real gradient
        if r["dtype"] != "float32":   # tiny random models in bf16: ~0.93 here; a wrong gradient gives ~0
            assert all(0.8 < c <= 1.0 + 1e-6 for c in r["grad_cosine_to_fp32"].values()), r


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_benchmark_reference_procedure_reaches_our_losses(host, tiny, family):
    """bench_scale's re-implementation of the paper's per-update procedure (VAE every
    micro-batch, whole fp32 token table, other rows restored) gives our trainer's losses."""
    from reversion.trainer import TrainConfig
    from reversion_comfy import adapter
    bench = load_script("bench/bench_scale.py")
    model, clip, vae = tiny(family)      # SDXL: two text encoders, two tables, the pooled output
    exemplars = bench.exemplars_for(64)
    config = TrainConfig(steps=2, batch_size=2, grad_accum=2, seed=2023)
    with torch.inference_mode():
        ours = adapter.train_relation(model, clip, vae, exemplars, config, memory="fast")
        reference, _ = bench.reference_train(model, clip, vae, exemplars, config)
    assert reference == pytest.approx([r["loss"] for r in ours.history], rel=1e-5)
    assert reference[0] != reference[1]


def test_cpu_benchmark_row_measures_a_forced_split(host):
    """One row of bench_scale's CPU table (each runs in its own process there), here in
    this one on a tiny model: the forced micro-batch split is what trained, its peak and
    per-update time are recorded, and the host's choose_memory is put back afterwards."""
    from reversion_comfy import adapter
    bench = load_script("bench/bench_scale.py")
    before = adapter.choose_memory
    row = bench.cpu_row("lean, split 2 -> 1+1", 64, "sd1", threads=1, tiny=True)
    assert adapter.choose_memory is before
    assert (row["plan"]["mode"], row["plan"]["chunk"]) == ("lean", 1)
    assert 0 < row["estimate_gib"] < row["plan"]["needed_gib"]["lean"]     # one exemplar's, below a micro-batch's
    assert len(row["losses"]) == 1 and all(math.isfinite(x) for x in row["losses"])
    assert len(row["update_seconds"]) == 1 and row["peak_gib"] > 0 and row["tflops_per_update"] > 0


@pytest.mark.parametrize("memory", ["auto", "lean"])
def test_a_training_run_leaves_no_tensors_behind(host, tiny, memory):
    """Found on the GPU benchmark: every run leaked what its memory probes (forwards never
    run backward) had saved, fp32 casts of an fp16 CLIP included (~2.9 GiB per SDXL run),
    because the saved-tensor hook kept each saved output tied to its own grad_fn: a cycle
    through C++ that gc cannot free. A second and a third run must end where the first did."""
    from reversion.trainer import TrainConfig
    from reversion_comfy import adapter
    live_tensor_bytes = load_script("bench/bench_scale.py").reachable_tensor_bytes   # loaded once, before
    model, clip, vae = tiny("sdxl")
    config = TrainConfig(steps=1, batch_size=2, grad_accum=1, seed=3)
    after = []
    for _ in range(3):
        with torch.inference_mode():
            adapter.train_relation(model, clip, vae, small_exemplars(2, 64), config, memory=memory)
        after.append(live_tensor_bytes())
    assert after[2] == after[1] == after[0], after


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_lean_keeps_only_the_text_layers_inputs(host, tiny, family):
    """lean checkpoints every CLIP transformer layer as well as the UNet blocks: its forward
    saves, per text layer, only that layer's input (fast saves each layer's activations and,
    with an fp16 CLIP on a GPU, the fp32 cast of every weight). The lean estimate counts the
    layer inputs plus the largest layer, recomputed in backward."""
    from reversion_comfy import adapter
    model, clip, _ = tiny(family)
    with adapter.training_mode():
        backend = prepared(model, clip)
        with adapter.frozen_weights(model.model, clip.cond_stage_model):
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
    n_layers = sum(len(e.module.transformer.text_model.encoder.layers) for e in adapter.text_encoders(clip))
    fast, lean = layer_bytes(saved[False]), layer_bytes(saved[True])
    assert len(fast) == n_layers and len(saved[False]) > 0
    # lean: each layer's saved bytes are its input alone (the checkpoint's), so at most 1x its input
    inputs = saved[True]["textinput"]
    assert len(lean) == n_layers and sum(lean.values()) <= inputs < sum(fast.values()) / 4
    est = adapter.MemoryEstimate({64: saved[False], 128: saved[False]})
    assert est.text_lean < est.text == saved[False].get("text", 0) + sum(fast.values())


def test_text_layer_wrappers_are_removed_and_keep_others(host, tiny):
    """lean wraps each CLIP layer's forward for the duration of a forward only; a wrapper
    another extension had put on a layer instance is back in place afterwards."""
    from reversion_comfy import adapter
    model, clip, _ = tiny("sd1")
    layers = list(clip.cond_stage_model.clip_l.transformer.text_model.encoder.layers)
    theirs = layers[0].forward            # a bound method, set as an instance attribute
    layers[0].forward = theirs
    try:
        guard = adapter.SavedTensorGuard([clip.cond_stage_model])
        with adapter.text_layers(guard, clip.cond_stage_model, checkpoint=True):
            assert all("forward" in layer.__dict__ for layer in layers)
            assert layers[0].forward is not theirs
        assert layers[0].__dict__["forward"] is theirs
        assert all("forward" not in layer.__dict__ for layer in layers[1:])
    finally:
        del layers[0].forward


class _Sin(torch.nn.Module):
    def forward(self, x):
        return x.sin()


def test_a_saved_tensor_modified_in_place_outside_the_clone_set_stops_training(host):
    """Autograd does not check the version of tensors its saved-tensor hooks packed; the
    guard does: an in-place write after saving, where nothing was cloned, raises at backward
    instead of giving a silently wrong gradient. Inside the clone set the gradient is exact."""
    from reversion_comfy import adapter
    for clone in (False, True):
        sin = _Sin()
        guard = adapter.SavedTensorGuard([sin])
        guard.watch({sin} if clone else set())
        x = torch.randn(2, 3, requires_grad=True)
        h = x * 2
        with guard.hooks():
            z = sin(h).sum()            # sin saves h
        h.add_(1)                       # a host's `h += ...` after h was saved
        if clone:
            z.backward()
            torch.testing.assert_close(x.grad, 2 * torch.cos(2 * x.detach()))
        else:
            with pytest.raises(RuntimeError, match="modified a tensor .* in place after autograd saved it"):
                z.backward()
        guard.close()


def test_profile_part_reports_where_an_update_goes(host, tmp_path):
    """bench_scale's profile (run on a GPU to find the gap to the FLOP floor), here on a tiny
    model on the CPU: whole updates through Train Relation's path, the profiled ones' op
    counts, and the forward + backward alone with the in-place guard's hook calls. It also
    pins how often an update reads the device back (each read stalls a GPU pipeline): the
    three loss figures and AdamW's step count, and no value comparison of pooled outputs."""
    bench = load_script("bench/bench_scale.py")
    report = bench.profile_part(tmp_path / "profile.json", "sd1", 64, "float32", tiny=True, updates=3)
    assert json_file(tmp_path / "profile.json")["per_update"] == report["per_update"]
    assert report["plan"]["requested"] == "auto" and report["plan"]["chunk"] == 8     # the whole update at once
    assert len(report["update_seconds"]) == 3 and report["profiled_update_seconds"] > 0
    per_update = report["per_update"]
    assert per_update["cpu_ops"] > 1000                  # a UNet and a CLIP forward + backward
    assert per_update["item_syncs"] == 4 and per_update["equal_syncs"] == 0
    assert {op["op"] for op in report["top_cpu_ops"]} & {"aten::mm", "aten::addmm", "aten::convolution_backward"}
    for name, variant in report["forward_backward"].items():
        assert len(variant["seconds"]) == 3 and all(s > 0 for s in variant["seconds"]), name
        # every tensor autograd saves passes the guard once, and comes back once in backward
        assert variant["hook_calls"]["pack"] > 100 and variant["hook_calls"]["unpack"] > 100, name
        assert 0 < variant["hook_seconds"] < sum(variant["seconds"]), name


def json_file(path):
    import json
    return json.loads(path.read_text())


def test_text_bytes_part_measures_lean_text_and_leftovers(host, tmp_path):
    """bench_scale's text-bytes command (the figures BENCHMARKS quotes for full-size SD1.5
    and SDXL), here on the tiny SD1: lean keeps a fraction of the CLIP bytes fast saves, and
    planning memory leaves no tensor behind."""
    bench = load_script("bench/bench_scale.py")
    row = bench.text_bytes_part(tmp_path / "text.json", ("sd1",), tiny=True)["models"]["sd1"]
    assert json_file(tmp_path / "text.json")["models"]["sd1"] == row
    assert 0 < row["text_saved_lean_gib"] < row["text_saved_fast_gib"] / 3
    assert row["left_after_plan_memory_gib"] == 0
