"""Questions and answers about a synthetic scene (``demo.synthetic.Scene``), for the offline
understanding demo and the recipe's smoke runs.

Types: colour, position (grid cell), presence (half of the scenes ask about a colour that is
present, half about one that is absent), count, background (its colour or its pattern), and
shape (reported, not gated: the demo model's tokens carry shape poorly).
"""

from __future__ import annotations

import numpy as np

from openvision3.data.synthetic.world import (
    BACKGROUNDS,
    CELL_NAMES,
    COLORS,
    SHAPES,
    SPLITS,
    TEXTURES,
    Scene,
    long_caption,
)

QUESTION_TYPES = ("colour", "position", "presence", "count", "background", "shape")
GATED_TYPES = ("colour", "position", "presence", "count", "background")
NUMBERS = ("one", "two", "three", "four")
DESCRIBE = "describe the image."


def question(scene: Scene, kind: str, rng: np.random.Generator) -> tuple[str, str]:
    """(question, answer) of type ``kind`` about ``scene``."""
    main = scene.objects[0]
    if kind == "colour":
        return "what colour is the large object?", main.color
    if kind == "position":
        return "where is the large object?", CELL_NAMES[main.cell]
    if kind == "shape":
        return "what shape is the large object?", main.shape
    if kind == "count":
        return "how many objects are there?", NUMBERS[len(scene.objects) - 1]
    if kind == "presence":
        present = sorted({o.color for o in scene.objects})
        absent = [c for c in COLORS if c not in present]
        yes = bool(rng.integers(2))
        colour = present[rng.integers(len(present))] if yes else absent[rng.integers(len(absent))]
        return f"is there a {colour} object?", "yes" if yes else "no"
    if kind == "background":
        if rng.integers(2):
            return "what colour is the background?", scene.background
        return "what pattern is the background?", scene.texture
    raise ValueError(f"unknown question type {kind!r}; choose from {QUESTION_TYPES}")


def scene_questions(
    scene: Scene, split: str, index: int, seed: int = 0, kinds=QUESTION_TYPES, draw: int = 0
) -> list[tuple[str, str, str]]:
    """(type, question, answer) of every type in ``kinds``, deterministic per scene and
    ``draw``: another draw asks the types with a random part (presence's colour, background's
    colour or pattern) anew; draw 0 is the held-out questions' own."""
    if draw < 0:
        raise ValueError(f"draw must be >= 0, got {draw}")
    key = [seed, SPLITS[split], int(index), 7] + ([int(draw)] if draw else [])
    rng = np.random.default_rng(key)
    return [(k, *question(scene, k, rng)) for k in kinds]


def describe(scene: Scene) -> tuple[str, str]:
    """Stage 1's caption pair: the instruction and the scene's long caption (every object with
    its size and colour, the main one's grid cell, the others' places relative to it, and the
    background), as LLaVA's stage 1 pairs each image with its caption."""
    return DESCRIBE, long_caption(scene)


def vocabulary() -> list[str]:
    """Every word of the questions, answers and long captions (lower case, punctuation apart)."""
    words = ["user", "assistant", ":", ",", ".", "?", "large", "small", "object", "objects"]
    words += "what colour is the where shape how many are there a an background pattern".split()
    words += "describe image yes no".split()
    words += list(COLORS) + list(SHAPES) + list(BACKGROUNDS) + list(TEXTURES) + list(NUMBERS)
    words += [w for cell in CELL_NAMES for w in cell.split()]
    words += "this shows in and on of it to above below left right".split()  # long captions
    return list(dict.fromkeys(words))
