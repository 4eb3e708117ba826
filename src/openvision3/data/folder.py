"""Image-folder source: images found recursively, texts from an optional JSONL/CSV captions file.

Laid out as ImageNet (``root/<class>/<image>``) the sub-folder names become labels (sorted,
as torchvision's ImageFolder does) and, for images without a caption, the class name is the
alt text. With a captions file, the samples are exactly its rows, in file order; a row whose
image is missing becomes a bad sample at load time (counted, not silently dropped).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

from openvision3.errors import DataNotFoundError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"}
)


def read_captions(path: str | os.PathLike) -> list[dict]:
    """JSONL or CSV rows with a ``file`` column and ``alt_text`` and/or ``caption``."""
    path = Path(path)
    if path.suffix.lower() in (".jsonl", ".json"):
        with open(path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    elif path.suffix.lower() in (".csv", ".tsv"):
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ","))
    else:
        raise ValueError(f"captions file must be .jsonl or .csv, got {str(path)!r}")
    for i, row in enumerate(rows):
        if "file" not in row or not ({"alt_text", "caption"} & set(row)):
            raise ValueError(
                f"{path}: row {i} needs a 'file' column and 'alt_text' and/or 'caption', "
                f"got columns {sorted(row)}"
            )
    return rows


class ImageFolderSource:
    """Map-style source: ``len(src)``, ``src.load(i) -> dict(image=path, alt_text, caption, label, key)``."""

    def __init__(self, root: str | os.PathLike, captions_file: str = "", split: str | None = None):
        root = Path(root)
        if split and (root / split).is_dir():
            root = root / split  # ImageNet-style root/{train,val}/...
        if not root.is_dir():
            raise DataNotFoundError(f"--data.path: image folder {str(root)!r} does not exist")
        self.root = root
        files = sorted(
            p.relative_to(root).as_posix()
            for p in root.rglob("*")
            if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        )
        self.texts: dict[str, tuple[str, str]] = {}
        if captions_file:
            rows = read_captions(captions_file)
            self.texts = {
                str(r["file"]): (str(r.get("alt_text") or ""), str(r.get("caption") or ""))
                for r in rows
            }
            uncaptioned = len(set(files) - set(self.texts))
            if uncaptioned:
                log.info(
                    "%d images under %s have no caption row and are not used", uncaptioned, root
                )
            files = list(self.texts)
        if not files:
            raise ValueError(f"no images found under {str(root)!r}")
        self.files = files
        # ImageNet layout: every image sits exactly one folder below the root.
        parts = [f.split("/") for f in files]
        if all(len(p) == 2 for p in parts):
            self.class_names: list[str] | None = sorted({p[0] for p in parts})
            index = {c: i for i, c in enumerate(self.class_names)}
            self.labels: list[int] | None = [index[p[0]] for p in parts]
        else:
            self.class_names, self.labels = None, None

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> dict:
        rel = self.files[index]
        alt, caption = self.texts.get(rel, ("", ""))
        label = self.labels[index] if self.labels is not None else None
        if not alt and not caption and label is not None:
            alt = self.class_names[label].replace("_", " ")
        return {
            "image": str(self.root / rel),
            "alt_text": alt,
            "caption": caption,
            "label": label,
            "key": rel,
        }
