"""The paper's per-update procedure, re-implemented for bench_scale's speed ratio."""
from __future__ import annotations

import random
import time

import torch


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
