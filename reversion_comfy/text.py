"""Text encoding with the relation: the host's CLIP text encoders, the relation vector
injected where the stand-in token is, prompts with <R>. A relation of N vectors takes N
token places: <R> becomes N stand-ins in a row, the i-th of which reads vector i (as stock
ComfyUI expands an N-vector `embedding:name`).

- Training: `injected_token` wraps an encoder's token-embedding module so the stand-in's
  rows come from the (trainable) vector; text then goes through the host's own
  `encode_from_tokens`, so clip skip, SDXL's l+g concatenation and pooled output are the
  host's. `Captions.encode_batch` encodes a whole forward's captions in one call.
- Inference: `encode_with_relation` puts the vector in the token list where <R> was (the
  "tensor as token" route that stock `embedding:name` takes), so it equals stock
  CLIPTextEncode with `embedding:<name>` bit for bit.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ..reversion.errors import RelationError
from ..reversion.relation_file import family_name
from ..reversion.words import PLACEHOLDERS, STANDIN, fill, standins
from .patches import recording_encode


class InjectedToken(torch.nn.Module):
    """Wraps a token-embedding module: rows of `token_id` come from `vector` ([D]; or [N, D]:
    the i-th `token_id` of a caption reads row i).

    Exposes the wrapped table as `.weight` so host code that reads the table (sizes, the
    2024 host's textual-embedding set-up) keeps working.
    """

    def __init__(self, embedding: torch.nn.Module, token_id: int, vector: torch.Tensor):
        super().__init__()
        self.inner = embedding
        self.token_id = token_id
        self.vector = vector

    @property
    def weight(self):
        return self.inner.weight

    def forward(self, ids, out_dtype=None, **kwargs):
        base = self.inner(ids, out_dtype=out_dtype, **kwargs) if out_dtype is not None \
            else self.inner(ids, **kwargs)
        vec = self.vector.to(device=base.device, dtype=base.dtype)
        mask = ids == self.token_id
        if vec.ndim == 2:          # several vectors: the k-th stand-in of each caption reads row k
            vec = vec[(mask.cumsum(-1) - 1).clamp(0, vec.shape[0] - 1)]
        return torch.where(mask.unsqueeze(-1), vec, base)


@contextlib.contextmanager
def injected_token(text_encoder, token_id: int, vector: torch.Tensor):
    """Temporarily route `token_id` of one SDClipModel through `vector` (differentiable)."""
    transformer = text_encoder.transformer
    original = transformer.get_input_embeddings()
    transformer.set_input_embeddings(InjectedToken(original, token_id, vector))
    try:
        yield
    finally:
        transformer.set_input_embeddings(original)


@dataclass
class TextEncoder:
    """One CLIP text encoder of a ComfyUI CLIP object (SDXL has two)."""
    key: str          # relation-file / embedding key: "clip_l", "clip_g", "clip_h"
    token_key: str    # key in `clip.tokenize()` output: "l", "g", "h"
    module: torch.nn.Module       # comfy.sd1_clip.SDClipModel
    tokenizer: object             # comfy.sd1_clip.SDTokenizer

    @property
    def table(self) -> torch.Tensor:
        return self.module.transformer.get_input_embeddings().weight

    @property
    def width(self) -> int:
        return int(self.table.shape[1])

    def content_ids(self, text: str) -> list[int]:
        """Token ids of `text` without start/end/padding tokens (any pad id)."""
        ids = []
        for chunk in self.tokenizer.tokenize_with_weights(text):
            toks = [t[0] for t in chunk]
            if toks and toks[0] == self.tokenizer.start_token:
                toks = toks[1:]
            if self.tokenizer.end_token in toks:
                toks = toks[:toks.index(self.tokenizer.end_token)]
            ids += [int(t) for t in toks]
        return ids

    def single_id(self, word: str, role: str) -> int:
        ids = self.content_ids(word)
        if len(ids) != 1:
            raise RelationError(f"{role} {word!r} is {len(ids)} tokens for the {self.key} tokenizer; "
                                f"use a single-token word such as 'and'")
        return ids[0]


def nearest_words(clip, vectors: dict[str, torch.Tensor], k: int = 5) -> dict[str, list[str]]:
    """Per encoder, the `k` whole-word tokens whose input embeddings are closest (cosine) to
    the vector: ReVersion's steering loss pulls <R> toward the basis prepositions."""
    out = {}
    for e in text_encoders(clip):
        table = torch.nn.functional.normalize(e.table.detach().float().cpu(), dim=-1)
        rows = torch.nn.functional.normalize(vectors[e.key].float().cpu().reshape(-1, e.width), dim=-1)
        sims = table @ rows.mean(0)                 # several vectors: their mean direction
        words = []
        for i in sims.argsort(descending=True).tolist():
            token = e.tokenizer.inv_vocab.get(i, "")
            if token.endswith("</w>") and token[:-4].isalpha() and token[:-4] != STANDIN:
                words.append(token[:-4])
            if len(words) == k:
                break
        out[e.key] = words
    return out


def text_encoders(clip) -> list[TextEncoder]:
    """The CLIP-L/H/G encoders of a ComfyUI CLIP (SD1: l; SD2: h; SDXL: l + g)."""
    found = []
    for short in ("l", "h", "g"):
        module = getattr(clip.cond_stage_model, f"clip_{short}", None)
        tokenizer = getattr(clip.tokenizer, f"clip_{short}", None)
        if module is not None and tokenizer is not None:
            found.append(TextEncoder(f"clip_{short}", short, module, tokenizer))
    if not found:
        raise RelationError(f"unsupported text encoder {type(clip.cond_stage_model).__name__}: ReVersion "
                            f"needs a CLIP-L/H/G text encoder (SD1.x, SD2.x, SDXL)")
    return found


def check_family(relation, encoders: list[TextEncoder]) -> None:
    widths = {e.key: e.width for e in encoders}
    if relation.widths != widths:
        raise RelationError(
            f"relation '{relation.name}' was trained for {relation.family} ({_widths_text(relation.widths)}) "
            f"but this CLIP is {family_name(widths)} ({_widths_text(widths)}); train the relation "
            f"on this model or load one made for it")


def _widths_text(widths: dict) -> str:
    return ", ".join(f"{k} {v}-d" for k, v in sorted(widths.items()))


def check_no_standin(encoders: list[TextEncoder], text: str, what: str) -> None:
    """Refuse text whose own tokens include the stand-in (it would silently become <R>)."""
    for e in encoders:
        if e.single_id(STANDIN, "stand-in") in e.content_ids(text):
            raise RelationError(f"{what} contains '{STANDIN}', the word this pack uses internally for the "
                                f"relation; rephrase that word")


def check_prompt(clip, text: str, count: int = 1) -> str:
    """A prompt with <R> and without the stand-in word -> the text to tokenise (`count`:
    the relation's vectors)."""
    spoken = text
    for m in PLACEHOLDERS:
        spoken = spoken.replace(m, " ")
    check_no_standin(text_encoders(clip), spoken, "the prompt")
    return relation_text(text, count)


def relation_text(text: str, count: int = 1) -> str:
    """Prompt with every <R> replaced by `count` stand-in tokens (spaced: words of their own)."""
    if not any(m in text for m in PLACEHOLDERS):
        raise RelationError("the prompt has no <R>: write it where the relation goes, e.g. 'a cat <R> a dog'")
    for m in PLACEHOLDERS:
        text = text.replace(m, f" {standins(count)} ")
    return text


def encode_with_relation(clip, relation, text: str):
    """CONDITIONING for `text` with <R> = the relation's vector(s).

    The vector takes the stand-in token's place in the host's token list (the documented
    "tensor as token" route that `embedding:name` also takes), so the result equals stock
    CLIPTextEncode with `embedding:<name>` written in place of <R>.
    """
    encoders = {e.token_key: e for e in text_encoders(clip)}
    check_family(relation, list(encoders.values()))
    tokens = clip.tokenize(check_prompt(clip, text, relation.count))
    for token_key, chunks in tokens.items():
        enc = encoders[token_key]
        standin = enc.single_id(STANDIN, "stand-in")
        rows = relation.vectors[enc.key].reshape(relation.count, -1)
        # every <R> became `count` stand-ins in a row and the prompt holds no other (check_prompt),
        # so the k-th stand-in of the prompt reads row k mod count, across chunks too
        seen = 0
        out = []
        for chunk in chunks:
            out.append([])
            for t in chunk:
                if isinstance(t[0], int) and t[0] == standin:
                    t, seen = (rows[seen % relation.count],) + tuple(t[1:]), seen + 1
                out[-1].append(t)
        tokens[token_key] = out
    if hasattr(clip, "encode_from_tokens_scheduled"):
        return clip.encode_from_tokens_scheduled(tokens)
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    return [[cond, {"pooled_output": pooled}]]


class Captions:
    """Training captions (templates with the stand-in in their slot) for one CLIP: checked
    against every tokenizer of the model, tokenised once, and encoded with the relation
    vectors injected, a whole forward's captions in one text-encoder call."""

    def __init__(self, clip, count: int = 1):
        self.clip = clip
        self.count = count                 # the relation's vectors: stand-ins per caption
        self.encoders = text_encoders(clip)
        self.by_key = {e.key: e for e in self.encoders}
        self.standin_ids = {e.key: e.single_id(STANDIN, "stand-in") for e in self.encoders}
        self._tokens: dict[str, dict] = {}
        self._content_ids: dict[tuple, list[int]] = {}

    def check_templates(self, templates: list[list[str]]) -> None:
        """Every template against every tokenizer of the model, before the first update: a
        template that does not fit would otherwise fail whenever training first draws it."""
        for template in sorted({t for ts in templates for t in ts}):
            check_no_standin(self.encoders, fill(template, " "), f"template {template!r}")
            self.tokens(fill(template, standins(self.count)), template)

    def tokens(self, caption: str, template: str | None = None) -> dict:
        """A caption's tokens (cached), refused unless it fits one 77-token chunk of every
        tokenizer with the stand-in in it exactly `count` times; errors quote `template` if given."""
        if caption not in self._tokens:
            what = f"template {template!r}" if template else f"caption {caption!r}"
            tokens = self.clip.tokenize(caption)
            for key, chunks in tokens.items():
                enc = next(e for e in self.encoders if e.token_key == key)
                if len(chunks) != 1:
                    raise RelationError(f"{what} is {len(enc.content_ids(caption))} tokens for the {enc.key} "
                                        f"tokenizer; one caption holds at most 75 (a 77-token chunk less start "
                                        f"and end): shorten it")
                if [t[0] for t in chunks[0]].count(self.standin_ids[enc.key]) != self.count:
                    raise RelationError(f"{what}: the relation slot '{{}}' must be a word of its own (spaces "
                                        f"around it) and appear once")
            self._tokens[caption] = tokens
        return self._tokens[caption]

    def content_ids(self, key: str, caption: str) -> list[int]:
        """The caption's token ids for encoder `key`, without start/end/padding (cached)."""
        if (key, caption) not in self._content_ids:
            self._content_ids[(key, caption)] = self.by_key[key].content_ids(caption)
        return self._content_ids[(key, caption)]

    def injected(self, vectors: dict[str, torch.Tensor]):
        """While active, every encoder reads its stand-in token from `vectors[key]`."""
        stack = contextlib.ExitStack()
        for e in self.encoders:
            stack.enter_context(injected_token(e.module, self.standin_ids[e.key], vectors[e.key]))
        return stack

    def encode(self, vectors: dict[str, torch.Tensor], caption: str):
        """(cond, pooled) of one caption with the relation injected."""
        with self.injected(vectors):
            return self.clip.encode_from_tokens(self.tokens(caption), return_pooled=True)

    def encode_batch(self, vectors: dict[str, torch.Tensor], captions: list[str]):
        """All captions in ONE text-encoder call (cast copies of fp16 weights are then saved
        for backward once, not once per caption): each caption goes in as one 77-token
        chunk, the host encodes the chunks as a batch and concatenates them along the token
        axis; we cut that back into rows. The per-row pooled output (SDXL's `y`) is read
        from the encoder's own batched output (the host keeps only the first row)."""
        tokens: dict[str, list] = {}
        for caption in captions:
            for key, chunks in self.tokens(caption).items():
                tokens.setdefault(key, []).extend(chunks)
        outputs: dict[str, tuple] = {}
        with self.injected(vectors) as stack:
            for e in self.encoders:
                stack.enter_context(recording_encode(e.module, outputs, e.key))
            cond, pooled = self.clip.encode_from_tokens(tokens, return_pooled=True)
        n = len(captions)
        cond = cond.reshape(n, cond.shape[1] // n, cond.shape[-1])
        if pooled is not None:
            rows = [o[1] for o in outputs.values() if o[1] is not None and o[1].shape[-1] == pooled.shape[-1]]
            if len(rows) > 1:      # widths alike: compare values (a device sync, so only then)
                rows = [r for r in rows if torch.equal(r[:1].to(pooled), pooled)]
            rows = [r[:n] for r in rows]
            if not rows:
                raise RuntimeError("could not find the text encoder that produced the pooled output")
            pooled = rows[0].to(pooled)
        return cond, pooled
