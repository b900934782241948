"""Emulated small cards: what memory=auto chooses on 4-24 GB, and whether it trains there.

    python -m bench.bench_cards                        # on a GPU (bench/gpu_session.sh): CASES, in order
    python -m bench.bench_cards --caps 4 6 8 12 16 24  # every model on every card (~3 x longer)
    python -m bench.bench_cards --tiny --caps 1 2      # the same code on tiny models, any device (tested)

For each model and card size, in a fresh process: the process is capped to the card's
memory (`torch.cuda.set_per_process_memory_fraction`), and ComfyUI's free-memory report is
capped likewise (what it reports is what auto decides with: free = the card's size less
what torch has reserved), then Train Relation's own entry point trains 3 updates of 2 x 4
exemplars with memory=auto. Each row: what auto chose (mode, exemplars per forward,
weights kept in CPU memory), peak VRAM with the weights (max_memory_allocated), seconds per
update, and the outcome: trained, refused before training (with the message), or out of
memory. Models: random weights from ComfyUI's classes (devtools/full_models.py), UNet in
bf16, the text encoder as ComfyUI loads it; SDXL also with fp8 (e4m3fn) UNet weights.
Results: bench/results/cards.json, written after every row.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from devtools.pack import REPO

GiB = 1024 ** 3
MODELS = (("sd1", 512, "bfloat16"), ("sdxl", 1024, "bfloat16"), ("sdxl", 1024, "float8_e4m3fn"))
# The default run, most wanted first (a run stopped at its time limit keeps the rows before):
# issue 22's targets (SDXL under 8 GB, SD1.5 under 4 GB, fp8 SDXL under 8 GB), then the rest
# of the table. Each case is its own process (~15-40 s on an H100/H200: import, build, 3 updates).
CASES = (("sdxl", 1024, "bfloat16", 8), ("sd1", 512, "bfloat16", 4), ("sdxl", 1024, "float8_e4m3fn", 8),
         ("sdxl", 1024, "bfloat16", 12), ("sdxl", 1024, "bfloat16", 24), ("sd1", 512, "bfloat16", 6),
         ("sdxl", 1024, "bfloat16", 6), ("sdxl", 1024, "bfloat16", 16), ("sd1", 512, "bfloat16", 8))


def cards_part(out: Path, caps=None, tiny: bool = False, updates: int = 3, timeout: int = 900) -> dict:
    """Every case in its own process (CASES, or every model on each of `caps`); the report
    is rewritten after each."""
    models = (("sd1", 64, "float32"), ("sdxl", 64, "float32")) if tiny else MODELS
    if caps is None and tiny:
        caps = (0.2, 4)           # tiny models: a card too small for lean, and a roomy one
    cases = CASES if caps is None else [(*m, cap) for m in models for cap in caps]
    report = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "tiny": tiny,
              "updates": updates, "rows": []}
    for family, size, dtype, cap in cases:
        began = time.perf_counter()
        part = out.with_name(f".{out.stem}_case.json")
        part.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "bench.bench_cards", "case", "--family", family, "--size", str(size),
               "--dtype", dtype, "--cap", str(cap), "--updates", str(updates), "--out", str(part)] + \
            (["--tiny"] if tiny else [])
        try:
            code = subprocess.run(cmd, cwd=REPO, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
        row = json.loads(part.read_text()) if part.is_file() else \
            {"family": family, "size": size, "dtype": dtype, "cap_gib": cap, "result": f"process ended: {code}"}
        part.unlink(missing_ok=True)
        row["case_seconds"] = round(time.perf_counter() - began, 1)       # process included: plans the next run
        report["rows"].append(row)
        print(row, flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1) + "\n")
    return report


def cap_memory(cap_gib: float) -> None:
    """Make this process and ComfyUI's free-memory report see a card of `cap_gib` GiB."""
    import comfy.model_management as mm
    cap = int(cap_gib * GiB)
    cuda = torch.cuda.is_available()
    if cuda:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total))
    real = mm.get_free_memory

    def get_free_memory(dev=None, torch_free_too=False):
        free = real(dev, torch_free_too)
        budget = max(0, cap - (torch.cuda.memory_reserved() if cuda else 0))
        return (min(free[0], budget), min(free[1], budget)) if torch_free_too else min(free, budget)
    mm.get_free_memory = get_free_memory


def case(family: str, size: int, dtype_name: str, cap_gib: float, updates: int, tiny: bool) -> dict:
    """One model on one emulated card, in this process (see the module docstring)."""
    from comfyui_reversion.reversion.errors import NotEnoughMemory
    from comfyui_reversion.reversion.trainer import TrainConfig
    from comfyui_reversion.reversion_comfy.training import train_relation
    from devtools import full_models, tiny_models

    from .measure import exemplars_for
    cuda = torch.cuda.is_available()
    cap_memory(cap_gib)
    dtype = getattr(torch, dtype_name)
    fp8 = "float8" in dtype_name
    builder = tiny_models if tiny else full_models
    model, clip, vae = builder.build(family, unet_dtype=dtype, compute_dtype=torch.bfloat16 if fp8 else None)
    row = {"family": family, "size": size, "dtype": dtype_name, "cap_gib": cap_gib, "tiny": tiny}
    stamps = [time.perf_counter()]
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    try:
        with torch.inference_mode():
            result = train_relation(model, clip, vae, exemplars_for(size, 2), TrainConfig(
                steps=updates, batch_size=2, grad_accum=4, seed=2023), lambda *a: stamps.append(time.perf_counter()),
                memory="auto")
        row.update(result="trained", plan=result.memory, losses=[round(r["loss"], 5) for r in result.history],
                   update_seconds=[round(b - a, 3) for a, b in zip(stamps[1:], stamps[2:])] or None,
                   first_update_seconds=round(stamps[1] - stamps[0], 3))
    except NotEnoughMemory as e:
        row.update(result="refused before training", message=str(e))
    except torch.cuda.OutOfMemoryError as e:
        row.update(result="out of memory", message=str(e).splitlines()[0])
    if cuda:
        row["peak_gib_with_weights"] = round(torch.cuda.max_memory_allocated() / GiB, 3)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", nargs="?", default="cards", choices=["cards", "case"])
    p.add_argument("--caps", nargs="+", type=float, default=None,
                   help="card sizes, GiB: every model on each (default: CASES)")
    p.add_argument("--tiny", action="store_true", help="tiny models at 64 px: tests this script anywhere")
    p.add_argument("--updates", type=int, default=3)
    p.add_argument("--family", help="case: sd1 | sdxl")
    p.add_argument("--size", type=int, help="case: exemplar size, px")
    p.add_argument("--dtype", help="case: the UNet's weight dtype (float8_e4m3fn: computed in bf16)")
    p.add_argument("--cap", type=float, help="case: the card's memory, GiB")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    from devtools import host
    host.import_comfy("cuda" if torch.cuda.is_available() else "cpu")
    from devtools import pack
    pack.load_into_host()
    if args.part == "case":
        row = case(args.family, args.size, args.dtype, args.cap, args.updates, args.tiny)
        Path(args.out).write_text(json.dumps(row, indent=1) + "\n")
        return row
    name = "cards_tiny.json" if args.tiny else "cards.json"
    return cards_part(Path(args.out) if args.out else REPO / "bench" / "results" / name, args.caps, args.tiny,
                      args.updates)


if __name__ == "__main__":
    main()
