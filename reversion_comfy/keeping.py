"""Nothing trained is lost: every write a training run makes after its first update.

A run writes its checkpoint (`NAME.resume`) every N updates, at the end and when it stops
on Cancel or an error, then the relation file. Each write is atomic (store.write_atomically);
when one fails (disk full, a folder in the way, permissions) the run does not lose what it
learned:

- a checkpoint every N updates, or at the end: a warning, and training goes on (the relation
  file is written as usual; the summary says the checkpoint is missing);
- the checkpoint when the run stops: the last good vector is written as a relation file to
  the recovery folder (output/reversion_recovered, else the system temp folder), and the
  error the user sees says where, with the reason; a run that stopped itself (NaN,
  runaway: it cannot be resumed as it was) gets that relation file too;
- the relation file: store.save_relation keeps it in the recovery folder the same way.

`RunKeeper.explain(error)` adds to the run's error where its completed updates are.
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..reversion import checkpoint
from ..reversion.errors import TrainingDiverged
from ..reversion.relation_file import Relation
from . import store

log = logging.getLogger("ReVersion")


class RunKeeper:
    """The checkpoint writes of one run (`save` is its Checkpointing.save) and what became of
    them: `saved` = (path, update) of the last checkpoint written, `recovered` = the recovery
    copy's path, `problems` = the failures to report."""

    def __init__(self, name: str, relation_path: Path, init_word: str):
        self.name, self.init_word = name, init_word
        self.checkpoint = store.checkpoint_path(relation_path)
        self.saved: tuple[Path, int] | None = None
        self.recovered: Path | None = None
        self.problems: list[str] = []
        self.stop_failed = False
        self._reported: set[str] = set()         # the kinds of write (`when`) already in `problems`

    def save(self, state: dict, when: str) -> None:
        try:
            store.save_checkpoint(state, self.checkpoint)
            self.saved = (self.checkpoint, int(state["step"]))
            if when == checkpoint.STOPPED and state.get("stopped"):
                # a run that stopped itself cannot be resumed as it was: its last good vector
                # is also kept as a relation file, usable at once
                self.recovered = self.recover(state, "the run stopped itself")
            return
        except Exception as e:                  # OSError from the disk; anything torch.save raises
            reason = _reason(e)
        problem = f"checkpoint {self.checkpoint.name} could not be written {when} (update {state['step']}): {reason}"
        log.warning("[ReVersion] %s%s", problem, "; training goes on" if when == checkpoint.PERIODIC else "")
        if when not in self._reported:             # once per kind, not every N updates
            self._reported.add(when)
            self.problems.append(problem)
        if when == checkpoint.STOPPED:
            self.stop_failed = True
            self.recovered = self.recover(state, reason)

    def recover(self, state: dict, reason: str) -> Path | None:
        """The state's vectors as a relation file in the first recovery folder that takes it."""
        relation = Relation(state["vectors"], name=self.name, init_word=self.init_word, steps=int(state["step"]),
                            hyperparameters={**state["config"], "recovered": reason})
        kept = store.keep_in_fallback(relation, f"{self.name}{store.RELATION_SUFFIX}")
        if kept is not None:
            log.warning("[ReVersion] the last good vector (update %d) was kept at %s", state["step"], kept)
        return kept

    def where(self, diverged: bool = False) -> str:
        """Where the run's completed updates are, for its error message (`diverged`: the run
        stopped itself, so resuming it with the same settings is no way on)."""
        on = ("switch 'overwrite' on to train again with other settings" if diverged
              else "switch 'resume' on to continue the same run")
        if self.recovered is not None and not self.stop_failed:
            return (f"the last good state (update {self.saved[1]}) is kept in {self.saved[0]}, and its vector as a "
                    f"relation at {self.recovered} (move it into {self.checkpoint.parent} to use it): {on}")
        if self.recovered is not None:
            return (f"{'; '.join(self.problems)}; the last good vector was kept at {self.recovered}: move it into "
                    f"{self.checkpoint.parent} to use it")
        if self.stop_failed:
            return f"{'; '.join(self.problems)}; no recovery folder was writable either, so the updates are lost"
        if self.saved is not None:
            return f"the last good state (update {self.saved[1]}) is kept in {self.saved[0]}: {on}"
        return "no update had completed, so nothing was kept"

    def explain(self, error: BaseException) -> None:
        """Append `where()` to the message of an error that ends the run (not to Cancel,
        which shows no message: the log says it)."""
        where = self.where(diverged=isinstance(error, TrainingDiverged))
        log.info("[ReVersion] run '%s' ended: %s", self.name, where)
        if isinstance(error, Exception) and error.args and isinstance(error.args[0], str):
            error.args = (f"{error.args[0]}; {where}",) + tuple(error.args[1:])


def _reason(e: Exception) -> str:
    if isinstance(e, OSError):
        return f"{e.strerror or e}" + (f" ({e.filename})" if getattr(e, "filename", None) else "")
    return f"{type(e).__name__}: {str(e)[:200]}"
