"""Temporary patches of host code, each undone when its `with` block ends.

- `unet_blocks`: the UNet's 25 top-level blocks through a wrapper (gradient checkpointing in
  lean mode, byte labels for the memory probes, Cancel between blocks);
- `text_layers`: the same for the CLIP transformer layers;
- `memory_efficient_attention`: the UNet's attention routed to PyTorch SDPA;
- `recording_encode`: keeps an SDClipModel's batched output (the per-row pooled output).

The host functions patched here are the ones a host change is most likely to move; each
patch probes for what it needs and falls back to the host's own code where it is missing.
"""
from __future__ import annotations

import contextlib

import comfy.ldm.modules.attention as attention
import comfy.ldm.modules.diffusionmodules.openaimodel as om
import torch
import torch.utils.checkpoint as ckpt

from .guards import SavedTensorGuard

try:                    # CLIP's transformer layer class (both known hosts); absent: layers run unwrapped
    from comfy.clip_model import CLIPLayer
except (ImportError, AttributeError):
    CLIPLayer = None


@contextlib.contextmanager
def unet_blocks(guard: SavedTensorGuard, checkpoint: bool, interrupt=lambda: None):
    """Run the UNet's 25 top-level blocks (input, middle, output) through a wrapper: with
    `checkpoint`, each block keeps only its inputs for backward and recomputes its forward
    then (reentrant `torch.utils.checkpoint`, whose saved inputs keep autograd's version
    check; the recompute runs under the same clone hooks, so the host's in-place code stays
    exact). The wrapper also labels each block's saved bytes for `guard.measuring()`, and
    runs `interrupt()` before each block: Cancel stops any forward (a whole update, or each
    piece of a split one) within one block; a backward under way runs to its end.

    The host calls `openaimodel.forward_timestep_embed(block, h, emb, context, ...)` once per
    top-level block in both hosts; nested calls pass through unchanged.
    """
    real = om.forward_timestep_embed
    state = {"depth": 0, "index": 0}

    def uses_grad_inputs(ts, x, emb, context):
        if x.requires_grad:
            return True
        for layer in ts:
            if isinstance(layer, om.SpatialTransformer) and torch.is_tensor(context) and context.requires_grad:
                return True
            if isinstance(layer, om.TimestepBlock) and torch.is_tensor(emb) and emb.requires_grad:
                return True
        return False

    def block(ts, x, emb, context=None, *args, **kwargs):
        if state["depth"] or not torch.is_grad_enabled():
            return real(ts, x, emb, context, *args, **kwargs)
        interrupt()
        index, state["index"] = state["index"], state["index"] + 1
        previous, guard.region = guard.region, f"block{index}"
        if guard.meter is not None:
            guard.meter[("input", index)] = (x.numel() * x.element_size(), f"input{index}")

        def run(x, emb, context):
            state["depth"] += 1
            try:
                with guard.hooks():
                    return real(ts, x, emb, context, *args, **kwargs)
            finally:
                state["depth"] -= 1
        try:
            if checkpoint and uses_grad_inputs(ts, x, emb, context):
                return ckpt.checkpoint(run, x, emb, context, use_reentrant=True, preserve_rng_state=False)
            return guard.end_section(run(x, emb, context))
        finally:
            guard.region = previous

    om.forward_timestep_embed = block
    try:
        yield
    finally:
        om.forward_timestep_embed = real


@contextlib.contextmanager
def text_layers(guard: SavedTensorGuard, text_encoders: torch.nn.Module, checkpoint: bool):
    """Run each transformer layer of the host's CLIP text encoders (`comfy.clip_model.
    CLIPLayer`, both hosts) through a wrapper that labels its saved bytes `text<i>` (its
    input `textinput`) for `guard.measuring()`; with `checkpoint` (lean), each layer keeps
    only its input for backward and recomputes its forward then. That frees, besides the
    activations, the fp32 casts of fp16 CLIP weights that each linear layer saves (2.7 GiB
    for SDXL's two encoders at any batch). A host without that class runs unwrapped.

    The host adds into the layer's input in place (`x += attn(...)`); the wrapper gives the
    layer a copy, so the input the checkpoint keeps is still the one it saw."""
    if CLIPLayer is None:
        yield
        return
    layers = [m for m in text_encoders.modules() if isinstance(m, CLIPLayer)]

    def wrapped(index, real):
        def forward(x, *args, **kwargs):
            if not torch.is_grad_enabled():
                return real(x, *args, **kwargs)
            if guard.meter is not None:
                guard.meter[("textinput", index)] = (x.numel() * x.element_size(), "textinput")
            previous, guard.region = guard.region, f"text{index}"

            def run(x):
                with guard.hooks():
                    return real(x.clone() if checkpoint else x, *args, **kwargs)
            try:
                if checkpoint and x.requires_grad:
                    return ckpt.checkpoint(run, x, use_reentrant=True, preserve_rng_state=False)
                return guard.end_section(run(x))
            finally:
                guard.region = previous
        return forward

    own = [layer.__dict__.get("forward") for layer in layers]      # instance-level wrappers others set
    try:
        for i, layer in enumerate(layers):
            layer.forward = wrapped(i, layer.forward)   # an instance attribute over the class's
        yield
    finally:
        for layer, previous in zip(layers, own):
            if previous is not None:
                layer.forward = previous
            elif "forward" in layer.__dict__:
                del layer.forward


@contextlib.contextmanager
def memory_efficient_attention():
    """Route the UNet's attention through PyTorch SDPA for the duration of training, whatever
    the host was started with: the "math"/split/sub-quadratic paths keep ~3x more tensors for
    backward. Yields what was done (a sentence for the log)."""
    names = ("optimized_attention", "optimized_attention_masked")
    sdpa = getattr(attention, "attention_pytorch", None)
    if sdpa is None or not all(hasattr(attention, n) for n in names) \
            or not hasattr(torch.nn.functional, "scaled_dot_product_attention"):
        yield "attention: host default (no attention_pytorch in this ComfyUI)"
        return
    saved = {n: getattr(attention, n) for n in names}
    for n in names:
        setattr(attention, n, sdpa)
    try:
        yield "attention: PyTorch SDPA during training" + \
            ("" if saved["optimized_attention"] is sdpa else f" (host default {saved['optimized_attention'].__name__})")
    finally:
        for n, f in saved.items():
            setattr(attention, n, f)


@contextlib.contextmanager
def recording_encode(module, outputs: dict, key: str):
    """Keep the batched (tokens, pooled) output of one SDClipModel's `encode` call."""
    real = module.encode
    own = module.__dict__.get("encode")          # an instance-level wrapper someone else set

    def encode(tokens):
        out = real(tokens)
        outputs[key] = out
        return out
    module.encode = encode
    try:
        yield
    finally:
        if own is None:
            del module.encode
        else:
            module.encode = own
