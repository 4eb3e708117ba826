"""Captioning quality of the understanding branch: corpus BLEU-4 and CIDEr-D of ``model.caption``.

Generated and reference captions are normalised alike before every metric
(``normalize_caption``: lowercase, punctuation replaced by spaces, whitespace-split), as the
COCO caption toolkit does with its PTB tokenizer and punctuation removal (the java tokenizer
itself is not used). So references read from raw text (caption files) and references decoded
from tokens (the loaders, which space out punctuation) give the same scores.

BLEU comes from torchmetrics (``BLEUScore``, n_gram=4, no smoothing); its n-gram match and
length counters are sums, so they are all-reduced across ranks before the score is formed and
uneven shards give the corpus BLEU of all images. CIDEr (CIDEr-D, Vedantam et al. 2015) is
pycocoevalcap's ``Cider`` scorer; ``None`` when pycocoevalcap is not importable.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import nn

from openvision3.distributed.process import get_world_size, is_distributed
from openvision3.evaluation.reduce import (
    MetricAccumulator,
    all_reduce_sum,
    evaluating,
    gather_objects_to_rank0,
    model_device,
)

if TYPE_CHECKING:
    from torchmetrics.text import BLEUScore

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


def _cider(generated: list[str], refs: list[list[str]]) -> float | None:
    """Corpus CIDEr-D over all ranks (of normalised captions), or None when pycocoevalcap is
    not importable."""
    try:  # optional; not a dependency
        from pycocoevalcap.cider.cider import Cider
    except ImportError:
        return None
    if is_distributed():  # CIDEr's IDF is corpus-wide: score the union, on every rank
        shards = [None] * get_world_size()
        dist.all_gather_object(shards, (generated, refs))
        generated = [g for shard in shards for g in shard[0]]
        refs = [r for shard in shards for r in shard[1]]
    gts = {i: [normalize_caption(t) for t in r] for i, r in enumerate(refs)}
    res = {i: [normalize_caption(g)] for i, g in enumerate(generated)}
    return float(Cider().compute_score(gts, res)[0])


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
            ``{"bleu4", "cider" (None without pycocoevalcap), "<name>_accuracy" for each
            attribute, "count"}`` over all ranks. ``self.samples`` holds the kept rows (on rank 0 when distributed).
        """
        from openvision3.errors import require

        text_metrics = require("torchmetrics.text", "eval", "caption BLEU")  # lazy: a slow import

        acc = MetricAccumulator("generated", *self.attributes)
        bleu = text_metrics.BLEUScore(n_gram=4, sync_on_compute=False)  # synced below, by us
        generated_all, refs_all, samples = [], [], []
        device = model_device(model)
        with evaluating(model):
            for batch in batches:
                images = batch["images"].to(device)
                generated = model.caption(images, max_len=self.max_len, beam_size=self.beam_size)
                refs = _references(batch, references)
                if len(refs) != len(generated):
                    raise ValueError(f"{len(refs)} references for {len(generated)} images")
                words = [normalize_caption(g) for g in generated]
                ref_words = [[normalize_caption(r) for r in rs] for rs in refs]
                bleu.update(words, ref_words)
                generated_all += words
                refs_all += ref_words
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
        result = {"bleu4": self._reduced_bleu(bleu), "cider": _cider(generated_all, refs_all)}
        means = acc.compute()
        result.update({f"{name}_accuracy": means[name] for name in self.attributes})
        shards = gather_objects_to_rank0(samples)
        self.samples = (
            [] if shards is None else [s for shard in shards for s in shard][: self.num_samples]
        )
        return {**result, "count": acc.count("generated")}

    @staticmethod
    def _reduced_bleu(bleu: BLEUScore) -> float:
        # BLEU's states (n-gram numerators/denominators, candidate/reference lengths) are sums.
        for name, state in bleu.metric_state.items():
            setattr(bleu, name, all_reduce_sum(state))
        with warnings.catch_warnings():
            # A rank that got no batch never called update(); its reduced states are valid.
            warnings.filterwarnings("ignore", message=".*before the ``update`` method.*")
            return float(bleu.compute())
