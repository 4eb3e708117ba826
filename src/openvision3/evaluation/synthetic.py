"""The synthetic world's caption checks, reported by the captioning task as
``<name>_accuracy`` (``caption_<name>_accuracy`` in the flat metrics).

The world's captions name the main (largest) object first, and its label is that object's
"colour shape" (``openvision3.demo.synthetic.CLASS_NAMES``).
"""

from __future__ import annotations

import re
from collections.abc import Collection

from openvision3.demo.synthetic import CLASS_NAMES, COLORS, SHAPES


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
