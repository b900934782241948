"""Where relation files and checkpoints go, and whether one may be written: the one place
that decides names, paths, overwriting, the record of what this server wrote, and where a
relation goes when its own folder cannot be written.

- A relation named `painted_on` is `<embeddings>/painted_on.safetensors` (usable as
  `embedding:painted_on` in a stock prompt); its checkpoint is `painted_on.resume` beside it.
- An existing file is never replaced unless `overwrite` is on, and the checkpoint of an
  unfinished run is not replaced silently by a new one.
- The writing nodes check that at queue time (`queue_check`, VALIDATE_INPUTS), before
  anything runs, and again at run time (`claim`), before any work. At queue time the file
  this server last wrote under that name passes: the node's cached result stands for it.
- `is_changed` (IS_CHANGED) changes when a file this server wrote was deleted or replaced,
  so the graph runs again instead of reporting success from the cache.
- Writes are atomic (a temporary file, then a rename); if the relation's own folder cannot
  be written, it is kept in a fallback folder and the error says where (keeping.py does the
  same for a run's checkpoints).
- `RUNNING` holds the relation paths that a run in this server is training right now, so
  that the messages about a name say what is true (running, unfinished, finished).

The record of written files is per server process: after a restart every existing file
counts as someone else's.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from pathlib import Path

import folder_paths

from ..reversion import checkpoint, relation_file
from ..reversion.errors import CheckpointError, ExemplarError, RelationError, RelationFileError

RELATION_SUFFIX = ".safetensors"
CHECKPOINT_SUFFIX = ".resume"     # not an embedding extension: ComfyUI never lists it as one
EMBEDDINGS_VARIABLE = "REVERSION_EMBEDDINGS_DIR"
FALLBACK_FOLDER = "reversion_recovered"
# No spaces: stock prompts read `embedding:name` up to the next space. ASCII only, 64 at most.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
NAME_RULE = ("1-64 ASCII letters, digits, '_', '-' or '.', starting with a letter or digit, not ending with '.'; "
             "no spaces (embedding:<name> ends at one), no folders, no Windows device names (CON, NUL...)")
# Windows cannot hold these as file names, whatever the extension: a file named so could
# not be copied or shared there
WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}
NOTHING_DONE = "(nothing was trained or written)"
# A name input that queue_checks.py replaced with the reason the whole prompt is refused
REFUSED = "\u241b refused: "


# ------------------------------------------------------------------------------- names

def check_name(name: str) -> str:
    """A relation name that works as `embedding:name` and stays inside the embeddings folder."""
    name = name.strip()
    if name.endswith(RELATION_SUFFIX):
        name = name[: -len(RELATION_SUFFIX)]
    if not NAME_PATTERN.match(name) or ".." in name or name.endswith("."):
        raise RelationFileError(f"invalid relation name {name!r}: use {NAME_RULE}, e.g. 'painted_on'")
    if name.split(".")[0].upper() in WINDOWS_RESERVED:
        raise RelationFileError(f"invalid relation name {name!r}: Windows reserves {name.split('.')[0]!r} as a "
                                f"file name (the file could not be copied there); choose another, e.g. "
                                f"'{name.split('.')[0]}_relation'")
    return name


def embeddings_directory() -> Path:
    """Where relation files are written: $REVERSION_EMBEDDINGS_DIR if set (it must be one of
    ComfyUI's embeddings folders, so that `embedding:name` finds the file), else ComfyUI's
    first embeddings folder (models/embeddings)."""
    folders = folder_paths.get_folder_paths("embeddings")
    chosen = os.environ.get(EMBEDDINGS_VARIABLE)
    if not chosen:
        return Path(folders[0])
    if os.path.abspath(chosen) not in {os.path.abspath(f) for f in folders}:
        raise RelationError(f"{EMBEDDINGS_VARIABLE}={chosen} is not one of ComfyUI's embeddings folders "
                            f"({', '.join(folders)}); add it in extra_model_paths.yaml or unset it")
    return Path(chosen)


def path_in(directory: str | Path, name: str) -> Path:
    """`<directory>/<name>.safetensors`, the name checked (no folders, no spaces)."""
    directory = Path(directory).resolve()
    path = (directory / f"{check_name(name)}{RELATION_SUFFIX}").resolve()
    if path.parent != directory:
        raise RelationFileError(f"relation name {name!r} escapes {directory}")
    return path


def relation_path(name: str) -> Path:
    """Where a relation named `name` is written."""
    return path_in(embeddings_directory(), name)


def checkpoint_path(relation_path_: Path) -> Path:
    """The checkpoint beside a relation file: painted_on.safetensors -> painted_on.resume."""
    return Path(relation_path_).with_suffix(CHECKPOINT_SUFFIX)


# ------------------------------------------------------------- what this server wrote

class WrittenFiles:
    """The state (mtime, size) of each file as this server last wrote it, and the IS_CHANGED
    label of each: stable while the file is as written (or never written by us), new once it
    was deleted or replaced, stable again after the re-run rewrites it."""

    INITIAL = "not rewritten"

    def __init__(self):
        # absolute path -> {"written": state after our last write, "seen": state at the last
        # label, "label": the IS_CHANGED value}; a state is (mtime_ns, size) or None (missing)
        self._files: dict[str, dict] = {}

    @staticmethod
    def _state(path: Path):
        try:
            st = os.stat(path)
            return (st.st_mtime_ns, st.st_size)
        except OSError:
            return None

    def record(self, path: Path, graph: str | None = None) -> None:
        """Call after writing `path`: its current state is the one this server made;
        `graph`: the signature of the graph part that wrote it (queue_checks.graph_signature)."""
        entry = self._files.setdefault(str(Path(path).resolve()), {"label": self.INITIAL})
        entry["written"] = entry["seen"] = self._state(path)
        entry["graph"] = graph

    def ours(self, path: Path) -> bool:
        """True if `path` is exactly as this server last wrote it."""
        entry = self._files.get(str(Path(path).resolve()))
        return entry is not None and entry["written"] is not None and entry["written"] == self._state(path)

    def graph(self, path: Path) -> str | None:
        """The signature of the graph part that wrote `path` as it is now (None: unknown, or
        not ours)."""
        return self._files[str(Path(path).resolve())].get("graph") if self.ours(path) else None

    def label(self, path: Path) -> str:
        entry = self._files.get(str(Path(path).resolve()))
        if entry is None:
            return self.INITIAL
        now = self._state(path)
        if now != entry["seen"]:
            entry["label"] = f"{entry['label']}+{now}"
            entry["seen"] = now
        return entry["label"]


WRITTEN = WrittenFiles()


# ------------------------------------------------------------------- may I write this?

def relation_conflict(path: Path, overwrite: bool, allow_ours: bool = False, done: str = NOTHING_DONE) -> str | None:
    """The error text for writing relation file `path`, or None if writing is fine.
    `allow_ours` at queue time, where a node whose last run wrote the file may be served
    from the cache; `done`: what the refusal left undone, as the user should read it."""
    if overwrite or not (path.exists() or path.is_symlink()) or (allow_ours and WRITTEN.ours(path)):
        return None
    return (f"{path.name} already exists in {path.parent}; choose another name, switch 'overwrite' on, or use "
            f"Load Relation to use the file as it is {done}")


class RunningRuns:
    """The relation paths that a run in this server is training now (claimed, not yet done),
    each with the signature of the graph part running it (queue_checks.graph_signature)."""

    RUNNING_NOW = "a run in this server is training '{}' right now; wait for it to finish, or choose another name"

    def __init__(self):
        self._graphs: dict[str, str | None] = {}

    @contextlib.contextmanager
    def training(self, path: Path, graph: str | None = None):
        key = str(Path(path).resolve())
        self._graphs[key] = graph
        try:
            yield
        finally:
            self._graphs.pop(key, None)

    def __contains__(self, path) -> bool:
        return str(Path(path).resolve()) in self._graphs

    def graph(self, path, default=None):
        """The signature of the graph part training `path` now (None: unknown), or `default`
        if none is (one read: the worker thread may end the run at any moment)."""
        return self._graphs.get(str(Path(path).resolve()), default)


RUNNING = RunningRuns()


def checkpoint_conflict(relation_path_: Path, overwrite: bool) -> str | None:
    """Why a new run may not start under this name because of its checkpoint, or None: an
    unfinished or stopped run's checkpoint (not replaced silently), a file that is not a
    checkpoint. A finished run's checkpoint may be replaced freely (the relation file it led
    to is protected on its own). A run training the name now is the callers' check first."""
    path = checkpoint_path(relation_path_)
    name = path.stem
    if overwrite or not (path.exists() or path.is_symlink()):
        return None
    try:
        state = checkpoint.load(path)
    except CheckpointError as e:
        return f"{e} {NOTHING_DONE}"
    done, total = checkpoint.progress(state)
    if state["stopped"]:
        return (f"{path.name} holds a run named '{name}' that stopped itself at update {done + 1} of {total} "
                f"({state['stopped']}); switch 'overwrite' on to train again with other settings {NOTHING_DONE}")
    if done < total:
        return (f"{path.name} holds a checkpoint of an unfinished run named '{name}' (update {done} of {total}); "
                f"switch 'resume' on to continue it, or 'overwrite' on to start over {NOTHING_DONE}")
    return None


def queue_check(name: str, overwrite: bool, new_run: bool = False):
    """VALIDATE_INPUTS of a node that writes relation `name`: True, or the error text.
    `new_run`: also refuse to replace an unfinished run's checkpoint (Train Relation
    without resume)."""
    if not isinstance(name, str):           # wired from another node: checked at run time (claim)
        return True
    if name.startswith(REFUSED):            # the whole prompt was refused
        return name[len(REFUSED):]
    try:
        path = relation_path(name)
    except ValueError as e:
        return str(e)
    if path in RUNNING:
        # its checkpoint is the running run's, not a leftover: whether this node may queue
        # behind it (the same graph part, served from the cache) is queue_checks' decision
        return relation_conflict(path, overwrite, allow_ours=True) or True
    problem = relation_conflict(path, overwrite, allow_ours=True) or (new_run and checkpoint_conflict(path, overwrite))
    return problem or True


def claim(name: str, overwrite: bool, new_run: bool = False, done: str = NOTHING_DONE) -> Path:
    """At run time, before any work: the path to write, or a RelationFileError if it is taken
    (`done`: what the refusal left undone, for the message)."""
    path = relation_path(name)
    if path in RUNNING:
        raise RelationFileError(f"{RUNNING.RUNNING_NOW.format(path.stem)} {NOTHING_DONE}")
    problem = relation_conflict(path, overwrite, done=done) or (new_run and checkpoint_conflict(path, overwrite))
    if problem:
        raise RelationFileError(problem)
    return path


def is_changed(name: str) -> str:
    """IS_CHANGED of a node that writes relation `name` (see `WrittenFiles`)."""
    try:
        return WRITTEN.label(relation_path(name))
    except ValueError:
        return WrittenFiles.INITIAL


# ------------------------------------------------------------------------------ writes

def write_atomically(path: Path, data: bytes) -> Path:
    """Write `data` to `path` whole or not at all: into a temporary file beside it, then
    renamed over it. A failure part-way leaves the old file (if any) untouched and no
    temporary file behind. Ordinary permissions (umask), real OSErrors."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            _write_bytes(f, data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _write_bytes(f, data: bytes) -> None:
    """The bytes onto the disk (the step a full disk fails; tests replace it to fill one)."""
    f.write(data)
    f.flush()
    os.fsync(f.fileno())


def fallback_directories() -> list[Path]:
    """Where a relation goes when its own folder cannot be written (full disk, permissions)."""
    return [Path(folder_paths.get_output_directory()) / FALLBACK_FOLDER,
            Path(tempfile.gettempdir()) / FALLBACK_FOLDER]


def _free_name(folder: Path, name: str) -> Path:
    candidate = folder / name
    n = 1
    while candidate.exists():
        candidate = folder / f"{Path(name).stem}-{n}{Path(name).suffix}"
        n += 1
    return candidate


def keep_in_fallback(relation, filename: str) -> Path | None:
    """Write `relation` to the first fallback folder that takes it (never replacing a file
    there); None if none does."""
    data = relation_file.to_bytes(relation)
    for folder in fallback_directories():
        try:
            return write_atomically(_free_name(folder, filename), data)
        except OSError:
            continue
    return None


def save_relation(relation, path: Path, overwrite: bool, graph: str | None = None) -> Path:
    """Write `relation` to `path` (refusing to replace a file unless `overwrite`) and record it
    (`graph`: the signature of the graph part that wrote it).

    If the write fails (disk full, permissions, a folder in the way), the relation is written
    to the first fallback folder that works and the error says where, so an hour of training
    is never lost to it.
    """
    if path.exists() and not overwrite:
        raise RelationFileError(f"{path} already exists; choose another name or switch 'overwrite' on")
    data = relation_file.to_bytes(relation)
    try:
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "a folder of that name is in the way", str(path))
        write_atomically(path, data)
    except OSError as e:
        kept = keep_in_fallback(relation, path.name)
        where = (f"the trained relation was kept at {kept}: move it into {path.parent} to use it"
                 if kept else "no fallback folder was writable either, so the trained relation is lost; "
                              "free disk space or fix permissions and train again")
        raise RelationFileError(f"could not write {path} ({e.strerror or e}); {where}") from e
    WRITTEN.record(path, graph)
    return path


def save_checkpoint(state: dict, path: Path) -> Path:
    """Write a checkpoint (atomically)."""
    write_atomically(path, checkpoint.to_bytes(state))
    return path


# ----------------------------------------------------------------- files the nodes read

EXEMPLAR_ROOTS_VARIABLE = "REVERSION_EXEMPLAR_ROOTS"   # extra folders Load Exemplars may read
RELATION_FILE_TYPES = (".safetensors", ".bin", ".pt")


def embeddings_folders() -> list[str]:
    """ComfyUI's embeddings folders (where `embedding:name` looks)."""
    return folder_paths.get_folder_paths("embeddings")


def relation_files() -> list[str]:
    """The relation files Load Relation offers: embeddings of the types it reads, sorted."""
    return sorted(f for f in folder_paths.get_filename_list("embeddings") if f.lower().endswith(RELATION_FILE_TYPES))


def relation_file_path(listed_name: str) -> Path | None:
    """The full path of a file `relation_files()` listed, or None if it is gone."""
    path = folder_paths.get_full_path("embeddings", listed_name)
    return Path(path) if path else None


def exemplar_roots() -> list[str]:
    """Folders Load Exemplars may read: ComfyUI's input folder, plus those the server allows
    in $REVERSION_EXEMPLAR_ROOTS (absolute, os.pathsep-separated)."""
    roots = [folder_paths.get_input_directory()]
    roots += [r for r in os.environ.get(EXEMPLAR_ROOTS_VARIABLE, "").split(os.pathsep) if r.strip()]
    return [os.path.realpath(r) for r in roots]


def _inside(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:          # different drives (Windows)
        return False


def exemplar_folder(folder: str) -> str:
    """The folder, relative to ComfyUI's input folder (or absolute), refused unless it lies
    inside the input folder or a folder the server allows through $REVERSION_EXEMPLAR_ROOTS.
    Whoever can reach /prompt must not get listings of the server's other folders."""
    folder = folder.strip().strip('"')
    if not folder:
        raise ExemplarError("no exemplar folder given; type a folder inside ComfyUI's input folder "
                            "(e.g. 'painted_on')")
    path = os.path.realpath(os.path.join(folder_paths.get_input_directory(), folder))   # absolute stays absolute
    if not any(_inside(path, root) for root in exemplar_roots()):
        raise ExemplarError(
            f"exemplar folder {folder!r} is outside ComfyUI's input folder; put the exemplars in "
            f"input/<folder> (e.g. input/painted_on), or have the server allow another folder by "
            f"setting {EXEMPLAR_ROOTS_VARIABLE}=/absolute/path before starting ComfyUI")
    return path
