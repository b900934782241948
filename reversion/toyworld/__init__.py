"""A toy relation world: procedural scenes, a judge, exemplar sets (pure numpy/torch)."""
from __future__ import annotations

import numpy as np
import torch

from ..exemplars import Exemplars
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


def tinted_exemplars(relation: str, count: int = 8, seed: int = 0, background: str = "pink") -> Exemplars:
    """The diverse exemplars of `exemplars(relation, count, seed)`, all under a sky tinted
    `background` (scenes.BACKGROUNDS) their captions never name: an attribute no object word carries (the
    colours of `confounded_exemplars` are bound to the object words). A relation vector
    that soaks up the tint makes untinted prompts draw it. Needs a toy model trained with
    tints to mean anything (`make toy-model-tint`)."""
    return _as_exemplars(scenes.exemplar_scenes(relation, count, seed, background), lambda o: o.name)


def _as_exemplars(chosen: list[scenes.Scene], caption_name) -> Exemplars:
    """Scenes rendered at display size, each with two templates (with and without articles)
    that call its objects `caption_name(obj)`; names say the full objects."""
    images = np.stack([scenes.upscale(scenes.render(s)) for s in chosen])
    templates = [[scenes.template(caption_name(s.a), caption_name(s.b), articles) for articles in (True, False)]
                 for s in chosen]
    return Exemplars(torch.from_numpy(images), templates, [f"{s.a.name} / {s.b.name}" for s in chosen])
