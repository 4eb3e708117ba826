"""Data: robust decoding, the one transform, resumable loaders over shards, folders and caches."""

from openvision3.data.images import UnreadableImageError, decode_image
from openvision3.data.loader import DataConfig, ImageTextLoader, build_loader
from openvision3.data.transforms import (
    ImageTransformConfig,
    build_transform,
    from_uint8,
    to_pil,
    to_uint8,
)

__all__ = [
    "DataConfig",
    "ImageTextLoader",
    "ImageTransformConfig",
    "UnreadableImageError",
    "build_loader",
    "build_transform",
    "decode_image",
    "from_uint8",
    "to_pil",
    "to_uint8",
]
