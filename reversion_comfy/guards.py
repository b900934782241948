"""Autograd through a host that was not written for it.

- Nodes run under `torch.inference_mode()`, so weights loaded by other nodes are inference
  tensors that autograd refuses: `training_mode()` leaves inference mode, `de_inference()`
  swaps such weights for normal tensors with the same values (later stock nodes use them
  unchanged), `frozen_weights()` keeps every host weight out of the gradient.
- ComfyUI's CLIP layers (`x += ...`, both hosts) and the 2024 UNet modify activations that
  autograd saved for backward: `SavedTensorGuard` clones saved tensors exactly in the
  modules where a probe forward saw that happen, and checks every other saved tensor's
  version when backward reads it (a new in-place write stops training instead of giving a
  wrong gradient). `inplace_safe()` (clone everything) is the reference it is tested against.

Plain torch: nothing here imports ComfyUI.
"""
from __future__ import annotations

import contextlib

import torch
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook


@contextlib.contextmanager
def inplace_safe():
    """Autograd through host code that modifies activations in place.

    Every tensor that autograd saves for backward and that itself requires grad is cloned
    when saved, so a later `x += ...` cannot invalidate it. Gradients are exact (tested
    against finite differences); the cost is one copy per saved activation. Training uses the
    narrower `SavedTensorGuard` (clones only in the modules that need it); this blanket form
    is the reference the tests compare it with.
    """
    def pack(t):
        return t.clone() if t.requires_grad else t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield


def _tracks_versions(t: torch.Tensor) -> bool:
    """False for inference tensors, and for tensors that only look normal: a parameter made
    in inference mode and later moved by `Module.to()` outside it (ComfyUI loading a model
    to the GPU) reports is_inference() False but still has no version counter."""
    if t.is_inference():
        return False
    try:
        t._version
        return True
    except RuntimeError:
        return False


def de_inference(module: torch.nn.Module) -> int:
    """Replace parameters/buffers of `module` that autograd cannot use by normal copies.

    Same values, same dtype/device, requires_grad False. Must run outside inference mode.
    Returns how many tensors were replaced. The module keeps working for inference, so the
    host model stays usable by later nodes.
    """
    replaced = 0
    for sub in module.modules():
        for name, p in list(sub._parameters.items()):
            if p is not None and not _tracks_versions(p):
                sub._parameters[name] = torch.nn.Parameter(p.detach().clone(), requires_grad=False)
                replaced += 1
        for name, b in list(sub._buffers.items()):
            if b is not None and not _tracks_versions(b):
                sub._buffers[name] = b.detach().clone()
                replaced += 1
    return replaced


@contextlib.contextmanager
def training_mode():
    """Leave ComfyUI's inference mode and enable grad for the duration of training."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


@contextlib.contextmanager
def frozen_weights(*modules: torch.nn.Module):
    """requires_grad False on every host weight while training (a model built outside
    inference mode would otherwise get full weight gradients); restored after."""
    flags = [(p, p.requires_grad) for m in modules for p in m.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class SavedTensorGuard:
    """The saved-tensor hooks of a training forward: exact autograd through host code that
    modifies activations in place, cloning only where that happens, plus byte accounting.

    `find_inplace()` runs one forward with every saved tensor's version recorded together
    with the module that saved it; the modules whose saved tensors were later modified in
    place (CLIP's layer norms under `x += ...`, the 2024 UNet's transformer norms) form the
    clone set. During training only tensors saved inside those modules are cloned;
    everywhere else `unpack` checks the saved tensor's version (autograd skips its own
    check for hooked tensors), so a host change that adds an in-place op raises instead of
    silently corrupting gradients.

    While `probing()`, a forward is cut into sections (each top-level UNet block and each
    CLIP layer, marked by `end_section`): what a section saved is counted and its in-place
    writes noted, then its graph is dropped, so a probe never holds more than one section's
    saved tensors (the whole text encoder's fp32 weight casts on SDXL would be ~3 GiB, more
    than a lean training step). In-place writes across sections (none in the known hosts)
    go unnoticed by the probe; the version check in `unpack` still stops training on them.
    """

    def __init__(self, roots: list[torch.nn.Module]):
        self.roots = roots
        self.clone_modules: set[torch.nn.Module] = set()
        self._clone_depth = 0
        self._handles = []
        self._record = None                 # [(tensor, version, module)] while finding
        self._stack: list[torch.nn.Module] = []
        self.meter = None                   # {(section, storage ptr): (bytes, region)} while measuring
        self.region = "other"
        self.probe = False                  # while probing: forwards are cut into sections
        self._section = 0
        self._found: set[torch.nn.Module] = set()
        self._weights = {t.untyped_storage().data_ptr() for r in roots for t in (*r.parameters(), *r.buffers())}

    def pack(self, t):
        if self.meter is not None and t.untyped_storage().data_ptr() not in self._weights:
            self.meter.setdefault((self._section, t.untyped_storage().data_ptr()),
                                  (t.untyped_storage().nbytes(), self.region))
        if self._record is not None and t.requires_grad:
            self._record.append((t, t._version, self._stack[-1] if self._stack else None))
        # detached: a saved tensor that is its own node's output would otherwise hold its
        # grad_fn, a cycle through C++ that no gc can free; graphs never run backward (the
        # memory probes) then leak all they saved (e.g. fp32 casts of an fp16 CLIP, GiBs on
        # SDXL) on every training run. Autograd restores the grad_fn when unpacking.
        if self._clone_depth and t.requires_grad:
            return t.detach().clone(), None          # a private copy: nothing can modify it
        return t.detach(), (None if t.is_inference() else t._version)

    @staticmethod
    def unpack(packed):
        """Autograd skips its own in-place check for tensors packed by hooks; this is it:
        a saved tensor modified in place after saving would give a wrong gradient."""
        t, version = packed
        if version is not None and t._version != version:
            raise RuntimeError(
                f"ReVersion: host code modified a tensor {tuple(t.shape)} in place after autograd saved it, "
                f"outside the modules it clones for; the gradient would be wrong, so training stopped. "
                f"Please report it with your ComfyUI version.")
        return t

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)

    @contextlib.contextmanager
    def find_inplace(self):
        """Record, for the forward run inside, which modules need their saved tensors cloned."""
        ours = {id(m) for r in self.roots for m in r.modules()}

        def enter(module, args):
            if id(module) in ours:
                self._stack.append(module)

        def leave(module, args, out):
            if id(module) in ours and self._stack and self._stack[-1] is module:
                self._stack.pop()

        handles = [register_module_forward_pre_hook(enter), register_module_forward_hook(leave)]
        self._record, self._stack, self._found = [], [], set()
        try:
            with self.hooks():
                yield
        finally:
            for h in handles:
                h.remove()
            self._note_inplace()
            self._record = None
            self.watch(self.clone_modules | self._found)

    def _note_inplace(self) -> None:
        """The modules whose saved tensors (recorded so far) were modified in place since."""
        self._found |= {m for t, v, m in self._record if m is not None and t._version != v}
        self._record.clear()

    @contextlib.contextmanager
    def probing(self):
        """Probe forwards: cut into sections at `end_section` (see the class docstring)."""
        self.probe = True
        try:
            yield
        finally:
            self.probe = False

    def end_section(self, out):
        """End of a top-level UNet block or CLIP layer. While probing: note its in-place
        writes and drop its graph (its output goes on detached); else the output as is."""
        if not self.probe or not isinstance(out, torch.Tensor):
            return out
        if self._record is not None:
            self._note_inplace()
        self._section += 1
        if not out.requires_grad:
            return out.detach()
        return out.detach().requires_grad_().clone()     # not a leaf: the host may add into it in place

    def watch(self, modules) -> None:
        """Clone what `modules` save (instance hooks, removed by `close()`)."""
        self.close()
        self.clone_modules = set(modules)

        def enter(module, args):
            self._clone_depth += 1

        def leave(module, args, out):
            self._clone_depth -= 1

        for m in self.clone_modules:
            self._handles += [m.register_forward_pre_hook(enter), m.register_forward_hook(leave)]

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles, self._clone_depth = [], 0

    @contextlib.contextmanager
    def measuring(self):
        """Count unique activation storages saved for backward (weights excluded), by region;
        `measured()` reads and ends the count."""
        self.meter = {}
        yield self

    def measured(self) -> dict:
        out = {}
        for nbytes, region in (self.meter or {}).values():
            out[region] = out.get(region, 0) + nbytes
        self.meter = None
        return out
