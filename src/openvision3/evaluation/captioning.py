"""Captioning quality of the understanding branch: corpus BLEU-4 and CIDEr-D of ``model.caption``.

Both are scored as the COCO caption toolkit scores them, by pycocoevalcap's own scorers:
``Bleu(4)`` (corpus BLEU-4 of Papineni et al. 2002, the effective reference length of each image
being its closest reference length, the shorter one on a tie, and the toolkit's smoothing
constants 1e-15 / 1e-9 in the n-gram precisions and the brevity penalty) and ``Cider``
(CIDEr-D, Vedantam et al. 2015). So the scores do not depend on the order of the references.

Tokenisation: generated and reference captions are normalised alike before scoring
(``normalize_caption``: lowercase, every character that is not a letter, digit, underscore or
whitespace replaced by a space, split on whitespace), which stands in for the toolkit's java
PTB tokenizer and its punctuation removal (the java tokenizer itself is not used; it differs
on contractions: ``"don't"`` is ``don t`` here, ``do n't`` there). So references read from raw
text (caption files) and references decoded from tokens (the loaders, which space out
punctuation) give the same scores.

Both metrics are corpus-level (BLEU's counts and CIDEr's document frequencies span all
images), so every rank's captions are gathered and the union is scored on every rank: uneven
shards give the scores of all images.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping

import torch
import torch.distributed as dist
from torch import nn

from openvision3.distributed.process import get_world_size, is_distributed
from openvision3.errors import require
from openvision3.evaluation.reduce import (
    MetricAccumulator,
    evaluating,
    gather_objects_to_rank0,
    model_device,
)

References = str | Callable[[dict], list]


def _references(batch: dict, references: References) -> list[list[str]]:
    refs = references(batch) if callable(references) else batch[references]
    # One reference (str) or several (list of str) per image.
    return [[r] if isinstance(r, str) else list(r) for r in refs]


def _row(batch: dict, i: int) -> dict:
    """Row ``i`` of a batch: tensors and lists indexed, anything else passed through."""
    row = {}
    for name, value in batch.items():
        if (isinstance(value, torch.Tensor) and value.ndim > 0) or isinstance(value, list | tuple):
            row[name] = value[i]
        else:
            row[name] = value
    return row


def normalize_caption(text: str) -> str:
    """Lowercase, punctuation replaced by spaces, single-spaced: ``"A Dog, running."`` ->
    ``"a dog running"`` (a stand-in for the PTB tokenizer, which needs java)."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _gather_corpus(
    generated: list[str], refs: list[list[str]]
) -> tuple[list[str], list[list[str]]]:
    """Every rank's (generated, references), concatenated in rank order, on every rank."""
    if not is_distributed():
        return generated, refs
    shards = [None] * get_world_size()
    dist.all_gather_object(shards, (generated, refs))
    return [g for s in shards for g in s[0]], [r for s in shards for r in s[1]]


def coco_caption_scores(generated: list[str], refs: list[list[str]]) -> dict[str, float | None]:
    """Corpus BLEU-4 and CIDEr-D of captions against their references, over all ranks.

    Args:
        generated: one caption per image (raw text; normalised here).
        refs: one list of at least one reference per image (raw text; normalised here).

    Returns:
        ``{"bleu4": pycocoevalcap Bleu(4)'s corpus Bleu_4, "cider": Cider's corpus CIDEr-D}``,
        both None for an empty corpus (neither is defined there). Call on every rank.
    """
    bleu = require("pycocoevalcap.bleu.bleu", "eval", "caption BLEU-4")
    cider = require("pycocoevalcap.cider.cider", "eval", "caption CIDEr")
    generated, refs = _gather_corpus(generated, refs)
    if len(refs) != len(generated) or any(len(r) == 0 for r in refs):
        raise ValueError("every generated caption needs at least one reference")
    if not generated:
        return {"bleu4": None, "cider": None}
    # The scorers take {image id: [caption, ...]} with exactly one generated caption per id.
    gts = {i: [normalize_caption(t) for t in r] for i, r in enumerate(refs)}
    res = {i: [normalize_caption(g)] for i, g in enumerate(generated)}
    bleus, _ = bleu.Bleu(4).compute_score(gts, res, verbose=0)  # [Bleu_1, ..., Bleu_4]
    return {"bleu4": float(bleus[3]), "cider": float(cider.Cider().compute_score(gts, res)[0])}


class CaptionEvaluator:
    """Generate captions and score them against references.

    Args:
        max_len: generated length limit (None = the caption decoder's default).
        beam_size: 1 = greedy, else beam search.
        num_samples: how many (key, generated, reference) rows to keep for reports (rank 0's
            first ones, then the other ranks' in rank order).
        attributes: optional ``{name: fn(generated_text, row) -> bool}`` where ``row`` is that
            image's slice of the batch (``row["label"]``, ``row["key"]``, ...); each mean is
            reported as ``<name>_accuracy`` (e.g. the synthetic world checks that the caption
            names the main object's colour, its shape, or both).
    """

    def __init__(
        self,
        max_len: int | None = None,
        beam_size: int = 1,
        num_samples: int = 16,
        attributes: Mapping[str, Callable[[str, dict], bool]] | None = None,
    ):
        if beam_size < 1 or num_samples < 0 or (max_len is not None and max_len < 1):
            raise ValueError(
                f"need beam_size >= 1, num_samples >= 0, max_len >= 1 or None; got "
                f"{beam_size}, {num_samples}, {max_len}"
            )
        self.max_len, self.beam_size, self.num_samples = max_len, beam_size, num_samples
        self.attributes = dict(attributes or {})
        self.samples: list[dict] = []

    def run(
        self,
        model: nn.Module,
        batches: Iterable[dict],
        references: References = "caption_text",
    ) -> dict[str, float | int | None]:
        """Evaluate; call on every rank with that rank's batches.

        Args:
            model: has ``caption(images (B, 3, H, W), max_len, beam_size) -> list[str]``.
            batches: dicts with ``images`` (B, 3, H, W) in [-1, 1] (and ``key``).
            references: a batch key holding B reference strings (or B lists of strings), or a
                callable batch -> that list.

        Returns:
            ``{"bleu4", "cider" (``coco_caption_scores``; None without images),
            "<name>_accuracy" for each attribute, "count"}`` over all ranks. ``self.samples``
            holds the kept rows (on rank 0 when distributed).
        """
        acc = MetricAccumulator("generated", *self.attributes)
        generated_all, refs_all, samples = [], [], []
        device = model_device(model)
        with evaluating(model):
            for batch in batches:
                images = batch["images"].to(device)
                generated = model.caption(images, max_len=self.max_len, beam_size=self.beam_size)
                refs = _references(batch, references)
                if len(refs) != len(generated):
                    raise ValueError(f"{len(refs)} references for {len(generated)} images")
                generated_all += generated
                refs_all += refs
                acc.add("generated", torch.ones(len(generated)))
                keys = batch.get("key", [None] * len(generated))
                rows = [_row(batch, i) for i in range(len(generated))] if self.attributes else []
                for name, match in self.attributes.items():
                    hits = [match(g, row) for g, row in zip(generated, rows)]
                    acc.add(name, torch.tensor(hits, dtype=torch.float64))
                for key, g, r in zip(keys, generated, refs):
                    if len(samples) < self.num_samples:
                        samples.append({"key": key, "generated": g, "reference": r[0]})
        acc.all_reduce()
        result = coco_caption_scores(generated_all, refs_all)
        means = acc.compute()
        result.update({f"{name}_accuracy": means[name] for name in self.attributes})
        shards = gather_objects_to_rank0(samples)
        self.samples = (
            [] if shards is None else [s for shard in shards for s in shard][: self.num_samples]
        )
        return {**result, "count": acc.count("generated")}
