"""How good is the memory plan's estimate? The live tensor bytes of a real training step
(devtools/live_bytes.py), against what the plan decides with, per mode; and the memory
probes' own peak against the step's.

    python -m bench.bench_estimate                       # full-size SD1.5 at 256 and 512 px, SDXL at 256 px (CPU)
    python -m bench.bench_estimate --cases sd1:256       # one case

Each case in this process, in turn: full-size model, random weights (devtools/full_models),
fp32 on the CPU (bf16 UNet where a GPU runs it); one update of 2 exemplars per mode.
Bytes are tensor bytes, not an allocator's cached blocks. Results: bench/results/estimate.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from devtools.pack import REPO

GiB = 1024 ** 3


def measure(family: str, size: int, n: int = 2) -> dict:
    from comfyui_reversion.reversion.words import STANDIN
    from devtools import full_models
    from devtools.live_bytes import estimate_against_live
    t0 = time.perf_counter()
    model, clip, _ = full_models.build(family)
    side = size // 8
    g = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(n, 4, side, side, generator=g), torch.randn(n, 4, side, side, generator=g)
    captions, t = [f"a cat {STANDIN} a dog", f"a photo of a cat {STANDIN} a dog"][:n], torch.tensor([800, 300][:n])
    found = estimate_against_live(model, clip, latents, noise, captions, t)
    row = {"family": family, "size": size, "exemplars": n, "probe_peak_gib": round(found["probe_peak"] / GiB, 4)}
    for mode in ("fast", "lean"):
        peak, decided, margin = found[mode]["step_peak"], found[mode]["decided"], found[mode]["margin"]
        row[mode] = {"step_peak_gib": round(peak / GiB, 4), "saved_estimate_gib": round(decided / margin / GiB, 4),
                     "decided_gib": round(decided / GiB, 4), "decided_over_peak": round(decided / peak, 3)}
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=["sd1:256", "sd1:512", "sdxl:256"], help="family:size")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "estimate.json"))
    args = p.parse_args(argv)
    from devtools import host, pack
    host.import_comfy("cpu")
    pack.load_into_host()
    report = {"device": "cpu", "threads": torch.get_num_threads(), "margin_note":
              "decided = the bytes the plan decides with, without its fixed reserve (saved bytes x MARGIN)",
              "rows": []}
    for case in args.cases:
        family, size = case.split(":")
        row = measure(family, int(size))
        report["rows"].append(row)
        print(json.dumps(row), flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
