"""Robust image decoding: any file or bytes -> RGB ``PIL.Image``, or a clear ``UnreadableImageError``.

Web-scale data holds CMYK JPEGs, 16-bit PNGs, palette images with transparency, truncated
files and decompression bombs. Every one of them either comes out as 8-bit RGB (transparency
composited on white, 16 bits scaled rather than clipped) or raises ``UnreadableImageError``
naming the file, so a loader can skip and count it instead of crashing.
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps

# Above this many pixels an image is refused (a 16k x 16k RGB image already needs 768 MiB).
# JPEGs are first reduced at decode time with ``Image.draft``, which costs nothing.
MAX_PIXELS = 16_384 * 16_384
# Large JPEGs are reduced (by 2, 4 or 8) to about this many pixels before decoding, if no
# ``draft_size`` is given.
DRAFT_PIXELS = 4096 * 4096


class UnreadableImageError(ValueError):
    """An image that cannot be decoded (corrupt, truncated, not an image, too large)."""


def _open(data: bytes | str | os.PathLike) -> Image.Image:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return Image.open(io.BytesIO(bytes(data)))
    return Image.open(data)


def _draft(img: Image.Image, draft_size: int | None) -> None:
    """Let the JPEG decoder downscale by 2/4/8 while keeping the short side >= draft_size."""
    if img.format != "JPEG":
        return
    w, h = img.size
    if draft_size is not None:
        scale = draft_size / min(w, h)
    elif w * h > DRAFT_PIXELS:
        scale = (DRAFT_PIXELS / (w * h)) ** 0.5
    else:
        return
    if scale < 1.0:
        # draft keeps both sides >= the requested size, so the short side stays >= draft_size.
        img.draft(img.mode if img.mode in ("RGB", "L") else None, (int(w * scale), int(h * scale)))


def _high_bit_depth_to_l(img: Image.Image) -> Image.Image:
    """16-bit or 32-bit grayscale -> 8-bit ``L`` by scaling (``convert("L")`` would clip)."""
    arr = np.asarray(img).astype(np.float64)
    if img.mode == "F":
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        peak = 1.0 if hi <= 1.0 and lo >= 0.0 else 255.0 if hi <= 255.0 else hi
        scaled = np.nan_to_num(arr) / peak * 255.0
    else:
        # Integer data: 16-bit images hold 0..65535 (mode I;16* or I as Pillow opens them).
        scaled = arr / 257.0 if arr.max(initial=0) > 255 or img.mode.startswith("I;16") else arr
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")


def _exif_transpose(img: Image.Image) -> Image.Image:
    try:
        if img.getexif().get(0x0112, 1) != 1:  # EXIF orientation tag
            return ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block must not lose an otherwise good image
        pass
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB; transparency is composited on white."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        return _high_bit_depth_to_l(img).convert("RGB")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode in ("P", "L", "RGB") and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    # CMYK (Pillow undoes Adobe's inverted CMYK at decode), YCbCr, LAB, HSV, L, 1, P.
    return img.convert("RGB")


def decode_image(
    data: bytes | str | os.PathLike,
    name: str | None = None,
    *,
    max_pixels: int = MAX_PIXELS,
    draft_size: int | None = None,
) -> Image.Image:
    """Bytes or a path -> RGB PIL image (W, H), fully decoded.

    ``name`` (a file name or sample key) is used in error messages; ``draft_size`` lets big
    JPEGs decode at a reduced scale with the short side still >= ``draft_size``.
    Raises ``UnreadableImageError`` for corrupt, truncated, non-image or over-large input.
    """
    label = (
        name
        if name is not None
        else (os.fspath(data) if isinstance(data, (str, os.PathLike)) else "<bytes>")
    )
    try:
        with warnings.catch_warnings():
            # Pillow warns above MAX_IMAGE_PIXELS; we apply our own limit below instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = _open(data)
            _draft(img, draft_size)
            if img.width * img.height > max_pixels:
                raise UnreadableImageError(
                    f"image {label!r} is too large: {img.width}x{img.height} pixels "
                    f"(limit {max_pixels})"
                )
            img.load()  # decode now: truncated data fails here, not later in a transform
            img = _exif_transpose(img)
            return to_rgb(img)
    except UnreadableImageError:
        raise
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
        raise UnreadableImageError(f"cannot decode image {label!r}: {type(e).__name__}: {e}") from e
