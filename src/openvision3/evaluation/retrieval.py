"""Image-text retrieval recall@k with the contrastive towers.

Retrieval ranks every query against the WHOLE gallery, so it cannot be summed shard by shard:
the embeddings of all ranks are gathered to every rank (sizes first, then padded shards, then
trimmed, so uneven shards are exact) and every rank computes the same recalls. Embeddings are
small ((N, E) floats: 5k COCO images and 25k captions at E = 768 are ~90 MB in float32).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from openvision3.evaluation.reduce import all_gather_rows, evaluating, model_device


def _hits_within(ranks: torch.Tensor, ks: Sequence[int]) -> dict[int, int]:
    return {k: int((ranks < k).sum().item()) for k in ks}


@torch.no_grad()
def retrieval_recall(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    text_to_image: torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
    chunk: int = 1024,
) -> dict[str, float]:
    """Recall@k both ways, for images with one or more captions.

    A query's rank is the number of gallery items scoring STRICTLY higher than its best match,
    so ties count in the query's favour. image->text: a hit if any of the image's captions
    ranks within k. text->image: a hit if the caption's image ranks within k.

    Args:
        image_emb: (Ni, E) unit-norm image embeddings.
        text_emb: (Nt, E) unit-norm text embeddings.
        text_to_image: (Nt,) long, the image index of each text; every image needs >= 1 text.
        ks: the k of each recall.
        chunk: queries scored at once (bounds the (chunk, N) similarity block).

    Returns:
        ``{"i2t_r{k}": ..., "t2i_r{k}": ...}``, fractions in [0, 1].
    """
    ni, nt = image_emb.shape[0], text_emb.shape[0]
    text_to_image = text_to_image.to(image_emb.device)
    if text_to_image.shape != (nt,):
        raise ValueError(f"text_to_image must have shape ({nt},), got {tuple(text_to_image.shape)}")
    if ni == 0 or torch.bincount(text_to_image, minlength=ni).min() == 0:
        raise ValueError("every image needs at least one caption")
    image_emb, text_emb = image_emb.float(), text_emb.float()
    i2t = {k: 0 for k in ks}
    owner = text_to_image[None, :]  # (1, Nt)
    for start in range(0, ni, chunk):
        sim = image_emb[start : start + chunk] @ text_emb.T  # (b, Nt)
        rows = torch.arange(start, start + sim.shape[0], device=sim.device)[:, None]
        best = sim.masked_fill(owner != rows, float("-inf")).amax(dim=1, keepdim=True)  # (b, 1)
        for k, n in _hits_within((sim > best).sum(dim=1), ks).items():
            i2t[k] += n
    t2i = {k: 0 for k in ks}
    for start in range(0, nt, chunk):
        sim = text_emb[start : start + chunk] @ image_emb.T  # (b, Ni)
        own = sim.gather(1, text_to_image[start : start + chunk, None])  # (b, 1)
        for k, n in _hits_within((sim > own).sum(dim=1), ks).items():
            t2i[k] += n
    return {
        **{f"i2t_r{k}": i2t[k] / ni for k in ks},
        **{f"t2i_r{k}": t2i[k] / nt for k in ks},
    }


class RetrievalEvaluator:
    """Recall@k between images and their batch ``text`` (one caption per image).

    Args:
        ks: the k of each reported recall.
    """

    def __init__(self, ks: Sequence[int] = (1, 5, 10)):
        if not ks or min(ks) < 1:
            raise ValueError(f"ks must be positive integers, got {tuple(ks)}")
        self.ks = tuple(ks)

    def run(self, model: nn.Module, batches: Iterable[dict]) -> dict[str, float]:
        """Evaluate; call on every rank with that rank's batches (all ranks get the result).

        Args:
            model: has ``embed_image`` and ``embed_text`` (both normalised by default).
            batches: dicts with ``images`` (B, 3, H, W) in [-1, 1] and ``text`` (B, L) ids.

        Returns:
            ``{"i2t_r1", ..., "t2i_r1", ..., "count"}`` over the images of all ranks.
        """
        device = model_device(model)
        images, texts = [], []
        with evaluating(model):
            for batch in batches:
                images.append(model.embed_image(batch["images"].to(device), normalize=True))
                texts.append(model.embed_text(batch["text"].to(device), normalize=True))
        image_emb = _concat(images, device)
        text_emb = _concat(texts, device)
        # Gathered in rank order; text i belongs to image i on every rank, hence globally too.
        image_emb, text_emb = all_gather_rows(image_emb), all_gather_rows(text_emb)
        n = image_emb.shape[0]
        result = retrieval_recall(image_emb, text_emb, torch.arange(n, device=device), self.ks)
        return {**result, "count": n}


def _concat(chunks: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    # A rank without batches still joins the gather, with zero rows of the right width.
    if chunks:
        return torch.cat(chunks).float()
    return torch.zeros((0, 0), device=device)


class MultiCaptionRetrievalEvaluator:
    """Recall@k between images and ALL their reference captions (COCO / Flickr protocol: 5k
    images with ~5 captions each; an image query hits if any of its captions ranks within k).

    Args:
        tokenizer: list of str -> ids (B, L), e.g. ``Tokenizer(model.cfg.text.context_length)``.
        ks: the k of each reported recall.
    """

    def __init__(self, tokenizer, ks: Sequence[int] = (1, 5, 10)):
        if not ks or min(ks) < 1:
            raise ValueError(f"ks must be positive integers, got {tuple(ks)}")
        self.tokenizer, self.ks = tokenizer, tuple(ks)

    def run(self, model: nn.Module, batches: Iterable[dict]) -> dict[str, float]:
        """Evaluate; call on every rank with that rank's batches (all ranks get the result).

        Args:
            model: has ``embed_image`` and ``embed_text`` (both normalised by default).
            batches: dicts with ``images`` (B, 3, H, W) in [-1, 1], ``index`` (B,) long global
                image indices (distinct over all ranks) and ``captions`` (B lists of str).

        Returns:
            ``{"i2t_r1", ..., "t2i_r1", ..., "count", "captions"}`` over all ranks.
        """
        device = model_device(model)
        images, index, texts, owner = [], [], [], []
        with evaluating(model):
            for batch in batches:
                images.append(model.embed_image(batch["images"].to(device), normalize=True))
                index.append(batch["index"].to(device))
                flat = [c for caps in batch["captions"] for c in caps]
                texts.append(model.embed_text(self.tokenizer(flat).to(device), normalize=True))
                owner += [
                    int(i) for i, caps in zip(batch["index"], batch["captions"]) for _ in caps
                ]
        image_emb = all_gather_rows(_concat(images, device))
        text_emb = all_gather_rows(_concat(texts, device))
        local_index = torch.cat(index) if index else torch.zeros(0, dtype=torch.long)
        image_index = all_gather_rows(local_index.to(device))  # (Ni,) global ids
        text_owner = all_gather_rows(torch.tensor(owner, dtype=torch.long, device=device))
        # Global ids -> rows of the gathered image matrix.
        position = torch.full((int(image_index.max()) + 1,), -1, dtype=torch.long, device=device)
        position[image_index] = torch.arange(len(image_index), device=device)
        result = retrieval_recall(image_emb, text_emb, position[text_owner], self.ks)
        return {**result, "count": len(image_index), "captions": len(text_owner)}
