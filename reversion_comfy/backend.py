"""`ComfyBackend`: the `reversion.trainer.Backend` for a ComfyUI MODEL + CLIP.

The trainer loop asks it for the init word's vectors, the steering loss's token rows and
the denoising loss of an update. Text goes through the host's own `encode_from_tokens`
with the relation vector injected (text.py); the UNet through the model's `extra_conds`
(SDXL's `y` included) and `apply_model` as the sampler calls it, with the patches other
nodes put on the MODEL; noise and targets through the host's `model_sampling`
(sampling.py). How an update's exemplars go through the model is the memory plan's
decision (memory.py); the gradient is the same in every plan.
"""
from __future__ import annotations

import contextlib

import torch

from ..reversion.steering import SteeringVocabulary
from ..reversion.words import standins
from . import host
from .guards import SavedTensorGuard, de_inference
from .memory import InPieces, MemoryEstimate, MemoryPlan, choose_memory
from .patches import text_layers, unet_blocks
from .sampling import apply_model, model_sampling, noisy_latent, prediction_and_target, sigma_for_timestep
from .text import Captions

PROBES = ((1, 8), (2, 8), (1, 16))     # the memory probes: (exemplars, latent side), small so they cost little


class ComfyBackend:
    """The trainer's view of a ComfyUI MODEL + CLIP (see the module docstring)."""

    def __init__(self, model, clip, memory: str = "fast", interrupt=None, num_vectors: int = 1):
        self.model, self.clip = model, clip
        self.standin = standins(num_vectors)      # one stand-in per relation vector
        self.memory = memory                  # requested: one of memory.MODES
        self.interrupt = interrupt or (lambda: None)   # raises to cancel; run before every UNet block
        self.plan: MemoryPlan | None = None
        self.last_estimate: MemoryEstimate | None = None
        self.guard: SavedTensorGuard | None = None
        self._offloaded: list = []            # (patcher, bytes left on the device) after offload()
        self.captions = Captions(clip, num_vectors)
        self.encoders = self.captions.encoders
        self.encoder_keys = [e.key for e in self.encoders]
        self.ms = model_sampling(model)
        self.device = model.load_device

    def prepare(self) -> None:
        """Load to the compute device and make the weights usable by autograd (call in
        training_mode)."""
        host.load_for_training(self.model, self.clip)
        de_inference(self.model.model)
        de_inference(self.ms)
        de_inference(self.clip.cond_stage_model)
        self.guard = SavedTensorGuard([self.model.model, self.clip.cond_stage_model])

    def close(self) -> None:
        """Remove the clone hooks this backend put on host modules."""
        if self.guard is not None:
            self.guard.close()

    # -- memory
    def _probe(self, channels: int, batch: int, caption: str, side: int = PROBES[0][1]):
        """One forward (no backward) of `batch` exemplars at a small latent."""
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch, channels, side, side, generator=g)
        vectors = {k: v.requires_grad_(True) for k, v in self.initial_vectors("and").items()}
        return self._loss(vectors, x, [caption] * batch, torch.tensor([500] * batch),
                          torch.randn(x.shape, generator=g))

    def plan_memory(self, latents: torch.Tensor, caption: str, batch: int, micro: int | None = None,
                    most: int | None = None) -> MemoryPlan:
        """Find where the host needs clones (one small forward) and, unless memory is
        "fast", estimate each mode's peak and choose how `batch` exemplars per update (in
        micro-batches of `micro`, at most `most` per forward) go through the model (see
        `choose_memory`)."""
        channels = latents.shape[1]
        with self.guard.probing():          # cut into sections: a probe never holds a whole forward
            if self.memory == "fast":
                with self.guard.find_inplace():
                    self._probe(channels, 1, caption)
                estimate = free = None
            else:
                probes = {}
                for i, (n, side) in enumerate(PROBES):
                    with self.guard.find_inplace() if i == 0 else contextlib.nullcontext(), \
                            self.guard.measuring():
                        self._probe(channels, n, caption, side)
                    probes[(n, side * side)] = self.guard.measured()
                estimate = self.last_estimate = MemoryEstimate(probes)
                free = host.free_memory(self.device)
        movable, streamed = self.offloadable()
        self.plan = choose_memory(self.memory, estimate, free, batch, latents.shape[-2] * latents.shape[-1], micro,
                                  most, movable, streamed)
        return self.plan

    def offloadable(self) -> tuple[int, int]:
        """(bytes of weights this host could keep in CPU memory, the most of them one UNet
        block streams to the device at once): (0, 0) where it cannot offload."""
        if not host.can_offload(self.model):
            return 0, 0
        castable = lambda m: sum(p.numel() * p.element_size() for p in m.parameters(recurse=False)) \
            if hasattr(m, "comfy_cast_weights") else 0
        movable = sum(castable(m) for root in (self.model.model, self.clip.cond_stage_model) for m in root.modules())
        unet = self.model.model.diffusion_model
        blocks = [*getattr(unet, "input_blocks", []), getattr(unet, "middle_block", None), *getattr(unet, "output_blocks", [])]
        streamed = max((sum(castable(m) for m in b.modules()) for b in blocks if b is not None), default=0)
        return movable, streamed

    def offload(self) -> int:
        """Move the plan's share of the weights to CPU memory (memory=offload), then make what
        moved usable by autograd again (the host restores its unpatched weights as they were)."""
        patchers = [self.model, self.clip.patcher]
        moved = host.offload(patchers, self.plan.offload)
        self._offloaded = [(p, host.loaded_bytes(p)) for p in patchers]
        de_inference(self.model.model)
        de_inference(self.clip.cond_stage_model)
        return moved

    def keep_offloaded(self) -> None:
        """After a preview: the sampler loaded what fits, undo that so the next update has the
        room the plan counted on (no-op unless offloaded)."""
        moved = sum(host.keep_offloaded(p, loaded) for p, loaded in self._offloaded if loaded is not None)
        if moved:
            de_inference(self.model.model)
            de_inference(self.clip.cond_stage_model)

    # -- text side (the steering loss reads the frozen input token table)
    def initial_vectors(self, word: str) -> dict[str, torch.Tensor]:
        return {e.key: e.table[e.single_id(word, "init word")].detach().float().cpu().clone()
                for e in self.encoders}

    def steering_vocabulary(self, key: str) -> SteeringVocabulary:
        return SteeringVocabulary(self.captions.by_key[key].content_ids,
                                  placeholder_ids=[self.captions.standin_ids[key]])

    def embedding_rows(self, key: str, ids: list[int]) -> torch.Tensor:
        table = self.captions.by_key[key].table
        return table[torch.tensor(ids, dtype=torch.long, device=table.device)].detach().float().cpu()

    def caption_ids(self, key: str, caption: str) -> list[int]:
        return self.captions.content_ids(key, caption)

    def check_templates(self, templates: list[list[str]]) -> None:
        self.captions.check_templates(templates)

    # -- denoiser side
    def model_conds(self, cond: torch.Tensor, pooled, x: torch.Tensor) -> dict:
        out = self.model.model.extra_conds(cross_attn=cond, pooled_output=pooled, device=x.device, noise=x,
                                           width=x.shape[3] * 8, height=x.shape[2] * 8, prompt_type="positive")
        # the host builds some conds on the CPU (the 2024 host's SDXL size embedding); the
        # sampler moves them later, so we move them here
        return {k: v.cond.to(x.device) if torch.is_tensor(v.cond) else v.cond for k, v in out.items()}

    def _errors(self, vectors, latents, captions, timesteps, noise, lean: bool = False) -> torch.Tensor:
        """Per exemplar: the mean squared error of the model's prediction against its target."""
        guard = self.guard
        with guard.hooks(), unet_blocks(guard, checkpoint=lean, interrupt=self.interrupt), \
                text_layers(guard, self.clip.cond_stage_model, checkpoint=lean):
            guard.region = "text"
            cond, pooled = self.captions.encode_batch(vectors, captions)
            guard.region = "other"
            cond = cond.to(self.device)
            pooled = None if pooled is None else pooled.to(self.device)
            x0 = self.model.model.process_latent_in(latents.to(self.device))
            noise = noise.to(x0)
            sigma = sigma_for_timestep(self.ms, timesteps.to(self.device)).to(x0)
            x = noisy_latent(x0, noise, sigma)
            denoised = apply_model(self.model, x, sigma, self.model_conds(cond, pooled, x))
            pred, target = prediction_and_target(self.ms, x, x0, noise, sigma, denoised)
            return (pred.float() - target.float()).pow(2).flatten(1).mean(1)

    def _loss(self, vectors, latents, captions, timesteps, noise, lean: bool = False) -> torch.Tensor:
        return self._errors(vectors, latents, captions, timesteps, noise, lean).mean()

    def denoising_loss(self, vectors, latents, captions, timesteps, noise, swap=None) -> torch.Tensor:
        """The update's denoising loss (mean over its exemplars); memory strategy per
        `self.plan`: forwards of `plan.chunk` exemplars, each backpropagated at once when
        there are several (lean: with checkpointed UNet blocks and CLIP layers). The
        gradient is the same either way. `swap` (reversion.swap.SwapTerm): each exemplar's
        swapped caption goes through the same forward as its own, and the loss adds the term."""
        if self.plan is None:
            self.plan_memory(latents, captions[0], len(captions))
        if swap is not None:
            return self._with_swap(vectors, latents, captions, timesteps, noise, swap)
        lean, n, chunk = self.plan.mode in ("lean", "offload"), len(captions), self.plan.chunk
        if chunk >= n:
            return self._loss(vectors, latents, captions, timesteps, noise, lean)
        keys = list(vectors)
        pieces = [(slice(i, min(i + chunk, n)), (min(i + chunk, n) - i) / n) for i in range(0, n, chunk)]

        def loss_of(piece, leaves):
            return self._loss(dict(zip(keys, leaves)), latents[piece], captions[piece], timesteps[piece],
                              noise[piece], lean)
        return InPieces.apply(loss_of, pieces, *[vectors[k] for k in keys])

    def _with_swap(self, vectors, latents, captions, timesteps, noise, swap) -> torch.Tensor:
        """Pieces of exemplars, each forward holding a piece's own captions and then its
        swapped ones (so an exemplar's two errors meet in one forward); `plan.chunk` counts
        forward rows."""
        lean, n, chunk = self.plan.mode in ("lean", "offload"), len(captions), self.plan.chunk
        size = n if n + swap.used <= chunk else max(1, chunk // 2)
        keys = list(vectors)

        def loss_of(piece, leaves):
            swapped = swap.rows(piece)
            rows = list(piece) + swapped
            texts = [captions[i] for i in piece] + [swap.captions[i] for i in swapped]
            errors = self._errors(dict(zip(keys, leaves)), latents[rows], texts, timesteps[rows], noise[rows], lean)
            return swap.piece_loss(errors, piece, n)
        pieces = [range(i, min(i + size, n)) for i in range(0, n, size)]
        if len(pieces) == 1:
            return loss_of(pieces[0], [vectors[k] for k in keys])
        return InPieces.apply(loss_of, [(p, 1.0) for p in pieces], *[vectors[k] for k in keys])
