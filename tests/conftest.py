"""Test set-up: a real ComfyUI host (COMFYUI_PATH, default the bundled 0.3.75 copy) and
this pack loaded into it the way ComfyUI loads custom nodes.

Tests that need no host (the method in `reversion/`) don't touch the `host` fixture.
"""
from __future__ import annotations

import asyncio
import inspect
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def host(tmp_path_factory):
    """The host, with input/output/temp/embeddings folders in a temp dir and the pack loaded."""
    from reversion_comfy import standalone
    host_path = standalone.import_comfy(os.environ.get("REVERSION_TEST_DEVICE", "cpu"))
    import folder_paths
    import nodes
    root = tmp_path_factory.mktemp("comfy")
    for sub in ("input", "output", "temp", "embeddings", "custom_nodes"):
        (root / sub).mkdir()
    folder_paths.set_output_directory(str(root / "output"))
    folder_paths.set_temp_directory(str(root / "temp"))
    folder_paths.set_input_directory(str(root / "input"))
    folder_paths.folder_names_and_paths["embeddings"] = ([str(root / "embeddings")],
                                                        set(folder_paths.supported_pt_extensions))
    pack = root / "custom_nodes" / "ComfyUI-ReVersion"
    pack.symlink_to(REPO, target_is_directory=True)
    loaded = nodes.load_custom_node(str(pack))
    if inspect.iscoroutine(loaded):
        loaded = asyncio.run(loaded)
    assert loaded, "ComfyUI failed to import the pack (see the log above)"
    return SimpleNamespace(path=host_path, root=root, embeddings=root / "embeddings", input=root / "input",
                           nodes=nodes, node=lambda name: nodes.NODE_CLASS_MAPPINGS[name]())


@pytest.fixture(scope="session")
def tiny(host):
    """tiny("sd1" | "sd2v" | "sdxl") -> (MODEL, CLIP, VAE), built once per session."""
    import tiny_models
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = tiny_models.build(family, embedding_directory=[str(host.embeddings)])
        return cache[family]
    return get


@pytest.fixture(scope="session")
def toy(host):
    """The committed toy-world model, loaded through the Toy World Model node."""
    with torch.inference_mode():
        return host.node("ReVersionToyWorldModel").load()


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    """One headless ComfyUI (the host under test) with this pack, shared by the HTTP tests."""
    from reversion_comfy import headless, standalone
    with headless.ComfyServer(standalone.comfyui_path(), tmp_path_factory.mktemp("server")) as s:
        yield s


@pytest.fixture(scope="session")
def server(comfy_server):
    return comfy_server


def load_script(relative_path: str):
    """A script of the repository (bench/, scripts/: not packages) imported as a module."""
    import importlib.util
    path = REPO / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def small_exemplars(n=2, size=64):
    """`n` random exemplar images (seeded) with two templates each."""
    from reversion import exemplars as ex
    g = torch.Generator().manual_seed(3)
    return ex.Exemplars(torch.rand(n, size, size, 3, generator=g), [["a cat {} a dog", "cat {} dog"]] * n)


def train_inputs(model, clip, vae, name, **overrides):
    """Train Relation's inputs for a quick run (2 updates of 2 exemplars, 1-step preview);
    `overrides` replace any of them."""
    inputs = dict(model=model, clip=clip, vae=vae, exemplars=small_exemplars(), name=name, steps=2, batch_size=2,
                  grad_accum=1, learning_rate=1e-2, scale_lr=False, weight_decay=1e-2, steering_weight=0.01,
                  num_positives=4, temperature=0.07, focal_alpha=0.5, init_word="and", train_seed=1, overwrite=True,
                  preview_steps=1)
    inputs.update(overrides)
    return inputs


def run_node(host, node_name, method, **inputs):
    """Call a node's function the way the executor does: under inference mode. Returns the
    output tuple (the "result" part of a {"ui": ..., "result": ...} answer)."""
    out = run_node_ui(host, node_name, method, **inputs)
    return out["result"] if isinstance(out, dict) and "result" in out else out


def run_node_ui(host, node_name, method, **inputs):
    """Like run_node, but returns the node's whole answer (with its "ui" part)."""
    node = host.node(node_name)
    with torch.inference_mode():
        out = getattr(node, method)(**inputs)
    # {"ui": ..., "result": (...)} returns: the executor passes on "result", so do the same
    return out["result"] if isinstance(out, dict) and "result" in out else out
