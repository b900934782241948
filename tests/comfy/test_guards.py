"""Autograd through the real host (reversion_comfy/guards.py): exact gradients despite the
host's in-place code, clones only where needed, a new in-place write caught, and host
weights left as they were (values, requires_grad flags, later sampling)."""
from __future__ import annotations

import pytest
import torch

from comfyui_reversion.reversion.words import STANDIN
from conftest import directional_check, prepared_backend, run_node, sample_latent, train_inputs


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_gradients_through_host_code_match_finite_differences(host, tiny, family):
    """Backprop through the host's in-place code (CLIP layers; the 2024 UNet) is exact:
    d(text conditioning)/d(relation vector) per encoder, and d(UNet output)/d(conditioning)."""
    from comfyui_reversion.reversion_comfy import guards
    model, clip, _ = tiny(family)
    g = torch.Generator().manual_seed(1)
    with guards.training_mode():
        backend = prepared_backend(model, clip)
        start = backend.initial_vectors("and")
        weights = torch.randn(1, 77, sum(e.width for e in backend.encoders) if family == "sdxl" else 768, generator=g)
        for key in backend.encoder_keys:
            def text_side(v):
                cond, _ = backend.captions.encode({**start, key: v}, f"a cat {STANDIN} a dog")
                return (cond * weights).sum()
            analytic, numeric = directional_check(text_side, torch.randn(start[key].shape, generator=g))
            assert analytic == pytest.approx(numeric, rel=0.01), key

        cond, pooled = backend.captions.encode(start, f"a cat {STANDIN} a dog")
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
    from comfyui_reversion.reversion_comfy import guards
    model, clip, _ = tiny("sd1")
    with guards.training_mode():
        backend = prepared_backend(model, clip)
        vec = backend.initial_vectors("and")["clip_l"].requires_grad_(True)
        cond, _ = backend.captions.encode({"clip_l": vec}, f"a cat {STANDIN} a dog")
        with pytest.raises(RuntimeError, match="inplace"):
            cond.sum().backward()


def test_clones_only_where_the_host_modifies_saved_tensors_in_place(host, tiny):
    """CLIP's layers do `x += ...` in both hosts; the UNet only in the 2024 host. Elsewhere
    nothing is cloned and the guard's in-place check (`unpack`) stays on."""
    from comfyui_reversion.reversion_comfy import guards
    model, clip, _ = tiny("sd1")
    with guards.training_mode():
        backend = prepared_backend(model, clip)
        backend.plan_memory(torch.zeros(1, 4, 8, 8), f"a cat {STANDIN} a dog", 1)
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


class _Sin(torch.nn.Module):
    def forward(self, x):
        return x.sin()


def test_a_saved_tensor_modified_in_place_outside_the_clone_set_stops_training(host):
    """Autograd does not check the version of tensors its saved-tensor hooks packed; the
    guard does: an in-place write after saving, where nothing was cloned, raises at backward
    instead of giving a silently wrong gradient. Inside the clone set the gradient is exact."""
    from comfyui_reversion.reversion_comfy import guards
    for clone in (False, True):
        sin = _Sin()
        guard = guards.SavedTensorGuard([sin])
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


def test_training_leaves_host_weights_bitwise_unchanged_and_sampling_identical(host, tiny):
    model, clip, vae = tiny("sd1")

    def snapshot():
        return {**{f"unet.{k}": v.clone() for k, v in model.model.state_dict().items()},
                **{f"clip.{k}": v.clone() for k, v in clip.cond_stage_model.state_dict().items()}}

    def sample():
        return sample_latent(host, model, clip, steps=3)

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
    from devtools import tiny_models
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


def test_training_freezes_host_weights_and_restores_their_flags(host):
    """A model built outside inference mode has requires_grad=True weights: training must
    not compute their gradients, and must hand them back as they were."""
    from devtools import tiny_models
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
