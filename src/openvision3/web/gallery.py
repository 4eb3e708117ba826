"""The small gallery of ``ov3 serve``: example inputs and the pool for nearest neighbours.

By default, held-out scenes of the synthetic world (the demo model's data), written as PNG
files into a folder the app owns; or the images of a folder the user names. Gradio serves
the gallery's folder and nothing else outside its own upload cache.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from openvision3.errors import ConfigError

SYNTHETIC_IMAGES = 16
MAX_FOLDER_IMAGES = 64


@dataclass
class Gallery:
    """G images with a caption each, and their files under ``root``."""

    root: Path
    paths: list[Path]
    images: list[Image.Image]  # RGB
    captions: list[str]

    def __len__(self) -> int:
        return len(self.paths)


def synthetic_gallery(
    root: str | os.PathLike, resolution: int, count: int = SYNTHETIC_IMAGES
) -> Gallery:
    """Render the first ``count`` validation scenes of the synthetic world into ``root``."""
    from openvision3.data.synthetic.world import SyntheticWorld

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    world = SyntheticWorld()
    paths, images, captions = [], [], []
    for i in range(count):
        sample = world.sample("val", i, resolution)
        image = Image.fromarray(sample["image"])
        path = root / f"{sample['key']}.png"
        image.save(path)
        paths.append(path)
        images.append(image)
        captions.append(sample["alt_text"])
    return Gallery(root, paths, images, captions)


def folder_gallery(root: str | os.PathLike, limit: int = MAX_FOLDER_IMAGES) -> Gallery:
    """The first ``limit`` readable images directly in ``root`` (sorted); the caption of each
    is its file name without extension."""
    from openvision3.data.folder import IMAGE_EXTENSIONS
    from openvision3.data.images import UnreadableImageError, decode_image

    root = Path(root).resolve()
    if not root.is_dir():
        raise ConfigError(f"--gallery {str(root)!r} is not a folder")
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    paths, images, captions = [], [], []
    for path in files:
        try:
            images.append(decode_image(path))
        except UnreadableImageError:
            continue
        paths.append(path)
        captions.append(path.stem)
        if len(paths) == limit:
            break
    if not paths:
        raise ConfigError(f"--gallery {str(root)!r} holds no readable image")
    return Gallery(root, paths, images, captions)
