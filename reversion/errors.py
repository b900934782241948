"""One error hierarchy. Every error a user can cause is a `ReVersionError` whose message
names the problem and the fix; ComfyUI shows it on the node that raised it.

They are `ValueError`s too, so code that catches bad input the usual way still does.
"""
from __future__ import annotations


class ReVersionError(ValueError):
    """Bad input or an impossible request; the message names the fix."""


class ConfigError(ReVersionError):
    """A training setting out of range (steps, learning rate, focal alpha, ...)."""


class ExemplarError(ReVersionError):
    """Exemplar images or templates that cannot be used."""


class RelationError(ReVersionError):
    """A relation that does not fit its use: a prompt without <R>, a relation trained for
    another model family, an init word of several tokens, a template that does not fit."""


class RelationFileError(ReVersionError):
    """A relation file or name that cannot be read or written."""


class CheckpointError(ReVersionError):
    """A checkpoint that cannot continue this run."""


class TrainingDiverged(ReVersionError):
    """Training stopped itself: a loss or the vector became NaN/Inf, or the vector ran away.
    The message names the update, the loss parts and the likely cause; the last good state
    is kept in the run's checkpoint."""


class NotEnoughMemory(ReVersionError):
    """Training refused before it starts: even the leanest plan does not fit the free memory."""
