"""Checkpoints of a relation training run, so that Cancel or a crash loses at most a few updates.

A checkpoint holds everything the loop's next update depends on, taken at an update
boundary: the vectors, AdamW's state, the step count, the loss history, the states of the
two random generators and of the exemplar order, plus what the run must match to be
continued (the exemplar fingerprint and every hyperparameter but `steps`). Resuming from it
on the same machine gives the same vectors, bit for bit on a CPU, as the uninterrupted run.

It also records which model made it (`model`: the backend's fingerprint, e.g. family,
encoder widths and a hash of sampled weights) and, for a run that stopped itself
(trainer.TrainingDiverged), why (`stopped`), so that the next run's messages say what is
true: unreadable, unfinished, stopped, finished, or made on another model.

Files are plain tensors, lists and numbers serialised with `torch.save` (`to_bytes`) and
read with `torch.load(weights_only=True)`: no arbitrary unpickling; `load` checks every
field before anything uses one. Where a checkpoint is written, and when one may be
replaced, is `reversion_comfy/store.py`'s business.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from . import swap
from .errors import CheckpointError

FORMAT = 1
# When the loop writes a checkpoint (Checkpointing.save's second argument)
PERIODIC, END, STOPPED = "every N updates", "at the end", "when stopped"
# field -> type every checkpoint holds (`model` and `stopped` came later: optional)
FIELDS = {"step": int, "vectors": dict, "optimizer": dict, "torch_rng": torch.Tensor, "python_rng": (list, tuple),
          "order": dict, "history": list, "config": dict, "fingerprint": str}


def fingerprint(images: torch.Tensor, templates: list[list[str]]) -> str:
    """Identity of an exemplar set: its pixels and templates (not the VAE latents, whose last
    bits may differ between runs on a GPU)."""
    h = hashlib.sha256()
    h.update(str(tuple(images.shape)).encode())
    h.update(images.detach().float().contiguous().cpu().numpy().tobytes())
    h.update(repr(templates).encode())
    return h.hexdigest()[:16]


@dataclass
class Checkpointing:
    """How a run keeps checkpoints: `save(state, when)` every `every` updates (0: never on a
    schedule: when = PERIODIC), at the end (END) and when the run is cancelled or fails
    (STOPPED); `resume_from` continues a run. `fingerprint` names the exemplars, `model`
    the model (the backend's fingerprint; {} when unknown)."""
    save: Callable[[dict, str], None]
    every: int = 0
    fingerprint: str = ""
    resume_from: dict | None = None
    model: dict = field(default_factory=dict)


def boundary(gen: torch.Generator, rng, order) -> dict:
    """The random state that the next update starts from: taken after every complete update,
    so that a cancelled update's draws are replayed on resume."""
    return {"torch_rng": gen.get_state(), "python_rng": rng.getstate(), "order": order.state()}


def snapshot(history: list[dict], vectors: dict, optimizer, at_boundary: dict, config: dict,
             fingerprint_: str, model: dict | None = None, stopped: str = "") -> dict:
    """A checkpoint of the run after its last complete update (`stopped`: why the run
    stopped itself, if it did)."""
    return {"step": len(history), "vectors": {k: v.detach().clone() for k, v in vectors.items()},
            "optimizer": optimizer.state_dict(), **at_boundary, "history": list(history), "config": config,
            "fingerprint": fingerprint_, "model": dict(model or {}), "stopped": stopped}


def restore(state: dict, vectors: dict, optimizer, gen: torch.Generator, rng, order) -> list[dict]:
    """Put a checkpoint's vectors, optimizer and random state back; returns its history."""
    state = _fresh_copy(state)      # tensors loaded under a host's inference mode can't be updated
    with torch.no_grad():
        for k, v in vectors.items():
            v.copy_(state["vectors"][k])
    optimizer.load_state_dict(state["optimizer"])
    gen.set_state(state["torch_rng"])
    rng.setstate(_as_tuples(state["python_rng"]))
    order.load_state(state["order"])
    return list(state["history"])


def _fresh_copy(x):
    if isinstance(x, torch.Tensor):
        return x.clone()
    if isinstance(x, dict):
        return {k: _fresh_copy(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_fresh_copy(v) for v in x)
    return x


def _as_tuples(x):
    """random.setstate wants the nested tuples that a round trip through a file may make lists."""
    return tuple(_as_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def to_bytes(state: dict) -> bytes:
    """A checkpoint (a `snapshot`) as the bytes of its file."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    return buffer.getvalue()


def load(path: str | Path) -> dict:
    """A checkpoint file's state, every field checked; CheckpointError says what is wrong."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path.name} in {path.parent} is a folder, not a checkpoint: move or delete it")
    if not path.is_file():
        raise CheckpointError(f"no checkpoint {path.name} in {path.parent}: nothing to resume; switch "
                              f"'resume' off to start a new run")
    unreadable = (f"{path.name} in {path.parent} is not a checkpoint this pack can read: damaged, from "
                  f"another program, or not plain data; delete it, or switch 'resume' off and 'overwrite' on "
                  f"to replace it")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:     # corrupt, truncated, or not plain data
        raise CheckpointError(f"{unreadable} ({type(e).__name__}: {str(e)[:200]})") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{unreadable} (no format {FORMAT} marker)")
    wrong = [k for k, t in FIELDS.items() if not isinstance(state.get(k), t)]
    if not wrong and not (isinstance(state["config"].get("steps"), int) and state["vectors"]
                          and all(isinstance(v, torch.Tensor) for v in state["vectors"].values())):
        wrong = ["config.steps or vectors"]
    if wrong:
        raise CheckpointError(f"{unreadable} (missing or wrong: {', '.join(wrong)})")
    state.setdefault("model", {})
    state.setdefault("stopped", "")
    return state


def progress(state: dict) -> tuple[int, int]:
    """(updates done, updates asked for) of a loaded checkpoint."""
    return int(state["step"]), int(state["config"]["steps"])


# settings added after checkpoints were first written, with the value every earlier run had (the
# margin did nothing with the swap term off: today's default, so older runs resume)
ADDED_LATER = {"swap_weight": 0.0, "swap_margin": swap.MARGIN, "num_vectors": 1}


def check_compatible(state: dict, config: dict, fingerprint_: str, model: dict | None = None,
                     vectors: dict | None = None) -> None:
    """Refuse to continue a run on another model, with other exemplars or other settings
    (except more steps). `model`: this run's model fingerprint (checked when both sides
    have one); `vectors`: this run's starting vectors (their shapes must match)."""
    if vectors is not None:
        theirs = {k: tuple(v.shape[-1:]) for k, v in state["vectors"].items()}
        ours = {k: tuple(v.shape[-1:]) for k, v in vectors.items()}
        if theirs != ours:
            raise CheckpointError(f"the checkpoint was made for another model family (its vectors: {_shapes(theirs)}; "
                                  f"this model's: {_shapes(ours)}); use that model, or switch 'resume' off and "
                                  f"'overwrite' on to start over")
    if model and state.get("model") and state["model"] != model:
        differ = ", ".join(f"{k} {state['model'].get(k)!r} -> {model.get(k)!r}" for k in sorted(set(model) | set(state["model"]))
                           if model.get(k) != state["model"].get(k))
        raise CheckpointError(f"the checkpoint was made with another model ({differ}): another checkpoint file, "
                              f"LoRA or patch; use the same model, or switch 'resume' off and 'overwrite' on to "
                              f"start over")
    if state["fingerprint"] != fingerprint_:
        raise CheckpointError("the checkpoint was made with other exemplars (images or templates differ); "
                              "use the same exemplars, or switch 'resume' off and 'overwrite' on to start over")
    theirs = {**ADDED_LATER, **state["config"]}       # an older checkpoint: the value its run had
    differ = sorted(k for k in set(config) | set(theirs) if k != "steps" and config.get(k) != theirs.get(k))
    if differ:
        changes = ", ".join(f"{k} {theirs.get(k)!r} -> {config.get(k)!r}" for k in differ)
        raise CheckpointError(f"the checkpoint was made with other settings ({changes}); set them back to "
                              f"resume, or switch 'resume' off and 'overwrite' on to start over")
    if state["step"] >= config["steps"]:
        raise CheckpointError(f"the checkpoint is already at update {state['step']} of the {config['steps']} "
                              f"asked for; raise 'steps' to train further")
    if state.get("stopped"):
        raise CheckpointError(f"the checkpoint's run stopped itself ({state['stopped']}); the same settings "
                              f"would stop there again: switch 'resume' off and 'overwrite' on to train with "
                              f"other settings")


def _shapes(shapes: dict) -> str:
    return ", ".join(f"{k} {'x'.join(map(str, s))}" for k, s in sorted(shapes.items()))
