"""Train Relation: learn <R> from exemplars on the MODEL/CLIP/VAE the graph already loaded.

The node unpacks its inputs; `reversion_comfy.training.train_and_save` does the work."""
from __future__ import annotations

from ..reversion.trainer import MAX_VECTORS, TrainConfig
from ..reversion_comfy import queue_checks, store, training
from ..reversion_comfy.memory import MODES

CATEGORY = "ReVersion"
_DEFAULTS = TrainConfig()

# Float widgets: the front end shows and rounds a FLOAT to the decimals of its `step` (precision
# = -floor(log10(step)); 1.32.x rounds with toFixed(precision) whenever a value is set, the
# 2024 front end only for precision <= 6). step 1e-8 keeps every learning rate down to
# 1e-8 exact (6.25e-4, 3.125e-5); typed values are what matter for these, not drag steps.
LR_STEP = 1e-8
SMALL_STEP = 1e-5


class TrainRelation:
    # Descriptions are shown as Markdown in some places and as plain text in others (the
    # search list): no backticks, no angle brackets, no long unbreakable paths.
    DESCRIPTION = ("ReVersion relation inversion: trains only the relation token's embedding (the model "
                   "stays frozen) with the denoising loss, the relation-steering loss and relation-focal "
                   "timestep sampling. Writes NAME.safetensors in models/embeddings, usable as "
                   "embedding:NAME in any prompt. Progress, loss and time left are shown on the node and "
                   "logged to the server console.")
    CATEGORY = CATEGORY
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
            "name": ("STRING", {"default": "relation", "tooltip": "File name in models/embeddings (use as embedding:<name>): " + store.NAME_RULE + "."}),
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
            "memory": (list(MODES), {"default": "auto", "tooltip": "auto: the fastest plan that fits the free memory (shown on the node). fast: keep every activation. lean: recompute UNet blocks and CLIP layers in backward. offload: lean, with weights kept in CPU memory (small cards; slower). Same gradient in all."}),
            "checkpoint_every": ("INT", {"default": 100, "min": 0, "max": 100000, "tooltip": "Write a checkpoint (NAME.resume beside the relation file) every N updates, at the end, and when training is cancelled or fails; 0 = only then."}),
            "resume": ("BOOLEAN", {"default": False, "tooltip": "Continue the run that NAME.resume holds (cancelled, crashed, or finished with fewer steps): same exemplars and settings; 'steps' is the total to reach."}),
            "init_relation": ("RELATION", {"tooltip": "Optional: start the relation from this one (e.g. from Load Relation) instead of the init word, to train it further."}),
            "preview_every": ("INT", {"default": 100, "min": 0, "max": 100000, "tooltip": "Every N updates, draw the preview prompt with the relation so far, beside the loss curve (0 = only the final samples). Not counted as training time."}),
            "preview_prompt": ("STRING", {"default": "", "tooltip": "Prompt with R in angle brackets where the relation goes, for the previews and the samples output; empty = the first exemplar template with the relation in its slot."}),
            "preview_steps": ("INT", {"default": 12, "min": 1, "max": 100, "tooltip": "Sampler steps per preview (euler, fixed seed)."}),
            # beyond the paper (issue 25); last, so that older graphs keep their widget values
            "swap_weight": ("FLOAT", {"default": d.swap_weight, "min": 0.0, "max": 10.0, "step": 0.01, "tooltip": "Beyond the paper: the caption with its two objects swapped (A R B as B R A) must denoise worse than its own, teaching which object goes on which side. 0 = off (the paper). Up to one more model pass per exemplar."}),
            "num_vectors": ("INT", {"default": d.num_vectors, "min": 1, "max": MAX_VECTORS, "tooltip": "Token vectors the relation learns (paper: 1). The relation then takes that many token places in a prompt; Relation Text Encode and embedding:NAME both use them all."}),
        }, "hidden": {"prompt": "PROMPT", "unique_id": "UNIQUE_ID"}}   # which graph part wrote the file

    @classmethod
    def VALIDATE_INPUTS(cls, name, overwrite, resume=False):
        """At queue time, before any node runs: a bad name or a taken file fails in a second."""
        return store.queue_check(name, overwrite, new_run=not resume)

    @classmethod
    def IS_CHANGED(cls, name, **_):
        """Run again (instead of answering from the cache) if the file the last run wrote was
        deleted or replaced."""
        return store.is_changed(name)

    def train(self, model, clip, vae, exemplars, name, steps, batch_size, grad_accum, learning_rate,
              scale_lr, weight_decay, steering_weight, num_positives, temperature, focal_alpha,
              init_word, train_seed, overwrite, memory="auto", checkpoint_every=100, resume=False,
              init_relation=None, preview_every=100, preview_prompt="", preview_steps=12, swap_weight=0.0,
              num_vectors=1, prompt=None, unique_id=None):
        config = TrainConfig(steps=steps, batch_size=batch_size, grad_accum=grad_accum, base_lr=learning_rate,
                             scale_lr=scale_lr, weight_decay=weight_decay, steering_weight=steering_weight,
                             num_positives=num_positives, temperature=temperature, focal_alpha=focal_alpha,
                             init_word=init_word.strip(), seed=train_seed, swap_weight=swap_weight,
                             num_vectors=num_vectors)
        options = training.Options(name=name, overwrite=overwrite, memory=memory, checkpoint_every=checkpoint_every,
                                   resume=resume, init_relation=init_relation, preview_every=preview_every,
                                   preview_prompt=preview_prompt, preview_steps=preview_steps,
                                   graph=queue_checks.graph_signature(prompt, unique_id))
        done = training.train_and_save(model, clip, vae, exemplars, config, options)
        return {"ui": {"text": [done.summary], "train_seconds": [round(done.train_seconds, 1)]},
                "result": (done.relation, done.loss_curve, done.samples)}


NODE_CLASS_MAPPINGS = {"ReVersionTrainRelation": TrainRelation}
NODE_DISPLAY_NAME_MAPPINGS = {"ReVersionTrainRelation": "Train Relation"}
