"""Test set-up: a real ComfyUI host (COMFYUI_PATH, default the bundled 0.3.75 copy) with this
pack loaded into it the way ComfyUI loads custom nodes, and the helpers tests share.

The suite is grouped by the unit under test: method/ (reversion/, no ComfyUI), comfy/
(reversion_comfy/), nodes/, toyworld/, server/ (a headless ComfyUI over HTTP), lab/ (the
lab's and the benchmarks' scripts, in slices). The pack is imported as `comfyui_reversion`
(devtools/pack.py); tests that need no host never touch the `host` fixture.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import devtools  # noqa: F401  (registers the pack's import name, `comfyui_reversion`)

# Every node the pack registers (tests check the host lists exactly these)
PACK_NODES = {"ReVersionLoadExemplars", "ReVersionExemplarsFromImages", "ReVersionTrainRelation",
              "ReVersionRelationTextEncode", "ReVersionSaveRelation", "ReVersionLoadRelation",
              "ReVersionToyWorldModel", "ReVersionToyWorldExemplars"}

# The browser tests need Chromium and run on their own: `make test-browser` (pytest tests/browser).
collect_ignore = ["browser"]


# ---------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def host(tmp_path_factory):
    """The host, with input/output/temp/embeddings folders in a temp dir and the pack loaded."""
    from devtools import host as dev_host
    from devtools import pack
    host_path = dev_host.import_comfy(os.environ.get("REVERSION_TEST_DEVICE", "cpu"))
    import folder_paths
    import nodes
    root = tmp_path_factory.mktemp("comfy")
    for sub in ("input", "output", "temp", "embeddings"):
        (root / sub).mkdir()
    folder_paths.set_output_directory(str(root / "output"))
    folder_paths.set_temp_directory(str(root / "temp"))
    folder_paths.set_input_directory(str(root / "input"))
    folder_paths.folder_names_and_paths["embeddings"] = ([str(root / "embeddings")],
                                                        set(folder_paths.supported_pt_extensions))
    module = pack.load_into_host()
    return SimpleNamespace(path=host_path, root=root, embeddings=root / "embeddings", input=root / "input",
                           nodes=nodes, pack=module, node=lambda name: nodes.NODE_CLASS_MAPPINGS[name]())


@pytest.fixture(scope="session")
def tiny(host):
    """tiny("sd1" | "sd2v" | "sdxl") -> (MODEL, CLIP, VAE), built once per session."""
    from devtools import tiny_models
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
    from devtools import headless
    from devtools import host as dev_host
    with headless.ComfyServer(dev_host.comfyui_path(), tmp_path_factory.mktemp("server")) as s:
        yield s


@pytest.fixture(scope="session")
def server(comfy_server):
    return comfy_server


# ----------------------------------------------------------------------------- helpers

def small_exemplars(n=2, size=64, templates=("a cat {} a dog", "cat {} dog")):
    """`n` random exemplar images (seeded), each with all of `templates`."""
    from comfyui_reversion.reversion import exemplars as ex
    g = torch.Generator().manual_seed(3)
    return ex.Exemplars(torch.rand(n, size, size, 3, generator=g), [list(templates)] * n)


def train_inputs(model, clip, vae, name, **overrides):
    """Train Relation's inputs for a quick run (2 updates of 2 exemplars, 1-step preview);
    `overrides` replace any of them."""
    inputs = dict(model=model, clip=clip, vae=vae, exemplars=small_exemplars(), name=name, steps=2, batch_size=2,
                  grad_accum=1, learning_rate=1e-2, scale_lr=False, weight_decay=1e-2, steering_weight=0.01,
                  num_positives=4, temperature=0.07, focal_alpha=0.5, init_word="and", train_seed=1, overwrite=True,
                  preview_steps=1)
    inputs.update(overrides)
    return inputs


def checkpoint_state(step: int, steps: int, stopped: str = "") -> dict:
    """A well-formed checkpoint of a run at update `step` of `steps` (one 4-d vector)."""
    import random
    from comfyui_reversion.reversion import checkpoint, trainer
    vectors = {"clip_l": torch.nn.Parameter(torch.zeros(4))}
    at = checkpoint.boundary(torch.Generator(), random.Random(0), trainer.ExemplarOrder(2, torch.Generator()))
    history = [{"step": i + 1, "loss": 1.0, "denoise": 1.0, "steer": 1.0} for i in range(step)]
    return checkpoint.snapshot(history, vectors, torch.optim.AdamW(list(vectors.values())), at, {"steps": steps}, "fp",
                               stopped=stopped)


def run_node_ui(host, node_name, method, **inputs):
    """Call a node's function the way the executor does (under inference mode); returns the
    node's whole answer: a tuple, or {"ui": ..., "result": (...)}."""
    node = host.node(node_name)
    with torch.inference_mode():
        return getattr(node, method)(**inputs)


def run_node(host, node_name, method, **inputs):
    """Like run_node_ui, but returns only the output tuple (what the executor passes on)."""
    out = run_node_ui(host, node_name, method, **inputs)
    return out["result"] if isinstance(out, dict) and "result" in out else out


def sample_latent(host, model, clip, steps: int = 2) -> torch.Tensor:
    """A short KSampler run of "a cat and a dog" with stock nodes: compare it before and after
    training to show the host's model samples exactly as it did."""
    (pos,) = run_node(host, "CLIPTextEncode", "encode", clip=clip, text="a cat and a dog")
    (neg,) = run_node(host, "CLIPTextEncode", "encode", clip=clip, text="")
    (latent,) = run_node(host, "EmptyLatentImage", "generate", width=64, height=64, batch_size=1)
    (out,) = run_node(host, "KSampler", "sample", model=model, seed=4, steps=steps, cfg=3.0, sampler_name="euler",
                      scheduler="normal", positive=pos, negative=neg, latent_image=latent)
    return out["samples"].clone()


def prepared_backend(model, clip, memory: str = "fast"):
    """A ComfyBackend with the models loaded and usable by autograd (call in training_mode)."""
    from comfyui_reversion.reversion_comfy.backend import ComfyBackend
    backend = ComfyBackend(model, clip, memory)
    backend.prepare()
    return backend


def directional_check(f, x: torch.Tensor, seed: int = 0, h: float = 1e-2):
    """(autograd, central finite difference) of f along a random direction as long as x."""
    from comfyui_reversion.reversion_comfy.guards import inplace_safe
    g = torch.Generator().manual_seed(seed)
    x = x.detach().clone().requires_grad_(True)
    with inplace_safe():
        f(x).backward()
    d = torch.randn(x.shape, generator=g)
    d = d / d.norm() * x.detach().norm()
    with torch.no_grad():
        numeric = (f(x + h * d).item() - f(x - h * d).item()) / (2 * h)
    return (x.grad * d).sum().item(), numeric


def snapshot(*folders) -> dict:
    """Every file under `folders` with its content hash: to assert 'nothing written or changed'."""
    import hashlib
    out = {}
    for folder in folders:
        for root, _, files in os.walk(folder):
            for f in files:
                p = os.path.join(root, f)
                out[p] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def assert_ordinary_mode(path: Path) -> None:
    """A file this pack writes has the permissions the umask gives (safetensors alone: 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(Path(path).stat().st_mode) == 0o666 & ~mask, oct(Path(path).stat().st_mode)


# ------------------------------------------------------------------- graphs over HTTP

def toy_training(name: str, **overrides) -> dict:
    """API-format graph: toy model + 2 exemplars -> Train Relation (1 update)."""
    train = dict(model=["1", 0], clip=["1", 1], vae=["1", 2], exemplars=["2", 0], name=name, overwrite=False,
                 steps=1, batch_size=2, grad_accum=1, learning_rate=1e-3, scale_lr=False, weight_decay=0.01,
                 steering_weight=0.01, num_positives=4, temperature=0.07, focal_alpha=0.5, init_word="and", train_seed=1)
    train.update(overrides)
    return {"1": {"class_type": "ReVersionToyWorldModel", "inputs": {}},
            "2": {"class_type": "ReVersionToyWorldExemplars", "inputs": {"relation": "above", "count": 2, "scene_seed": 0}},
            "3": {"class_type": "ReVersionTrainRelation", "inputs": train}}


def error_of(entry: dict) -> str:
    messages = dict((m[0], m[1]) for m in entry["status"]["messages"])
    return messages["execution_error"]["exception_message"]
