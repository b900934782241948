"""Train Relation: learn <R> from exemplars on the MODEL/CLIP/VAE the graph already loaded."""
from __future__ import annotations

import torch

from reversion import plot, relation_file
from reversion.trainer import TrainConfig
from reversion_comfy import adapter

_DEFAULTS = TrainConfig()


class TrainRelation:
    DESCRIPTION = ("ReVersion relation inversion: trains only the <R> token embedding (the model stays "
                   "frozen) with the denoising loss, the relation-steering loss and relation-focal "
                   "timestep sampling. Writes models/embeddings/<name>.safetensors, usable as "
                   "embedding:<name> in any prompt.")
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
            "learning_rate": ("FLOAT", {"default": d.base_lr, "min": 1e-6, "max": 1.0, "step": 1e-5, "tooltip": "Base learning rate (paper: 2.5e-4, scaled to 2e-3)."}),
            "scale_lr": ("BOOLEAN", {"default": d.scale_lr, "tooltip": "Multiply the learning rate by batch_size x grad_accum, as the paper does."}),
            "weight_decay": ("FLOAT", {"default": d.weight_decay, "min": 0.0, "max": 1.0, "step": 1e-3, "tooltip": "AdamW weight decay on the relation vector (paper: 1e-2)."}),
            "steering_weight": ("FLOAT", {"default": d.steering_weight, "min": 0.0, "max": 10.0, "step": 1e-3, "tooltip": "Weight of the relation-steering loss (paper: 0.01; 0 turns it off)."}),
            "num_positives": ("INT", {"default": d.num_positives, "min": 1, "max": 56, "tooltip": "Basis prepositions drawn per sample as positives (paper: 4)."}),
            "temperature": ("FLOAT", {"default": d.temperature, "min": 0.001, "max": 10.0, "step": 0.001, "tooltip": "Steering-loss temperature (paper: 0.07)."}),
            "focal_alpha": ("FLOAT", {"default": d.focal_alpha, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip": "Relation-focal sampling skew toward noisy steps (paper: 0.5; 0 = uniform)."}),
            "init_word": ("STRING", {"default": d.init_word, "tooltip": "Single-token word whose embedding starts <R> (paper: 'and')."}),
            "seed": ("INT", {"default": d.seed, "min": 0, "max": 2**31 - 1, "tooltip": "Same seed, same result (paper: 2023)."}),
            "overwrite": ("BOOLEAN", {"default": False, "tooltip": "Replace an existing relation file of this name."}),
        }, "optional": {
            "memory": (["auto", "fast", "lean"], {"default": "auto", "tooltip": "fast: keep all activations (quickest). lean: recompute the UNet blocks in backward (gradient checkpointing, ~1.4x compute, a fraction of the memory), splitting a micro-batch if needed (same gradient). auto: fast if the estimate fits the free memory ComfyUI reports, else lean; the choice is logged and stored in the relation file."}),
        }}

    def train(self, model, clip, vae, exemplars, name, steps, batch_size, grad_accum, learning_rate,
              scale_lr, weight_decay, steering_weight, num_positives, temperature, focal_alpha,
              init_word, seed, overwrite, memory="auto"):
        path = relation_file.path_in(adapter.embeddings_directory(), name)
        if path.exists() and not overwrite:   # fail before training, not after
            raise relation_file.RelationFileError(
                f"{path} already exists; choose another name or switch 'overwrite' on")
        config = TrainConfig(steps=steps, batch_size=batch_size, grad_accum=grad_accum, base_lr=learning_rate,
                             scale_lr=scale_lr, weight_decay=weight_decay, steering_weight=steering_weight,
                             num_positives=num_positives, temperature=temperature, focal_alpha=focal_alpha,
                             init_word=init_word.strip(), seed=seed).check()
        result = adapter.train_relation(model, clip, vae, exemplars, config, progress_callback(steps), memory)
        relation = relation_file.Relation(
            result.vectors, name=relation_file.check_name(name), init_word=config.init_word,
            steps=result.steps_done, hyperparameters={**config.as_dict(), "memory": result.memory},
            final_losses={**result.final_losses(), "seconds": round(result.seconds, 1),
                          "exemplars": len(exemplars)},
            nearest_words=adapter.nearest_words(clip, result.vectors))
        relation_file.save(relation, path, overwrite=overwrite)
        curve = torch.from_numpy(plot.loss_curve(result.history)).float().div(255).unsqueeze(0)
        return (relation, curve)


def progress_callback(total: int):
    """Per update: honour Cancel, advance the progress bar, preview the loss curve."""
    from PIL import Image
    bar = adapter.progress(total)
    history = []
    every = max(1, total // 20)

    def callback(step, total, record):
        adapter.check_interrupted()
        history.append(record)
        preview = None
        if step % every == 0 or step == total:
            preview = ("PNG", Image.fromarray(plot.loss_curve(history)), 512)
        bar.update_absolute(step, total, preview)
    return callback


NODE_CLASS_MAPPINGS = {"ReVersionTrainRelation": TrainRelation}
NODE_DISPLAY_NAME_MAPPINGS = {"ReVersionTrainRelation": "Train Relation"}
