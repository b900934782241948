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
    chosen = scenes.exemplar_scenes(relation, count, seed)
    images = np.stack([scenes.upscale(scenes.render(s)) for s in chosen])
    return Exemplars(torch.from_numpy(images), [[s.template(True), s.template(False)] for s in chosen],
                     [f"{s.a.name} / {s.b.name}" for s in chosen])


def confounded_exemplars(relation: str, count: int = 8, seed: int = 0, colours=("red", "blue")) -> Exemplars:
    """Exemplars of one relation that share an attribute their captions never name: the
    first object is always colours[0] and the second colours[1], and the templates say
    only the shapes ("a circle {} a square"). A relation vector that soaks up the colours
    makes colourless prompts draw them (the leak the steering loss should prevent)."""
    chosen = scenes.confounded_scenes(relation, count, seed, colours)
    images = np.stack([scenes.upscale(scenes.render(s)) for s in chosen])
    return Exemplars(torch.from_numpy(images),
                     [[scenes.template(s.a.shape, s.b.shape, True), scenes.template(s.a.shape, s.b.shape, False)]
                      for s in chosen],
                     [f"{s.a.name} / {s.b.name}" for s in chosen])
