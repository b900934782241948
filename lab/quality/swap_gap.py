"""How much worse does an exemplar denoise with its objects swapped in the caption, per timestep?

    python -m lab.quality.swap_gap [--relation "left of"] [--seed 0]

For the toy world's exemplars of one relation (diverse set), each exemplar's first template
with the true words in the slot ("a blue circle left of a red square") against its swapped
caption ("a red square left of a blue circle"), the same noise and timestep: the mean
relative gap (e_swapped - e_own) / e_own and the share where the swapped caption denoises
better; then the same with "and" in the slot (a symmetric word: no gap expected). This is
why the swap term (reversion/swap.py) applies only at t >= FROM_T with a 50% margin.
"""
from __future__ import annotations

import argparse

import torch


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--relation", default="left of")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noises", type=int, default=4, help="noise draws per exemplar and timestep")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from devtools import host
    host.import_comfy("cpu")
    from comfyui_reversion import toyworld
    from comfyui_reversion.reversion import swap
    from comfyui_reversion.reversion.words import STANDIN
    from comfyui_reversion.reversion_comfy import guards
    from comfyui_reversion.reversion_comfy.backend import ComfyBackend
    from comfyui_reversion.reversion_comfy.sampling import vae_encode
    from comfyui_reversion.toyworld import model as toy_model

    model, clip, vae = toy_model.load(toy_model.WEIGHTS)
    exemplars = toyworld.exemplars(args.relation, 8, seed=args.seed)
    words = args.relation.split()
    # the stand-in reads the last word's embedding: "left {stand-in}" is "left of" token for token
    slots = {args.relation: (" ".join(words[:-1] + [STANDIN]), words[-1]), "and": (STANDIN, "and")}
    g = torch.Generator().manual_seed(0)
    with guards.training_mode():
        latents = vae_encode(vae, exemplars.images, 0)
        backend = ComfyBackend(model, clip, "fast")
        backend.prepare()
        backend.plan_memory(latents, f"a {STANDIN} b", 64)
        templates = [ts[0] for ts in exemplars.templates]
        for name, (slot, word) in slots.items():
            own = [t.replace("{}", slot) for t in templates]
            swapped = [swap.swap_template(t).replace("{}", slot) for t in templates]
            vectors = backend.initial_vectors(word)
            for t in (100, 300, 500, 600, 700, 900, 990):
                e_own, e_swap = [], []
                for _ in range(args.noises):
                    noise = torch.randn(latents.shape, generator=g)
                    steps = torch.full((len(own),), t)
                    with torch.no_grad():
                        e_own.append(backend._errors(vectors, latents, own, steps, noise))
                        e_swap.append(backend._errors(vectors, latents, swapped, steps, noise))
                e_own, e_swap = torch.cat(e_own), torch.cat(e_swap)
                print(f"{name:>10} t={t:4d}: own {e_own.mean():.4f}, swapped {e_swap.mean():.4f}, "
                      f"gap {(e_swap - e_own).mean() / e_own.mean():+.3f}, swapped better in "
                      f"{(e_swap < e_own).float().mean():.2f}")
        backend.close()


if __name__ == "__main__":
    main()
