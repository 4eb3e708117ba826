"""The one image transform used for training, evaluation and inference, and its inverse.

``build_transform(cfg, train)`` maps an RGB ``PIL.Image`` to a float tensor (3, H, W) in
[-1, 1]; ``to_uint8`` maps such tensors back to uint8 by rounding (truncation would bias every
pixel down by half a level, which shows up in PSNR) and ``to_pil`` to PIL images: every image
this package returns is in [-1, 1], and these two are the only ways back to pixels;
``write_grid`` lays uint8 images out in one file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

RESIZE_POLICIES = ("center_crop", "resize", "pad")
PAD_FILL = (128, 128, 128)  # ~0 in [-1, 1]


@dataclass
class ImageTransformConfig:
    """How an image becomes a square (3, R, R) tensor.

    resize: "center_crop" (short side to R, centre crop), "resize" (squash to R x R) or
    "pad" (long side to R, pad to a square with grey). crop_scale: train-only random
    resized crop area range; (1.0, 1.0) disables it. hflip: train-only flip probability.
    """

    resolution: int = 128
    resize: str = "center_crop"
    crop_scale: tuple[float, float] = (1.0, 1.0)
    hflip: float = 0.0

    def __post_init__(self):
        self.crop_scale = tuple(float(v) for v in self.crop_scale)
        if self.resolution < 1:
            raise ValueError(f"resolution must be >= 1, got {self.resolution}")
        if self.resize not in RESIZE_POLICIES:
            raise ValueError(f"resize must be one of {RESIZE_POLICIES}, got {self.resize!r}")
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale}")
        if not 0.0 <= self.hflip <= 1.0:
            raise ValueError(f"hflip must be in [0, 1], got {self.hflip}")

    def is_random(self, train: bool) -> bool:
        return train and (self.crop_scale != (1.0, 1.0) or self.hflip > 0.0)


class _PadToSquare:
    """Resize the long side to R and pad the short side symmetrically (letterbox)."""

    def __init__(self, resolution: int):
        self.resolution = resolution

    def __call__(self, img: Image.Image) -> Image.Image:
        r = self.resolution
        w, h = img.size
        scale = r / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        img = img.resize((nw, nh), Image.BICUBIC)
        out = Image.new("RGB", (r, r), PAD_FILL)
        out.paste(img, ((r - nw) // 2, (r - nh) // 2))
        return out


def build_transform(cfg: ImageTransformConfig, train: bool):
    """Callable: RGB ``PIL.Image`` -> float32 tensor (3, R, R) in [-1, 1].

    Random parts (crop, flip) only act when ``train``; they draw from torch's global RNG,
    so callers that need reproducibility seed it (the loaders do, per sample).
    """
    r = cfg.resolution
    bicubic = v2.InterpolationMode.BICUBIC
    if train and cfg.crop_scale != (1.0, 1.0):
        geometry = [v2.RandomResizedCrop(r, scale=cfg.crop_scale, interpolation=bicubic)]
    elif cfg.resize == "center_crop":
        geometry = [v2.Resize(r, interpolation=bicubic), v2.CenterCrop(r)]
    elif cfg.resize == "resize":
        geometry = [v2.Resize((r, r), interpolation=bicubic)]
    else:
        geometry = [_PadToSquare(r)]
    flip = [v2.RandomHorizontalFlip(cfg.hflip)] if train and cfg.hflip > 0 else []
    return v2.Compose([*geometry, *flip, pil_to_tensor])


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image (W, H) -> float32 (3, H, W) in [-1, 1]; x = level / 127.5 - 1.

    In numpy: per-sample torch ops on small tensors pay intra-op threading overhead that
    dominates a data worker's time.
    """
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 127.5 - 1.0  # (H, W, 3)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (any shape) -> uint8 in [0, 255], ROUNDED to the nearest level."""
    return ((images.detach().float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> B RGB PIL images (through ``to_uint8``: rounded)."""
    arr = to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3)
    return [Image.fromarray(a) for a in arr]


def write_grid(
    images: np.ndarray,
    path,
    cols: int = 8,
    pad: int = 0,
    fill: int = 255,
    border: bool = False,
) -> None:
    """uint8 (B, H, W, 3) -> one PNG (or any format PIL takes from ``path``'s suffix) of
    ceil(B / cols) rows of ``cols`` images, in order; ``pad`` pixels of grey level ``fill``
    after each image (right and below), and before the first row and column too with
    ``border`` (torchvision's ``make_grid`` layout)."""
    b, h, w, _ = images.shape
    rows, edge = -(-b // cols), pad if border else 0
    canvas = np.full((rows * (h + pad) + edge, cols * (w + pad) + edge, 3), fill, np.uint8)
    for k, img in enumerate(images):
        r, c = divmod(k, cols)
        y, x = edge + r * (h + pad), edge + c * (w + pad)
        canvas[y : y + h, x : x + w] = img
    Image.fromarray(canvas).save(path)


def from_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (any shape) -> float32 in [-1, 1]; exact inverse of ``to_uint8``."""
    return images.float() / 127.5 - 1.0
