"""Full-size SD memory and speed per memory mode, and the ratio to the paper's procedure.

    python -m bench.bench_scale                 # or: make bench-scale  (CPU, ~15 min on 1 core)
    python -m bench.bench_scale gpu             # on a CUDA machine (bench/gpu_session.sh; docs/results.md)
    python -m bench.bench_scale profile --size 512 --dtype bfloat16   # where an update's time goes (GPU)
    python -m bench.bench_scale profile --tiny --size 64               # the same on tiny models (CPU, tested)
    python -m bench.bench_scale text-bytes      # CLIP bytes saved fast vs lean, bytes left by probes (CPU)
    python -m bench.bench_scale gpu --tiny      # the GPU part on tiny models, runs anywhere (tested)
    python -m bench.bench_scale cpu --tiny --size 64   # the CPU part on tiny models (seconds)

CPU part (writes bench/results/scale.json): full-size SD1.5 (random weights, ComfyUI's own
classes: devtools/full_models.py) at 256 px, micro-batch 2 x 4 accumulation, fp32, 1 thread
(`--threads`), each row in a fresh process (`cpu-row`):
- per memory mode (fast with the whole update of 8 in one forward, as auto picks when it
  fits; fast with one micro-batch of 2 per forward; lean; lean split 2 -> 1 + 1): peak
  resident memory above the
  loaded weights during training (Linux VmHWM, reset via /proc/self/clear_refs before
  it), the memory plan's own estimate, seconds per update, FLOPs per update
  (torch.utils.flop_counter.FlopCounterMode over one micro-batch, x 4);
- the reference: the paper's per-update procedure re-implemented here (fp32, exemplars
  VAE-encoded again every micro-batch, the whole token table trainable with every other row
  restored after the step, one caption per text-encoder call, every saved tensor cloned),
  on the same model, seed, exemplars and random draws: its losses must equal ours, and the
  time ratio ours/reference is reported.

GPU part (`gpu`; bench/gpu_session.sh runs it on a lent GPU): SD1.5 512 px and SDXL
1024 px, micro-batch 2, UNet weights fp32 (text encoder fp32 too: the reference), fp16 and
bf16 (text encoder as ComfyUI loads it there, fp16); each (model, dtype) in a fresh process.
Per memory mode (fast, lean, and the whole 2 x 4 update in one fast forward, as auto runs it
when it fits), after a warm-up run: seconds, FLOPs, peak memory above what was allocated
before (torch.cuda.max_memory_allocated; the loaded weights are `weights_gib`), and the
cosine of the <R> gradient to the fp32 model's on the same inputs with the share of its
entries that are exactly zero (fp16 underflow). Then 4 whole updates per dtype through
Train Relation's path (memory=auto) and, on the fp32 weights, the paper's procedure
(SD1.5 and SDXL): the reference ratio of each dtype's last update. A row's seconds, FLOPs
and peak include train_relation's per-call set-up (loading check, VAE encode, one probe).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import random
import re
import sys
import time
from pathlib import Path

import torch

from devtools.pack import REPO
GiB = 1024 ** 3


# --------------------------------------------------------------------------- measuring

def rss_peak_reset() -> int:
    """Return freed heap to the OS (glibc malloc_trim: otherwise a later mode reuses memory
    an earlier one freed, and its peak does not show in RSS), then reset the process's peak
    RSS to the current RSS; returns the current RSS (bytes)."""
    import ctypes
    import gc
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    Path("/proc/self/clear_refs").write_text("5")
    return _status("VmRSS")


def rss_peak() -> int:
    return _status("VmHWM")


def _status(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def exemplars_for(size: int, n: int = 2):
    from comfyui_reversion.reversion import exemplars as ex
    g = torch.Generator().manual_seed(11)
    return ex.Exemplars(torch.rand(n, size, size, 3, generator=g),
                        [["a cat {} a dog", "a photo of a cat {} a dog", "cat {} dog"]] * n)


# ------------------------------------------------------------------ the paper's procedure

def reference_train(model, clip, vae, exemplars, config, update_seconds=None):
    """The paper's per-update procedure, written independently of reversion/trainer.py
    but drawing the same random numbers in the same order (so the losses must agree):
    every micro-batch re-encodes its exemplars with the VAE; each text encoder's whole token
    table is the trainable parameter (the relation token's row starts as the init word's),
    AdamW steps the table and every other row is restored after the step; captions are
    encoded one at a time; every saved activation is cloned (the blanket in-place guard);
    no checkpointing. Returns (per-update losses, seconds); `update_seconds`, if given, gets
    each update's seconds appended."""
    from comfyui_reversion.reversion import steering, timesteps
    from comfyui_reversion.reversion.words import STANDIN, fill
    from comfyui_reversion.reversion_comfy import guards, patches, sampling
    from comfyui_reversion.reversion_comfy.backend import ComfyBackend
    from comfyui_reversion.reversion.trainer import ExemplarOrder
    with guards.training_mode():
        backend = ComfyBackend(model, clip, "fast")
        backend.prepare()
        # per text encoder (SDXL has two): its whole token table, trainable, in fp32 as the
        # paper trains it; the relation token's row starts as the init word's
        tables, hosts, originals, keeps, rids, vocabs = {}, {}, {}, {}, {}, {}
        for enc in backend.encoders:
            embedding = enc.module.transformer.get_input_embeddings()
            hosts[enc.key] = (embedding, embedding.weight)     # the host's table (fp16 in ComfyUI's CLIP)
            table = tables[enc.key] = torch.nn.Parameter(embedding.weight.detach().float().clone())
            embedding.weight = table
            originals[enc.key] = table.detach().clone()
            rids[enc.key] = rid = backend.captions.standin_ids[enc.key]
            with torch.no_grad():
                table[rid] = table[enc.single_id(config.init_word, "init word")]
            keeps[enc.key] = torch.ones(table.shape[0], dtype=torch.bool, device=table.device)
            keeps[enc.key][rid] = False
            vocabs[enc.key] = backend.steering_vocabulary(enc.key)
        gen = torch.Generator().manual_seed(config.seed)
        rng = random.Random(config.seed)
        sampler = timesteps.FocalTimestepSampler(config.focal_alpha, generator=gen)
        opt = torch.optim.AdamW(list(tables.values()), lr=config.lr, betas=tuple(config.adam_betas),
                                eps=config.adam_eps, weight_decay=config.weight_decay)
        order = ExemplarOrder(len(exemplars.templates), gen)
        dev = backend.device      # the host's compute device: our draws are made on the CPU
        history, start = [], time.perf_counter()
        try:
            with patches.memory_efficient_attention():
                for _ in range(config.steps):
                    total = 0.0
                    for _ in range(config.grad_accum):
                        idx = [order.next() for _ in range(config.batch_size)]
                        captions = [fill(rng.choice(exemplars.templates[i]), STANDIN) for i in idx]
                        words = [steering.sample_positive_words(rng, config.num_positives) for _ in idx]
                        latents = sampling.vae_encode(vae, exemplars.images, config.seed)[idx]   # every micro-batch
                        t = sampler.sample(len(idx))
                        noise = torch.randn(latents.shape, generator=gen).to(dev)
                        with guards.inplace_safe():
                            encoded = [clip.encode_from_tokens(backend.captions.tokens(c), return_pooled=True)
                                       for c in captions]
                            cond = torch.cat([c for c, _ in encoded]).to(dev)
                            pooled = None if encoded[0][1] is None else torch.cat([p for _, p in encoded]).to(dev)
                            x0 = model.model.process_latent_in(latents.to(dev))
                            sigma = sampling.sigma_for_timestep(backend.ms, t.to(dev)).to(x0)
                            x = sampling.noisy_latent(x0, noise, sigma)
                            denoised = model.model.apply_model(x, sigma, **backend.model_conds(cond, pooled, x))
                        pred, target = sampling.prediction_and_target(backend.ms, x, x0, noise, sigma, denoised)
                        denoise = torch.nn.functional.mse_loss(pred, target)
                        steer = torch.stack([steering.steering_loss(   # averaged over text encoders
                            tables[enc.key][rids[enc.key]],
                            tables[enc.key][torch.tensor(vocabs[enc.key].positive_ids(words))],
                            tables[enc.key][torch.tensor(vocabs[enc.key].negative_ids(
                                [enc.content_ids(c) for c in captions]))],
                            config.temperature) for enc in backend.encoders]).mean()
                        loss = denoise + config.steering_weight * steer
                        (loss / config.grad_accum).backward()
                        total += float(loss.detach()) / config.grad_accum
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    with torch.no_grad():
                        for key, table in tables.items():
                            table[keeps[key]] = originals[key][keeps[key]]
                    history.append(total)
                    if update_seconds is not None:
                        update_seconds.append(time.perf_counter() - start - sum(update_seconds))
        finally:
            for embedding, weight in hosts.values():
                embedding.weight = weight
    return history, time.perf_counter() - start


# ------------------------------------------------------------------------------ CPU part

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
    report["auto_choice"] = auto_table(whole["plan"], size)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print("reference", {k: v for k, v in report["reference"].items() if "ratio" in k or "loss" in k}, flush=True)
    print(f"wrote {out}")
    return report


@contextlib.contextmanager
def training_backend(model, clip, memory: str):
    """A prepared `ComfyBackend` as `train_relation` sets one up (training mode, host weights
    frozen, SDPA attention), closed after the block."""
    from comfyui_reversion.reversion_comfy import guards, patches
    from comfyui_reversion.reversion_comfy.backend import ComfyBackend
    with torch.inference_mode(), guards.training_mode():
        backend = ComfyBackend(model, clip, memory)
        backend.prepare()
        try:
            with guards.frozen_weights(model.model, clip.cond_stage_model), patches.memory_efficient_attention():
                yield backend
        finally:
            backend.close()


def run_micro_batch(model, clip, vae, exemplars, mode, chunk):
    """One forward + backward of all `exemplars` (a micro-batch of 2, or a whole update of
    8) through the ComfyUI backend in `mode`, in forwards of `chunk`."""
    from comfyui_reversion.reversion.words import STANDIN
    from comfyui_reversion.reversion_comfy import sampling
    from comfyui_reversion.reversion_comfy.memory import MemoryPlan
    with training_backend(model, clip, "fast") as backend:
        latents = sampling.vae_encode(vae, exemplars.images, 0)
        n = latents.shape[0]
        backend.plan_memory(latents, f"a cat {STANDIN} a dog", n)
        backend.plan = MemoryPlan(mode, chunk, n, mode, {}, None)
        vectors = {k: torch.nn.Parameter(v) for k, v in backend.initial_vectors("and").items()}
        g = torch.Generator().manual_seed(0)
        loss = backend.denoising_loss(vectors, latents, [f"a cat {STANDIN} a dog"] * n,
                                      torch.tensor([500, 900] * (n // 2)), torch.randn(latents.shape, generator=g))
        loss.backward()
    return vectors


def auto_table(memory: dict, size: int) -> dict:
    """What auto would choose with 8/12/16/24 GiB free, from this run's estimate (which
    scales to other sizes only through the estimate's linear model: indicative)."""
    need = memory["needed_gib"]
    out = {}
    for free in (8, 12, 16, 24):
        out[f"{free} GiB"] = "fast" if need["fast"] <= free else ("lean" if need["lean"] <= free else "lean+split/refuse")
    return {"at": f"{size} px, micro-batch 2", "needed_gib": need, "choice": out}


# ----------------------------------------------------------------- the auto choice, GPU sizes

def estimate_part(out: Path, families=("sd1", "sdxl")):
    """The memory plan's estimate (three probe forwards) for SD1.5 at 512 px and SDXL at
    1024 px, micro-batch 2, UNet weights fp16 computing in fp16 (no manual cast, as on a
    GPU), CLIP stored fp16 and computed fp32 (as ComfyUI runs it on a GPU: the casts of its
    weights are saved for backward); and what auto would choose with 4-24 GiB cards,
    where free = card - weights - 1 GiB (ComfyUI's own reserve and the CUDA context; an
    assumption)."""
    from devtools import full_models
    from comfyui_reversion.reversion.errors import NotEnoughMemory
    from comfyui_reversion.reversion.words import STANDIN
    from comfyui_reversion.reversion_comfy.memory import choose_memory
    torch.set_num_threads(1)
    report = {"assumption": "free = card - weights - 1 GiB (negative: the weights do not fit; offload moves "
                            "them); estimates from CPU probes, UNet fp16, CLIP stored fp16 and computed fp32 "
                            "(as on a GPU); 2 x 4 exemplars per update",
              "models": {}}
    for family, size in [(f, {"sd1": 512, "sdxl": 1024}[f]) for f in families]:
        with comfy_flag("fp16_text_enc", True):
            model, clip, vae = full_models.build(family, unet_dtype=torch.float16)
        weights = sum(bytes_by_dtype(model.model, clip.cond_stage_model).values())
        with training_backend(model, clip, "auto") as backend:
            backend.plan_memory(torch.zeros(2, 4, size // 8, size // 8), f"a cat {STANDIN} a dog", 2)
        needed = backend.plan.needed
        row = {"size": size, "weights_gib": round(weights / GiB, 2),
               "needed_gib": {k: round(v / GiB, 2) for k, v in needed.items()},
               "lean_one_exemplar_gib": None, "choice": {}}
        estimate = backend.last_estimate
        row["lean_one_exemplar_gib"] = round(estimate.needed("lean", 1, (size // 8) ** 2) / GiB, 2)
        # the fitted parts in GiB: UNet (constant, per exemplar, per exemplar x latent pixel);
        # text (constant, per caption)
        row["estimate_parts"] = {k: [v / GiB for v in getattr(estimate, k)]
                                 for k in ("fast", "outside", "inputs", "largest", "text", "text_lean")}
        movable, streamed = backend.offloadable()
        row["offloadable_gib"] = round(movable / GiB, 2)
        for card in (4, 6, 8, 12, 16, 24):
            free = int((card - 1) * GiB - weights)
            try:
                plan = choose_memory("auto", estimate, free, 8, (size // 8) ** 2, micro=2, movable=movable,
                                     streamed=streamed)
                row["choice"][f"{card} GiB"] = f"{plan.mode}, {plan.chunk} per forward" + (
                    f", {plan.offload / GiB:.1f} GiB of weights in CPU memory" if plan.mode == "offload" else "")
            except NotEnoughMemory:
                row["choice"][f"{card} GiB"] = "refused before training"
        report["models"][family] = row
        print(family, row, flush=True)
        del model, clip, vae, backend
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    return report


def text_bytes_part(out: Path, families=("sd1", "sdxl"), tiny: bool = False) -> dict:
    """Two effects of the memory fixes, at full size on the CPU, as the GPU runs them (UNet
    fp16, CLIP stored fp16 and computed fp32): the text encoders' bytes saved for backward in
    one training forward of 2 captions, fast (every layer's activations and fp32 weight
    casts) against lean (CLIP layers checkpointed: their inputs only); and the tensor bytes
    still reachable after a whole `plan_memory` (two probe forwards never run backward:
    a saved-tensor hook that keeps a node's output alive leaked them, see SavedTensorGuard)."""
    from devtools import full_models
    from devtools import tiny_models
    from comfyui_reversion.reversion.words import STANDIN
    report = {"what": "GiB; UNet fp16, CLIP stored fp16 and computed fp32; latent 8x8", "models": {}}
    caption = f"a cat {STANDIN} a dog"
    for family in families:
        with comfy_flag("fp16_text_enc", True):
            model, clip, vae = (tiny_models if tiny else full_models).build(family, unet_dtype=torch.float16)
        row = {}
        with training_backend(model, clip, "auto") as backend:
            latents = torch.zeros(2, 4, 8, 8)
            before = reachable_tensor_bytes()
            backend.plan_memory(latents, caption, 2)
            row["left_after_plan_memory_gib"] = round((reachable_tensor_bytes() - before) / GiB, 4)
            for mode in ("fast", "lean"):
                vectors = {k: v.requires_grad_(True) for k, v in backend.initial_vectors("and").items()}
                g = torch.Generator().manual_seed(0)
                with backend.guard.measuring():
                    backend._loss(vectors, latents, [caption] * 2, torch.tensor([500, 900]),
                                  torch.randn(latents.shape, generator=g), lean=mode == "lean")
                regions = backend.guard.measured()
                row[f"text_saved_{mode}_gib"] = round(
                    sum(v for k, v in regions.items() if k.startswith("text")) / GiB, 4)
        report["models"][family] = row
        print(family, row, flush=True)
        del model, clip, vae, backend
    save(out, report)
    return report


def reachable_tensor_bytes() -> int:
    """Bytes of every distinct tensor storage Python can still reach (after a gc pass)."""
    import gc
    gc.collect()
    seen, total = set(), 0
    for o in gc.get_objects():
        if torch.is_tensor(o) and o.device.type != "meta":
            ptr = o.untyped_storage().data_ptr()
            if ptr not in seen:
                seen.add(ptr)
                total += o.untyped_storage().nbytes()
    return total


# ------------------------------------------------------------------------------ GPU part

GPU_MODES = (           # (row, memory mode, micro-batches in the one forward)
    ("fast", "fast", 1),
    ("lean", "lean", 1),
    ("fast, whole update", "fast", 4),   # the 2 x 4 update in one forward, as auto runs it when it fits
)


def gpu_part(out: Path, tiny: bool = False):
    """fp32/fp16/bf16 memory, speed and gradient fidelity per mode (CUDA; `tiny`: tiny models
    on whatever device ComfyUI picked, small images, to test this code). Each (model,
    dtype) runs in a fresh process (`gpu-case`): its peak memory then holds no earlier
    model (ComfyUI keeps references to unloaded ones). fp32 runs first: its gradients are
    the cosine's reference and its paper-procedure update times the ratio's."""
    import subprocess
    import tempfile
    cuda = torch.cuda.is_available()
    cases = [("sd1", 64, 2)] if tiny else [("sd1", 512, 2), ("sdxl", 1024, 2)]
    dtypes = ("float32", "bfloat16") if tiny else ("float32", "float16", "bfloat16")
    report = {"device": torch.cuda.get_device_name() if cuda else "cpu", "tiny": tiny, "torch": torch.__version__,
              "complete": False, "rows": [], "updates": [], "failed": []}
    with tempfile.TemporaryDirectory() as tmp:
        for family, size, batch in cases:
            reference = None
            for dtype in dtypes:
                part = Path(tmp) / f"{family}_{dtype}.json"
                cmd = [sys.executable, "-m", "bench.bench_scale", "gpu-case", "--family", family,
                       "--size", str(size), "--dtype", dtype, "--grads", str(Path(tmp) / f"{family}_grads.pt"),
                       "--out", str(part)] + (["--tiny"] if tiny else [])
                failed = subprocess.run(cmd, cwd=REPO).returncode != 0
                case = json.loads(part.read_text()) if part.is_file() else {"rows": [], "updates": None}
                report["rows"] += case["rows"]
                if failed or case["updates"] is None:
                    report["failed"].append(f"{family} {dtype}")
                    save(out, report)
                    continue
                updates = case["updates"]
                reference = reference or updates.get("reference_update_seconds")
                if reference:
                    updates["time_ratio_to_fp32_reference_last_update"] = round(
                        updates["update_seconds"][-1] / reference[-1], 3)
                report["updates"].append(updates)
                print(updates, flush=True)
                save(out, report)      # after every case: a run stopped at its time limit keeps what it measured
    report["complete"] = not report["failed"]
    save(out, report)
    return report


def gpu_case(family: str, size: int, batch: int, dtype_name: str, grads_path: Path, tiny: bool,
             out: Path | None = None) -> dict:
    """One model in one dtype, in this process: each mode's forward + backward timed after
    a warm-up run (kernel choice, loading), peak memory above what was allocated before it
    (the loaded weights), FLOPs, the <R> gradient (and its cosine to the fp32 case's, read
    from `grads_path`; the fp32 case writes it); then whole updates timed one by one."""
    from devtools import full_models
    from devtools import tiny_models
    cuda = torch.cuda.is_available()
    dtype = getattr(torch, dtype_name)
    model, clip, vae = build_for_gpu(tiny_models if tiny else full_models, family, dtype)
    weights = sum(bytes_by_dtype(model.model, clip.cond_stage_model).values())
    clip_bytes = bytes_by_dtype(clip.cond_stage_model)
    reference = torch.load(grads_path) if dtype is not torch.float32 and grads_path.is_file() else None
    grads, rows = {}, []

    def sync():
        if cuda:
            torch.cuda.synchronize()
    for mode, memory_mode, micro_batches in GPU_MODES:
        n = batch * micro_batches
        exemplars = exemplars_for(size, n)
        run_micro_batch(model, clip, vae, exemplars, memory_mode, n)      # warm-up
        sync()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() if cuda else 0
        t = time.perf_counter()
        vectors = run_micro_batch(model, clip, vae, exemplars, memory_mode, n)
        sync()
        seconds = time.perf_counter() - t
        peak = torch.cuda.max_memory_allocated() if cuda else 0
        flops = count_flops(lambda: run_micro_batch(model, clip, vae, exemplars, memory_mode, n))
        row = {"family": family, "size": size, "dtype": dtype_name, "mode": mode, "exemplars": n,
               "weights_gib": round(weights / GiB, 3),
               "clip_weights_gib_by_dtype": {k: round(v / GiB, 3) for k, v in clip_bytes.items()},
               "seconds": round(seconds, 4), "seconds_per_micro_batch": round(seconds * batch / n, 4),
               "tflop": round(flops / 1e12, 3), "achieved_tflop_per_s": round(flops / seconds / 1e12, 1),
               "allocated_before_gib": round(before / GiB, 3) if cuda else None,
               "max_memory_allocated_gib": round(peak / GiB, 3) if cuda else None,
               "peak_above_before_gib": round((peak - before) / GiB, 3) if cuda else None}
        grads[mode] = {k: v.grad.detach().float().cpu() for k, v in vectors.items()}
        # underflow shows as exact zeros in the fp32 vector's gradient (loss scaling's cue)
        row["grad_zero_fraction"] = {k: round(float((g == 0).float().mean()), 5) for k, g in grads[mode].items()}
        if reference is not None:
            row["grad_cosine_to_fp32"] = {k: round(float(torch.nn.functional.cosine_similarity(
                g.flatten(), reference[mode][k].flatten(), dim=0)), 5) for k, g in grads[mode].items()}
        rows.append(row)
        print(row, flush=True)
        if out is not None:          # after every row: a case stopped later keeps its rows
            out.write_text(json.dumps({"rows": rows, "updates": None}))
    if dtype is torch.float32:
        torch.save(grads, grads_path)
    updates = timed_updates(model, clip, vae, size, dtype, cuda)
    updates["family"] = family
    return {"rows": rows, "updates": updates}


# ------------------------------------------------------------------ where an update's time goes

PROFILE_VARIANTS = {     # name: what changes for the timing
    "ours": "Train Relation's forward + backward of one whole update (fast, all exemplars in one forward)",
    "cudnn.benchmark": "the same with cuDNN's convolution autotuner on",
}


def profile_part(out: Path, family: str, size: int, dtype_name: str, tiny: bool, updates: int = 4) -> dict:
    """Where the time of one update goes, for issue 7's gap to the FLOP floor (on a GPU; on
    the CPU with `tiny` to test it): whole updates through Train Relation's path under
    torch.profiler (memory=auto; the last two profiled), giving the wall time per update, the device's
    busy time (kernels; its idle share says whether the update is bound by Python/launch
    overhead rather than by the GPU), kernel launches, host-device syncs (`.item()`,
    `float(t)`, copies to the CPU) and the top ops; then the whole update's forward +
    backward alone, per PROFILE_VARIANTS, each timed 3 times after a warm-up, with the
    saved-tensor hooks' calls and their own (Python) seconds."""
    from devtools import full_models
    from devtools import tiny_models
    from torch.profiler import ProfilerActivity, profile
    from comfyui_reversion.reversion.trainer import TrainConfig
    from comfyui_reversion.reversion_comfy import training
    cuda = torch.cuda.is_available()
    dtype = getattr(torch, dtype_name)
    model, clip, vae = build_for_gpu(tiny_models if tiny else full_models, family, dtype)
    exemplars = exemplars_for(size, 8)
    config = TrainConfig(steps=updates, batch_size=2, grad_accum=4, seed=2023)

    def sync():
        if cuda:
            torch.cuda.synchronize()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    prof = profile(activities=activities)        # on for the last two updates (earlier ones warm up)
    stamps = []

    def tick(step, total, record, vectors):
        sync()
        stamps.append(time.perf_counter())
        if step == total - 2:
            prof.start()
        elif step == total:
            prof.stop()
    sync()
    stamps.append(time.perf_counter())
    with torch.inference_mode():
        result = training.train_relation(model, clip, vae, exemplars, config, tick, memory="auto")
    events = prof.key_averages()

    def device_us(e):
        return getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0) or 0

    def count(*names):
        return sum(e.count for e in events if e.key in names) / 2          # per profiled update
    wall = (stamps[-1] - stamps[-3]) / 2
    busy = sum(device_us(e) for e in events) / 2 / 1e6 if cuda else None
    by_device = sorted(events, key=device_us, reverse=True) if cuda else []
    by_cpu = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
    report = {
        "family": family, "size": size, "dtype": dtype_name, "tiny": tiny, "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if cuda else "cpu", "plan": result.memory,
        "update_seconds": [round(b - a, 4) for a, b in zip(stamps, stamps[1:])],
        "profiled_update_seconds": round(wall, 4),
        "device_busy_seconds": round(busy, 4) if cuda else None,
        "device_idle_share": round(1 - busy / wall, 3) if cuda else None,
        "per_update": {
            "cpu_ops": round(sum(e.count for e in events if e.key.startswith("aten::")) / 2),
            "kernel_launches": count("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx"),
            "item_syncs": count("aten::_local_scalar_dense"),
            "equal_syncs": count("aten::equal"),
            "stream_syncs": count("cudaStreamSynchronize", "cudaDeviceSynchronize"),
            "memcpy": count("cudaMemcpyAsync", "cudaMemcpy"),
        },
        "top_device_ops": [{"op": e.key, "ms": round(device_us(e) / 2e3, 3), "count": e.count // 2}
                           for e in by_device[:15]],
        "top_cpu_ops": [{"op": e.key, "self_cpu_ms": round(e.self_cpu_time_total / 2e3, 3), "count": e.count // 2}
                        for e in by_cpu[:15]],
    }
    print({k: v for k, v in report.items() if not k.startswith("top")}, flush=True)
    report["forward_backward"] = forward_backward_variants(model, clip, vae, exemplars, sync)
    save(out, report)
    return report


def forward_backward_variants(model, clip, vae, exemplars, sync, reps: int = 3) -> dict:
    """The whole update's denoising forward + backward alone (no steering, optimizer or
    loop), in one forward of all exemplars, per PROFILE_VARIANTS: seconds of each of `reps`
    runs after a warm-up, and the guard's pack/unpack calls and seconds in them per run (the
    Python cost of the in-place guard, on the CPU's critical path)."""
    from comfyui_reversion.reversion.words import STANDIN
    from comfyui_reversion.reversion_comfy import sampling
    out = {}
    caption = f"a cat {STANDIN} a dog"
    with training_backend(model, clip, "fast") as backend:
        latents = sampling.vae_encode(vae, exemplars.images, 0)
        n = latents.shape[0]
        g = torch.Generator().manual_seed(0)
        t, noise = torch.tensor([500, 900] * (n // 2)), torch.randn(latents.shape, generator=g)
        backend.plan_memory(latents, caption, n)
        guard, calls = backend.guard, {"pack": 0, "unpack": 0, "seconds": 0.0}

        def timed(fn, name):
            def hook(x):
                start = time.perf_counter()
                try:
                    return fn(x)
                finally:
                    calls[name] += 1
                    calls["seconds"] += time.perf_counter() - start
            return hook
        guard.pack, guard.unpack = timed(guard.pack, "pack"), timed(guard.unpack, "unpack")   # this backend's
        benchmark = torch.backends.cudnn.benchmark
        for name in PROFILE_VARIANTS:
            torch.backends.cudnn.benchmark = name == "cudnn.benchmark"
            seconds = []
            try:
                for rep in range(reps + 1):
                    vectors = {k: torch.nn.Parameter(v) for k, v in backend.initial_vectors("and").items()}
                    calls.update(pack=0, unpack=0, seconds=0.0)
                    sync()
                    start = time.perf_counter()
                    backend.denoising_loss(vectors, latents, [caption] * n, t, noise).backward()
                    sync()
                    seconds.append(time.perf_counter() - start)
            finally:
                torch.backends.cudnn.benchmark = benchmark
            out[name] = {"seconds": [round(s, 4) for s in seconds[1:]], "what": PROFILE_VARIANTS[name],
                         "hook_calls": {k: calls[k] for k in ("pack", "unpack")},
                         "hook_seconds": round(calls["seconds"], 4)}
            print(name, out[name], flush=True)
    return out


def bytes_by_dtype(*modules: torch.nn.Module) -> dict[str, int]:
    """Parameter bytes of `modules`, per dtype name ("float16", ...)."""
    out: dict[str, int] = {}
    for m in modules:
        for p in m.parameters():
            key = str(p.dtype).split(".")[-1]
            out[key] = out.get(key, 0) + p.numel() * p.element_size()
    return out


def build_for_gpu(builder, family: str, dtype: torch.dtype):
    """The model in `dtype`: with fp32, the text encoder in fp32 too (the paper's setting and
    the gradients' reference); otherwise the text encoder as ComfyUI loads it on this device
    (fp16 on a GPU)."""
    with comfy_flag("fp32_text_enc", dtype is torch.float32):
        return builder.build(family, unet_dtype=dtype)


@contextlib.contextmanager
def comfy_flag(name: str, value):
    """One of ComfyUI's command-line flags set for the block (the text encoder's dtype flags
    are read when a CLIP is built), put back after it."""
    import comfy.cli_args
    args = comfy.cli_args.args
    before = getattr(args, name, False)
    setattr(args, name, value)
    try:
        yield
    finally:
        setattr(args, name, before)


def save(out: Path, report: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))


def timed_updates(model, clip, vae, size, dtype, cuda, updates=4) -> dict:
    """Whole updates (2 x 4) timed one by one (the first also warms up): Train Relation's
    path with memory=auto in `dtype`, and with fp32 weights also the paper's procedure
    (reference_train) on the same model."""
    from comfyui_reversion.reversion.trainer import TrainConfig
    from comfyui_reversion.reversion_comfy import training
    config = TrainConfig(steps=updates, batch_size=2, grad_accum=4, seed=2023)
    exemplars = exemplars_for(size)

    def sync():
        if cuda:
            torch.cuda.synchronize()
    out = {"size": size, "dtype": str(dtype).split(".")[-1], "updates": updates}
    if dtype is torch.float32:
        seconds: list[float] = []
        with torch.inference_mode():
            losses, _ = reference_train(model, clip, vae, exemplars, config, seconds)
        out["reference_update_seconds"] = [round(t, 3) for t in seconds]
        out["reference_losses"] = losses
    seconds, last = [], [time.perf_counter()]

    def tick(step, total, record, vectors):
        sync()
        seconds.append(time.perf_counter() - last[0])
        last[0] = time.perf_counter()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    sync()
    last[0] = time.perf_counter()
    with torch.inference_mode():
        result = training.train_relation(model, clip, vae, exemplars, config, tick, memory="auto")
    out.update(plan=result.memory, update_seconds=[round(t, 3) for t in seconds],
               losses=[r["loss"] for r in result.history],
               max_memory_allocated_gib=round(torch.cuda.max_memory_allocated() / GiB, 3) if cuda else None)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", nargs="?", default="cpu", choices=["cpu", "cpu-row", "estimate", "text-bytes", "gpu", "gpu-case", "profile"])
    p.add_argument("--row", choices=list(CPU_ROWS), help="cpu-row: the row to measure (the cpu part runs each)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--family", default=None, help="cpu: sd1 (default); estimate: sd1,sdxl (default)")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--dtype", default=None, help="gpu-case (default float32), profile (default bfloat16): the model's dtype")
    p.add_argument("--grads", type=Path, help="gpu-case: the fp32 case's gradients (written by it, read by others)")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    from devtools import host
    host.import_comfy("cpu" if args.part.startswith("cpu") or not torch.cuda.is_available() else "cuda")
    if args.part == "cpu":
        cpu_part(args.size, args.out or REPO / "bench" / "results" / "scale.json", args.family or "sd1",
                 args.threads, args.tiny)
    elif args.part == "cpu-row":
        args.out.write_text(json.dumps(cpu_row(args.row, args.size, args.family or "sd1", args.threads, args.tiny)))
    elif args.part == "estimate":
        estimate_part(args.out or REPO / "bench" / "results" / "scale_estimates.json",
                      (args.family or "sd1,sdxl").split(","))
    elif args.part == "text-bytes":
        torch.set_num_threads(args.threads)
        text_bytes_part(args.out or REPO / "bench" / "results" / "scale_text_bytes.json",
                        (args.family or "sd1,sdxl").split(","), args.tiny)
    elif args.part == "gpu-case":
        case = gpu_case(args.family or "sd1", args.size, 2, args.dtype or "float32", args.grads, args.tiny, args.out)
        args.out.write_text(json.dumps(case))
    elif args.part == "profile":
        family, dtype = args.family or "sd1", args.dtype or "bfloat16"
        if not torch.cuda.is_available():
            torch.set_num_threads(args.threads)
        profile_part(args.out or REPO / "bench" / "results" / f"profile_{family}_{dtype}.json", family,
                     args.size, dtype, args.tiny)
    else:
        gpu_part(args.out or REPO / "bench" / "results" / f"scale_gpu{'_tiny' if args.tiny else ''}.json", args.tiny)


if __name__ == "__main__":
    main()
