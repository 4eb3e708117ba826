"""The synthetic world as a data source (``--data.source synthetic``): its samples for the
loaders, and what the evaluations ask of it: its class names, its zero-shot templates and its
caption checks, reported by the captioning task as ``<name>_accuracy``
(``caption_<name>_accuracy`` in the flat metrics).

The world's captions name the main (largest) object first, and its label is that object's
"colour shape" (``CLASS_NAMES``).
"""

from __future__ import annotations

import re
from collections.abc import Collection

from openvision3.data.sources import DataSource, register_source
from openvision3.data.synthetic.world import (
    CLASS_NAMES,
    COLORS,
    SHAPES,
    ZERO_SHOT_TEMPLATES,
    SyntheticConfig,
    SyntheticWorld,
)
from openvision3.dataclass_io import to_dict


class SyntheticSource:
    """Map-style source rendering ``SyntheticWorld`` samples at the requested resolution."""

    def __init__(self, cfg: SyntheticConfig, split: str, resolution: int):
        self.world, self.split, self.resolution = SyntheticWorld(cfg.seed), split, resolution
        self.size = {"train": cfg.train_size, "val": cfg.val_size}.get(split)
        if self.size is None:
            raise ValueError(f"synthetic splits are 'train' and 'val', got {split!r}")
        self.class_names = CLASS_NAMES

    def __len__(self) -> int:
        return self.size

    def load(self, index: int) -> dict:
        return self.world.sample(self.split, index, self.resolution)


def synthetic_caption_match(generated: str, row: dict) -> bool:
    """The caption names the colour and shape of the largest object (``"red circle"``)."""
    return CLASS_NAMES[int(row["label"])] in generated.lower()


def first_word_among(text: str, words: Collection[str]) -> str | None:
    """The first word of ``text`` (lowercased, split at non-letters) that is in ``words``."""
    return next((w for w in re.findall(r"[a-z]+", text.lower()) if w in words), None)


def synthetic_colour_match(generated: str, row: dict) -> bool:
    """The first colour the caption names is the main object's: a caption that names its
    colour anywhere but first does not count (``"a small red circle ..."`` for a blue main
    object names red first)."""
    colour = CLASS_NAMES[int(row["label"])].split()[0]
    return first_word_among(generated, COLORS) == colour


def synthetic_shape_match(generated: str, row: dict) -> bool:
    """The first shape the caption names is the main object's (as for the colour)."""
    shape = CLASS_NAMES[int(row["label"])].split()[1]
    return first_word_among(generated, SHAPES) == shape


SYNTHETIC_CAPTION_ATTRIBUTES = {
    "attribute": synthetic_caption_match,
    "colour": synthetic_colour_match,
    "shape": synthetic_shape_match,
}


@register_source
class SyntheticDataSource(DataSource):
    """``DataConfig.synthetic`` (seed, split sizes) rendered on the fly: images always, texts
    always, labels always (the main object's colour and shape)."""

    name = "synthetic"

    def has_images(self) -> bool:
        return True

    def map_source(self, split: str, resolution: int) -> SyntheticSource:
        return SyntheticSource(self.cfg.synthetic, split, resolution)

    def class_names(self) -> tuple[list[str], str]:
        return list(CLASS_NAMES), "synthetic world"

    @classmethod
    def zero_shot_templates(cls) -> list[str]:
        return list(ZERO_SHOT_TEMPLATES)

    def caption_checks(self) -> dict:
        return SYNTHETIC_CAPTION_ATTRIBUTES

    def identity(self) -> dict:
        return {"synthetic": to_dict(self.cfg.synthetic)}
