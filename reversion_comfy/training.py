"""Training a relation on the host's model: the entry points.

- `train_relation`: the ReVersion loop (reversion/trainer.py) on a ComfyUI MODEL + CLIP +
  VAE: exemplars VAE-encoded once, models loaded and made usable by autograd, host weights
  frozen, attention on SDPA, a memory plan, then the loop. Used by Train Relation, the
  benchmarks and the tests.
- `train_and_save`: everything Train Relation does, in order; every check that can fail
  runs before the first update (name, checkpoint, settings, preview prompt, templates).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..reversion import checkpoint, swap, trainer
from ..reversion.relation_file import Relation, family_name
from ..reversion.trainer import TrainConfig, TrainResult
from ..reversion.words import PLACEHOLDER, fill
from . import host, store
from .backend import ComfyBackend
from .guards import frozen_weights, training_mode
from .keeping import RunKeeper
from .loss_plot import loss_curve
from .patches import memory_efficient_attention
from .progress import format_seconds, progress_callback
from .sampling import sample_preview, sampler_only_patches, vae_encode
from .text import check_family, check_prompt, nearest_words, text_encoders

log = logging.getLogger("ReVersion")


def train_relation(model, clip, vae, exemplars, config: TrainConfig, callback=None, memory: str = "auto",
                   checkpointing: checkpoint.Checkpointing | None = None, start_relation: Relation | None = None,
                   max_per_forward: int | None = None) -> TrainResult:
    """Encode the exemplars once, then run the ReVersion loop on the host's model.

    Returns the `TrainResult`, with `.memory` = the memory plan used (`memory`: one of
    memory.MODES, see memory.choose_memory; `max_per_forward` caps the exemplars per
    forward below the micro-batch, e.g. to measure a split) and `.left_out` = the patches on
    MODEL that only a sampler can apply (sampling.sampler_only_patches). Host weights are not modified:
    they are only re-wrapped as normal (non-inference) tensors with the same values, and
    their requires_grad flags are restored after training. `start_relation` (a Relation for
    this CLIP) replaces the init word's embedding as the starting point.
    """
    if start_relation is not None:
        check_family(start_relation, text_encoders(clip))
    progress = callback                    # (wrapped below when offloading)
    left_out = sampler_only_patches(model)
    if left_out:
        log.warning("ReVersion Train Relation: not applied in training (they need a sampler; previews apply "
                    "them): %s", ", ".join(left_out))
    with training_mode():
        backend = ComfyBackend(model, clip, memory, interrupt=host.check_interrupted, num_vectors=config.num_vectors)
        backend.check_templates(exemplars.templates)     # fail in seconds, not after an hour
        latents = vae_encode(vae, exemplars.images, config.seed)
        backend.prepare()
        if checkpointing is not None:                    # a checkpoint resumes only on this model
            widths = {e.key: int(e.table.shape[-1]) for e in backend.encoders}
            checkpointing.model = {"family": family_name(widths), "encoders": widths,
                                   "weights": host.model_fingerprint(model, clip)}
        try:
            with frozen_weights(model.model, clip.cond_stage_model), memory_efficient_attention() as attention:
                caption = fill(exemplars.templates[0][0], backend.standin)
                rows = 2 if config.swap_weight > 0 and swap_count(exemplars.templates) else 1   # + swapped captions
                plan = backend.plan_memory(latents, caption, rows * config.batch_size * config.grad_accum,
                                           rows * config.batch_size, max_per_forward)
                plan.attention = attention
                if plan.mode == "offload":
                    plan.offload = backend.offload()
                    callback = keeping_offloaded(backend, callback)
                log.info("ReVersion Train Relation: %s", plan.describe())
                if hasattr(progress, "begin"):       # the clock of "s/update" starts here, not at the encode
                    progress.begin(int((checkpointing.resume_from or {}).get("step", 0)) if checkpointing else 0)
                result = trainer.train(backend, latents, exemplars.templates, config, callback,
                                       interrupt=host.check_interrupted, checkpointing=checkpointing,
                                       start_vectors=start_relation.vectors if start_relation is not None else None)
                result.memory = plan.as_dict()
                result.left_out = left_out
                return result
        finally:
            backend.close()
            host.release_cache()


def swap_count(templates: list[list[str]]) -> int:
    """Exemplars with at least one template whose objects can be swapped (swap.py)."""
    return sum(any(t is not None for t in ts) for ts in swap.swapped_templates(templates))


def keeping_offloaded(backend: ComfyBackend, callback):
    """The per-update callback, then the offload plan put back: a preview in the callback
    runs the sampler, which loads as much of the model as fits on the device."""
    def after_update(*args):
        stop = callback(*args) if callback is not None else None
        backend.keep_offloaded()
        return stop                # True stops training early (trainer.train)
    return after_update


@dataclass
class Options:
    """Train Relation's inputs beyond the model, the exemplars and the method's settings."""
    name: str
    overwrite: bool = False
    memory: str = "auto"
    checkpoint_every: int = 100
    resume: bool = False
    init_relation: Relation | None = None
    preview_every: int = 100
    preview_prompt: str = ""
    preview_steps: int = 12
    graph: str | None = None       # signature of the graph part that runs this (queue_checks.graph_signature)


@dataclass
class Trained:
    relation: Relation
    loss_curve: torch.Tensor       # IMAGE [1, H, W, 3]
    samples: torch.Tensor          # IMAGE: the preview prompt drawn with the final relation
    summary: str                   # one line for the node and the console
    train_seconds: float           # training only, previews excluded


def train_and_save(model, clip, vae, exemplars, config: TrainConfig, options: Options) -> Trained:
    """Train Relation, start to end: claim the name, resume or start, train with progress
    and previews, write the relation file. Every check that can fail runs before training;
    whatever fails after the first update, what was learned is kept (keeping.py)."""
    path = store.claim(options.name, options.overwrite, new_run=not options.resume)
    with store.RUNNING.training(path, options.graph):
        return _train_and_save(model, clip, vae, exemplars, config, options, path)


def _train_and_save(model, clip, vae, exemplars, config: TrainConfig, options: Options, path) -> Trained:
    resume_path = store.checkpoint_path(path)
    config.check()
    fingerprint = checkpoint.fingerprint(exemplars.images, exemplars.templates)
    state = checkpoint.load(resume_path) if options.resume else None
    if state is not None:
        checkpoint.check_compatible(state, config.as_dict(), fingerprint)
    keeper = RunKeeper(store.check_name(options.name), path, config.init_word)
    if state is not None:
        keeper.saved = (resume_path, int(state["step"]))
    keeping = checkpoint.Checkpointing(save=keeper.save, every=options.checkpoint_every, fingerprint=fingerprint,
                                       resume_from=state)
    prompt = options.preview_prompt.strip() or fill(exemplars.templates[0][0], PLACEHOLDER)
    check_prompt(clip, prompt)                               # checked before training, not at step 100
    size = int(exemplars.images.shape[1])
    notes = []
    if config.swap_weight > 0:
        used = swap_count(exemplars.templates)
        notes.append(f"swapped-object negatives on {used} of {len(exemplars)} exemplars" +
                     (f" (the others' templates have no object on both sides of the relation)"
                      if used < len(exemplars) else ""))
        if not used:
            log.warning("[ReVersion] Train Relation '%s': swap_weight is set but no template can be swapped "
                        "(write 'A {} B': an object on each side of the relation)", options.name)
    if not 4 <= len(exemplars) <= 10:
        notes.append(f"{len(exemplars)} exemplars (the paper uses 4-10: fewer may not show the relation, "
                     f"more slows nothing but adds little)")
        log.warning("[ReVersion] Train Relation '%s': %s", options.name, notes[-1])

    def preview(vectors):
        return sample_preview(model, clip, vae, vectors, prompt, config.seed, options.preview_steps, size)
    log.info("[ReVersion] Train Relation '%s': %d updates, %d exemplars, lr %g%s", options.name, config.steps,
             len(exemplars), config.base_lr, " (x batch x accumulation)" if config.scale_lr else "")
    callback = progress_callback(config.steps, preview if options.preview_every else None, options.preview_every)
    try:
        result = train_relation(model, clip, vae, exemplars, config, callback, options.memory,
                                checkpointing=keeping, start_relation=options.init_relation)
    except BaseException as error:
        keeper.explain(error)              # where the completed updates are, in the error itself
        raise
    relation = Relation(result.vectors, name=keeper.name, init_word=config.init_word,
                        steps=result.steps_done + (options.init_relation.steps if options.init_relation else 0),
                        hyperparameters=hyperparameters(config, options.init_relation),
                        # no wall-clock time in the file: same seed and settings, byte-identical file
                        final_losses={**result.final_losses(), "exemplars": len(exemplars)},
                        nearest_words=nearest_words(clip, result.vectors))
    relation.measured = {"memory": result.memory}
    store.save_relation(relation, path, options.overwrite, options.graph)     # before anything else can fail
    # the last update's preview is the final relation's: drawn once, not twice
    samples = callback.sample if callback.sample_step == result.steps_done else preview(result.vectors)
    losses = result.final_losses()
    train_seconds = result.seconds - callback.preview_seconds
    summary = (f"saved {path.name} (embedding:{relation.name}): {result.steps_done} updates, "
               f"{format_seconds(train_seconds)} (+{format_seconds(callback.preview_seconds)} for "
               f"{callback.previews} previews), loss {losses.get('loss', float('nan')):.3g}, "
               f"{result.memory['mode']} memory")
    if result.left_out:
        notes.append(f"not applied in training (sampler-only): {', '.join(result.left_out)}")
    notes += [f"warning: {p}" for p in keeper.problems]
    summary = "; ".join([summary, *notes])
    log.info("[ReVersion] %s", summary)
    curve = torch.from_numpy(loss_curve(result.history)).float().div(255).unsqueeze(0)
    return Trained(relation, curve, samples, summary, train_seconds)


def hyperparameters(config: TrainConfig, init_relation: Relation | None) -> dict:
    """What the relation file records of how it was trained: the settings and the relation
    it continued from. Nothing measured (memory plan, free memory, times): the same graph
    and seed give the same bytes whatever ran before (the plan is in `relation.measured`)."""
    out = dict(config.as_dict())
    if init_relation is not None:
        out["continued_from"] = {"relation": init_relation.name, "steps": init_relation.steps}
    return out
