"""The host adapter: every ComfyUI internal that relation training and injection touch.

Differences between ComfyUI versions are handled here with `hasattr`/signature probes
(never version numbers), so that a host change touches this one file. Traps this module
exists for (see docs/design.md):

- nodes run under `torch.inference_mode()`: weights loaded by other nodes are inference
  tensors that autograd refuses; `trainable_host()` leaves inference mode and swaps them
  for normal tensors (same values), which later stock nodes use unchanged;
- ComfyUI's CLIP layers (and the 2024 UNet) add in place (`x += ...`), which breaks
  backprop; `inplace_safe()` clones tensors that autograd saves;
- the learned vector enters the text encoder through a wrapper around the token-embedding
  module (`injected_token`), the one route that is differentiable in every version;
- noise and targets follow the host's own `model_sampling` (eps or v prediction).
"""
from __future__ import annotations

import contextlib
import inspect
import os
from dataclasses import dataclass

import torch


# --------------------------------------------------------------------- autograd access

@contextlib.contextmanager
def inplace_safe():
    """Autograd through host code that modifies activations in place.

    Every tensor that autograd saves for backward and that itself requires grad is cloned
    when saved, so a later `x += ...` cannot invalidate it. Gradients are exact (tested
    against finite differences); the cost is one copy per saved activation. Training uses the
    narrower `SavedTensorGuard` (clones only in the modules that need it); this blanket form
    is the reference the tests compare it with.
    """
    def pack(t):
        return t.clone() if t.requires_grad else t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield


def _tracks_versions(t: torch.Tensor) -> bool:
    """False for inference tensors, and for tensors that only look normal: a parameter made
    in inference mode and later moved by `Module.to()` outside it (ComfyUI loading a model
    to the GPU) reports is_inference() False but still has no version counter."""
    if t.is_inference():
        return False
    try:
        t._version
        return True
    except RuntimeError:
        return False


def de_inference(module: torch.nn.Module) -> int:
    """Replace parameters/buffers of `module` that autograd cannot use by normal copies.

    Same values, same dtype/device, requires_grad False. Must run outside inference mode.
    Returns how many tensors were replaced. The module keeps working for inference, so the
    host model stays usable by later nodes.
    """
    replaced = 0
    for sub in module.modules():
        for name, p in list(sub._parameters.items()):
            if p is not None and not _tracks_versions(p):
                sub._parameters[name] = torch.nn.Parameter(p.detach().clone(), requires_grad=False)
                replaced += 1
        for name, b in list(sub._buffers.items()):
            if b is not None and not _tracks_versions(b):
                sub._buffers[name] = b.detach().clone()
                replaced += 1
    return replaced


@contextlib.contextmanager
def training_mode():
    """Leave ComfyUI's inference mode and enable grad for the duration of training."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


# ---------------------------------------------------------------------- memory strategy

class SavedTensorGuard:
    """The saved-tensor hooks of a training forward: exact autograd through host code that
    modifies activations in place, cloning only where that happens, plus byte accounting.

    `find_inplace()` runs one forward with every saved tensor's version recorded together
    with the module that saved it; the modules whose saved tensors were later modified in
    place (CLIP's layer norms under `x += ...`, the 2024 UNet's transformer norms) form the
    clone set. During training only tensors saved inside those modules are cloned;
    everywhere else `unpack` checks the saved tensor's version (autograd skips its own
    check for hooked tensors), so a host change that adds an in-place op raises instead of
    silently corrupting gradients.
    """

    def __init__(self, roots: list[torch.nn.Module]):
        self.roots = roots
        self.clone_modules: set[torch.nn.Module] = set()
        self._clone_depth = 0
        self._handles = []
        self._record = None                 # [(tensor, version, module)] while finding
        self._stack: list[torch.nn.Module] = []
        self.meter = None                   # {storage ptr: (bytes, region)} while measuring
        self.region = "other"
        self._weights = {t.untyped_storage().data_ptr() for r in roots for t in (*r.parameters(), *r.buffers())}

    def pack(self, t):
        if self.meter is not None and t.untyped_storage().data_ptr() not in self._weights:
            self.meter.setdefault(t.untyped_storage().data_ptr(), (t.untyped_storage().nbytes(), self.region))
        if self._record is not None and t.requires_grad:
            self._record.append((t, t._version, self._stack[-1] if self._stack else None))
        # detached: a saved tensor that is its own node's output would otherwise hold its
        # grad_fn, a cycle through C++ that no gc can free; graphs never run backward (the
        # memory probes) then leak all they saved (e.g. fp32 casts of an fp16 CLIP, GiBs on
        # SDXL) on every training run. Autograd restores the grad_fn when unpacking.
        if self._clone_depth and t.requires_grad:
            return t.detach().clone(), None          # a private copy: nothing can modify it
        return t.detach(), (None if t.is_inference() else t._version)

    @staticmethod
    def unpack(packed):
        """Autograd skips its own in-place check for tensors packed by hooks; this is it:
        a saved tensor modified in place after saving would give a wrong gradient."""
        t, version = packed
        if version is not None and t._version != version:
            raise RuntimeError(
                f"ReVersion: host code modified a tensor {tuple(t.shape)} in place after autograd saved it, "
                f"outside the modules it clones for; the gradient would be wrong, so training stopped. "
                f"Please report it with your ComfyUI version.")
        return t

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)

    @contextlib.contextmanager
    def find_inplace(self):
        """Record, for the forward run inside, which modules need their saved tensors cloned."""
        from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
        ours = {id(m) for r in self.roots for m in r.modules()}

        def enter(module, args):
            if id(module) in ours:
                self._stack.append(module)

        def leave(module, args, out):
            if id(module) in ours and self._stack and self._stack[-1] is module:
                self._stack.pop()

        handles = [register_module_forward_pre_hook(enter), register_module_forward_hook(leave)]
        self._record, self._stack = [], []
        try:
            with self.hooks():
                yield
        finally:
            for h in handles:
                h.remove()
            found = {m for t, v, m in self._record if m is not None and t._version != v}
            self._record = None
            self.watch(self.clone_modules | found)

    def watch(self, modules) -> None:
        """Clone what `modules` save (instance hooks, removed by `close()`)."""
        self.close()
        self.clone_modules = set(modules)

        def enter(module, args):
            self._clone_depth += 1

        def leave(module, args, out):
            self._clone_depth -= 1

        for m in self.clone_modules:
            self._handles += [m.register_forward_pre_hook(enter), m.register_forward_hook(leave)]

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles, self._clone_depth = [], 0

    @contextlib.contextmanager
    def measuring(self):
        """Count unique activation storages saved for backward (weights excluded), by region;
        `measured()` reads and ends the count."""
        self.meter = {}
        yield self

    def measured(self) -> dict:
        out = {}
        for nbytes, region in (self.meter or {}).values():
            out[region] = out.get(region, 0) + nbytes
        self.meter = None
        return out


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
    import comfy.ldm.modules.diffusionmodules.openaimodel as om
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
                import torch.utils.checkpoint as ckpt
                return ckpt.checkpoint(run, x, emb, context, use_reentrant=True, preserve_rng_state=False)
            return run(x, emb, context)
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
    try:
        import comfy.clip_model as cm
        layer_class = cm.CLIPLayer
    except (ImportError, AttributeError):
        yield
        return
    import torch.utils.checkpoint as ckpt
    layers = [m for m in text_encoders.modules() if isinstance(m, layer_class)]

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
                return run(x)
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
    import comfy.ldm.modules.attention as attention
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
def frozen_weights(*modules: torch.nn.Module):
    """requires_grad False on every host weight while training (a model built outside
    inference mode would otherwise get full weight gradients); restored after."""
    flags = [(p, p.requires_grad) for m in modules for p in m.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class _InPieces(torch.autograd.Function):
    """An update's loss computed in smaller pieces, each backpropagated at once (so only one
    piece's activations are alive): the returned loss is the mean over all exemplars and
    its backward hands back the summed (weighted) piece gradients, the same gradient as
    one forward of everything."""

    @staticmethod
    def forward(ctx, loss_of, pieces, *vectors):
        grads = [torch.zeros_like(v) for v in vectors]
        total = torch.zeros((), dtype=torch.float32, device=vectors[0].device)
        with torch.enable_grad():
            for piece, weight in pieces:
                leaves = [v.detach().requires_grad_(True) for v in vectors]
                loss = loss_of(piece, leaves) * weight
                loss.backward()        # not autograd.grad: reentrant checkpointing refuses it
                for g, leaf in zip(grads, leaves):
                    if leaf.grad is not None:
                        g += leaf.grad
                total += loss.detach().float().to(total.device)
        ctx.save_for_backward(*grads)
        return total

    @staticmethod
    def backward(ctx, out_grad):
        return (None, None, *[out_grad * g for g in ctx.saved_tensors])


GiB = 1024 ** 3


@dataclass
class MemoryPlan:
    mode: str              # "fast" | "lean"
    chunk: int             # exemplars per forward: the update in pieces of `chunk`
    batch: int             # exemplars per update (batch_size x grad_accum)
    requested: str
    needed: dict           # estimated bytes per mode at one micro-batch ({} if not estimated)
    free: int | None
    attention: str = ""
    planned: int | None = None   # estimated bytes of this plan's forwards (if estimated)

    def describe(self) -> str:
        split = (f", {self.batch} exemplars per update in one forward" if self.chunk >= self.batch else
                 f", {self.batch} exemplars per update in forwards of {self.chunk}")
        what = ("gradient checkpointing of the UNet blocks and CLIP layers" if self.mode == "lean"
                else "no checkpointing")
        est = "" if not self.needed else " (estimated per micro-batch " + ", ".join(
            f"{k} {v / GiB:.2f} GiB" for k, v in self.needed.items()) + \
            (f"; this plan {self.planned / GiB:.2f} GiB" if self.planned is not None else "") + \
            (f"; {self.free / GiB:.2f} GiB free)" if self.free is not None else ")")
        return f"memory {self.mode} [{self.requested}]: {what}{split}{est}; {self.attention}"

    def as_dict(self) -> dict:
        return {"mode": self.mode, "requested": self.requested, "chunk": self.chunk, "batch": self.batch,
                "needed_gib": {k: round(v / GiB, 3) for k, v in self.needed.items()},
                "planned_gib": None if self.planned is None else round(self.planned / GiB, 3),
                "free_gib": None if self.free is None else round(self.free / GiB, 3), "attention": self.attention}


class MemoryEstimate:
    """Peak training memory beyond the loaded weights, per mode, from two small probe
    forwards (latent 8x8, one and two exemplars) whose saved tensors are counted: a
    constant part (e.g. weight cast copies) and a part linear in exemplars x latent pixels
    (activations; linear in pixels too because attention is SDPA). Text-encoder bytes:
    the one-caption probe's, times the captions (conservative: cast copies counted each
    time); in lean, only its layer inputs and its largest layer (recomputed one at a time).

    `probes`: {exemplars x latent pixels: SavedTensorGuard.measured()}."""

    MARGIN, RESERVE = 1.25, 256 * 1024 ** 2

    def __init__(self, probes: dict):
        (p1, m1), (p2, m2) = sorted(probes.items())

        def fit(f):
            b = max(0.0, (f(m2) - f(m1)) / (p2 - p1))
            return max(0.0, f(m1) - b * p1), b
        blocks = lambda m: [v for k, v in m.items() if k.startswith("block")]
        layers = [v for k, v in m1.items() if k.startswith("text") and k[4:].isdigit()]
        self.text = m1.get("text", 0) + sum(layers)
        # lean: the text encoders keep their layers' inputs and recompute one layer at a time
        self.text_lean = m1.get("text", 0) + m1.get("textinput", 0) + max(layers, default=0)
        # the UNet's part: the text encoders' regions ("text", "text<i>", "textinput") are per caption
        self.fast = fit(lambda m: sum(v for k, v in m.items() if not k.startswith(("text", "input"))))
        self.outside = fit(lambda m: sum(v for k, v in m.items() if k == "other"))
        self.inputs = fit(lambda m: sum(v for k, v in m.items() if k.startswith("input")))
        self.largest = fit(lambda m: max(blocks(m), default=0))

    def needed(self, mode: str, batch: int, pixels: int) -> int:
        lin = lambda ab: ab[0] + ab[1] * pixels * batch
        unet = lin(self.fast) if mode == "fast" else lin(self.outside) + lin(self.inputs) + lin(self.largest)
        text = self.text if mode == "fast" else self.text_lean
        return int(self.MARGIN * (unet + text * batch) + self.RESERVE)


def choose_memory(requested: str, estimate: MemoryEstimate | None, free: int | None, batch: int,
                  pixels: int, micro: int | None = None) -> MemoryPlan:
    """How the `batch` exemplars of an update (`micro` = the paper's micro-batch,
    batch_size) go through the model. fast / lean as asked, in forwards of one micro-batch
    (lean: smaller pieces if even that does not fit); auto: fast in the largest forwards
    that fit (the whole update at once when it fits: the fastest on a GPU, same gradient),
    down to one micro-batch, else lean in the largest pieces that fit. Refuses (before
    training) when even lean with one exemplar per forward does not fit."""
    if requested not in ("auto", "fast", "lean"):
        raise RelationError(f"memory must be auto, fast or lean, got {requested!r}")
    micro = min(micro or batch, batch)
    needed = {} if estimate is None else {m: estimate.needed(m, micro, pixels) for m in ("fast", "lean")}
    if requested == "fast" or estimate is None or free is None:
        return MemoryPlan("lean" if requested == "lean" else "fast", micro, batch, requested, needed, free)
    # balanced pieces: 8 -> 8, 4, 3 (3+3+2), 2, 1
    chunks = sorted({-(-batch // n) for n in range(1, batch + 1)}, reverse=True)
    if requested == "auto":
        for chunk in (c for c in chunks if c >= micro):
            if estimate.needed("fast", chunk, pixels) <= free:
                return MemoryPlan("fast", chunk, batch, requested, needed, free,
                                  planned=estimate.needed("fast", chunk, pixels))
    for chunk in (c for c in chunks if c <= micro):
        if estimate.needed("lean", chunk, pixels) <= free:
            return MemoryPlan("lean", chunk, batch, requested, needed, free,
                              planned=estimate.needed("lean", chunk, pixels))
    one = estimate.needed("lean", 1, pixels)
    raise RelationError(
        f"not enough memory to train: even memory=lean with one exemplar per forward needs about "
        f"{one / GiB:.2f} GiB beyond the loaded weights, and {free / GiB:.2f} GiB is free "
        f"(fast at micro-batch {micro}: {needed['fast'] / GiB:.2f} GiB). Use smaller exemplar images "
        f"(Load Exemplars 'size'), close other models/applications, or use a smaller model")


# ----------------------------------------------------------------------- model sampling

def model_sampling(model):
    """The sigma schedule + parameterisation the host samples this MODEL with.

    Newer hosts route it through `get_model_object` (honours ModelSamplingDiscrete-style
    patches); 2024 hosts keep patches in `object_patches`.
    """
    if hasattr(model, "get_model_object"):
        return model.get_model_object("model_sampling")
    return getattr(model, "object_patches", {}).get("model_sampling", model.model.model_sampling)


def is_v_prediction(ms) -> bool:
    import comfy.model_sampling
    return isinstance(ms, comfy.model_sampling.V_PREDICTION)


def sigma_for_timestep(ms, t: torch.Tensor) -> torch.Tensor:
    """Discrete timestep index (0 = least noise) -> the host's sigma for it."""
    return ms.sigma(t.float())


def noisy_latent(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x = x0 + sigma * noise (k-diffusion form, sigma_data = 1); sigma per batch item.

    Written out rather than `ms.noise_scaling` because the 2024 host does not broadcast a
    per-item sigma there.
    """
    return x0 + noise * sigma.view(-1, *([1] * (x0.ndim - 1)))


def prediction_and_target(ms, x: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor,
                          sigma: torch.Tensor, denoised: torch.Tensor):
    """(model prediction, training target) in the model's own parameterisation.

    The host's `apply_model` returns the denoised estimate D. For eps models the network
    predicts eps = (x - D) / sigma with target `noise` (the ReVersion / diffusers loss); for
    v models it predicts v = (x/(s^2+1) - D) * sqrt(s^2+1)/s with target
    (noise - s*x0)/sqrt(s^2+1) (diffusers' v target in k-diffusion units).
    """
    s = sigma.view(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    if is_v_prediction(ms):
        root = torch.sqrt(s * s + 1.0)
        pred = (x / (s * s + 1.0) - denoised) * root / s
        target = (noise - s * x0) / root
        return pred, target
    return (x - denoised) / s, noise


# --------------------------------------------------------------------- token injection

class InjectedToken(torch.nn.Module):
    """Wraps a token-embedding module: rows of `token_id` come from `vector`.

    Exposes the wrapped table as `.weight` so host code that reads the table (sizes, the
    2024 host's textual-embedding set-up) keeps working.
    """

    def __init__(self, embedding: torch.nn.Module, token_id: int, vector: torch.Tensor):
        super().__init__()
        self.inner = embedding
        self.token_id = token_id
        self.vector = vector

    @property
    def weight(self):
        return self.inner.weight

    def forward(self, ids, out_dtype=None, **kwargs):
        base = self.inner(ids, out_dtype=out_dtype, **kwargs) if out_dtype is not None \
            else self.inner(ids, **kwargs)
        vec = self.vector.to(device=base.device, dtype=base.dtype)
        return torch.where((ids == self.token_id).unsqueeze(-1), vec, base)


@contextlib.contextmanager
def injected_token(text_encoder, token_id: int, vector: torch.Tensor):
    """Temporarily route `token_id` of one SDClipModel through `vector` (differentiable)."""
    transformer = text_encoder.transformer
    original = transformer.get_input_embeddings()
    transformer.set_input_embeddings(InjectedToken(original, token_id, vector))
    try:
        yield
    finally:
        transformer.set_input_embeddings(original)


def accepted(fn, **kwargs) -> dict:
    """The subset of kwargs that `fn` takes (host signatures differ between versions)."""
    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


# ------------------------------------------------------------------------ text encoders

# A single-BPE CLIP token (the same id in the CLIP-L/H/G vocabularies) that stands for the
# relation while tokenising. A word no prompt uses (a hashtag from CLIP's BPE merges), unlike
# trigger words such as "ohwx" or "sks"; a prompt that contains it anyway is refused by token
# id, so "wexmondays," cannot slip through as <R>.
STANDIN = "wexmondays"
RELATION_MARKERS = ("<R>", "<r>")


class RelationError(ValueError):
    """Bad relation input (prompt, family, name); the message names the fix."""


@dataclass
class TextEncoder:
    """One CLIP text encoder of a ComfyUI CLIP object (SDXL has two)."""
    key: str          # relation-file / embedding key: "clip_l", "clip_g", "clip_h"
    token_key: str    # key in `clip.tokenize()` output: "l", "g", "h"
    module: torch.nn.Module       # comfy.sd1_clip.SDClipModel
    tokenizer: object             # comfy.sd1_clip.SDTokenizer

    @property
    def table(self) -> torch.Tensor:
        return self.module.transformer.get_input_embeddings().weight

    @property
    def width(self) -> int:
        return int(self.table.shape[1])

    def content_ids(self, text: str) -> list[int]:
        """Token ids of `text` without start/end/padding tokens (any pad id)."""
        ids = []
        for chunk in self.tokenizer.tokenize_with_weights(text):
            toks = [t[0] for t in chunk]
            if toks and toks[0] == self.tokenizer.start_token:
                toks = toks[1:]
            if self.tokenizer.end_token in toks:
                toks = toks[:toks.index(self.tokenizer.end_token)]
            ids += [int(t) for t in toks]
        return ids

    def single_id(self, word: str, role: str) -> int:
        ids = self.content_ids(word)
        if len(ids) != 1:
            raise RelationError(f"{role} {word!r} is {len(ids)} tokens for the {self.key} tokenizer; "
                                f"use a single-token word such as 'and'")
        return ids[0]


def nearest_words(clip, vectors: dict[str, torch.Tensor], k: int = 5) -> dict[str, list[str]]:
    """Per encoder, the `k` whole-word tokens whose input embeddings are closest (cosine) to
    the vector: ReVersion's steering loss pulls <R> toward the basis prepositions."""
    out = {}
    for e in text_encoders(clip):
        table = torch.nn.functional.normalize(e.table.detach().float().cpu(), dim=-1)
        sims = table @ torch.nn.functional.normalize(vectors[e.key].float().cpu(), dim=0)
        words = []
        for i in sims.argsort(descending=True).tolist():
            token = e.tokenizer.inv_vocab.get(i, "")
            if token.endswith("</w>") and token[:-4].isalpha() and token[:-4] != STANDIN:
                words.append(token[:-4])
            if len(words) == k:
                break
        out[e.key] = words
    return out


def text_encoders(clip) -> list[TextEncoder]:
    """The CLIP-L/H/G encoders of a ComfyUI CLIP (SD1: l; SD2: h; SDXL: l + g)."""
    found = []
    for short in ("l", "h", "g"):
        module = getattr(clip.cond_stage_model, f"clip_{short}", None)
        tokenizer = getattr(clip.tokenizer, f"clip_{short}", None)
        if module is not None and tokenizer is not None:
            found.append(TextEncoder(f"clip_{short}", short, module, tokenizer))
    if not found:
        raise RelationError(f"unsupported text encoder {type(clip.cond_stage_model).__name__}: ReVersion "
                            f"needs a CLIP-L/H/G text encoder (SD1.x, SD2.x, SDXL)")
    return found


def check_family(relation, encoders: list[TextEncoder]) -> None:
    from reversion.relation_file import family_name
    widths = {e.key: e.width for e in encoders}
    if relation.widths != widths:
        raise RelationError(
            f"relation '{relation.name}' was trained for {relation.family} ({_widths_text(relation.widths)}) "
            f"but this CLIP is {family_name(widths)} ({_widths_text(widths)}); train the relation "
            f"on this model or load one made for it")


def _widths_text(widths: dict) -> str:
    return ", ".join(f"{k} {v}-d" for k, v in sorted(widths.items()))


def check_no_standin(encoders: list[TextEncoder], text: str, what: str) -> None:
    """Refuse text whose own tokens include the stand-in (it would silently become <R>)."""
    for e in encoders:
        if e.single_id(STANDIN, "stand-in") in e.content_ids(text):
            raise RelationError(f"{what} contains '{STANDIN}', the word this pack uses internally for the "
                                f"relation; rephrase that word")


def check_prompt(clip, text: str) -> str:
    """A prompt with <R> and without the stand-in word -> the text to tokenise."""
    spoken = text
    for m in RELATION_MARKERS:
        spoken = spoken.replace(m, " ")
    check_no_standin(text_encoders(clip), spoken, "the prompt")
    return relation_text(text)


def relation_text(text: str) -> str:
    """Prompt with every <R> replaced by the stand-in token (spaced: its own word)."""
    if not any(m in text for m in RELATION_MARKERS):
        raise RelationError("the prompt has no <R>: write it where the relation goes, e.g. 'a cat <R> a dog'")
    for m in RELATION_MARKERS:
        text = text.replace(m, f" {STANDIN} ")
    return text


def encode_with_relation(clip, relation, text: str):
    """CONDITIONING for `text` with <R> = the relation's vector(s).

    The vector takes the stand-in token's place in the host's token list (the documented
    "tensor as token" route that `embedding:name` also takes), so the result equals stock
    CLIPTextEncode with `embedding:<name>` written in place of <R>.
    """
    encoders = {e.token_key: e for e in text_encoders(clip)}
    check_family(relation, list(encoders.values()))
    tokens = clip.tokenize(check_prompt(clip, text))
    for token_key, chunks in tokens.items():
        enc = encoders[token_key]
        standin = enc.single_id(STANDIN, "stand-in")
        vector = relation.vectors[enc.key]
        tokens[token_key] = [[(vector,) + tuple(t[1:]) if isinstance(t[0], int) and t[0] == standin else t
                              for t in chunk] for chunk in chunks]
    if hasattr(clip, "encode_from_tokens_scheduled"):
        return clip.encode_from_tokens_scheduled(tokens)
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    return [[cond, {"pooled_output": pooled}]]


# ------------------------------------------------------------------------------ training

def vae_encode(vae, images: torch.Tensor, seed: int) -> torch.Tensor:
    """Exemplar IMAGE batch -> raw latents, once per training run (not every step).

    The 2024 host samples the VAE posterior with the global RNG; a seeded, forked RNG makes
    that sample part of "same seed, same result" without touching the host's RNG state."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.no_grad(), torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return vae.encode(images[..., :3]).detach().clone()


class ComfyBackend:
    """`reversion.trainer.Backend` for a ComfyUI MODEL + CLIP.

    Text goes through the host's own `encode_from_tokens` (clip skip, SDXL's l+g concat and
    pooled output included) with the relation vector routed in by `injected_token`; the
    UNet through `extra_conds` + `apply_model` (SDXL's `y` included), noise and targets
    through the host's `model_sampling`.
    """

    placeholder_text = STANDIN

    def __init__(self, model, clip, memory: str = "fast", interrupt=None):
        self.model, self.clip = model, clip
        self.memory = memory                  # requested: "auto" | "fast" | "lean"
        self.interrupt = interrupt or (lambda: None)   # raises to cancel; run before every UNet block
        self.plan: MemoryPlan | None = None
        self.last_estimate: MemoryEstimate | None = None
        self.guard: SavedTensorGuard | None = None
        self.encoders = text_encoders(clip)
        self.encoder_keys = [e.key for e in self.encoders]
        self.by_key = {e.key: e for e in self.encoders}
        self.standin_ids = {e.key: e.single_id(STANDIN, "stand-in") for e in self.encoders}
        self.ms = model_sampling(model)
        self.device = model.load_device
        self._tokens: dict[str, dict] = {}
        self._caption_ids: dict[tuple, list[int]] = {}

    def prepare(self) -> None:
        """Load to the compute device and make the weights usable by autograd (call in
        training_mode)."""
        import comfy.model_management as mm
        # whole models on the compute device: backprop through partially loaded weights is untested
        mm.load_models_gpu([self.model, self.clip.patcher], **accepted(mm.load_models_gpu, force_full_load=True))
        de_inference(self.model.model)
        de_inference(self.ms)
        de_inference(self.clip.cond_stage_model)
        self.guard = SavedTensorGuard([self.model.model, self.clip.cond_stage_model])

    def close(self) -> None:
        """Remove the clone hooks this backend put on host modules."""
        if self.guard is not None:
            self.guard.close()

    # -- memory
    def _probe(self, channels: int, batch: int, caption: str):
        """One forward (no backward) of `batch` exemplars at latent 8x8."""
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch, channels, 8, 8, generator=g)
        vectors = {k: v.requires_grad_(True) for k, v in self.initial_vectors("and").items()}
        return self._loss(vectors, x, [caption] * batch, torch.tensor([500] * batch),
                          torch.randn(x.shape, generator=g))

    def plan_memory(self, latents: torch.Tensor, caption: str, batch: int, micro: int | None = None) -> MemoryPlan:
        """Find where the host needs clones (one small forward) and, unless memory is
        "fast", estimate each mode's peak and choose how `batch` exemplars per update (in
        micro-batches of `micro`) go through the model (see `choose_memory`)."""
        channels = latents.shape[1]
        if self.memory == "fast":
            with self.guard.find_inplace():
                self._probe(channels, 1, caption)
            estimate = free = None
        else:
            import comfy.model_management as mm
            probes = {}
            for n in (1, 2):
                with self.guard.find_inplace() if n == 1 else contextlib.nullcontext(), \
                        self.guard.measuring():
                    self._probe(channels, n, caption)
                probes[n * 64] = self.guard.measured()
            estimate = self.last_estimate = MemoryEstimate(probes)
            free = int(mm.get_free_memory(self.device))
        self.plan = choose_memory(self.memory, estimate, free, batch, latents.shape[-2] * latents.shape[-1], micro)
        return self.plan

    # -- text side
    def initial_vectors(self, word: str) -> dict[str, torch.Tensor]:
        return {e.key: e.table[e.single_id(word, "init word")].detach().float().cpu().clone()
                for e in self.encoders}

    def steering_vocabulary(self, key: str):
        from reversion.steering import SteeringVocabulary
        return SteeringVocabulary(self.by_key[key].content_ids, placeholder_ids=[self.standin_ids[key]])

    def embedding_rows(self, key: str, ids: list[int]) -> torch.Tensor:
        table = self.by_key[key].table
        return table[torch.tensor(ids, dtype=torch.long, device=table.device)].detach().float().cpu()

    def caption_ids(self, key: str, caption: str) -> list[int]:
        if (key, caption) not in self._caption_ids:
            self._caption_ids[(key, caption)] = self.by_key[key].content_ids(caption)
        return self._caption_ids[(key, caption)]

    def check_templates(self, templates: list[list[str]]) -> None:
        """Every template against every tokenizer of the model, before the first update: a
        template that does not fit would otherwise fail whenever training first draws it."""
        for template in sorted({t for ts in templates for t in ts}):
            check_no_standin(self.encoders, template.replace("{}", " "), f"template {template!r}")
            self._tokenize(template.replace("{}", STANDIN), template)

    def _tokenize(self, caption: str, template: str | None = None) -> dict:
        """A caption's tokens (cached), refused unless it fits one 77-token chunk of every
        tokenizer with the stand-in in it exactly once; errors quote `template` if given."""
        if caption not in self._tokens:
            what = f"template {template!r}" if template else f"caption {caption!r}"
            tokens = self.clip.tokenize(caption)
            for key, chunks in tokens.items():
                enc = next(e for e in self.encoders if e.token_key == key)
                if len(chunks) != 1:
                    raise RelationError(f"{what} is {len(enc.content_ids(caption))} tokens for the {enc.key} "
                                        f"tokenizer; one caption holds at most 75 (a 77-token chunk less start "
                                        f"and end): shorten it")
                if [t[0] for t in chunks[0]].count(self.standin_ids[enc.key]) != 1:
                    raise RelationError(f"{what}: the relation slot '{{}}' must be a word of its own (spaces "
                                        f"around it) and appear once")
            self._tokens[caption] = tokens
        return self._tokens[caption]

    def encode(self, vectors: dict[str, torch.Tensor], caption: str):
        with contextlib.ExitStack() as stack:
            for e in self.encoders:
                stack.enter_context(injected_token(e.module, self.standin_ids[e.key], vectors[e.key]))
            return self.clip.encode_from_tokens(self._tokenize(caption), return_pooled=True)

    def encode_batch(self, vectors: dict[str, torch.Tensor], captions: list[str]):
        """All captions in ONE text-encoder call (cast copies of fp16 weights are then saved
        for backward once, not once per caption): each caption goes in as one 77-token
        chunk, the host encodes the chunks as a batch and concatenates them along the token
        axis; we cut that back into rows. The per-row pooled output (SDXL's `y`) is read
        from the encoder's own batched output (the host keeps only the first row)."""
        tokens: dict[str, list] = {}
        for caption in captions:
            for key, chunks in self._tokenize(caption).items():
                tokens.setdefault(key, []).extend(chunks)
        outputs: dict[str, tuple] = {}
        with contextlib.ExitStack() as stack:
            for e in self.encoders:
                stack.enter_context(injected_token(e.module, self.standin_ids[e.key], vectors[e.key]))
                stack.enter_context(_recording_encode(e.module, outputs, e.key))
            cond, pooled = self.clip.encode_from_tokens(tokens, return_pooled=True)
        n = len(captions)
        cond = cond.reshape(n, cond.shape[1] // n, cond.shape[-1])
        if pooled is not None:
            rows = [o[1] for o in outputs.values() if o[1] is not None and o[1].shape[-1] == pooled.shape[-1]]
            if len(rows) > 1:      # widths alike: compare values (a device sync, so only then)
                rows = [r for r in rows if torch.equal(r[:1].to(pooled), pooled)]
            rows = [r[:n] for r in rows]
            if not rows:
                raise RuntimeError("could not find the text encoder that produced the pooled output")
            pooled = rows[0].to(pooled)
        return cond, pooled

    # -- denoiser side
    def model_conds(self, cond: torch.Tensor, pooled, x: torch.Tensor) -> dict:
        out = self.model.model.extra_conds(cross_attn=cond, pooled_output=pooled, device=x.device, noise=x,
                                           width=x.shape[3] * 8, height=x.shape[2] * 8, prompt_type="positive")
        # the host builds some conds on the CPU (the 2024 host's SDXL size embedding); the
        # sampler moves them later, so we move them here
        return {k: v.cond.to(x.device) if torch.is_tensor(v.cond) else v.cond for k, v in out.items()}

    def _loss(self, vectors, latents, captions, timesteps, noise, lean: bool = False) -> torch.Tensor:
        guard = self.guard
        with guard.hooks(), unet_blocks(guard, checkpoint=lean, interrupt=self.interrupt), \
                text_layers(guard, self.clip.cond_stage_model, checkpoint=lean):
            guard.region = "text"
            cond, pooled = self.encode_batch(vectors, captions)
            guard.region = "other"
            cond = cond.to(self.device)
            pooled = None if pooled is None else pooled.to(self.device)
            x0 = self.model.model.process_latent_in(latents.to(self.device))
            noise = noise.to(x0)
            sigma = sigma_for_timestep(self.ms, timesteps.to(self.device)).to(x0)
            x = noisy_latent(x0, noise, sigma)
            denoised = self.model.model.apply_model(x, sigma, **self.model_conds(cond, pooled, x))
            pred, target = prediction_and_target(self.ms, x, x0, noise, sigma, denoised)
            return torch.nn.functional.mse_loss(pred.float(), target.float())

    def denoising_loss(self, vectors, latents, captions, timesteps, noise) -> torch.Tensor:
        """The update's denoising loss (mean over its exemplars); memory strategy per
        `self.plan`: forwards of `plan.chunk` exemplars, each backpropagated at once when
        there are several (lean: with checkpointed UNet blocks and CLIP layers). The gradient is the same
        either way."""
        if self.plan is None:
            self.plan_memory(latents, captions[0], len(captions))
        lean, n, chunk = self.plan.mode == "lean", len(captions), self.plan.chunk
        if chunk >= n:
            return self._loss(vectors, latents, captions, timesteps, noise, lean)
        keys = list(vectors)
        pieces = [(slice(i, min(i + chunk, n)), (min(i + chunk, n) - i) / n) for i in range(0, n, chunk)]

        def loss_of(piece, leaves):
            return self._loss(dict(zip(keys, leaves)), latents[piece], captions[piece], timesteps[piece],
                              noise[piece], lean)
        return _InPieces.apply(loss_of, pieces, *[vectors[k] for k in keys])


@contextlib.contextmanager
def _recording_encode(module, outputs: dict, key: str):
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


def sample_images(model, clip, vae, positive, seed: int, batch: int, size: int, steps: int = 20,
                  cfg: float = 4.0, sampler: str = "euler", scheduler: str = "normal") -> torch.Tensor:
    """`batch` images (IMAGE [B, size, size, 3]) for a CONDITIONING through the stock nodes:
    EmptyLatentImage -> KSampler (negative: the empty prompt) -> VAEDecode, under no_grad."""
    import nodes
    with torch.no_grad():
        (negative,) = nodes.CLIPTextEncode().encode(clip, "")
        (latent,) = nodes.EmptyLatentImage().generate(size, size, batch)
        (out,) = nodes.KSampler().sample(model, seed, steps, cfg, sampler, scheduler, positive, negative, latent)
        return nodes.VAEDecode().decode(vae, out)[0]


def sample_preview(model, clip, vae, vectors: dict[str, torch.Tensor], prompt: str, seed: int, steps: int,
                   size: int, cfg: float = 5.0) -> torch.Tensor:
    """One image of `prompt` (with <R>) drawn with the current vectors on the model being
    trained (`sample_images`, euler, fixed seed). Uses no random state of the training loop
    (the sampler seeds its own noise), and runs under no_grad rather than inference mode, so
    no inference tensors end up in host caches that the next training update would touch."""
    from reversion.relation_file import Relation
    relation = Relation({k: v.detach() for k, v in vectors.items()}, name="preview")
    with torch.no_grad():
        positive = encode_with_relation(clip, relation, prompt)
    return sample_images(model, clip, vae, positive, seed, 1, size, steps, cfg).float().cpu().clamp(0, 1)


def progress(total: int):
    """A ComfyUI progress bar (front-end progress; interrupts raise in server mode)."""
    import comfy.utils
    return comfy.utils.ProgressBar(total)


def check_interrupted() -> None:
    """Raise ComfyUI's InterruptProcessingException if the user pressed Cancel."""
    import comfy.model_management as mm
    mm.throw_exception_if_processing_interrupted()


def embeddings_directory() -> str:
    """Where relation files are written: $REVERSION_EMBEDDINGS_DIR if set (it must be one of
    ComfyUI's embeddings folders, so that `embedding:name` finds the file), else ComfyUI's
    first embeddings folder (models/embeddings)."""
    import folder_paths
    folders = folder_paths.get_folder_paths("embeddings")
    chosen = os.environ.get("REVERSION_EMBEDDINGS_DIR")
    if not chosen:
        return folders[0]
    if os.path.abspath(chosen) not in {os.path.abspath(f) for f in folders}:
        raise RelationError(f"REVERSION_EMBEDDINGS_DIR={chosen} is not one of ComfyUI's embeddings folders "
                            f"({', '.join(folders)}); add it in extra_model_paths.yaml or unset it")
    return chosen


def train_relation(model, clip, vae, exemplars, config, callback=None, memory: str = "auto",
                   checkpointing=None, start_relation=None):
    """Encode the exemplars once, then run the ReVersion loop on the host's model.

    Returns the `reversion.trainer.TrainResult`, with `.memory` = the memory plan used
    (`memory`: "auto", "fast" or "lean", see `choose_memory`). Host weights are not
    modified: they are only re-wrapped as normal (non-inference) tensors with the same
    values, and their requires_grad flags are restored after training. `start_relation`
    (a Relation for this CLIP) replaces the init word's embedding as the starting point.
    """
    import logging

    import comfy.model_management as mm
    from reversion import trainer
    if start_relation is not None:
        check_family(start_relation, text_encoders(clip))
    with training_mode():
        backend = ComfyBackend(model, clip, memory, interrupt=check_interrupted)
        backend.check_templates(exemplars.templates)     # fail in seconds, not after an hour
        latents = vae_encode(vae, exemplars.images, config.seed)
        backend.prepare()
        try:
            with frozen_weights(model.model, clip.cond_stage_model), memory_efficient_attention() as attention:
                caption = exemplars.templates[0][0].replace("{}", STANDIN)
                plan = backend.plan_memory(latents, caption, config.batch_size * config.grad_accum, config.batch_size)
                plan.attention = attention
                logging.info("ReVersion Train Relation: %s", plan.describe())
                result = trainer.train(backend, latents, exemplars.templates, config, callback,
                                       interrupt=check_interrupted, checkpointing=checkpointing,
                                       start_vectors=start_relation.vectors if start_relation is not None else None)
                result.memory = plan.as_dict()
                return result
        finally:
            backend.close()
            mm.soft_empty_cache()
