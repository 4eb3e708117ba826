"""Run every evaluation the model and the data allow, on the held-out split.

Used by the trainer (at intervals and at the end) and by the demo report. Settings that change
numbers (resolution, image count, decoding, templates) are returned with the metrics.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Collection, Iterator

from torch import nn

from openvision3.data.loader import DataConfig, ImageTextLoader, build_loader
from openvision3.data.synthetic import CLASS_NAMES, COLORS, SHAPES, ZERO_SHOT_TEMPLATES
from openvision3.evaluation.captioning import CaptionEvaluator
from openvision3.evaluation.reconstruction import ReconstructionEvaluator
from openvision3.evaluation.retrieval import RetrievalEvaluator
from openvision3.evaluation.zero_shot import ZeroShotEvaluator
from openvision3.tokenizer import Tokenizer


def _rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def limited(loader: ImageTextLoader, num_images: int, rank: int, world: int) -> Iterator[dict]:
    """This rank's share of the first ``num_images`` images (0 = all), batch by batch."""
    share = None if num_images <= 0 else num_images // world + int(rank < num_images % world)
    seen = 0
    for batch in loader:
        if share is not None and seen >= share:
            return
        b = len(batch["key"])
        take = b if share is None else min(b, share - seen)
        seen += take
        yield {k: v[:take] for k, v in batch.items()} if take < b else batch


def synthetic_caption_match(generated: str, row: dict) -> bool:
    """The caption names the colour and shape of the largest object (``"red circle"``)."""
    return CLASS_NAMES[int(row["label"])] in generated.lower()


def first_word_among(text: str, words: Collection[str]) -> str | None:
    """The first word of ``text`` (lowercased, split at non-letters) that is in ``words``."""
    return next((w for w in re.findall(r"[a-z]+", text.lower()) if w in words), None)


def synthetic_colour_match(generated: str, row: dict) -> bool:
    """The first colour the caption names is the main object's: the world's captions name the
    main (largest) object first, so a caption that names its colour anywhere but first does
    not count (``"a small red circle ..."`` for a blue main object names red first)."""
    colour = CLASS_NAMES[int(row["label"])].split()[0]
    return first_word_among(generated, COLORS) == colour


def synthetic_shape_match(generated: str, row: dict) -> bool:
    """The first shape the caption names is the main object's (as for the colour)."""
    shape = CLASS_NAMES[int(row["label"])].split()[1]
    return first_word_among(generated, SHAPES) == shape


# Caption checks on the synthetic world, reported as caption_<name>_accuracy.
SYNTHETIC_CAPTION_ATTRIBUTES = {
    "attribute": synthetic_caption_match,
    "colour": synthetic_colour_match,
    "shape": synthetic_shape_match,
}


def evaluate_model(
    model: nn.Module,
    data: DataConfig,
    cfg,
    resolution: int,
    out_dir: str | None = None,
) -> dict:
    """Evaluate ``model`` (unwrapped, eval mode) on ``data``'s val split at ``resolution``.

    ``cfg`` is an ``EvalConfig``. Returns ``{"metrics": {...}, "settings": {...},
    "captions": [...]}``; with ``out_dir``, also writes the per-image reconstruction CSV, the
    best/worst reconstruction grid and the caption samples there.
    """
    rank, world = _rank_world()

    def batches() -> Iterator[dict]:
        loader = build_loader(
            data, "val", resolution, cfg.batch_size, rank=rank, world_size=world, train=False
        )
        return limited(loader, cfg.num_images, rank, world)

    probe = build_loader(
        data, "val", resolution, cfg.batch_size, rank=rank, world_size=world, train=False
    )
    classnames = probe.class_names
    metrics: dict = {}
    settings = {
        "split": "val",
        "resolution": resolution,
        "num_images": cfg.num_images,
        "source": data.source,
        "world_size": world,
    }
    captions: list[dict] = []
    has = lambda part: getattr(model, part, None) is not None  # noqa: E731
    if cfg.zero_shot and classnames and has("text"):
        synthetic = data.source == "synthetic"
        templates = ZERO_SHOT_TEMPLATES if synthetic else ["a photo of a {}."]
        k = min(5, len(classnames))
        zs = ZeroShotEvaluator(
            classnames, templates, topk=(1, k), tokenizer=Tokenizer(model.cfg.text.context_length)
        )
        metrics.update({f"zero_shot_{n}": v for n, v in zs.run(model, batches()).items()})
        metrics["zero_shot_chance"] = 1.0 / len(classnames)
        settings["zero_shot"] = {"classes": len(classnames), "templates": templates}
    if cfg.retrieval and has("text"):
        ret = RetrievalEvaluator(ks=(1, 5, 10))
        metrics.update({f"retrieval_{n}": v for n, v in ret.run(model, batches()).items()})
        settings["retrieval"] = {"text": "alt text (batch 'text')", "ks": [1, 5, 10]}
    if cfg.reconstruction and has("decoder") and has("vae"):
        rec = ReconstructionEvaluator(keep=8)
        metrics.update({f"rec_{n}": v for n, v in rec.run(model, batches()).items()})
        settings["reconstruction"] = {
            "psnr": "uint8-rounded, data range 255",
            "ssim": "gaussian window 11, sigma 1.5",
        }
        if out_dir:
            rec.write_csv(os.path.join(out_dir, "reconstruction.csv"))
            rec.save_grid(os.path.join(out_dir, "reconstructions.png"), n=8)
    if cfg.captioning and has("captioner"):
        tok = Tokenizer()
        refs = lambda batch: tok.decode_batch(batch["caption"])  # noqa: E731
        attributes = SYNTHETIC_CAPTION_ATTRIBUTES if data.source == "synthetic" else None
        cap = CaptionEvaluator(beam_size=1, num_samples=cfg.caption_samples, attributes=attributes)
        metrics.update({f"caption_{n}": v for n, v in cap.run(model, batches(), refs).items()})
        settings["captioning"] = {
            "decoding": "greedy",
            "attributes": "colour / shape: the first colour / shape word named is the main "
            "object's; attribute: its 'colour shape' named anywhere"
            if attributes
            else None,
            "bleu": "torchmetrics BLEUScore n_gram=4",
            "cider": "pycocoevalcap CIDEr-D, lowercase + punctuation-stripped tokens"
            if metrics.get("caption_cider") is not None
            else "not computed (pycocoevalcap not installed)",
        }
        captions = cap.samples
    results = {"metrics": metrics, "settings": settings, "captions": captions}
    if out_dir and rank == 0:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
    return results
