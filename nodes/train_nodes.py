"""Train Relation: learn <R> from exemplars on the MODEL/CLIP/VAE the graph already loaded."""
from __future__ import annotations

import logging
import time

import torch

from reversion import checkpoint, plot, relation_file
from reversion.trainer import TrainConfig
from reversion_comfy import adapter

from . import written_files

_DEFAULTS = TrainConfig()
log = logging.getLogger("ReVersion")

# Float widgets: the front end shows and rounds a FLOAT to the decimals of its `step` (precision
# = -floor(log10(step)); 1.32.x rounds with toFixed(precision) whenever a value is set, the
# 2024 front end only for precision <= 6). step 1e-8 keeps every learning rate down to
# 1e-8 exact (6.25e-4, 3.125e-5); typed values are what matter for these, not drag steps.
LR_STEP = 1e-8
SMALL_STEP = 1e-5


class TrainRelation:
    # Descriptions are rendered as Markdown by the front end: keep <...> inside `code`.
    DESCRIPTION = ("ReVersion relation inversion: trains only the `<R>` token embedding (the model stays "
                   "frozen) with the denoising loss, the relation-steering loss and relation-focal "
                   "timestep sampling. Writes `models/embeddings/NAME.safetensors`, usable as "
                   "`embedding:NAME` in any prompt. Progress, loss and time left are shown on the "
                   "node and logged to the server console.")
    CATEGORY = "ReVersion"
    RETURN_TYPES = ("RELATION", "IMAGE", "IMAGE")
    RETURN_NAMES = ("relation", "loss_curve", "samples")
    OUTPUT_TOOLTIPS = ("The learned relation, for Relation Text Encode / Save Relation.",
                       "Loss per update (total, denoising, steering).",
                       "The preview prompt drawn with the final relation (fixed seed, preview_steps).")
    FUNCTION = "train"
    OUTPUT_NODE = True   # writes the relation file even if nothing is connected

    @classmethod
    def INPUT_TYPES(cls):
        d = _DEFAULTS
        return {"required": {
            "model": ("MODEL", {"tooltip": "The diffusion model (stays frozen)."}),
            "clip": ("CLIP", {"tooltip": "The text encoder (stays frozen); clip skip is honoured."}),
            "vae": ("VAE", {"tooltip": "Encodes the exemplars once, before training."}),
            "exemplars": ("EXEMPLARS", {"tooltip": "Images sharing one relation, with caption templates."}),
            "name": ("STRING", {"default": "relation", "tooltip": "File name in models/embeddings (use as embedding:<name>): " + relation_file.NAME_RULE + "."}),
            "steps": ("INT", {"default": d.steps, "min": 1, "max": 100000, "tooltip": "Optimizer updates (paper: 3000)."}),
            "batch_size": ("INT", {"default": d.batch_size, "min": 1, "max": 64, "tooltip": "Exemplars per micro-batch (paper: 2)."}),
            "grad_accum": ("INT", {"default": d.grad_accum, "min": 1, "max": 64, "tooltip": "Micro-batches per update (paper: 4)."}),
            "learning_rate": ("FLOAT", {"default": d.base_lr, "min": 1e-6, "max": 1.0, "step": LR_STEP, "tooltip": "Base learning rate (paper: 2.5e-4, scaled to 2e-3)."}),
            "scale_lr": ("BOOLEAN", {"default": d.scale_lr, "tooltip": "Multiply the learning rate by batch_size x grad_accum, as the paper does."}),
            "weight_decay": ("FLOAT", {"default": d.weight_decay, "min": 0.0, "max": 1.0, "step": SMALL_STEP, "tooltip": "AdamW weight decay on the relation vector (paper: 1e-2)."}),
            "steering_weight": ("FLOAT", {"default": d.steering_weight, "min": 0.0, "max": 10.0, "step": SMALL_STEP, "tooltip": "Weight of the relation-steering loss (paper: 0.01; 0 turns it off)."}),
            "num_positives": ("INT", {"default": d.num_positives, "min": 1, "max": 56, "tooltip": "Basis prepositions drawn per sample as positives (paper: 4)."}),
            "temperature": ("FLOAT", {"default": d.temperature, "min": 0.001, "max": 10.0, "step": 0.001, "tooltip": "Steering-loss temperature (paper: 0.07)."}),
            "focal_alpha": ("FLOAT", {"default": d.focal_alpha, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "Relation-focal sampling skew toward noisy steps (paper: 0.5; 0 = uniform)."}),
            "init_word": ("STRING", {"default": d.init_word, "tooltip": "Single-token word whose embedding starts <R> (paper: 'and')."}),
            # Not named `seed`: front ends add "control after generate: randomize" to any INT
            # called seed (the 2024 one whatever the options say), and a new seed retrains.
            "train_seed": ("INT", {"default": d.seed, "min": 0, "max": 2**31 - 1, "control_after_generate": False, "tooltip": "Same seed, same result (paper: 2023). Stays fixed between runs."}),
            "overwrite": ("BOOLEAN", {"default": False, "tooltip": "Replace an existing relation file (and checkpoint) of this name."}),
        }, "optional": {   # optional: graphs saved before these inputs existed still load and run
            "memory": (["auto", "fast", "lean"], {"default": "auto", "tooltip": "fast: keep all activations (quickest), one micro-batch per forward. lean: recompute the UNet blocks and CLIP layers in backward (gradient checkpointing, ~1.4x compute, a fraction of the memory), splitting a micro-batch if needed (same gradient). auto: fast with as many exemplars per forward as the free memory ComfyUI reports allows (the whole update at once when it fits: fastest on a GPU, same gradient), else lean; the choice is shown on the node and logged."}),
            "checkpoint_every": ("INT", {"default": 100, "min": 0, "max": 100000, "tooltip": "Write a checkpoint (NAME.resume beside the relation file) every N updates, at the end, and when training is cancelled or fails; 0 = only then."}),
            "resume": ("BOOLEAN", {"default": False, "tooltip": "Continue the run that NAME.resume holds (cancelled, crashed, or finished with fewer steps): same exemplars and settings; 'steps' is the total to reach."}),
            "init_relation": ("RELATION", {"tooltip": "Optional: start the relation from this one (e.g. from Load Relation) instead of the init word, to train it further."}),
            "preview_every": ("INT", {"default": 100, "min": 0, "max": 100000, "tooltip": "Every N updates, draw the preview prompt with the relation as learned so far and show it on the node beside the loss curve (0 = only the final samples). Sampling time is not counted as training time."}),
            "preview_prompt": ("STRING", {"default": "", "tooltip": "Prompt with R in angle brackets where the relation goes, for the previews and the samples output; empty = the first exemplar template with the relation in its slot."}),
            "preview_steps": ("INT", {"default": 12, "min": 1, "max": 100, "tooltip": "Sampler steps per preview (euler, fixed seed)."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, name, overwrite, resume=False):
        """At queue time, before any node runs: a bad name or a taken file fails in a second."""
        return written_files.queue_check(name, overwrite, None if resume else checkpoint_conflict)

    @classmethod
    def IS_CHANGED(cls, name, **_):
        """Run again (instead of answering from the cache) if the file the last run wrote was
        deleted or replaced."""
        return written_files.is_changed(name)

    def train(self, model, clip, vae, exemplars, name, steps, batch_size, grad_accum, learning_rate,
              scale_lr, weight_decay, steering_weight, num_positives, temperature, focal_alpha,
              init_word, train_seed, overwrite, memory="auto", checkpoint_every=100, resume=False,
              init_relation=None, preview_every=100, preview_prompt="", preview_steps=12):
        # everything that can fail does so before training, not after
        path = written_files.claim(name, overwrite, None if resume else checkpoint_conflict)
        resume_path = checkpoint.path_for(path)
        config = TrainConfig(steps=steps, batch_size=batch_size, grad_accum=grad_accum, base_lr=learning_rate,
                             scale_lr=scale_lr, weight_decay=weight_decay, steering_weight=steering_weight,
                             num_positives=num_positives, temperature=temperature, focal_alpha=focal_alpha,
                             init_word=init_word.strip(), seed=train_seed).check()
        fingerprint = checkpoint.fingerprint(exemplars.images, exemplars.templates)
        state = checkpoint.load(resume_path) if resume else None
        if state is not None:
            checkpoint.check_compatible(state, config.as_dict(), fingerprint)

        def keep(snapshot):
            checkpoint.save(snapshot, resume_path)
            written_files.record(resume_path)
        keeping = checkpoint.Checkpointing(save=keep, every=checkpoint_every, fingerprint=fingerprint,
                                           resume_from=state)
        prompt = preview_prompt.strip() or exemplars.templates[0][0].replace("{}", "<R>")
        adapter.check_prompt(clip, prompt)                       # checked before training, not at step 100
        size = int(exemplars.images.shape[1])

        def preview(vectors):
            return adapter.sample_preview(model, clip, vae, vectors, prompt, train_seed, preview_steps, size)
        log.info("[ReVersion] Train Relation '%s': %d updates, %d exemplars, lr %g%s", name, steps,
                 len(exemplars), learning_rate, " (x batch x accumulation)" if scale_lr else "")
        callback = progress_callback(steps, preview if preview_every else None, preview_every)
        result = adapter.train_relation(model, clip, vae, exemplars, config, callback, memory,
                                        checkpointing=keeping, start_relation=init_relation)
        samples = preview(result.vectors)
        # the memory plan without the free memory it saw: that varies from run to run, the file must not
        hyperparameters = {**config.as_dict(), "memory": {k: v for k, v in result.memory.items() if k != "free_gib"}}
        prior_steps = 0
        if init_relation is not None:
            prior_steps = init_relation.steps
            hyperparameters["continued_from"] = {"relation": init_relation.name, "steps": init_relation.steps}
        relation = relation_file.Relation(
            result.vectors, name=relation_file.check_name(name), init_word=config.init_word,
            steps=prior_steps + result.steps_done, hyperparameters=hyperparameters,
            # no wall-clock time in the file: same seed and settings, byte-identical file
            final_losses={**result.final_losses(), "exemplars": len(exemplars)},
            nearest_words=adapter.nearest_words(clip, result.vectors))
        written_files.save_relation(relation, path, overwrite)
        losses = result.final_losses()
        train_seconds = result.seconds - callback.preview_seconds
        summary = (f"saved {path.name} (embedding:{relation.name}): {result.steps_done} updates, "
                   f"{format_seconds(train_seconds)} (+{format_seconds(callback.preview_seconds)} for "
                   f"{callback.previews} previews), loss {losses.get('loss', float('nan')):.3g}, "
                   f"{result.memory['mode']} memory")
        log.info("[ReVersion] %s", summary)
        curve = torch.from_numpy(plot.loss_curve(result.history)).float().div(255).unsqueeze(0)
        return {"ui": {"text": [summary], "train_seconds": [round(train_seconds, 1)]},
                "result": (relation, curve, samples)}


def checkpoint_conflict(relation_path, overwrite: bool) -> str | None:
    """The checkpoint of a cancelled or failed run is not replaced silently by a new run."""
    path = checkpoint.path_for(relation_path)
    left = None if overwrite else checkpoint.unfinished(path)
    if left is None:
        return None
    return (f"{path.name} holds a checkpoint of an unfinished run named '{path.stem}' (update {left[0]} of "
            f"{left[1]}); switch 'resume' on to continue it, or 'overwrite' on to start over (nothing was "
            f"trained or written)")


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def progress_line(step: int, total: int, elapsed: float, record: dict) -> str:
    """'update 50/300 (17%), loss 0.12 (denoise 0.1, steer 2.1), 1.2 s/update, 5 min 00 s left'"""
    rate = elapsed / max(step, 1)
    losses = ", ".join(f"{k} {record[k]:.4g}" for k in ("denoise", "steer") if k in record)
    return (f"update {step}/{total} ({100 * step // max(total, 1)}%), loss {record.get('loss', float('nan')):.4g}"
            f"{f' ({losses})' if losses else ''}, {rate:.2f} s/update, {format_seconds(rate * (total - step))} left")


def progress_callback(total: int, preview=None, preview_every: int = 0, log_every: int | None = None):
    """Per update: honour Cancel, advance the progress bar, show the loss curve (with the time
    left) and, every `preview_every` updates, a sample drawn with the current vectors beside
    it; log a line to the server console every `log_every` updates."""
    bar = adapter.progress(total)
    history = []
    every = max(1, total // 20)
    sample = [None]
    log_every = log_every or max(1, min(100, total // 10))
    start = time.monotonic()

    def callback(step, total, record, vectors):
        adapter.check_interrupted()
        history.append(record)
        drawn = preview is not None and step % preview_every == 0
        if drawn:
            began = time.perf_counter()
            sample[0] = preview(vectors)
            callback.preview_seconds += time.perf_counter() - began
            callback.previews += 1
        if step % log_every == 0 or step == total:
            log.info("[ReVersion] %s", progress_line(step, total, time.monotonic() - start, record))
        shown = None
        if drawn or step % every == 0 or step == total:
            elapsed = time.monotonic() - start
            short = f"update {step}/{total}, {format_seconds(elapsed / step * (total - step))} left"
            shown = ("PNG", side_by_side(plot.loss_curve(history, status=short), sample[0]), 768)
        bar.update_absolute(step, total, shown)
    callback.preview_seconds = 0.0
    callback.previews = 0
    return callback


def side_by_side(curve, sample):
    """The loss curve with the latest preview sample to its right, scaled to its height."""
    from PIL import Image
    curve = Image.fromarray(curve)
    if sample is None:
        return curve
    picture = Image.fromarray((sample[0].numpy() * 255).round().astype("uint8")).resize(
        (curve.height, curve.height), Image.NEAREST)
    both = Image.new("RGB", (curve.width + picture.width, curve.height), (255, 255, 255))
    both.paste(curve, (0, 0))
    both.paste(picture, (curve.width, 0))
    return both


NODE_CLASS_MAPPINGS = {"ReVersionTrainRelation": TrainRelation}
NODE_DISPLAY_NAME_MAPPINGS = {"ReVersionTrainRelation": "Train Relation"}
