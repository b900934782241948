"""Relation Text Encode, Save Relation, Load Relation."""
from __future__ import annotations

import logging
import os

from ..reversion import relation_file as rf
from ..reversion.errors import RelationFileError
from ..reversion_comfy import queue_checks, store
from ..reversion_comfy.text import encode_with_relation

CATEGORY = "ReVersion"
NO_FILES = "(no relation files yet)"


class RelationTextEncode:
    DESCRIPTION = ("Encode a prompt with the learned relation where the prompt has its placeholder (R in "
                   "angle brackets). Equal to CLIP Text Encode with embedding:NAME in that place.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("CONDITIONING",)
    OUTPUT_TOOLTIPS = ("Conditioning for KSampler and friends.",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clip": ("CLIP", {"tooltip": "The text encoder of the model the relation was trained on."}),
            "relation": ("RELATION", {"tooltip": "From Train Relation or Load Relation."}),
            "text": ("STRING", {"default": "a cat <R> a dog", "multiline": True, "dynamicPrompts": True,
                                "tooltip": "Prompt with <R> where the relation goes."}),
        }}

    def encode(self, clip, relation, text):
        return (encode_with_relation(clip, relation, text),)


class SaveRelation:
    DESCRIPTION = ("Write a relation as NAME.safetensors in models/embeddings (loadable as embedding:NAME). "
                   "Shows the saved file name on the node.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "relation": ("RELATION", {"tooltip": "The relation to save."}),
            "name": ("STRING", {"default": "relation", "tooltip": "File name in models/embeddings: " + store.NAME_RULE + "."}),
            "overwrite": ("BOOLEAN", {"default": False, "tooltip": "Replace an existing file of this name."}),
        }, "hidden": {"prompt": "PROMPT", "unique_id": "UNIQUE_ID"}}   # which graph part wrote the file

    @classmethod
    def VALIDATE_INPUTS(cls, name, overwrite):
        """At queue time: a taken name fails before the upstream training runs, not after it."""
        return store.queue_check(name, overwrite)

    @classmethod
    def IS_CHANGED(cls, name, **_):
        return store.is_changed(name)

    def save(self, relation, name, overwrite, prompt=None, unique_id=None):
        # found at queue time unless the file appeared since: the relation it was given is
        # not lost (Train Relation wrote its own file), only this node's copy is not made
        path = store.claim(name, overwrite, done="(Save Relation wrote nothing)")
        store.save_relation(relation, path, overwrite, queue_checks.graph_signature(prompt, unique_id))
        text = f"saved {path.name} (embedding:{path.stem})"
        logging.getLogger("ReVersion").info("[ReVersion] Save Relation: wrote %s", path)
        return {"ui": {"text": [text]}}


class LoadRelation:
    DESCRIPTION = ("Load a relation from models/embeddings: this pack's .safetensors, the official "
                   "ReVersion learned_embeds.bin, or an A1111 .pt embedding.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("RELATION",)
    OUTPUT_TOOLTIPS = ("The relation, for Relation Text Encode.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        # an empty list shows as "undefined" in the front end: offer a placeholder that explains
        return {"required": {"relation_file": (store.relation_files() or [NO_FILES], {"tooltip": "A file in models/embeddings (press R in the window to refresh the list)."})}}

    @classmethod
    def IS_CHANGED(cls, relation_file):
        path = store.relation_file_path(relation_file)
        return os.path.getmtime(path) if path else float("nan")

    def load(self, relation_file):
        if relation_file == NO_FILES:
            raise RelationFileError("no relation files in models/embeddings yet: run Train Relation "
                                    "(or copy a file there), then press R to refresh the list")
        path = store.relation_file_path(relation_file)
        if path is None:
            raise RelationFileError(f"relation file {relation_file!r} not found in models/embeddings")
        return (rf.load(path),)


NODE_CLASS_MAPPINGS = {"ReVersionRelationTextEncode": RelationTextEncode, "ReVersionSaveRelation": SaveRelation,
                       "ReVersionLoadRelation": LoadRelation}
NODE_DISPLAY_NAME_MAPPINGS = {"ReVersionRelationTextEncode": "Relation Text Encode",
                              "ReVersionSaveRelation": "Save Relation", "ReVersionLoadRelation": "Load Relation"}
