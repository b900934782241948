"""Does the toy model use the words that name an object? A probe of word binding.

    python -m lab.toy_model.probe_binding [--weights toyworld/toyworld.safetensors]

For rendered scenes of a relation, noise them to a few noise levels and let the model
predict the clean image twice: with the true caption and with one word of the first
object changed (its shape, or its colour). The probe reports, per noise level, the mean
squared difference of the two predictions over the first object's pixels (its box grown
by 1 px): how much the model's drawing of that object depends on the word. A model that
binds the word changes its drawing a lot (0.1-0.4 at sigma 1-2 for "above" on the
committed model); a model that ignores it predicts the same either way (~0).

Why it exists: the base toy model (before `make toy-model`'s inside phase) drew the inner
object of "inside" in the right colour and place but as a blob whatever its shape word;
this probe showed that the inner object's prediction ignored its shape word while it
followed its colour word: a binding failure, not a drawing one (NOTES.md). Run it
with `--weights runs/toy_model/base.safetensors` to see that model.

`--backgrounds` (for a model trained with tints) adds a "tint word" column: the same
difference with the caption's tint word swapped ("a red circle pink above ..." against "... mint ..."),
over the sky (the upper half, outside both objects' boxes): whether the model's tint
follows the word that names it.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from devtools.pack import REPO

from ..tint import tint

SIGMAS = (0.5, 1.0, 2.0)


def probe(model, clip, relation: str, n: int = 24, sigmas=SIGMAS, seed: int = 5, backgrounds: bool = False) -> dict:
    """{"shape": {sigma: d}, "colour": {sigma: d}, "error": {sigma: e}} for `n` scenes of
    `relation`: d = mean squared difference of the model's clean-image predictions with the
    true caption and with the first object's shape (colour) word swapped, over the first
    object's box grown by 1 px; e = the true caption's squared error there."""
    from comfyui_reversion.reversion.words import fill
    from comfyui_reversion.reversion_comfy.sampling import noisy_latent
    from comfyui_reversion.toyworld import model as toy_model, scenes
    rng = np.random.default_rng(seed)
    batch = [scenes.make_scene(rng, relation) for _ in range(n)]
    x0 = toy_model.latents_of([scenes.render(s) for s in batch])
    region = torch.from_numpy(np.stack([scenes.box_mask(s.a) for s in batch]))
    sky = np.arange(scenes.SIZE)[:, None] < tint.TINTED_ROWS                  # where a tint goes
    background = torch.from_numpy(np.stack([sky & ~(scenes.box_mask(s.a) | scenes.box_mask(s.b)) for s in batch]))

    def other(options, *taken):
        return next(o for o in options if o not in taken)

    captions = {
        "true": [s.caption() for s in batch],
        "shape": [fill(scenes.template(f"{s.a.colour} {other(scenes.SHAPES, s.a.shape)}",
                                       s.b.name), relation) for s in batch],
        "colour": [fill(scenes.template(f"{other(scenes.COLOURS, s.a.colour, s.b.colour)} "
                                        f"{s.a.shape}", s.b.name), relation) for s in batch],
    }
    if backgrounds:
        captions["tint"] = [tint.with_background(s.caption(), "pink") for s in batch]
        captions["tint swapped"] = [tint.with_background(s.caption(), "mint") for s in batch]
    conds = {k: torch.cat([toy_model.encode(clip, c)[0][0] for c in v]) for k, v in captions.items()}
    base = model.model

    def over_region(d, where=region):
        return float((d[:, :3].pow(2).sum(1) * where).sum() / where.sum())

    out = {"shape": {}, "colour": {}, "error": {}, **({"tint": {}} if backgrounds else {})}
    for sigma_value in sigmas:
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
        sigma = torch.full((n,), float(sigma_value))
        x = noisy_latent(x0, noise, sigma)
        with torch.no_grad():
            pred = {k: base.apply_model(x, sigma, c_crossattn=c) for k, c in conds.items()}
        out["error"][sigma_value] = over_region(pred["true"] - x0)
        for word in ("shape", "colour"):
            out[word][sigma_value] = over_region(pred["true"] - pred[word])
        if backgrounds:
            out["tint"][sigma_value] = over_region(pred["tint"] - pred["tint swapped"], background)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=str(REPO / "toyworld" / "toyworld.safetensors"))
    p.add_argument("--relations", nargs="+", default=["above", "on top of", "inside"])
    p.add_argument("--scenes", type=int, default=24)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--sigmas", nargs="+", type=float, default=list(SIGMAS),
                   help="noise levels (a tint is decided early: try 2 5 14)")
    p.add_argument("--backgrounds", action="store_true", help="also the tint word (a model trained with tints)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from devtools import host
    host.import_comfy("cpu")
    from comfyui_reversion.toyworld import model as toy_model
    model, clip, _vae = toy_model.load(args.weights)
    report = {rel: probe(model, clip, rel, args.scenes, tuple(args.sigmas), backgrounds=args.backgrounds) for rel in args.relations}
    column = f"  {'tint word':>9s}" if args.backgrounds else ""
    print(f"{'relation':10s} {'sigma':>5s}  {'shape word':>10s}  {'colour word':>11s}  {'error':>6s}{column}")
    for rel, r in report.items():
        for s in r["shape"]:
            column = f"  {r['tint'][s]:9.4f}" if args.backgrounds else ""
            print(f"{rel:10s} {s:5.1f}  {r['shape'][s]:10.4f}  {r['colour'][s]:11.4f}  {r['error'][s]:6.4f}{column}")
    print(json.dumps({"weights": args.weights, "probe": report}))
    return report


if __name__ == "__main__":
    main()
