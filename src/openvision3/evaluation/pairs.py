"""Image-caption evaluation sets: readers for the common annotation files and a sharded loader.

Formats (picked from the content):
  - Karpathy splits (COCO / Flickr30k): ``{"images": [{"filename", "filepath", "split",
    "sentences": [{"raw": ...}, ...]}, ...]}``; images at ``images_root/filepath/filename``;
  - COCO's own captions file (``captions_val2017.json``): ``{"images": [{"id",
    "file_name"}], "annotations": [{"image_id", "caption"}]}``; images at
    ``images_root/file_name``;
  - JSONL, one ``{"image": path, "captions": [...]}`` (or ``"caption": str``) per line; a
    relative path is taken from ``images_root`` (default: the file's folder).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from openvision3.data.images import decode_image
from openvision3.data.transforms import ImageTransformConfig, build_transform


@dataclass
class PairsConfig:
    """An image-caption set for reconstruction, retrieval and captioning.

    annotations: Karpathy JSON, COCO captions JSON or JSONL ("" = use the `data` loader's
    texts). images_root: folder the image paths are relative to. split: Karpathy split to keep
    ("test" for the 5k COCO / 1k Flickr protocol; "" = all rows).
    """

    annotations: str = ""  # Karpathy JSON, COCO captions JSON or JSONL ("" = the data's texts)
    images_root: str = ""  # folder the image paths are relative to
    split: str = "test"  # Karpathy split to keep (test: the 5k COCO / 1k Flickr protocol; "" = all)

    def __post_init__(self):
        if self.annotations and not os.path.isfile(self.annotations):
            raise ValueError(f"annotations file {self.annotations!r} does not exist")


@dataclass(frozen=True)
class CaptionedImage:
    path: str
    captions: tuple[str, ...]
    key: str


def _karpathy(data: dict, root: str, split: str) -> list[CaptionedImage]:
    rows = []
    for img in data["images"]:
        if split and img.get("split") != split:
            continue
        rel = os.path.join(img.get("filepath", ""), img["filename"])
        caps = tuple(s["raw"].strip() for s in img["sentences"])
        rows.append(CaptionedImage(os.path.join(root, rel), caps, rel))
    return rows


def _coco(data: dict, root: str) -> list[CaptionedImage]:
    caps: dict[int, list[str]] = {}
    for a in data["annotations"]:
        caps.setdefault(a["image_id"], []).append(a["caption"].strip())
    images = sorted(data["images"], key=lambda i: i["id"])
    return [
        CaptionedImage(os.path.join(root, i["file_name"]), tuple(caps[i["id"]]), i["file_name"])
        for i in images
        if i["id"] in caps
    ]


def _jsonl(path: str, root: str) -> list[CaptionedImage]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f):
            if not line.strip():
                continue
            row = json.loads(line)
            caps = row.get("captions") or ([row["caption"]] if row.get("caption") else [])
            if "image" not in row or not caps:
                raise ValueError(
                    f"{path}: line {n + 1} needs 'image' and 'captions' (or 'caption')"
                )
            rows.append(
                CaptionedImage(
                    os.path.join(root, row["image"]), tuple(c.strip() for c in caps), row["image"]
                )
            )
    return rows


def read_pairs(
    annotations: str, images_root: str = "", split: str = "test"
) -> list[CaptionedImage]:
    """Every image of the set with its captions, in a fixed order (see the module docstring)."""
    root = images_root or os.path.dirname(os.path.abspath(annotations))
    if annotations.endswith(".jsonl"):
        rows = _jsonl(annotations, root)
    else:
        with open(annotations, encoding="utf-8") as f:
            data = json.load(f)
        if isinstance(data, dict) and "annotations" in data:
            rows = _coco(data, root)
        elif isinstance(data, dict) and "images" in data:
            rows = _karpathy(data, root, split)
        else:
            raise ValueError(
                f"{annotations}: not a Karpathy ('images' with 'sentences') or COCO "
                "('images' + 'annotations') captions file; JSONL files must end in .jsonl"
            )
    if not rows:
        raise ValueError(f"{annotations}: no images (split={split!r})")
    return rows


def pair_batches(
    pairs: list[CaptionedImage],
    resolution: int,
    batch_size: int,
    resize: str = "center_crop",
    rank: int = 0,
    world_size: int = 1,
    num_images: int = 0,
) -> Iterator[dict]:
    """This rank's share (images r, r + world, ... of the first ``num_images``; 0 = all).

    Yields dicts: ``images`` (B, 3, R, R) in [-1, 1], ``index`` (B,) long global indices,
    ``captions`` (B lists of str), ``key`` (B str).
    """
    transform = build_transform(ImageTransformConfig(resolution, resize), train=False)
    n = len(pairs) if num_images <= 0 else min(num_images, len(pairs))
    mine = list(range(rank, n, world_size))
    for start in range(0, len(mine), batch_size):
        idx = mine[start : start + batch_size]
        rows = [pairs[i] for i in idx]
        images = [transform(decode_image(r.path, r.key, draft_size=resolution)) for r in rows]
        yield {
            "images": torch.stack(images),
            "index": torch.tensor(idx, dtype=torch.long),
            "captions": [list(r.captions) for r in rows],
            "key": [r.key for r in rows],
        }
