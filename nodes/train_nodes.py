"""Train Relation: learn <R> from exemplars on the MODEL/CLIP/VAE the graph already loaded."""
from __future__ import annotations

import logging
import time

import torch

from reversion import plot, relation_file
from reversion.trainer import TrainConfig
from reversion_comfy import adapter

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
    RETURN_TYPES = ("RELATION", "IMAGE")
    RETURN_NAMES = ("relation", "loss_curve")
    OUTPUT_TOOLTIPS = ("The learned relation, for Relation Text Encode / Save Relation.",
                       "Loss per update (total, denoising, steering).")
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
            "name": ("STRING", {"default": "relation", "tooltip": "File name in models/embeddings (use as embedding:<name>)."}),
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
            "overwrite": ("BOOLEAN", {"default": False, "tooltip": "Replace an existing relation file of this name."}),
        }}

    def train(self, model, clip, vae, exemplars, name, steps, batch_size, grad_accum, learning_rate,
              scale_lr, weight_decay, steering_weight, num_positives, temperature, focal_alpha,
              init_word, train_seed, overwrite):
        path = relation_file.path_in(adapter.embeddings_directory(), name)
        if path.exists() and not overwrite:   # fail before training, not after
            raise relation_file.RelationFileError(
                f"{path} already exists; choose another name or switch 'overwrite' on")
        config = TrainConfig(steps=steps, batch_size=batch_size, grad_accum=grad_accum, base_lr=learning_rate,
                             scale_lr=scale_lr, weight_decay=weight_decay, steering_weight=steering_weight,
                             num_positives=num_positives, temperature=temperature, focal_alpha=focal_alpha,
                             init_word=init_word.strip(), seed=train_seed).check()
        log.info("[ReVersion] Train Relation '%s': %d updates, %d exemplars, lr %g%s", name, steps,
                 len(exemplars), learning_rate, " (x batch x accumulation)" if scale_lr else "")
        result = adapter.train_relation(model, clip, vae, exemplars, config, progress_callback(steps))
        relation = relation_file.Relation(
            result.vectors, name=relation_file.check_name(name), init_word=config.init_word,
            steps=result.steps_done, hyperparameters=config.as_dict(),
            final_losses={**result.final_losses(), "seconds": round(result.seconds, 1),
                          "exemplars": len(exemplars)},
            nearest_words=adapter.nearest_words(clip, result.vectors))
        relation_file.save(relation, path, overwrite=overwrite)
        losses = result.final_losses()
        summary = (f"saved {path.name} (embedding:{relation.name}): {result.steps_done} updates, "
                   f"{format_seconds(result.seconds)}, loss {losses.get('loss', float('nan')):.3g}")
        log.info("[ReVersion] %s", summary)
        curve = torch.from_numpy(plot.loss_curve(result.history)).float().div(255).unsqueeze(0)
        return {"ui": {"text": [summary]}, "result": (relation, curve)}


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


def progress_callback(total: int, log_every: int | None = None):
    """Per update: honour Cancel, advance the progress bar, preview the loss curve (with the
    time left), and log a line to the server console every `log_every` updates."""
    from PIL import Image
    bar = adapter.progress(total)
    history = []
    every = max(1, total // 20)
    log_every = log_every or max(1, min(100, total // 10))
    start = time.monotonic()

    def callback(step, total, record):
        adapter.check_interrupted()
        history.append(record)
        preview = None
        if step % every == 0 or step == total or step % log_every == 0:
            line = progress_line(step, total, time.monotonic() - start, record)
            if step % log_every == 0 or step == total:
                log.info("[ReVersion] %s", line)
            if step % every == 0 or step == total:
                elapsed = time.monotonic() - start
                short = f"update {step}/{total}, {format_seconds(elapsed / step * (total - step))} left"
                preview = ("PNG", Image.fromarray(plot.loss_curve(history, status=short)), 512)
        bar.update_absolute(step, total, preview)
    return callback


NODE_CLASS_MAPPINGS = {"ReVersionTrainRelation": TrainRelation}
NODE_DISPLAY_NAME_MAPPINGS = {"ReVersionTrainRelation": "Train Relation"}
