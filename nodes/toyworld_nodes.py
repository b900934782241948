"""Toy World Model and Toy World Exemplars: the embedded default (no downloads)."""
from __future__ import annotations

from .. import toyworld
from ..reversion_comfy import store
from ..toyworld import model, scenes

CATEGORY = "ReVersion/toy world"


class ToyWorldModel:
    DESCRIPTION = ("A small text-to-image model trained from scratch on toy scenes (two shapes, four "
                   "colours, six relations), built from ComfyUI's own classes. Sample at 256x256.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    OUTPUT_TOOLTIPS = ("UNet (v-prediction).", "CLIP-L-style text encoder, 128-d.", "Exact 8x pixel VAE.")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def load(self):
        return model.load(embedding_directory=store.embeddings_folders())


class ToyWorldExemplars:
    DESCRIPTION = ("Rendered exemplars of one toy relation. Templates hold {} where the relation "
                   "word would be; the word itself never appears.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("EXEMPLARS", "IMAGE")
    RETURN_NAMES = ("exemplars", "images")
    OUTPUT_TOOLTIPS = ("Exemplars for Train Relation.", "The exemplar images (256 px).")
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "relation": (list(scenes.RELATIONS), {"default": "inside", "tooltip": "The relation the exemplars share."}),
            "count": ("INT", {"default": 8, "min": 1, "max": 64, "tooltip": "Number of exemplar images (paper: 4-10)."}),
            # not named `seed`: front ends would randomise it after every run (and so retrain)
            "scene_seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1, "control_after_generate": False, "tooltip": "Which scenes are drawn. Stays fixed between runs."}),
        }}

    def make(self, relation, count, scene_seed):
        ex = toyworld.exemplars(relation, count, scene_seed)
        return (ex, ex.images)


NODE_CLASS_MAPPINGS = {"ReVersionToyWorldModel": ToyWorldModel, "ReVersionToyWorldExemplars": ToyWorldExemplars}
NODE_DISPLAY_NAME_MAPPINGS = {"ReVersionToyWorldModel": "Toy World Model",
                              "ReVersionToyWorldExemplars": "Toy World Exemplars"}
