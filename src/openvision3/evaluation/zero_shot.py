"""Zero-shot classification with the contrastive towers (the CLIP recipe, Radford et al. 2021).

Each class is represented by the renormalised mean of its L2-normalised prompt embeddings; an
image is assigned the classes whose weights have the highest cosine similarity.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from openvision3.evaluation.reduce import (
    MetricAccumulator,
    all_reduce_sum,
    evaluating,
    model_device,
)
from openvision3.tokenizer import Tokenizer

Template = str | Callable[[str], str]


def imagenet_metadata() -> tuple[list[str], list[Template]]:
    """open_clip's ImageNet-1k class names (1000) and OpenAI's 80 prompt templates."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

    return list(IMAGENET_CLASSNAMES), list(OPENAI_IMAGENET_TEMPLATES)


def _fill(template: Template, classname: str) -> str:
    return template.format(classname) if isinstance(template, str) else template(classname)


@torch.no_grad()
def build_classifier(
    model: nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    classnames: Sequence[str],
    templates: Sequence[Template],
    batch_size: int = 256,
) -> torch.Tensor:
    """Zero-shot class weights.

    (open_clip's ``build_zero_shot_classifier`` calls ``model.encode_text`` and returns the
    transpose, so the same recipe is written here against ``embed_text``.)

    Args:
        model: has ``embed_text(ids (B, L), normalize=True) -> (B, E)``.
        tokenizer: list of str -> ids (B, L), e.g. ``openvision3.tokenizer.Tokenizer()``.
        classnames: K class names.
        templates: T prompts, ``"a photo of a {}."`` strings or callables name -> prompt.
        batch_size: prompts per text forward.

    Returns:
        (K, E) unit-norm class embeddings, on the model's device.
    """
    if not classnames or not templates:
        raise ValueError("need at least one class name and one template")
    texts = [_fill(t, c) for c in classnames for t in templates]  # class-major: (K * T)
    device = model_device(model)
    chunks = [
        model.embed_text(tokenizer(texts[i : i + batch_size]).to(device), normalize=True)
        for i in range(0, len(texts), batch_size)
    ]
    emb = torch.cat(chunks).float().reshape(len(classnames), len(templates), -1)  # (K, T, E)
    return F.normalize(emb.mean(dim=1), dim=-1)  # (K, E)


def _context_length(model: nn.Module) -> int:
    text_cfg = getattr(getattr(model, "cfg", None), "text", None)
    return getattr(text_cfg, "context_length", 80)


class ZeroShotEvaluator:
    """Top-k zero-shot accuracy over an iterable of labelled batches.

    Args:
        classnames: K class names; batch ``label`` indexes them.
        templates: prompt templates (strings with ``{}`` or callables).
        topk: the k of each reported ``top{k}`` accuracy; each must be <= K.
        tokenizer: prompt tokenizer; default ``Tokenizer`` at the model's text context length
            (``model.cfg.text.context_length``, else 80).
    """

    def __init__(
        self,
        classnames: Sequence[str],
        templates: Sequence[Template],
        topk: Sequence[int] = (1, 5),
        tokenizer: Callable[[list[str]], torch.Tensor] | None = None,
    ):
        if not topk or min(topk) < 1 or max(topk) > len(classnames):
            raise ValueError(f"topk {tuple(topk)} must lie in [1, {len(classnames)} classes]")
        self.classnames, self.templates = list(classnames), list(templates)
        self.topk = tuple(topk)
        self.tokenizer = tokenizer
        self.per_class: list[float] = []  # top-1 accuracy of each class (NaN: no image)

    def run(self, model: nn.Module, batches: Iterable[dict]) -> dict[str, float]:
        """Evaluate; call on every rank with that rank's batches.

        The classifier is rebuilt on each call (the text tower changes during training).

        Args:
            model: has ``embed_image`` and ``embed_text`` (both normalised by default).
            batches: dicts with ``images`` (B, 3, H, W) in [-1, 1] and ``label`` (B,) long.

        Returns:
            ``{"top1", "top5", ..., "count"}``: accuracies over every image on every rank.
            ``self.per_class`` then holds each class's top-1 accuracy.
        """
        acc = MetricAccumulator(*(f"top{k}" for k in self.topk))
        k_classes = len(self.classnames)
        class_hits = torch.zeros(k_classes, dtype=torch.float64)  # (K,) top-1 hits per class
        class_count = torch.zeros(k_classes, dtype=torch.float64)  # (K,)
        device = model_device(model)
        with evaluating(model):
            tokenizer = self.tokenizer or Tokenizer(_context_length(model))
            weights = build_classifier(model, tokenizer, self.classnames, self.templates)
            for batch in batches:
                emb = model.embed_image(batch["images"].to(device), normalize=True)  # (B, E)
                logits = emb.float() @ weights.T  # (B, K)
                pred = logits.topk(max(self.topk), dim=-1).indices  # (B, kmax), best first
                hit = pred == batch["label"].to(device)[:, None]  # (B, kmax)
                for k in self.topk:
                    acc.add(f"top{k}", hit[:, :k].any(dim=-1))
                labels = batch["label"].cpu()
                class_count += torch.bincount(labels, minlength=k_classes).double()
                class_hits += torch.bincount(
                    labels, weights=hit[:, 0].cpu().double(), minlength=k_classes
                )
        acc.all_reduce()
        class_hits, class_count = all_reduce_sum(class_hits), all_reduce_sum(class_count)
        self.per_class = (class_hits / class_count).tolist()  # 0/0 -> NaN
        return {**acc.compute(), "count": acc.count(f"top{self.topk[0]}")}
