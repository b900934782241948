"""Train Relation: learn <R> from exemplars on the MODEL/CLIP/VAE the graph already loaded."""
from __future__ import annotations

import torch

from reversion import checkpoint, plot, relation_file
from reversion.trainer import TrainConfig
from reversion_comfy import adapter

from . import written_files

_DEFAULTS = TrainConfig()


class TrainRelation:
    DESCRIPTION = ("ReVersion relation inversion: trains only the <R> token embedding (the model stays "
                   "frozen) with the denoising loss, the relation-steering loss and relation-focal "
                   "timestep sampling. Writes models/embeddings/<name>.safetensors, usable as "
                   "embedding:<name> in any prompt.")
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
            "learning_rate": ("FLOAT", {"default": d.base_lr, "min": 1e-6, "max": 1.0, "step": 1e-5, "tooltip": "Base learning rate (paper: 2.5e-4, scaled to 2e-3)."}),
            "scale_lr": ("BOOLEAN", {"default": d.scale_lr, "tooltip": "Multiply the learning rate by batch_size x grad_accum, as the paper does."}),
            "weight_decay": ("FLOAT", {"default": d.weight_decay, "min": 0.0, "max": 1.0, "step": 1e-3, "tooltip": "AdamW weight decay on the relation vector (paper: 1e-2)."}),
            "steering_weight": ("FLOAT", {"default": d.steering_weight, "min": 0.0, "max": 10.0, "step": 1e-3, "tooltip": "Weight of the relation-steering loss (paper: 0.01; 0 turns it off)."}),
            "num_positives": ("INT", {"default": d.num_positives, "min": 1, "max": 56, "tooltip": "Basis prepositions drawn per sample as positives (paper: 4)."}),
            "temperature": ("FLOAT", {"default": d.temperature, "min": 0.001, "max": 10.0, "step": 0.001, "tooltip": "Steering-loss temperature (paper: 0.07)."}),
            "focal_alpha": ("FLOAT", {"default": d.focal_alpha, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip": "Relation-focal sampling skew toward noisy steps (paper: 0.5; 0 = uniform)."}),
            "init_word": ("STRING", {"default": d.init_word, "tooltip": "Single-token word whose embedding starts <R> (paper: 'and')."}),
            "seed": ("INT", {"default": d.seed, "min": 0, "max": 2**31 - 1, "tooltip": "Same seed, same result (paper: 2023)."}),
            "overwrite": ("BOOLEAN", {"default": False, "tooltip": "Replace an existing relation file (and checkpoint) of this name."}),
        }, "optional": {   # optional: graphs saved before these inputs existed still load and run
            "checkpoint_every": ("INT", {"default": 100, "min": 0, "max": 100000, "tooltip": "Write a checkpoint (<name>.resume beside the relation file) every N updates, and when training is cancelled or fails; 0 = only then."}),
            "resume": ("BOOLEAN", {"default": False, "tooltip": "Continue the run that <name>.resume holds (cancelled, crashed, or finished with fewer steps): same exemplars and settings; 'steps' is the total to reach."}),
            "init_relation": ("RELATION", {"tooltip": "Optional: start <R> from this relation (e.g. Load Relation) instead of the init word, to train it further."}),
            "preview_every": ("INT", {"default": 100, "min": 0, "max": 100000, "tooltip": "Every N updates, draw the preview prompt with the current <R> and show it on the node beside the loss curve (0 = only the final samples). Sampling time is not counted as training time."}),
            "preview_prompt": ("STRING", {"default": "", "tooltip": "Prompt with <R> for the previews and the samples output; empty = the first exemplar template with <R> in its slot."}),
            "memory": (["auto", "fast", "lean"], {"default": "auto", "tooltip": "fast: keep all activations (quickest). lean: recompute the UNet blocks in backward (gradient checkpointing, ~1.4x compute, a fraction of the memory), splitting a micro-batch if needed (same gradient). auto: fast if the estimate fits the free memory ComfyUI reports, else lean; the choice is shown on the node and logged."}),
            "preview_steps": ("INT", {"default": 12, "min": 1, "max": 100, "tooltip": "Sampler steps per preview (euler, fixed seed)."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, name, overwrite, resume=False):
        """At queue time, before any node runs: a bad name or a taken file fails in a second."""
        try:
            path = relation_file.path_in(adapter.embeddings_directory(), name)
        except ValueError as e:
            return str(e)
        return (written_files.conflict(path, overwrite, allow_ours=True)
                or (None if resume else checkpoint_conflict(path, overwrite)) or True)

    @classmethod
    def IS_CHANGED(cls, name, **_):
        """Run again (instead of answering from the cache) if the file the last run wrote was
        deleted or replaced."""
        try:
            return written_files.change_label(relation_file.path_in(adapter.embeddings_directory(), name))
        except ValueError:
            return written_files.INITIAL

    def train(self, model, clip, vae, exemplars, name, steps, batch_size, grad_accum, learning_rate,
              scale_lr, weight_decay, steering_weight, num_positives, temperature, focal_alpha,
              init_word, seed, overwrite, checkpoint_every=100, resume=False, init_relation=None,
              preview_every=100, preview_prompt="", preview_steps=12, memory="auto"):
        path = relation_file.path_in(adapter.embeddings_directory(), name)
        resume_path = checkpoint.path_for(path)
        # everything that can fail does so before training, not after
        problem = written_files.conflict(path, overwrite) or \
            (None if resume else checkpoint_conflict(path, overwrite))
        if problem:
            raise relation_file.RelationFileError(problem)
        config = TrainConfig(steps=steps, batch_size=batch_size, grad_accum=grad_accum, base_lr=learning_rate,
                             scale_lr=scale_lr, weight_decay=weight_decay, steering_weight=steering_weight,
                             num_positives=num_positives, temperature=temperature, focal_alpha=focal_alpha,
                             init_word=init_word.strip(), seed=seed).check()
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
            return adapter.sample_preview(model, clip, vae, vectors, prompt, seed, preview_steps, size)
        callback = progress_callback(steps, preview if preview_every else None, preview_every)
        result = adapter.train_relation(model, clip, vae, exemplars, config, callback, memory,
                                        checkpointing=keeping, start_relation=init_relation)
        samples = preview(result.vectors)
        # the plan's mode only: its memory figures vary from run to run, the file must not
        hyperparameters = {**config.as_dict(), "memory": {k: result.memory[k] for k in ("mode", "chunk")}}
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
        curve = torch.from_numpy(plot.loss_curve(result.history)).float().div(255).unsqueeze(0)
        train_seconds = result.seconds - callback.preview_seconds
        summary = (f"{result.steps_done} updates in {train_seconds:.1f} s (+{callback.preview_seconds:.1f} s "
                   f"for {callback.previews} previews); {result.memory['mode']} memory; wrote {path.name}")
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


def progress_callback(total: int, preview=None, preview_every: int = 0):
    """Per update: honour Cancel, advance the progress bar, show the loss curve and (every
    `preview_every` updates) a sample drawn with the current vectors beside it."""
    import time
    from PIL import Image
    bar = adapter.progress(total)
    history = []
    every = max(1, total // 20)
    sample = [None]

    def callback(step, total, record, vectors):
        adapter.check_interrupted()
        history.append(record)
        drawn = preview is not None and step % preview_every == 0
        if drawn:
            start = time.perf_counter()
            sample[0] = preview(vectors)
            callback.preview_seconds += time.perf_counter() - start
            callback.previews += 1
        shown = None
        if drawn or step % every == 0 or step == total:
            shown = ("PNG", side_by_side(plot.loss_curve(history), sample[0]), 768)
        bar.update_absolute(step, total, shown)
    callback.preview_seconds = 0.0
    callback.previews = 0
    return callback


def side_by_side(curve, sample) -> "Image.Image":
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
