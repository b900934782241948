"""Swapped-object negatives: teach <R> which object is which (beyond the paper).

A learned relation prompt often draws "A <R> B" with the objects' roles swapped ("B <R> A"),
a mistake the true word does not make: ReVersion's denoising loss sees each exemplar with
its own caption only, and the steering loss only pulls <R> toward prepositions, so nothing
tells <R> which side of it each object belongs on. This term does: for an exemplar
captioned "A <R> B", the same noisy latent (same timestep and noise) must denoise worse
with the caption "B <R> A" than with its own, by a margin:

    ranking_i = max(0, e_own_i - e_swapped_i + margin * e_own_i)      (margin relative, not trained through)
    loss      = L_denoise + swap_weight * mean_i ranking_i

over the exemplars whose template swaps and whose timestep is t >= FROM_T, with e = the
exemplar's denoising error (mean squared error over its latent). Only high noise: that is
where the objects' places are decided (below, no caption changes the error: measured, see
FROM_T). The margin is relative because the error changes ten-fold across timesteps. Only
<R> trains: the gradient of the swapped caption's error reaches the model through <R> alone.

`swap_template` makes "B {} A" from "A {} B": the text before the slot and the text after
it trade places; a capital first letter and a final punctuation mark stay where they were.
Templates that cannot be swapped return None and are left out of this term (the slot at an
end, "{} between A and B"; both sides alike).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .words import SLOT

MARGIN = 0.5             # the swapped caption must denoise >= 50% worse than the exemplar's own ...
FROM_T = 600             # ... at timesteps t >= 600 of 1000, where the layout is decided. Measured on the
# toy world's "left of" exemplars with the true word: the swapped caption denoises 77-138% worse
# at t = 700-990 (13% at 600), but within 3% at t <= 500, where no caption can tell the objects'
# places apart, so a margin there only adds noise to the gradient (python -m lab.quality.swap_gap)
_END_MARKS = ".!?,;:"


def swap_template(template: str) -> str | None:
    """"a red circle {} a blue square." -> "a blue square {} a red circle."; None when the
    objects cannot be swapped (see the module docstring)."""
    if template.count(SLOT) != 1:
        return None
    before, after = (part.strip() for part in template.split(SLOT))
    end = ""
    while after and after[-1] in _END_MARKS:
        end, after = after[-1] + end, after[:-1].rstrip()
    if not before or not after or before.lower() == after.lower():
        return None
    if before[0].isupper() and after[0].islower():       # the sentence's capital stays first
        before, after = before[0].lower() + before[1:], after[0].upper() + after[1:]
    return f"{after} {SLOT} {before}{end}"


def swapped_templates(templates: list[list[str]]) -> list[list[str | None]]:
    """Per exemplar, per template: its swap (or None)."""
    return [[swap_template(t) for t in ts] for ts in templates]


def ranking(own: torch.Tensor, swapped: torch.Tensor, margin: float = MARGIN) -> torch.Tensor:
    """Per exemplar: how far the swapped caption's error falls short of beating the
    exemplar's own by the margin (0 once it does)."""
    return torch.relu(own - swapped + margin * own.detach())


@dataclass
class SwapTerm:
    """One update's swapped captions (None where the template does not swap) and the term's
    weight: a backend computes each forward piece's share of the loss with `piece_loss`,
    so the update's total is the same however the exemplars are split into forwards."""
    captions: list[str | None]
    weight: float
    margin: float = MARGIN
    # the update's parts, for the log: detached tensors (read once per update, no sync per piece)
    parts: dict = field(default_factory=lambda: {"denoise": 0.0, "swap": 0.0})

    @property
    def used(self) -> int:
        return sum(c is not None for c in self.captions)

    def rows(self, piece: range) -> list[int]:
        """The exemplars of `piece` with a swapped caption (their rows follow the piece's own)."""
        return [i for i in piece if self.captions[i] is not None]

    def piece_loss(self, errors: torch.Tensor, piece: range, total: int) -> torch.Tensor:
        """`errors`: per-row denoising errors of one forward: the piece's exemplars with their
        own captions, then `rows(piece)` with swapped ones. Its share of
        mean(own errors) + weight * mean(ranking) over the whole update (`total` exemplars)."""
        n = len(piece)
        own, swapped = errors[:n], errors[n:]
        denoise = own.sum() / total
        loss = denoise
        self.parts["denoise"] = self.parts["denoise"] + denoise.detach()
        if len(swapped):
            local = [i - piece.start for i in self.rows(piece)]
            rank = ranking(own[local], swapped, self.margin).sum() / self.used
            loss = loss + self.weight * rank
            self.parts["swap"] = self.parts["swap"] + rank.detach()
        return loss
