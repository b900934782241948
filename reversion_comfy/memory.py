"""Memory planning: how an update's exemplars go through the model.

`MemoryEstimate` fits "constant + per exemplar + per exemplar x pixel" to the bytes three
small probe forwards saved for backward; `choose_memory` turns it and the free memory into a
`MemoryPlan` (fast, lean or offload; exemplars per forward), or refuses with `NotEnoughMemory`
before training starts; `InPieces` runs an update in smaller forwards with the gradient of
one forward of everything. Plain torch: the backend measures, this module decides.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..reversion.errors import ConfigError, NotEnoughMemory

MODES = ("auto", "fast", "lean", "offload")


class InPieces(torch.autograd.Function):
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
    mode: str              # "fast" | "lean" | "offload" (lean, with weights kept off the device)
    chunk: int             # exemplars per forward: the update in pieces of `chunk`
    batch: int             # exemplars per update (batch_size x grad_accum)
    requested: str
    needed: dict           # estimated bytes per mode at one micro-batch ({} if not estimated)
    free: int | None
    attention: str = ""
    planned: int | None = None   # estimated bytes of this plan's forwards (if estimated)
    offload: int = 0             # bytes of weights to keep in CPU memory, cast to the device per use

    def describe(self) -> str:
        split = (f", {self.batch} exemplars per update in one forward" if self.chunk >= self.batch else
                 f", {self.batch} exemplars per update in forwards of {self.chunk}")
        what = {"lean": "gradient checkpointing of the UNet blocks and CLIP layers",
                "offload": f"gradient checkpointing, and {self.offload / GiB:.2f} GiB of weights kept in CPU memory "
                           f"and streamed to the device per use (slower: each block's weights cross the bus "
                           f"three times an update)"}.get(self.mode, "no checkpointing")
        est = "" if not self.needed else " (estimated per micro-batch " + ", ".join(
            f"{k} {v / GiB:.2f} GiB" for k, v in self.needed.items()) + \
            (f"; this plan {self.planned / GiB:.2f} GiB" if self.planned is not None else "") + \
            (f"; {self.free / GiB:.2f} GiB free)" if self.free is not None else ")")
        return f"memory {self.mode} [{self.requested}]: {what}{split}{est}; {self.attention}"

    def as_dict(self) -> dict:
        return {"mode": self.mode, "requested": self.requested, "chunk": self.chunk, "batch": self.batch,
                "needed_gib": {k: round(v / GiB, 3) for k, v in self.needed.items()},
                "planned_gib": None if self.planned is None else round(self.planned / GiB, 3),
                "free_gib": None if self.free is None else round(self.free / GiB, 3), "attention": self.attention,
                **({"offload_gib": round(self.offload / GiB, 3)} if self.mode == "offload" else {})}


class MemoryEstimate:
    """Peak training memory beyond the loaded weights, per mode, from three small probe
    forwards whose saved tensors are counted: one exemplar at latent 8x8, two at 8x8, one at
    16x16. Each part of the UNet's bytes is fitted as a constant (e.g. weight cast copies),
    a part per exemplar (cross-attention's keys and values of the 77 caption tokens: they
    grow with exemplars, not pixels) and a part per exemplar x latent pixel (activations;
    linear in pixels because attention is SDPA). The text encoders' bytes are fitted as a
    constant (ComfyUI computes an fp16-stored CLIP in fp32, and each layer saves the cast of
    its weight once per call, however many captions it holds) plus a part per caption. In
    lean, backward keeps the blocks' and layers' inputs and recomputes one block, or later
    one text layer, at a time: the peak holds the larger of the two, never both.

    The figures are bytes autograd saves; the live peak of a real step measured beside them
    (devtools/live_bytes.py, bench/bench_estimate.py) is what they are checked against.
    MARGIN covers what the count does not see (the allocator's slack, transient buffers).

    `probes`: {(exemplars, latent pixels): SavedTensorGuard.measured()} for (1, p), (2, p)
    and (1, q) with q > p; each exemplar has one caption."""

    MARGIN, RESERVE = 1.15, 256 * 1024 ** 2

    def __init__(self, probes: dict):
        (_, p), (_, q) = sorted(k for k in probes if k[0] == 1)
        base, more, bigger = probes[(1, p)], probes[(2, p)], probes[(1, q)]

        def fit(f):
            """(constant, per exemplar, per exemplar x latent pixel) of a part of the bytes."""
            per_pixel = max(0.0, (f(bigger) - f(base)) / (q - p))
            per_exemplar = max(0.0, f(more) - f(base) - per_pixel * p)
            return max(0.0, f(base) - per_exemplar - per_pixel * p), per_exemplar, per_pixel

        def per_caption(f):
            """(constant, per caption) of a part of the text encoders' bytes."""
            b = max(0.0, f(more) - f(base))
            return max(0.0, f(base) - b), b
        blocks = lambda m: [v for k, v in m.items() if k.startswith("block")]
        layers = lambda m: [v for k, v in m.items() if k.startswith("text") and k[4:].isdigit()]
        self.text = per_caption(lambda m: m.get("text", 0) + sum(layers(m)))
        # lean: the text encoders keep their layers' inputs and recompute one layer at a time
        self.text_kept = per_caption(lambda m: m.get("text", 0) + m.get("textinput", 0))
        self.text_layer = per_caption(lambda m: max(layers(m), default=0))
        # the UNet's part: the text encoders' regions ("text", "text<i>", "textinput") are per caption
        self.fast = fit(lambda m: sum(v for k, v in m.items() if not k.startswith(("text", "input"))))
        self.outside = fit(lambda m: sum(v for k, v in m.items() if k == "other"))
        self.inputs = fit(lambda m: sum(v for k, v in m.items() if k.startswith("input")))
        self.largest = fit(lambda m: max(blocks(m), default=0))

    @property
    def text_lean(self) -> tuple[float, float]:
        """lean's text bytes (constant, per caption), if its largest layer's recompute were
        all that backward held at once."""
        return tuple(a + b for a, b in zip(self.text_kept, self.text_layer))

    def needed(self, mode: str, batch: int, pixels: int) -> int:
        unet = lambda part: part[0] + (part[1] + part[2] * pixels) * batch
        captions = lambda part: part[0] + part[1] * batch
        if mode == "fast":
            saved = unet(self.fast) + captions(self.text)
        else:
            kept = unet(self.outside) + unet(self.inputs) + captions(self.text_kept)
            saved = kept + max(unet(self.largest), captions(self.text_layer))
        return int(self.MARGIN * saved + self.RESERVE)


def choose_memory(requested: str, estimate: MemoryEstimate | None, free: int | None, batch: int,
                  pixels: int, micro: int | None = None, most: int | None = None, movable: int = 0,
                  streamed: int = 0) -> MemoryPlan:
    """How the `batch` exemplars of an update (`micro` = the paper's micro-batch,
    batch_size) go through the model. fast / lean as asked, in forwards of one micro-batch
    (lean: smaller pieces if even that does not fit); auto: fast in the largest forwards
    that fit (the whole update at once when it fits: the fastest on a GPU, same gradient),
    down to one micro-batch, else lean in the largest pieces that fit, else offload: lean
    with as much of the `movable` weights kept in CPU memory as makes room (a block's
    `streamed` weights then come to the device per use). offload as asked keeps all it
    can there. `most` caps the exemplars per forward (a benchmark's forced split; default:
    no cap). Refuses (before training) what cannot fit even so, with the numbers."""
    if requested not in MODES:
        raise ConfigError(f"memory must be one of {', '.join(MODES)}, got {requested!r}")
    micro = min(micro or batch, batch)
    most = min(most or batch, batch)
    needed = {} if estimate is None else {m: estimate.needed(m, micro, pixels) for m in ("fast", "lean")}
    if requested == "offload":
        if not movable:
            raise NotEnoughMemory(OFFLOAD_UNAVAILABLE)
        chunk = min(micro, most)
        return MemoryPlan("offload", chunk, batch, requested, needed, free, offload=movable,
                          planned=None if estimate is None else estimate.needed("lean", chunk, pixels) + streamed)
    if requested == "fast" or estimate is None or free is None:
        return MemoryPlan("lean" if requested == "lean" else "fast", min(micro, most), batch, requested, needed, free)
    # balanced pieces: 8 -> 8, 4, 3 (3+3+2), 2, 1
    chunks = sorted({-(-batch // n) for n in range(1, batch + 1)}, reverse=True)
    if requested == "auto":
        for chunk in (c for c in chunks if min(micro, most) <= c <= most):
            if estimate.needed("fast", chunk, pixels) <= free:
                return MemoryPlan("fast", chunk, batch, requested, needed, free,
                                  planned=estimate.needed("fast", chunk, pixels))
    for chunk in (c for c in chunks if c <= min(micro, most)):
        if estimate.needed("lean", chunk, pixels) <= free:
            return MemoryPlan("lean", chunk, batch, requested, needed, free,
                              planned=estimate.needed("lean", chunk, pixels))
    if requested == "auto" and movable:
        for chunk in (c for c in chunks if c <= min(micro, most)):
            short = estimate.needed("lean", chunk, pixels) + streamed - free
            if short <= movable:
                return MemoryPlan("offload", chunk, batch, requested, needed, free, offload=short,
                                  planned=estimate.needed("lean", chunk, pixels) + streamed)
    one = estimate.needed("lean", 1, pixels)
    room = f" even with {movable / GiB:.2f} GiB of weights kept in CPU memory," if requested == "auto" and movable else ""
    raise NotEnoughMemory(
        f"not enough memory to train:{room} memory=lean with one exemplar per forward needs about "
        f"{one / GiB:.2f} GiB beyond the loaded weights, and {free / GiB:.2f} GiB is free "
        f"(fast at micro-batch {micro}: {needed['fast'] / GiB:.2f} GiB). Use smaller exemplar images "
        f"(Load Exemplars 'size'), close other models/applications, or use a smaller model"
        + ("" if requested != "lean" else "; memory=auto or offload may keep part of the weights in CPU memory"))


OFFLOAD_UNAVAILABLE = ("memory=offload needs a ComfyUI that can keep part of a loaded model in CPU memory "
                       "(partial unloading, ComfyUI 0.3 and later); this one cannot: use lean, smaller "
                       "exemplar images, or a newer ComfyUI")
