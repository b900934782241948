"""Train the toy-world text-to-image model from scratch (UNet + text encoder).

    python -m lab.toy_model.train            # the base (make toy-model: base, then the inside phase)

Resumable: a checkpoint is written to --run-dir every --checkpoint-every steps and the
script continues from it when run again. At the end the EMA weights are written (fp16) to
--out, the file the Toy World Model node loads. Defaults are the committed model's recipe
(NOTES.md has its time and quality).

Recipe: v-prediction on SD's discrete schedule, v-MSE with the x0-equivalent weight
1 + SNR capped at 6 (min-SNR), uniform timesteps, token and position embeddings
initialised N(0, 1) (see below), AdamW lr 1e-3 with 200 warm-up steps, grad clip 1,
EMA 0.999, batch 32, 10% empty captions (for classifier-free guidance). Only token-table
rows of words that occur in captions are trained (a compact table, scattered back into
the full 49408-row table at export), which
keeps the optimizer cheap.

The committed model is that base plus a second run (`make toy-model` runs both): from the
base's exported weights (`--init-weights`), 2500 steps with "inside" scenes 4x as often
(`--relation-weight inside=6`) and its inner object's pixels weighted 10x (`--inner-weight
10`): the inner object's shape word binds only then (NOTES.md).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from devtools.pack import REPO

from ..tint import tint

# The variant with cross-attention also at 16 x 16, where the 7-9 px inner object of
# "inside" is 4 px wide (at 8 x 8 it is one or two): experiments (--attention-16), NOTES.md.
ATTENTION_16_DEPTHS = {"transformer_depth": [0, 1, 1, 1], "transformer_depth_output": [0, 0, 1, 1, 1, 1, 1, 1]}
ATTENTION_16_KEY = "input_blocks.3.1.proj_in.weight"   # a key only that variant has


def unet_config(attention_16: bool = False) -> dict:
    from comfyui_reversion.toyworld import model
    return {**model.UNET_CONFIG, **(ATTENTION_16_DEPTHS if attention_16 else {})}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--empty-caption", type=float, default=0.1, help="fraction of empty captions (for CFG)")
    p.add_argument("--snr-cap", type=float, default=6.0,
                   help="cap of the x0-equivalent loss weight 1+SNR (0: plain v-MSE)")
    p.add_argument("--focal-alpha", type=float, default=0.0,
                   help="relation-focal timestep sampling (0 = uniform): more high-noise steps, where layout is decided")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    p.add_argument("--run-dir", default=str(REPO / "runs" / "toy_model"))
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--out", default=str(REPO / "toyworld" / "toyworld.safetensors"))
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop (with a checkpoint) after this run has trained this long; run again to continue")
    p.add_argument("--export-partial", action="store_true",
                   help="with --max-minutes: also write --out when stopping early")
    p.add_argument("--export-only", action="store_true",
                   help="write --out from the run's last checkpoint without training")
    p.add_argument("--raw", action="store_true",
                   help="with --export-only: write the checkpoint's parameters, not their EMA (diagnostics: "
                        "early in a fine-tune the EMA still mostly holds the starting model)")
    p.add_argument("--inner-size", nargs=2, type=int, default=None, metavar=("MIN", "MAX"),
                   help="experiments: the inner object's size range in 'inside' scenes (default: scenes.INNER_SIZE)")
    p.add_argument("--container-size", nargs=2, type=int, default=None, metavar=("MIN", "MAX"),
                   help="experiments: the container's size range in 'inside' scenes (default: scenes.CONTAINER_SIZE)")
    p.add_argument("--relation-weight", action="append", default=[], metavar="RELATION=W",
                   help="experiments: how often a relation's scenes are drawn, against 1 for above "
                        "(default: scenes.RELATION_WEIGHTS; repeatable, e.g. --relation-weight inside=6)")
    p.add_argument("--attention-16", action="store_true",
                   help="experiments: cross-attention also at 16x16 (the toy model has it at 8x8, 4x4, middle)")
    p.add_argument("--edge-weight", type=float, default=1.0,
                   help="loss weight of pixels on a colour edge (a 3x3 neighbour has another colour) "
                        "against 1 elsewhere, normalised to mean 1 per image; >1 puts the loss on shapes")
    p.add_argument("--inner-weight", type=float, default=1.0,
                   help="loss weight of the inner object of 'inside' scenes (its box grown by 1 px) "
                        "against 1 elsewhere, normalised to mean 1 per image")
    p.add_argument("--backgrounds", action="store_true",
                   help="tinted backgrounds (lab/tint: grey, pink, mint skies), named in "
                        "--background-said of captions: the tint model of the confound test (make toy-model-tint)")
    p.add_argument("--background-said", type=float, default=None,
                   help="with --backgrounds: share of captions that name the tint (default tint.BACKGROUND_SAID)")
    p.add_argument("--init-weights", default=None, metavar="SAFETENSORS",
                   help="experiments: starting a run, begin from an exported toy model's (EMA) weights "
                        "with a fresh optimizer; steps count from 0")
    p.add_argument("--grow-from", default=None, metavar="CHECKPOINT",
                   help="with --attention-16, starting a run: begin from another run's checkpoint of the "
                        "8x8 model (its weights copied, the new layers added as no-ops)")
    return p.parse_args(argv)


class CompactEmbedding(torch.nn.Module):
    """Token embedding whose trainable rows are only those of `used_ids`.

    Lookups of ids outside `used_ids` return a fixed row (they never occur in training).
    `full_table()` scatters the rows back into a `base` table of the real vocabulary size.
    """

    def __init__(self, base: torch.Tensor, used_ids: list[int]):
        super().__init__()
        self.register_buffer("base", base.clone())
        index = torch.zeros(base.shape[0], dtype=torch.long)
        index[torch.tensor(used_ids)] = torch.arange(1, len(used_ids) + 1)
        self.register_buffer("index", index)
        self.rows = torch.nn.Parameter(base[torch.tensor(used_ids)].clone())
        self.used_ids = used_ids

    def forward(self, ids, out_dtype=None, **_):
        table = torch.cat([torch.zeros_like(self.rows[:1]), self.rows])
        out = table[self.index[ids]]
        return out if out_dtype is None else out.to(out_dtype)

    def full_table(self, rows=None) -> torch.Tensor:
        full = self.base.clone()
        full[torch.tensor(self.used_ids)] = (self.rows if rows is None else rows).detach()
        return full


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from devtools import host
    host.import_comfy(args.device)
    from comfyui_reversion.reversion.timesteps import FocalTimestepSampler
    from comfyui_reversion.reversion_comfy import guards, sampling
    from comfyui_reversion.toyworld import model as toy_model, scenes
    if args.inner_size:
        scenes.INNER_SIZE = tuple(args.inner_size)
    if args.container_size:
        scenes.CONTAINER_SIZE = tuple(args.container_size)
    relation_weights = relation_weights_arg(args.relation_weight, scenes)
    if args.raw and not args.export_only:
        raise SystemExit("--raw goes with --export-only (a training run always ends by writing its EMA)")
    if args.background_said is not None and not (args.backgrounds and 0 <= args.background_said <= 1):
        raise SystemExit("--background-said needs --backgrounds and a share between 0 and 1")
    background_mix = {}           # no tints
    if args.backgrounds:
        background_mix = {"backgrounds": tint.BACKGROUND_WEIGHTS, "background_said": tint.BACKGROUND_SAID
                          if args.background_said is None else args.background_said}

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    base = toy_model.new_unet(device="cpu", config=unet_config(args.attention_16))
    toy_model.init_weights(base, seed=args.seed)
    target = toy_model.clip_target()
    with torch.no_grad():     # the 2024 host's CLIP writes into its weights in __init__
        text_encoder = target.clip(device="cpu", dtype=torch.float32).clip_l   # an SDClipModel
    toy_model.init_weights(text_encoder, seed=args.seed + 1)
    # Token and position tables at torch's default N(0, 1), not CLIP's N(0, 0.02): Adam moves
    # every row ~lr per coordinate per step, mostly in a direction shared by words used
    # alike, which erased the difference between tiny rows ("red"/"green", "above"/"below"
    # collapsed to one meaning in earlier runs).
    with torch.no_grad():
        embeddings = text_encoder.transformer.text_model.embeddings
        g = torch.Generator().manual_seed(args.seed + 2)
        embeddings.token_embedding.weight.normal_(0, 1, generator=g)
        embeddings.position_embedding.weight.normal_(0, 1, generator=g)
    tokenizer = target.tokenizer().clip_l                                   # an SDTokenizer

    # every caption the world can produce, tokenised once with the stock tokenizer
    vocab_texts = [""] + (tint.all_training_captions(background_mix["backgrounds"]) if background_mix
                          else scenes.all_training_captions())
    token_cache = {t: [tok for tok, _w in tokenizer.tokenize_with_weights(t)[0]] for t in vocab_texts}
    used_ids = sorted({i for toks in token_cache.values() for i in toks})
    print(f"{len(token_cache)} captions, {len(used_ids)} distinct tokens", flush=True)

    emb_module = text_encoder.transformer.text_model.embeddings
    compact = CompactEmbedding(emb_module.token_embedding.weight.detach().float(), used_ids)
    emb_module.token_embedding = compact

    base.diffusion_model.to(device).train()
    text_encoder.to(device).train()
    ms = base.model_sampling.to(device)
    params = list(base.diffusion_model.parameters()) + list(text_encoder.transformer.parameters())
    for p in params:          # the host freezes text encoders on construction
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01,
                            fused=device.type == "cpu" or None)   # fused: one kernel per step on the CPU
    ema = [p.detach().clone() for p in params]

    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / "checkpoint.pt"
    step, elapsed = 0, 0.0
    if ckpt_path.exists() and not args.fresh:
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)  # our own file
        if ck["args"].get("attention_16", False) != args.attention_16:
            raise SystemExit(f"{ckpt_path} is a run {'without' if args.attention_16 else 'with'} "
                             f"--attention-16: continue it with the same setting, or use another --run-dir")
        for p, v in zip(params, ck["params"]):
            p.data.copy_(v)
        for e, v in zip(ema, ck["ema"]):
            e.copy_(v)
        opt.load_state_dict(ck["opt"])
        step, elapsed = ck["step"], ck["elapsed"]
        rng = np.random.default_rng()
        rng.bit_generator.state = ck["rng"]
        torch.set_rng_state(ck["torch_rng"])
        if ck.get("cuda_rng") is not None and device.type == "cuda":
            torch.cuda.set_rng_state_all(ck["cuda_rng"])
        print(f"resumed at step {step} ({elapsed / 60:.1f} min so far)", flush=True)
    elif args.init_weights:
        init_from_weights(Path(args.init_weights), base, text_encoder, compact, params, ema)
        print(f"starting from the weights in {args.init_weights}; steps count from 0", flush=True)
    elif args.grow_from:
        grown_from = grow(Path(args.grow_from), base, params, ema)
        print(f"grown from {args.grow_from} (step {grown_from}); steps count from 0", flush=True)

    def save_checkpoint():
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save({"params": [p.detach().cpu() for p in params], "ema": [e.cpu() for e in ema],
                    "opt": opt.state_dict(), "step": step, "elapsed": elapsed,
                    "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
                    "args": vars(args)}, tmp)
        os.replace(tmp, ckpt_path)

    if args.export_only:
        if step == 0:
            raise SystemExit(f"no checkpoint in {run_dir} to export")
        export(args, params, ema, compact, base, text_encoder, step, elapsed)
        return
    if step > args.steps:       # e.g. a run continued past the default steps, then `make toy-model`
        print(f"the checkpoint in {run_dir} is at step {step}, past --steps {args.steps}: nothing to do "
              f"(--export-only writes its weights)", flush=True)
        return

    sampler = FocalTimestepSampler(args.focal_alpha)      # draws from torch's global RNG
    t_start = time.time() - elapsed
    # this invocation's start: its own speed and --max-minutes (a resumed run's `elapsed`
    # also holds earlier runs' time, often on a busier machine)
    run_start, run_first_step = time.time(), step
    losses = []
    while step < args.steps:
        lr = args.lr * min(1.0, (step + 1) / args.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        pixels, captions, batch_scenes = [], [], []
        for _ in range(args.batch):
            if background_mix:
                scene, background, caption = tint.training_example(rng, relation_weights=relation_weights,
                                                                   **background_mix)
                pixels.append(tint.render(scene, background))
            else:
                scene, caption = scenes.training_example(rng, relation_weights=relation_weights)
                pixels.append(scenes.render(scene))
            batch_scenes.append(scene)
            captions.append("" if rng.random() < args.empty_caption else caption)
        x0 = toy_model.latents_of(pixels).to(device)
        ids = torch.tensor([token_cache[c] for c in captions], device=device)
        t = sampler.sample(args.batch).to(device)
        sigma = sampling.sigma_for_timestep(ms, t)
        noise = torch.randn_like(x0)
        x = sampling.noisy_latent(x0, noise, sigma)
        with guards.inplace_safe():       # host layers add in place (CLIP; the 2024 UNet)
            cond = text_encoder.transformer(ids)[0]
            denoised = base.apply_model(x, sigma, c_crossattn=cond)
        pred, tgt = sampling.prediction_and_target(ms, x, x0, noise, sigma, denoised)
        # v-MSE equals (1 + SNR) x the x0-MSE; capping that x0 weight at `snr_cap` keeps the
        # easy low-noise steps from dominating (min-SNR weighting, Hang et al. 2023)
        sq_err = (pred.float() - tgt.float()).pow(2)
        if args.edge_weight != 1:
            sq_err = sq_err * edge_weights(x0, args.edge_weight)
        if args.inner_weight != 1:
            sq_err = sq_err * inner_weights(batch_scenes, args.inner_weight).to(device)
        per_item = sq_err.flatten(1).mean(1)
        if args.snr_cap:
            one_plus_snr = 1 + 1 / sigma.float() ** 2
            per_item = per_item * one_plus_snr.clamp(max=args.snr_cap) / one_plus_snr
        loss = per_item.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(args.ema, (1 + step) / (10 + step))
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
        losses.append(loss.detach())
        step += 1
        elapsed = time.time() - t_start
        if step % 50 == 0 or step == args.steps:
            rate = (time.time() - run_start) / (step - run_first_step)
            print(f"step {step}/{args.steps} loss {torch.stack(losses[-50:]).mean().item():.4f} "
                  f"{rate:.3f} s/step (this run), {elapsed / 60:.1f} min in all, "
                  f"eta {(args.steps - step) * rate / 60:.1f} min", flush=True)
        if step % args.checkpoint_every == 0:
            save_checkpoint()
        if args.max_minutes and time.time() - run_start > args.max_minutes * 60 and step < args.steps:
            save_checkpoint()
            print(f"stopping after {(time.time() - run_start) / 60:.1f} min of this run at step {step}; "
                  f"run again to continue", flush=True)
            if args.export_partial:
                export(args, params, ema, compact, base, text_encoder, step, elapsed)
            return
    save_checkpoint()
    export(args, params, ema, compact, base, text_encoder, step, elapsed)


def edge_weights(x0: torch.Tensor, weight: float) -> torch.Tensor:
    """Per-pixel loss weights (N, 1, H, W): `weight` where a pixel's 3x3 neighbourhood holds
    another colour (an object's outline, a contact line, an inner object's edge), 1 elsewhere,
    scaled to mean 1 per image so the loss keeps its size. Outlines are a few percent of the
    pixels, yet they are all that tells a small square from a disc."""
    padded = torch.nn.functional.pad(x0, (1, 1, 1, 1), mode="replicate")
    h, w = x0.shape[-2:]
    edge = torch.zeros_like(x0[:, :1], dtype=torch.bool)
    for dy in range(3):
        for dx in range(3):
            diff = (padded[:, :, dy:dy + h, dx:dx + w] - x0).abs().amax(1, keepdim=True)
            edge |= diff > 0.05
    wmap = 1 + (weight - 1) * edge.float()
    return wmap / wmap.mean(dim=(2, 3), keepdim=True)


def inner_weights(batch_scenes, weight: float) -> torch.Tensor:
    """Per-pixel loss weights (N, 1, H, W): `weight` on the inner object of each "inside"
    scene (its box grown by 1 px), 1 elsewhere, scaled to mean 1 per image. The inner
    object's shape lives in a few corner pixels of a small object in a fifth of the scenes."""
    from comfyui_reversion.toyworld import scenes
    w = torch.ones(len(batch_scenes), 1, scenes.SIZE, scenes.SIZE)
    for i, sc in enumerate(batch_scenes):
        if sc.relation == "inside":
            w[i, 0][torch.from_numpy(scenes.box_mask(sc.a))] = weight
    return w / w.mean(dim=(2, 3), keepdim=True)


def init_from_weights(path: Path, base, text_encoder, compact, params, ema) -> None:
    """Load an exported toy model (unet.* / clip.* keys, the full token table) into this
    run's parameters and EMA (a fine-tune starts from the EMA weights it was exported with)."""
    import safetensors.torch
    from comfyui_reversion.toyworld import model as toy_model
    unet_sd, clip_sd = toy_model.split_state_dict(safetensors.torch.load_file(str(path)))
    table = clip_sd.pop("text_model.embeddings.token_embedding.weight").float()
    with torch.no_grad():
        base.diffusion_model.load_state_dict({k: v.float() for k, v in unet_sd.items()}, strict=True)
        missing, unexpected = text_encoder.transformer.load_state_dict(
            {k: v.float() for k, v in clip_sd.items()}, strict=False)
        if unexpected or [k for k in missing if "token_embedding" not in k]:
            raise SystemExit(f"{path}: not a toy text encoder (missing {missing[:3]}, unexpected {unexpected[:3]})")
        compact.base.copy_(table)
        compact.rows.copy_(table[torch.tensor(compact.used_ids)])
        for p, e in zip(params, ema):
            e.copy_(p.detach())


def relation_weights_arg(items: list[str], scenes) -> dict[str, float]:
    """scenes.RELATION_WEIGHTS with each "RELATION=W" of `items` in place of the default."""
    weights = dict(scenes.RELATION_WEIGHTS)
    for item in items:
        relation, _, weight = item.rpartition("=")
        try:
            value = float(weight)
        except ValueError:
            value = -1.0
        if relation not in weights or not value >= 0:
            raise SystemExit(f"--relation-weight {item!r}: expected RELATION=W with W >= 0 and RELATION "
                             f"one of {', '.join(scenes.RELATIONS)}")
        weights[relation] = value
    return weights


def grow(path: Path, base, params, ema) -> int:
    """Copy a checkpoint of a smaller toy UNet (and its text encoder) into `params`/`ema`.

    Weights with the same name and shape are copied (an upsample that moved one place down
    its block to make room for a new transformer is found at its old place); the new
    transformers' output projections are zeroed, so each adds nothing to its residual
    stream and the grown model computes exactly what the old one did. Returns the old step.
    """
    import re
    from comfyui_reversion.toyworld import model as toy_model
    ck = torch.load(path, map_location="cpu", weights_only=False)   # our own file
    old = toy_model.new_unet(device="cpu", config=unet_config(ck["args"].get("attention_16", False)))
    old_names = [n for n, _ in old.diffusion_model.named_parameters()]
    n_old, n_new = len(old_names), len(list(base.diffusion_model.parameters()))
    if len(ck["params"]) - n_old != len(params) - n_new:
        raise SystemExit(f"{path}: its text encoder differs from this run's; cannot grow from it")
    old_params = dict(zip(old_names, ck["params"][:n_old]))
    old_ema = dict(zip(old_names, ck["ema"][:n_old]))
    used = set()
    with torch.no_grad():
        for i, (name, p) in enumerate(base.diffusion_model.named_parameters()):
            src = name if name in old_params else re.sub(r"^(output_blocks\.\d+)\.2\.", r"\1.1.", name)
            if src in old_params and src not in used and old_params[src].shape == p.shape:
                p.copy_(old_params[src])
                ema[i].copy_(old_ema[src])
                used.add(src)
            elif ".proj_out." in name:      # a new transformer: start as a no-op
                p.zero_()
                ema[i].zero_()
            # other new weights keep their init, which `ema` already holds
        for p, e, v, ve in zip(params[n_new:], ema[n_new:], ck["params"][n_old:], ck["ema"][n_old:]):
            p.copy_(v)
            e.copy_(ve)
    if len(used) != n_old:
        raise SystemExit(f"{path}: weights {sorted(set(old_names) - used)[:3]} have no place in this model")
    return ck["step"]


def export(args, params, ema, compact, base, text_encoder, step, elapsed):
    """Write the EMA weights (the parameters with --raw) as one fp16 safetensors file (unet.* and clip.* keys)."""
    import safetensors.torch
    with torch.no_grad():
        if not args.raw:
            for p, e in zip(params, ema):
                p.data.copy_(e)
        sd = {}
        for k, v in base.diffusion_model.state_dict().items():
            sd["unet." + k] = v.detach().cpu().half().contiguous()
        for k, v in text_encoder.transformer.state_dict().items():
            if k.startswith("text_model.embeddings.token_embedding."):
                continue
            sd["clip." + k] = v.detach().cpu().half().contiguous()
        sd["clip.text_model.embeddings.token_embedding.weight"] = compact.full_table().cpu().half().contiguous()
    meta = {"steps": str(step), "train_seconds": f"{elapsed:.0f}",
            "recipe": json.dumps({k: v for k, v in vars(args).items() if k not in ("out", "run_dir")}),
            "format": "ComfyUI-ReVersion toy world model v1"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(sd, str(out), metadata=meta)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) after {step} steps, {elapsed / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
