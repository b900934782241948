"""The toy relation world, the pack's embedded default: a world where relation learning can
be shown on a CPU, with no downloads.

    scenes.py      two-object scenes whose relation geometry decides; captions; the training mix
    judge.py       reads objects and relation back out of any image
    evaluate.py    held-out prompts and scores (relation and entity accuracy)
    model.py       the toy text-to-image model, built from ComfyUI's own classes (needs ComfyUI)
    toyworld.safetensors, toy_clip.json   its weights and text-encoder config

Everything but model.py is plain numpy/torch.
"""
from __future__ import annotations

import numpy as np
import torch

from ..reversion.exemplars import Exemplars
from . import scenes


def exemplars(relation: str, count: int = 8, seed: int = 0) -> Exemplars:
    """Rendered exemplars of one relation, at display size (256 px).

    Templates hold "{}" where the relation word would be; the word itself never appears:
    "a red circle {} a blue square" and "red circle {} blue square".
    """
    return _as_exemplars(scenes.exemplar_scenes(relation, count, seed), lambda o: o.name)


def confounded_exemplars(relation: str, count: int = 8, seed: int = 0, colours=("red", "blue")) -> Exemplars:
    """Exemplars of one relation that share an attribute their captions never name: the
    first object is always colours[0] and the second colours[1], and the templates say
    only the shapes ("a circle {} a square"). A relation vector that soaks up the colours
    makes colourless prompts draw them (the leak the steering loss should prevent)."""
    return _as_exemplars(scenes.confounded_scenes(relation, count, seed, colours), lambda o: o.shape)


def _as_exemplars(chosen: list[scenes.Scene], caption_name) -> Exemplars:
    """Scenes rendered at display size, each with two templates (with and without articles)
    that call its objects `caption_name(obj)`; names say the full objects."""
    images = np.stack([scenes.upscale(scenes.render(s)) for s in chosen])
    templates = [[scenes.template(caption_name(s.a), caption_name(s.b), articles) for articles in (True, False)]
                 for s in chosen]
    return Exemplars(torch.from_numpy(images), templates, [f"{s.a.name} / {s.b.name}" for s in chosen])
