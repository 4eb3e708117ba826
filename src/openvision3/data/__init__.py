"""Data: synthetic image-caption world, robust decoding, the one transform, resumable loaders."""

from openvision3.data.images import UnreadableImageError, decode_image
from openvision3.data.loader import DataConfig, ImageTextLoader, build_loader
from openvision3.data.synthetic import (
    CLASS_NAMES,
    ZERO_SHOT_TEMPLATES,
    SyntheticConfig,
    SyntheticWorld,
    write_shards,
)
from openvision3.data.transforms import (
    ImageTransformConfig,
    build_transform,
    from_uint8,
    to_uint8,
)

__all__ = [
    "CLASS_NAMES",
    "ZERO_SHOT_TEMPLATES",
    "DataConfig",
    "ImageTextLoader",
    "ImageTransformConfig",
    "SyntheticConfig",
    "SyntheticWorld",
    "UnreadableImageError",
    "build_loader",
    "build_transform",
    "decode_image",
    "from_uint8",
    "to_uint8",
    "write_shards",
]
