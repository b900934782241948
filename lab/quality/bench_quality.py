"""Does each part of ReVersion help? Ablations and a steps curve on the toy world.

    python -m lab.quality.bench_quality                 # make bench-quality: all of it (hours on 2 cores)
    python -m lab.quality.bench_quality --relations inside --seeds 0 --steps 40 --images 8 --out /tmp/q.jsonl

For each relation, exemplar set and training seed, <R> is trained four ways on the toy
model (the trainer the node uses, `reversion_comfy.training.train_relation`):

    full        steering 0.01, relation-focal timesteps (alpha 0.5)     -- the paper
    no_steer    steering 0,    alpha 0.5
    uniform     steering 0.01, alpha 0 (uniform timesteps)
    neither     steering 0,    alpha 0

plus a steering-weight sweep (`--steering-weights`) and, with `--caption-positives`, a 'full'
run whose steering positives are only the 20 basis prepositions the toy text encoder was
trained on (the other 36 are untrained rows); beyond the paper (issue 25), 'full' with
swapped-object negatives (`--swap-weights`: variant full_swap_W), with several vectors
(`--vector-counts`: full_vectors_N) and both (`--combos W:N`: full_swap_W_vectors_N),
each with its paired difference to 'full'; on two exemplar sets (`--exemplar-sets`):

    diverse      8 exemplars with different object pairs, fully captioned; scored by the
                 judge on object pairs the toy model never saw with that relation and that
                 are not among the exemplars
    confounded   8 exemplars whose first object is always red and second always blue, with
                 captions that name only the shapes ("a circle {} a square"); scored on
                 colourless prompts for every pair of shapes. The leak rate is the share of
                 images drawn red-then-blue again (1/12 by chance): the colours the captions
                 left unsaid, soaked up by <R>. The paper's claim is that steering stops it.
    tinted       the diverse set's exemplars, all under a pink sky their captions never
                 name; scored like diverse (untinted new-pair prompts), plus the leak rate:
                 the share drawn on pink, against the true word's share (the model's own rate
                 for a tint no caption names). Only a toy model trained with tints can draw one:
                 `make toy-model-tint`, then `--weights runs/toy_model_tint/toyworld_tint.safetensors`.

Every record has `--images` judged images, next to three baselines without training
(`--baselines`): the true word (oracle), the init word "and", and no relation word. Each
record has relation and entity accuracy and the inverse rate: the share of images drawn
with the objects' roles swapped (toyworld/judge.py's INVERSE). With `--curve`, the 'full'
vectors are also scored at the listed update counts of the same run (trained on past
`--steps` if a count is larger); with `--lr-curve`, 'full' runs at each listed base lr are
scored at `--lr-curve-steps` (the steps curve: the paper's lr 2.5e-4 x 8 = 2e-3 against a
faster one; the default lr's curve is the main 'full' run itself, not trained again).

Records go to a JSON-lines file as they are made (a rerun skips records already there, so
an interrupted run continues), and `--summary` writes lab/quality/results/quality.json: per
relation and overall, mean and 95% interval over seeds, per variant.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import time
from pathlib import Path

import torch

from devtools.pack import REPO

from ..tint import tint
from .summary import EXEMPLAR_SETS, summarise

RESULTS = REPO / "lab" / "quality" / "results"

CONFOUND = ("red", "blue")      # the confounded exemplars' unnamed colours (first object, second object)
TINT = "pink"                   # the tinted exemplars' unnamed background
VARIANTS = {"full": (0.01, 0.5), "no_steer": (0.0, 0.5), "uniform": (0.01, 0.0), "neither": (0.0, 0.0)}
IMAGES_PER_PROMPT = 4


def parse_args(argv=None):
    from comfyui_reversion.toyworld import scenes
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--relations", nargs="+", default=list(scenes.RELATIONS))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--steering-weights", nargs="*", type=float, default=[0.1, 1.0],
                   help="extra 'full' runs with these steering weights (the sweep)")
    p.add_argument("--caption-positives", action="store_true",
                   help="also a 'full' run whose steering positives are only the basis prepositions the toy "
                        "text encoder was trained on (variant full_caption_positives)")
    p.add_argument("--swap-weights", nargs="*", type=float, default=[],
                   help="extra 'full' runs with swapped-object negatives of these weights (full_swap_W)")
    p.add_argument("--vector-counts", nargs="*", type=int, default=[],
                   help="extra 'full' runs whose <R> has this many vectors (full_vectors_N)")
    p.add_argument("--combos", nargs="*", default=[], help="extra 'full' runs with both, as W:N (full_swap_W_vectors_N)")
    p.add_argument("--baselines", nargs="*", default=["oracle", "init", "none"], choices=["oracle", "init", "none"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=300, help="updates per run (the demo's 300)")
    p.add_argument("--lr", type=float, default=6.25e-4, help="base lr, scaled by the batch (the demo's)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--curve", nargs="*", type=int, default=[],
                   help="also score the 'full' runs at these update counts, e.g. 50 100 200 (larger than --steps: trained on)")
    p.add_argument("--lr-curve", nargs="*", type=float, default=[],
                   help="base lrs (x batch) of extra 'full' runs scored at --lr-curve-steps, e.g. 2.5e-4 6.25e-4")
    p.add_argument("--lr-curve-steps", nargs="+", type=int, default=[50, 100, 200, 400, 800, 1600, 3000])
    p.add_argument("--exemplar-sets", nargs="+", default=["diverse", "confounded"], choices=EXEMPLAR_SETS,
                   help="'tinted' needs a toy model trained with tints (--weights)")
    p.add_argument("--weights", default=None, help="toy model weights (default: the committed toyworld/toyworld.safetensors)")
    p.add_argument("--images", type=int, default=48, help="judged images per record")
    p.add_argument("--exemplars", type=int, default=8)
    p.add_argument("--sample-steps", type=int, default=20, help="sampler steps per judged image (euler, cfg 4)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=str(RESULTS / "quality.jsonl"))
    p.add_argument("--summary", default=str(RESULTS / "quality.json"))
    p.add_argument("--summary-only", action="store_true", help="summarise the records in --out; train nothing")
    return p.parse_args(argv)


class World:
    """The toy model and the scoring of a conditioning on new-pair prompts."""

    def __init__(self, sample_steps: int = 20, weights=None):
        from comfyui_reversion.toyworld import model as toy_model
        self.toy_model, self.sample_steps = toy_model, sample_steps
        self.weights = Path(weights or toy_model.WEIGHTS)
        self.model, self.clip, self.vae = toy_model.load(self.weights)
        self.weights_sha256 = toy_model.weights_sha256(self.weights)

    def prompts(self, relation, exemplars, images, exemplar_set="diverse"):
        from comfyui_reversion.toyworld import evaluate
        n = math.ceil(images / IMAGES_PER_PROMPT)
        if exemplar_set == "confounded":        # the 6 colourless shape pairs, over and over (new seeds)
            prompts = evaluate.colourless_prompts(relation)
            return [prompts[i % len(prompts)] for i in range(n)]
        return evaluate.new_pair_prompts(relation, exemplars.names, n)

    def score(self, encode, prompts, images, exemplar_set="diverse") -> dict:
        """`encode(prompt) -> CONDITIONING`; `images` judged images, fixed sampler seeds."""
        from comfyui_reversion.toyworld import evaluate
        out, judged = [], []
        for i, p in enumerate(prompts):
            k = min(IMAGES_PER_PROMPT, images - len(out))
            batch = self.toy_model.sample(self.model, self.clip, self.vae, encode(p), seed=1000 + i, batch=k,
                                          steps=self.sample_steps)
            out += list(batch.cpu().numpy())
            judged += [p] * k
        if exemplar_set == "confounded":
            s = evaluate.score_colourless(out, judged, CONFOUND)
            return {k: s[k] for k in ("relation_accuracy", "inverse_rate", "entity_accuracy", "leak_rate", "n_images")}
        if exemplar_set == "tinted":
            s = tint.score_tinted(out, judged, TINT)
            return {k: s[k] for k in ("relation_accuracy", "entity_accuracy", "leak_rate", "n_images",
                                      "relations_read", "backgrounds_read")}
        s = evaluate.score(out, judged)
        return {k: s[k] for k in ("relation_accuracy", "inverse_rate", "entity_accuracy", "n_images", "relations_read")}

    def relation_encoder(self, vectors):
        from comfyui_reversion.reversion.relation_file import Relation
        from comfyui_reversion.reversion.words import PLACEHOLDER
        from comfyui_reversion.reversion_comfy.text import encode_with_relation
        relation = Relation({k: v.detach().clone() for k, v in vectors.items()}, name="bench")
        return lambda p: _inference(encode_with_relation, self.clip, relation, p.text(PLACEHOLDER))

    def word_encoder(self, word):
        return lambda p: self.toy_model.encode(self.clip, p.text(word))

    def cosines(self, vectors, words) -> dict:
        """Cosine of <R> to the token embeddings of `words` (single-token words only)."""
        from comfyui_reversion.reversion_comfy.text import text_encoders
        enc = text_encoders(self.clip)[0]       # several vectors: their mean direction
        v = torch.nn.functional.normalize(vectors[enc.key].float().cpu().reshape(-1, enc.width), dim=-1).mean(0)
        v = torch.nn.functional.normalize(v, dim=0)
        out = {}
        for w in words:
            ids = enc.content_ids(w)
            if len(ids) == 1:
                row = torch.nn.functional.normalize(enc.table[ids[0]].detach().float().cpu(), dim=0)
                out[w] = round(float(v @ row), 4)
        return out

    def exemplars(self, exemplar_set: str, relation: str, count: int, seed: int):
        from comfyui_reversion import toyworld
        if exemplar_set == "confounded":
            return toyworld.confounded_exemplars(relation, count, seed, CONFOUND)
        if exemplar_set == "tinted":
            return tint.tinted_exemplars(relation, count, seed, TINT)
        return toyworld.exemplars(relation, count, seed=seed)

    def train(self, exemplars, steering, alpha, seed, batch, lr, steps, positives=(), **beyond) -> dict:
        """The node's trainer on the toy model for max(`steps`) updates (steering positives
        drawn from `positives`, () = the paper's 56; `beyond`: swap_weight, num_vectors);
        returns {step: (vectors, seconds of training so far)} at each of `steps`."""
        from comfyui_reversion.reversion.trainer import TrainConfig
        from comfyui_reversion.reversion_comfy.training import train_relation
        config = TrainConfig(steps=max(steps), batch_size=batch, grad_accum=1, base_lr=lr, scale_lr=True,
                             steering_weight=steering, focal_alpha=alpha, seed=seed, **beyond)
        snapshots, t0 = {}, time.perf_counter()

        def keep(step, total, record, vectors):
            if step in steps:
                snapshots[step] = ({k: v.detach().clone() for k, v in vectors.items()}, time.perf_counter() - t0)
        with torch.inference_mode(), positives_from(positives):       # inference mode: as the executor runs nodes
            train_relation(self.model, self.clip, self.vae, exemplars, config, keep, "fast")
        return snapshots


@contextlib.contextmanager
def positives_from(words):
    """The caption-positives experiment: while active, the trainer draws its steering
    positives from `words` instead of the paper's 56 basis prepositions (the same draw,
    `rng.sample(words, count)`); empty `words` changes nothing."""
    from comfyui_reversion.reversion import steering
    if not words:
        yield
        return
    words, real = tuple(words), steering.sample_positive_words

    def narrowed(rng, count=steering.NUM_POSITIVES):
        if count > len(words):
            raise ValueError(f"num_positives ({count}) is more than the {len(words)} positive words given")
        return rng.sample(words, count)
    steering.sample_positive_words = narrowed
    try:
        yield
    finally:
        steering.sample_positive_words = real


def _inference(fn, *a):
    with torch.inference_mode():
        return fn(*a)


def load_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def check_resumable(records: list[dict], model_sha256: str, images: int, out: Path, weights: Path) -> None:
    """Records in `out` are resumed only if made by the same toy model with the same --images;
    otherwise a run would mix two models (or image counts) in one summary."""
    for r in records:
        if r.get("model_sha256") != model_sha256:
            raise SystemExit(
                f"{out} holds records of another toy model (sha256 {r.get('model_sha256') or 'not recorded'}; "
                f"{weights} is {model_sha256[:16]}...): give this run a new --out and "
                f"--summary, or put that model back")
        if r.get("images_asked") != images:
            raise SystemExit(f"{out} holds records of --images {r.get('images_asked')}, this run asks {images}: "
                             f"give it a new --out and --summary, or the same --images")


def run(args) -> list[dict]:
    world = World(args.sample_steps, args.weights)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    records = load_records(out)
    check_resumable(records, world.weights_sha256, args.images, out, world.weights)
    done = {key(r) for r in records}

    def emit(record):
        record = {**record, "model_sha256": world.weights_sha256, "images_asked": args.images}
        records.append(record)
        done.add(key(record))
        with out.open("a") as f:
            f.write(json.dumps(record) + "\n")
        print(json.dumps({k: record[k] for k in ("relation", "exemplars", "variant", "seed", "steps",
                                                  "relation_accuracy", "entity_accuracy", "leak_rate")
                          if k in record}), flush=True)

    baselines: dict = {}      # the confounded set's prompts do not depend on the seed: score its baselines once
    for relation in args.relations:
        for exemplar_set in args.exemplar_sets:
            for seed in args.seeds:
                run_condition(world, args, relation, exemplar_set, seed, done, emit, baselines)
    return records


def training_runs(args, exemplar_set: str) -> list[tuple]:
    """(variant name, steering weight, focal alpha, base lr, update counts to score, steering
    positives, beyond-the-paper settings) for one exemplar set. 'full' is scored along the way at `--curve` (and at `--lr-curve-steps` when
    `--lr-curve` lists the default lr: the same run, trained once); other lrs run apart."""
    curve = set(args.curve) | {args.steps}
    if exemplar_set == "diverse" and args.lr in args.lr_curve:
        curve |= set(args.lr_curve_steps)
    runs = [(v, *VARIANTS[v], args.lr, sorted(curve) if v == "full" else [args.steps], (), {}) for v in args.variants]
    runs += [(f"full_steer_{w:g}", w, VARIANTS["full"][1], args.lr, [args.steps], (), {})
             for w in args.steering_weights if w != VARIANTS["full"][0]]
    if args.caption_positives:
        runs += [("full_caption_positives", *VARIANTS["full"], args.lr, [args.steps], caption_prepositions(), {})]
    beyond = [{"swap_weight": w} for w in args.swap_weights] + [{"num_vectors": n} for n in args.vector_counts]
    beyond += [{"swap_weight": float(c.split(":")[0]), "num_vectors": int(c.split(":")[1])} for c in args.combos]
    runs += [(beyond_name(b), *VARIANTS["full"], args.lr, [args.steps], (), b) for b in beyond]
    if exemplar_set == "diverse":
        runs += [(f"full_lr_{lr * args.batch:g}", *VARIANTS["full"], lr, sorted(args.lr_curve_steps), (), {})
                 for lr in args.lr_curve if lr != args.lr]
    return runs


def beyond_name(settings: dict) -> str:
    """full_swap_1, full_vectors_2, full_swap_1_vectors_2."""
    parts = [f"swap_{settings['swap_weight']:g}"] if "swap_weight" in settings else []
    parts += [f"vectors_{settings['num_vectors']}"] if "num_vectors" in settings else []
    return "_".join(["full", *parts])


@functools.cache          # training_runs asks once per condition; the captions do not change
def caption_prepositions() -> tuple[str, ...]:
    """The basis prepositions that are words of the toy model's training captions (20 of the
    56): the only positives whose embedding rows were trained; the others are random rows."""
    from comfyui_reversion.reversion.words import relation_words
    from comfyui_reversion.toyworld import scenes
    words = {w for caption in scenes.all_training_captions() for w in caption.split()}
    return tuple(w for w in relation_words() if w in words)


def run_condition(world, args, relation, exemplar_set, seed, done, emit, baselines):
    """The baselines and every training run for one (relation, exemplar set, seed)."""
    from comfyui_reversion.toyworld import scenes
    exemplars = world.exemplars(exemplar_set, relation, args.exemplars, seed)
    prompts = world.prompts(relation, exemplars, args.images, exemplar_set)
    base = {"relation": relation, "seed": seed, "exemplars": exemplar_set, "n_exemplars": len(exemplars)}

    def score(encoder):
        return world.score(encoder, prompts, args.images, exemplar_set)
    for variant, word in (("oracle", relation), ("init", "and"), ("none", "")):
        if variant in args.baselines and key({**base, "variant": variant, "steps": 0}) not in done:
            cache = (exemplar_set, word, tuple(prompts))
            if cache not in baselines:
                baselines[cache] = score(world.word_encoder(word))
            emit({**base, "variant": variant, "steering_weight": None, "focal_alpha": None, "steps": 0,
                  **baselines[cache]})
    words = [w for w in scenes.SYNONYMS[relation] if " " not in w]
    for name, steering, alpha, lr, steps, positives, beyond in training_runs(args, exemplar_set):
        common = {**base, "variant": name, "steering_weight": steering, "focal_alpha": alpha, "lr": lr * args.batch,
                  **({"positive_words": list(positives)} if positives else {}), **beyond}
        if all(key({**common, "steps": s}) in done for s in steps):
            continue
        for step, (vectors, seconds) in sorted(world.train(exemplars, steering, alpha, seed, args.batch, lr,
                                                           steps, positives, **beyond).items()):
            if key({**common, "steps": step}) in done:
                continue
            record = {**common, "steps": step, "train_seconds": round(seconds, 1)}
            if step == args.steps:
                record.update(cosine_true_words=world.cosines(vectors, words),
                              cosine_init_word=world.cosines(vectors, ["and"]),
                              cosine_confound_words=world.cosines(vectors, [TINT] if exemplar_set == "tinted"
                                                                  else list(CONFOUND)),
                              # the learned <R> itself: more images can be scored later without training again
                              vectors={k: rounded(v.detach().float().cpu().tolist()) for k, v in vectors.items()})
            emit({**record, **score(world.relation_encoder(vectors))})


def rounded(values):
    """A vector ([D]) or several ([N][D]) as lists of floats to 6 decimals."""
    return [rounded(x) if isinstance(x, list) else round(x, 6) for x in values]


def key(record: dict) -> tuple:
    """What makes a record unique (the sweep weight and the lr are in the variant's name)."""
    return (record["relation"], record.get("exemplars", "diverse"), record["variant"], record["seed"], record["steps"])


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from devtools import host
    host.import_comfy("cpu")
    records = load_records(Path(args.out)) if args.summary_only else run(args)
    summary = summarise(records, args.steps)
    summary["settings"] = {k: v for k, v in vars(args).items() if k not in ("out", "summary")}
    Path(args.summary).write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary["variants"].get("full", {}).get("overall", {}), indent=1))
    print(f"records: {args.out}; summary: {args.summary}")


if __name__ == "__main__":
    main()
