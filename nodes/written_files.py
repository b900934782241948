"""Relation files this server wrote, so that the nodes that write them can tell

- at queue time (VALIDATE_INPUTS), before any upstream node runs: "this name is taken by a
  file this graph did not write" (refuse unless overwrite), from "this is the file my last
  run wrote" (fine: the node's cached result stands for it);
- at cache time (IS_CHANGED): the file the last run wrote was deleted or replaced, so the
  node must run again instead of reporting success from the cache.

The record is per server process: after a restart every existing file counts as foreign.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

# (path, overwrite) -> error text or None: a node's own extra file check (Train Relation's checkpoint)
ExtraCheck = Callable[[Path, bool], "str | None"]

INITIAL = "not rewritten"
# absolute path -> {"written": state after our last write, "seen": state at the last IS_CHANGED,
#                   "label": the IS_CHANGED value}; a state is (mtime_ns, size) or None (missing)
_written: dict[str, dict] = {}


def _stat(path: Path):
    try:
        st = os.stat(path)
        return (st.st_mtime_ns, st.st_size)
    except OSError:
        return None


def record(path: Path) -> None:
    """Call after writing `path`: its current state is the one this server made."""
    entry = _written.setdefault(str(Path(path).resolve()), {"label": INITIAL})
    entry["written"] = entry["seen"] = _stat(path)


def ours(path: Path) -> bool:
    """True if `path` is exactly as this server last wrote it."""
    entry = _written.get(str(Path(path).resolve()))
    return entry is not None and entry["written"] is not None and entry["written"] == _stat(path)


def conflict(path: Path, overwrite: bool, allow_ours: bool = False) -> str | None:
    """The error text for writing `path`, or None if writing is fine. `allow_ours` at queue
    time, where a node whose last run wrote the file may be served from the cache."""
    if overwrite or not path.exists() or (allow_ours and ours(path)):
        return None
    return (f"{path.name} already exists in {path.parent}; choose another name or switch 'overwrite' on "
            f"(nothing was trained or written)")


def relation_path(name: str) -> Path:
    """Where a relation named `name` is written (the name checked: no folders, no spaces)."""
    from reversion import relation_file as rf
    from reversion_comfy import adapter
    return rf.path_in(adapter.embeddings_directory(), name)


def queue_check(name: str, overwrite: bool, extra: ExtraCheck | None = None):
    """VALIDATE_INPUTS of a node that writes relation `name`: True, or the error text. Runs when
    the graph is queued, before any node; the file this server last wrote there passes, since
    the node's cached result may stand for it."""
    try:
        path = relation_path(name)
    except ValueError as e:
        return str(e)
    return conflict(path, overwrite, allow_ours=True) or (extra and extra(path, overwrite)) or True


def claim(name: str, overwrite: bool, extra: ExtraCheck | None = None) -> Path:
    """At run time, before any work: the path to write, or a RelationFileError if it is taken."""
    from reversion import relation_file as rf
    path = relation_path(name)
    problem = conflict(path, overwrite) or (extra and extra(path, overwrite))
    if problem:
        raise rf.RelationFileError(problem)
    return path


def is_changed(name: str) -> str:
    """IS_CHANGED of a node that writes relation `name` (see `change_label`)."""
    try:
        return change_label(relation_path(name))
    except ValueError:
        return INITIAL


def change_label(path: Path) -> str:
    """An IS_CHANGED value: stable while the file is as we wrote it (or never written by us),
    new once it was deleted or replaced, and stable again after the re-run rewrites it."""
    entry = _written.get(str(Path(path).resolve()))
    if entry is None:
        return INITIAL
    now = _stat(path)
    if now != entry["seen"]:
        entry["label"] = f"{entry['label']}+{now}"
        entry["seen"] = now
    return entry["label"]


def fallback_directories() -> list[Path]:
    """Where a relation goes when its own folder cannot be written (full disk, permissions)."""
    import tempfile
    import folder_paths
    return [Path(folder_paths.get_output_directory()) / "reversion_recovered",
            Path(tempfile.gettempdir()) / "reversion_recovered"]


def save_relation(relation, path: Path, overwrite: bool) -> Path:
    """Write `relation` to `path` (refusing to replace a file unless `overwrite`) and record it.

    If the write fails (disk full, permissions), the relation is written to the first fallback
    folder that works and the error says where, so an hour of training is never lost to it.
    """
    from reversion import relation_file as rf
    try:
        rf.save(relation, path, overwrite=overwrite)
    except OSError as e:
        kept = None
        for folder in fallback_directories():
            candidate = folder / path.name
            n = 1
            while candidate.exists():
                candidate = folder / f"{path.stem}-{n}{path.suffix}"
                n += 1
            try:
                rf.save(relation, candidate)
                kept = candidate
                break
            except OSError:
                continue
        where = (f"the trained relation was kept at {kept}: move it into {path.parent} to use it"
                 if kept else "no fallback folder was writable either, so the trained relation is lost; "
                              "free disk space or fix permissions and train again")
        raise rf.RelationFileError(f"could not write {path} ({e.strerror or e}); {where}") from e
    record(path)
    return path
