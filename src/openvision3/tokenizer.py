"""CLIP BPE tokenizer (open_clip's ``SimpleTokenizer``; the vocabulary ships in its wheel).

Shared by the text towers (``models/``), the data pipeline and inference, so it lives at
the package root rather than in ``data/`` (models must not import data).
Layout of a row: ``[SOT, tok..., EOT, PAD=0, ...]``; over-long texts are cut and keep EOT.
"""

from __future__ import annotations

import functools

import torch

SOT_ID = 49406
EOT_ID = 49407
PAD_ID = 0
VOCAB_SIZE = 49408


@functools.lru_cache(maxsize=1)
def _simple_tokenizer():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


class Tokenizer:
    """Callable: ``tok(texts, context_length) -> LongTensor (B, L)``; ``decode(ids) -> str``."""

    sot_id = SOT_ID
    eot_id = EOT_ID
    pad_id = PAD_ID
    vocab_size = VOCAB_SIZE

    def __init__(self, context_length: int = 80):
        self.context_length = context_length

    def __call__(self, texts: str | list[str], context_length: int | None = None) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        return _simple_tokenizer()(
            list(texts), context_length=context_length or self.context_length
        )

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        """Token ids (with or without SOT/EOT/PAD) -> text; stops at the first EOT."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        out = []
        for i in ids:
            if i == EOT_ID:
                break
            if i in (SOT_ID, PAD_ID):
                continue
            out.append(int(i))
        return _simple_tokenizer().decode(out).strip()

    def decode_batch(self, ids: torch.Tensor) -> list[str]:
        return [self.decode(row) for row in ids]
