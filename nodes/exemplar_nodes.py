"""Load Exemplars (folder) and Exemplars from Images."""
from __future__ import annotations

import os

from ..reversion import exemplars as ex
from ..reversion_comfy import store

CATEGORY = "ReVersion"
SIZE_TOOLTIP = ("Square side the exemplars are resized to (bicubic, no flip): 512 for SD1.x, "
                "768 for SD2.x-v, 1024 for SDXL, 256 for the toy world.")


class LoadExemplars:
    DESCRIPTION = ("A folder of 4-10 images that share one relation, with a text.json in the ReVersion "
                   "Benchmark format ({\"0.jpg\": [\"cat {} dog\"]}) or one shared template.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("EXEMPLARS", "IMAGE")
    RETURN_NAMES = ("exemplars", "images")
    OUTPUT_TOOLTIPS = ("Images plus caption templates, for Train Relation.", "The resized exemplar images.")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "folder": ("STRING", {"default": "", "tooltip": "Folder inside ComfyUI's input folder (e.g. 'painted_on' for input/painted_on). Other folders only where the server allows them (REVERSION_EXEMPLAR_ROOTS)."}),
            "size": ("INT", {"default": 512, "min": 64, "max": 2048, "step": 8, "tooltip": SIZE_TOOLTIP}),
            "center_crop": ("BOOLEAN", {"default": False, "tooltip": "Crop to a centred square before resizing (else the image is stretched, as in the paper)."}),
        }, "optional": {
            "template": ("STRING", {"default": "", "multiline": False, "tooltip": "Only for folders without text.json: one caption for every image, with '{}' where the relation goes, e.g. 'a cat {} a dog'."}),
        }}

    @classmethod
    def IS_CHANGED(cls, folder, size, center_crop, template=""):
        try:
            path = store.exemplar_folder(folder)
            stats = [(f, os.stat(os.path.join(path, f))) for f in sorted(os.listdir(path))]
            return str([(f, st.st_mtime_ns, st.st_size) for f, st in stats])
        except (OSError, ValueError):
            return float("nan")

    def load(self, folder, size, center_crop, template=""):
        exemplars = ex.load_folder(store.exemplar_folder(folder), size, center_crop, template)
        return (exemplars, exemplars.images)


class ExemplarsFromImages:
    DESCRIPTION = "Exemplars from an IMAGE batch (e.g. Load Image nodes batched) plus caption templates."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("EXEMPLARS",)
    RETURN_NAMES = ("exemplars",)
    OUTPUT_TOOLTIPS = ("Images plus caption templates, for Train Relation.",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {"tooltip": "4-10 images that share one relation."}),
            "templates": ("STRING", {"default": "a cat {} a dog", "multiline": True, "tooltip": "One template for all images, or one line per image; '{}' marks the relation."}),
            "size": ("INT", {"default": 512, "min": 64, "max": 2048, "step": 8, "tooltip": SIZE_TOOLTIP}),
            "center_crop": ("BOOLEAN", {"default": False, "tooltip": "Crop to a centred square before resizing."}),
        }}

    def build(self, images, templates, size, center_crop):
        return (ex.from_images(images, ex.parse_templates(templates), size, center_crop),)


NODE_CLASS_MAPPINGS = {"ReVersionLoadExemplars": LoadExemplars, "ReVersionExemplarsFromImages": ExemplarsFromImages}
NODE_DISPLAY_NAME_MAPPINGS = {"ReVersionLoadExemplars": "Load Exemplars (folder)",
                              "ReVersionExemplarsFromImages": "Exemplars from Images"}
