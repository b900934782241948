"""The ReVersion training loop: learn one relation vector on a frozen diffusion model.

Everything model-specific sits behind `Backend` (for ComfyUI: `reversion_comfy/backend.py`);
this loop is the whole method and holds no host code:

    for each update (3000):
        for each of `grad_accum` micro-batches (4) of `batch_size` exemplars (2):
            caption  = a random template of each exemplar, "{}" -> the stand-in
            t        ~ relation-focal p(t)            (timesteps.py)
            L_steer  = InfoNCE(<R>; 4 random prepositions per sample; caption content words)
        L_den = MSE(model prediction, eps or v target) over all 8 exemplars
        (L_den + 0.01 * mean L_steer) -> backward; AdamW step on the relation vector only

Beyond the paper, off by default (see swap.py): `swap_weight` > 0 adds swapped-object
negatives (each exemplar's caption with its objects swapped must denoise worse than its
own, at the same timestep and noise), and `num_vectors` > 1 gives <R> several token vectors.

The paper accumulates the micro-batches one by one; this is the same gradient (equal-sized
micro-batches: the mean over all = the mean of the micro-batch means) with the same random
draws, and the backend chooses how many exemplars go through the model at once: all of
them when memory allows (fastest on a GPU), else pieces, each backpropagated at once.

Defaults are the paper's: lr 2.5e-4 scaled by batch x accumulation (= 2e-3), weight
decay 1e-2, init word "and", seed 2023.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch

from . import checkpoint, steering, swap, timesteps, words
from .checkpoint import Checkpointing
from .errors import ConfigError, TrainingDiverged
from .health import UpdateHealth

MAX_VECTORS = 4            # token vectors <R> may train with (the paper: 1; kohya/OneTrainer allow several)


@dataclass
class TrainConfig:
    steps: int = 3000                     # optimizer updates
    batch_size: int = 2
    grad_accum: int = 4
    base_lr: float = 2.5e-4
    scale_lr: bool = True                 # lr = base_lr * batch_size * grad_accum
    weight_decay: float = 1e-2
    adam_betas: tuple = (0.9, 0.999)
    adam_eps: float = 1e-8
    steering_weight: float = 0.01
    num_positives: int = steering.NUM_POSITIVES
    temperature: float = steering.TEMPERATURE
    focal_alpha: float = timesteps.ALPHA  # 0 = uniform timesteps
    init_word: str = "and"
    seed: int = 2023
    swap_weight: float = 0.0              # swapped-object negatives (swap.py); 0 = the paper
    swap_margin: float = swap.MARGIN
    num_vectors: int = 1                  # token vectors of <R> per text encoder (the paper: 1)

    @property
    def lr(self) -> float:
        return self.base_lr * self.batch_size * self.grad_accum if self.scale_lr else self.base_lr

    def check(self) -> "TrainConfig":
        for name in ("base_lr", "weight_decay", "steering_weight", "temperature", "focal_alpha", "adam_eps",
                     "swap_weight", "swap_margin"):
            if not math.isfinite(getattr(self, name)):      # NaN passes every < / > range check
                raise ConfigError(f"{name} must be a finite number, got {getattr(self, name)}")
        for name in ("steps", "batch_size", "grad_accum", "num_positives"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 1 <= self.num_vectors <= MAX_VECTORS:
            raise ConfigError(f"num_vectors must be 1 to {MAX_VECTORS}, got {self.num_vectors}")
        if self.base_lr <= 0:
            raise ConfigError(f"learning rate must be positive, got {self.base_lr}")
        if not 0.0 <= self.focal_alpha <= 1.0:
            raise ConfigError(f"focal alpha must be in [0, 1], got {self.focal_alpha}")
        if self.temperature <= 0 or self.weight_decay < 0 or self.steering_weight < 0:
            raise ConfigError(f"temperature must be positive and weight decay and steering weight not negative, "
                              f"got {self.temperature}, {self.weight_decay}, {self.steering_weight}")
        if self.swap_weight < 0 or self.swap_margin < 0:
            raise ConfigError(f"swap weight and margin must not be negative, got {self.swap_weight}, {self.swap_margin}")
        if not self.init_word.strip():
            raise ConfigError("init word must not be empty (the paper uses 'and')")
        return self

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["lr"] = self.lr
        d["adam_betas"] = list(self.adam_betas)
        return d


class Backend(Protocol):
    """What the loop needs from a frozen text-to-image model."""

    encoder_keys: list[str]               # text encoders that get a vector: ["clip_l"], ["clip_l", "clip_g"]
    standin: str                          # the word(s) tokenised where a template's "{}" was: one per vector

    def initial_vectors(self, word: str) -> dict[str, torch.Tensor]: ...
    def steering_vocabulary(self, key: str) -> steering.SteeringVocabulary: ...
    def embedding_rows(self, key: str, ids: list[int]) -> torch.Tensor: ...
    def caption_ids(self, key: str, caption: str) -> list[int]: ...
    # the mean denoising loss over an update's exemplars (all its micro-batches), in as many
    # forwards as the backend's memory needs: the gradient must not depend on that choice.
    # With `swap` (only passed when swap_weight > 0): each forward also runs the swapped
    # captions of its exemplars and returns `swap.piece_loss` of the per-exemplar errors
    def denoising_loss(self, vectors: dict[str, torch.Tensor], latents: torch.Tensor,
                       captions: list[str], timesteps: torch.Tensor, noise: torch.Tensor,
                       swap: "swap.SwapTerm | None" = None) -> torch.Tensor: ...


@dataclass
class TrainResult:
    vectors: dict[str, torch.Tensor]
    history: list[dict] = field(default_factory=list)   # one record per update
    stopped_early: bool = False
    seconds: float = 0.0
    memory: dict = field(default_factory=dict)      # the backend's memory plan (ComfyBackend's)
    left_out: list = field(default_factory=list)    # what of the model the backend could not apply

    @property
    def steps_done(self) -> int:
        return len(self.history)

    def final_losses(self, window: int = 50) -> dict:
        recent = self.history[-window:]
        if not recent:
            return {}
        return {k: sum(r[k] for r in recent) / len(recent) for k in ("loss", "denoise", "steer", "swap")
                if k in recent[-1]}


# callback(step, total, record, vectors): after every update; returning True stops early
StepCallback = Callable[[int, int, dict, dict], "bool | None"]


def train(backend: Backend, latents: torch.Tensor, templates: list[list[str]], config: TrainConfig,
          callback: StepCallback | None = None, interrupt: Callable[[], None] | None = None,
          checkpointing: Checkpointing | None = None,
          start_vectors: dict[str, torch.Tensor] | None = None) -> TrainResult:
    """Learn the relation vector(s). `latents[i]` is exemplar i, already VAE-encoded once.

    `callback(step, total, record, vectors)` runs after every update (progress, previews,
    interruption); returning True stops early with the vectors learned so far. `interrupt()` runs before
    each update and between its forward and backward pass, and raises to cancel (a
    backend may check more often: ComfyBackend does before every UNet block).
    `checkpointing` saves the run every few updates and when it is cancelled or fails, and
    resumes one (checkpoint.py). `start_vectors` continue from a saved relation instead of
    the init word's embedding.
    """
    interrupt = interrupt or (lambda: None)
    config.check()
    if latents.shape[0] != len(templates):
        raise ValueError(f"{latents.shape[0]} latents but {len(templates)} template lists")
    gen = torch.Generator().manual_seed(config.seed)
    rng = random.Random(config.seed)
    sampler = timesteps.FocalTimestepSampler(config.focal_alpha, generator=gen)
    start_vectors = starting_vectors(start_vectors or backend.initial_vectors(config.init_word), config.num_vectors)
    vectors = {k: torch.nn.Parameter(start_vectors[k].detach().float().clone()) for k in backend.encoder_keys}
    optimizer = torch.optim.AdamW(list(vectors.values()), lr=config.lr, betas=tuple(config.adam_betas),
                                  eps=config.adam_eps, weight_decay=config.weight_decay)
    vocabularies = {k: backend.steering_vocabulary(k) for k in backend.encoder_keys}
    order = ExemplarOrder(len(templates), gen)
    result = TrainResult(vectors={})
    resume = checkpointing.resume_from if checkpointing else None
    if resume is not None:
        checkpoint.check_compatible(resume, config.as_dict(), checkpointing.fingerprint, checkpointing.model, vectors)
        result.history = checkpoint.restore(resume, vectors, optimizer, gen, rng, order)
    boundary = checkpoint.boundary(gen, rng, order)       # random state after the last complete update

    def snapshot(stopped: str = "") -> dict:
        return checkpoint.snapshot(result.history, vectors, optimizer, boundary, config.as_dict(),
                                   checkpointing.fingerprint, checkpointing.model, stopped)

    health = UpdateHealth(start_vectors, config)        # norms of where the run began
    start = time.perf_counter()
    try:
        for step in range(result.steps_done, config.steps):
            interrupt()
            micro_batches = [draw_micro_batch(latents, templates, config, backend, order, rng, sampler, gen)
                             for _ in range(config.grad_accum)]
            # steering first: its embedding rows are read back to the CPU, which on a GPU
            # waits for all queued work; before the UNet forward is queued that is nothing
            steer = torch.stack([steering_term(backend, vectors, vocabularies, config, m)
                                 for m in micro_batches]).mean()
            term = swap_term(micro_batches, config)
            if term is None:
                model_loss = backend.denoising_loss(vectors, *merged(micro_batches))
            else:                     # denoising + swap_weight x ranking, in the backend's pieces
                model_loss = backend.denoising_loss(vectors, *merged(micro_batches), swap=term)
            loss = model_loss.float() + config.steering_weight * steer.to(model_loss.device)
            interrupt()
            loss.backward()
            totals = {"loss": float(loss.detach()), "denoise": float(model_loss.detach()),
                      "steer": float(steer.detach())}
            if term is not None:
                totals.update(denoise=float(term.parts["denoise"]), swap=float(term.parts["swap"]))
            health.losses(step + 1, totals, vectors)          # NaN/Inf: stop before the step poisons AdamW
            last_good = ({k: v.detach().clone() for k, v in vectors.items()}, copy.deepcopy(optimizer.state_dict()))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            try:
                health.vectors(step + 1, vectors)
            except TrainingDiverged:
                with torch.no_grad():                          # the checkpoint keeps the update before
                    for k, v in vectors.items():
                        v.copy_(last_good[0][k])
                optimizer.load_state_dict(last_good[1])
                raise
            boundary = checkpoint.boundary(gen, rng, order)
            record = {"step": step + 1, **totals}
            result.history.append(record)
            if checkpointing and checkpointing.every and (step + 1) % checkpointing.every == 0:
                checkpointing.save(snapshot(), checkpoint.PERIODIC)
            if callback is not None and callback(step + 1, config.steps, record, vectors):
                result.stopped_early = step + 1 < config.steps
                break
    except BaseException as error:
        # Cancel or a failure mid-update: keep every completed update (the partial one's
        # gradients are dropped; the generators are rewound to the update boundary)
        if checkpointing and result.steps_done > (resume or {}).get("step", 0):
            stopped = str(error) if isinstance(error, TrainingDiverged) else ""
            checkpointing.save(snapshot(stopped), checkpoint.STOPPED)
        raise

    if checkpointing and result.history and (not checkpointing.every or result.steps_done % checkpointing.every):
        checkpointing.save(snapshot(), checkpoint.END)   # the end state too: raise `steps` and resume to train on
    result.vectors = {k: v.detach().clone() for k, v in vectors.items()}
    result.seconds = time.perf_counter() - start
    return result


def starting_vectors(start: dict[str, torch.Tensor], count: int) -> dict[str, torch.Tensor]:
    """[D] per encoder for one vector; [count, D] for several (the init word's embedding in
    every row: the rows still learn apart, as each sits at its own position in the caption)."""
    out = {}
    for k, v in start.items():
        rows = v.reshape(-1, v.shape[-1])
        if rows.shape[0] == 1:
            rows = rows.expand(count, -1)
        if rows.shape[0] != count:
            raise ConfigError(f"the starting relation has {rows.shape[0]} vectors, num_vectors is {count}: "
                              f"set num_vectors to {rows.shape[0]}, or start from the init word")
        out[k] = rows[0].clone() if count == 1 else rows.clone()
    return out


@dataclass
class MicroBatch:
    latents: torch.Tensor
    captions: list[str]
    timesteps: torch.Tensor
    noise: torch.Tensor
    positive_words: list[list[str]]
    swapped: list[str | None]        # captions with the objects swapped (swap_weight > 0; else all None)


def draw_micro_batch(latents, templates, config: TrainConfig, backend: Backend, order: "ExemplarOrder",
                     rng: random.Random, sampler, gen: torch.Generator) -> MicroBatch:
    """One micro-batch's random draws, in the order the loop has always drawn them (so
    seeds and checkpoints give the same run whether or not micro-batches are merged)."""
    idx = [order.next() for _ in range(config.batch_size)]
    chosen = [rng.choice(templates[i]) for i in idx]
    captions = [words.fill(t, backend.standin) for t in chosen]
    swapped = [swap.swap_template(t) if config.swap_weight > 0 else None for t in chosen]
    swapped = [None if t is None else words.fill(t, backend.standin) for t in swapped]
    positive_words = [steering.sample_positive_words(rng, config.num_positives) for _ in idx]
    batch = latents[idx]
    t = sampler.sample(len(idx))
    noise = torch.randn(batch.shape, generator=gen).to(batch.device, batch.dtype)
    return MicroBatch(batch, captions, t, noise, positive_words, swapped)


def swap_term(micro_batches: list[MicroBatch], config: TrainConfig) -> "swap.SwapTerm | None":
    """The update's swapped-object term, or None (off, or no exemplar drawn at a high enough
    timestep with a template that swaps)."""
    swapped = [c if t >= swap.FROM_T else None for m in micro_batches for c, t in zip(m.swapped, m.timesteps.tolist())]
    if config.swap_weight <= 0 or all(c is None for c in swapped):
        return None
    return swap.SwapTerm(swapped, config.swap_weight, config.swap_margin)


def merged(micro_batches: list[MicroBatch]) -> tuple:
    """(latents, captions, timesteps, noise) of all micro-batches, for one denoising_loss."""
    return (torch.cat([m.latents for m in micro_batches]), [c for m in micro_batches for c in m.captions],
            torch.cat([m.timesteps for m in micro_batches]), torch.cat([m.noise for m in micro_batches]))


def steering_term(backend: Backend, vectors, vocabularies, config: TrainConfig, m: MicroBatch) -> torch.Tensor:
    """The steering loss of one micro-batch: negatives are its own captions' words (as in
    the paper, where each micro-batch is a separate forward), averaged over text encoders."""
    return torch.stack([
        steering.steering_loss(
            vectors[k],
            backend.embedding_rows(k, vocabularies[k].positive_ids(m.positive_words)),
            backend.embedding_rows(k, vocabularies[k].negative_ids([backend.caption_ids(k, c) for c in m.captions])),
            config.temperature)
        for k in backend.encoder_keys]).mean()


class ExemplarOrder:
    """Exemplar indices, a fresh random permutation per epoch (every image equally often);
    its position is part of a checkpoint."""

    def __init__(self, n: int, gen: torch.Generator):
        self.n, self.gen, self.perm, self.pos = n, gen, [], 0

    def next(self) -> int:
        if self.pos == len(self.perm):
            self.perm, self.pos = torch.randperm(self.n, generator=self.gen).tolist(), 0
        self.pos += 1
        return self.perm[self.pos - 1]

    def state(self) -> dict:
        return {"perm": list(self.perm), "pos": self.pos}

    def load_state(self, state: dict) -> None:
        self.perm, self.pos = list(state["perm"]), int(state["pos"])
