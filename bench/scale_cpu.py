"""bench_scale's CPU part: full-size SD1.5 per memory mode and the paper's procedure, each row
in a fresh process (`python -m bench.bench_scale cpu`)."""
from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import torch

from devtools.pack import REPO

from .measure import GiB, count_flops, exemplars_for, rss_peak, rss_peak_reset, run_micro_batch
from .reference import reference_train


# Each row runs in a fresh process: peak RSS is only valid for the first thing a process
# does (a later row reuses heap an earlier one freed, which RSS does not show).
CPU_ROWS = {            # name: (memory mode, updates, exemplars per forward or None)
    "fast, whole update (auto)": ("auto", 2, None),   # auto: records the estimates; picks fast, 8 per forward
    "fast": ("fast", 2, None),          # one micro-batch (2) per forward, as the paper accumulates
    "lean": ("lean", 1, None),
    "lean, split 2 -> 1+1": ("lean", 1, 1),
    "reference": (None, 2, None),       # the paper's procedure (reference_train)
}


def cpu_row(name: str, size: int, family: str, threads: int, tiny: bool = False) -> dict:
    """One row of the CPU table, measured in this process: peak RSS above the RSS before
    training, seconds per update (each update timed), losses, FLOPs per update."""
    from devtools import full_models
    from devtools import tiny_models
    from comfyui_reversion.reversion.trainer import TrainConfig
    from comfyui_reversion.reversion_comfy import training
    torch.set_num_threads(threads)
    memory, updates, split = CPU_ROWS[name]
    t0 = time.perf_counter()
    model, clip, vae = tiny_models.build(family) if tiny else full_models.build(family, full_vae=True)
    built = time.perf_counter() - t0
    exemplars = exemplars_for(size)
    config = TrainConfig(steps=updates, batch_size=2, grad_accum=4, seed=2023)
    update_seconds: list[float] = []
    row = {"build_seconds": round(built, 1)}
    with torch.inference_mode():
        base = rss_peak_reset()
        if memory is None:
            losses, seconds = reference_train(model, clip, vae, exemplars, config, update_seconds)
        else:
            last = [time.perf_counter()]

            def tick(step, total, record, vectors):
                now = time.perf_counter()
                update_seconds.append(now - last[0])
                last[0] = now
            # split: at most `split` exemplars per forward (the lean plan then splits each micro-batch)
            result = training.train_relation(model, clip, vae, exemplars, config, tick, memory=memory,
                                             max_per_forward=split)
            losses, seconds = [r["loss"] for r in result.history], result.seconds
            mode = result.memory["mode"]
            row.update(plan=result.memory, estimate_gib=result.memory["planned_gib"])
        row["peak_gib"] = round((rss_peak() - base) / GiB, 3)
    if memory is None:
        flops = count_flops(lambda: reference_train(model, clip, vae, exemplars,
                                                    TrainConfig(steps=1, batch_size=2, grad_accum=1, seed=2023)))
    else:
        flops = count_flops(lambda: run_micro_batch(model, clip, vae, exemplars, mode, result.memory["chunk"]))
    row.update(losses=losses, seconds=round(seconds, 2), update_seconds=[round(t, 2) for t in update_seconds],
               seconds_per_micro_batch=round(seconds / updates / 4, 2), tflops_per_update=round(4 * flops / 1e12, 3),
               weights_gib=round(sum(full_models.parameter_count(m) * 4
                                     for m in (model.model, clip.cond_stage_model)) / GiB, 2))
    return row


def cpu_part(size: int, out: Path, family: str = "sd1", threads: int = 1, tiny: bool = False):
    """Every CPU row in its own process, then the table: peaks, times, FLOPs, and the
    reference's losses and time against ours (fast)."""
    import subprocess
    import tempfile
    rows = {}
    for name in CPU_ROWS:
        with tempfile.TemporaryDirectory() as tmp:
            part = Path(tmp) / "row.json"
            cmd = [sys.executable, "-m", "bench.bench_scale", "cpu-row", "--row", name, "--size", str(size),
                   "--family", family, "--threads", str(threads), "--out", str(part)] + (["--tiny"] if tiny else [])
            subprocess.run(cmd, check=True, cwd=REPO)
            rows[name] = json.loads(part.read_text())
        print(name, {k: v for k, v in rows[name].items() if k != "plan"}, flush=True)
    ref, fast, whole = rows.pop("reference"), rows["fast"], rows["fast, whole update (auto)"]
    assert fast["plan"]["mode"] == "fast", fast["plan"]
    report = {"model": f"{'tiny' if tiny else 'full-size'} {family} (random weights), {size} px, fp32, micro-batch 2 x 4",
              "torch": torch.__version__, "threads": threads, "cpu": platform.processor() or platform.machine(),
              "weights_gib": fast["weights_gib"],
              "memory_measure": "peak RSS above the RSS before training (VmHWM reset via /proc/self/clear_refs), "
                                "each row in a fresh process",
              "modes": rows}
    n = min(len(ref["losses"]), len(fast["losses"]))
    report["reference"] = {
        **ref, "our_losses": fast["losses"],
        "max_loss_diff": max(abs(a - b) for a, b in zip(ref["losses"][:n], fast["losses"][:n])),
        # the last update: steady state (the first also holds one-time set-up: our memory
        # probes and the single VAE encode, the reference's table copy)
        "time_ratio_ours_fast_over_reference_last_update": round(fast["update_seconds"][-1] / ref["update_seconds"][-1], 3),
        "time_ratio_ours_fast_over_reference_all_updates": round(fast["seconds"] / ref["seconds"], 3)}
    # the same updates in one forward each: the same losses, its own time
    report["reference"]["max_loss_diff_whole_update"] = max(abs(a - b) for a, b in zip(ref["losses"], whole["losses"]))
    report["reference"]["time_ratio_ours_whole_update_over_reference_last_update"] = round(
        whole["update_seconds"][-1] / ref["update_seconds"][-1], 3)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print("reference", {k: v for k, v in report["reference"].items() if "ratio" in k or "loss" in k}, flush=True)
    print(f"wrote {out}")
    return report
