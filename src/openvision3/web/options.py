"""What a request may ask of ``ov3 serve``: noise levels, label lists, interpolation steps.

No torch here: the page is built from these before the model has loaded.
"""

from __future__ import annotations

# Decoder noise levels shown next to the clean reconstruction: sigma of RAE's noise-augmented
# decoding, LN(tokens) + sigma * eps, up to the training range's top (tau = 0.8 by default).
NOISE_LEVELS = (0.0, 0.2, 0.4, 0.8)
NEIGHBOURS = 4
MAX_INTERPOLATION_STEPS = 12
MAX_LABELS = 64


def parse_labels(text: str) -> list[str]:
    """ "red circle, blue square" (commas or new lines) -> unique labels in order."""
    labels = []
    for raw in text.replace("\n", ",").split(","):
        label = raw.strip()
        if label and label not in labels:
            labels.append(label)
    return labels
