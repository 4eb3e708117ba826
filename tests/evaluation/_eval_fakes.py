"""Tiny stand-ins for OpenVision3 with exactly known outputs (shared by the evaluation tests).

Images carry an integer index in their pixels (value = index / 100, inside [-1, 1]); text ids
carry an index in column 0. Embeddings are rows of fixed lookup tables, so every similarity,
rank and accuracy can be worked out by hand.
"""

import torch
import torch.nn.functional as F
from torch import nn


def index_images(indices, size: int = 16) -> torch.Tensor:
    """(B,) indices -> (B, 3, size, size) constant images holding index / 100."""
    idx = torch.as_tensor(indices, dtype=torch.float32)
    return (idx / 100)[:, None, None, None].expand(-1, 3, size, size).clone()


def image_indices(images: torch.Tensor) -> torch.Tensor:
    return (images[:, 0, 0, 0] * 100).round().long()


class TableModel(nn.Module):
    """``embed_image`` / ``embed_text`` look the index up in ``image_table`` / ``text_table``."""

    def __init__(self, image_table: torch.Tensor, text_table: torch.Tensor):
        super().__init__()
        self.register_buffer("image_table", image_table.float())
        self.register_buffer("text_table", text_table.float())

    def embed_image(self, images, normalize=True):
        z = self.image_table[image_indices(images)]
        return F.normalize(z, dim=-1) if normalize else z

    def embed_text(self, ids, normalize=True):
        z = self.text_table[ids[:, 0]]
        return F.normalize(z, dim=-1) if normalize else z


class ClassTokenizer:
    """Prompts ``"<template> c<k>"`` -> ids (B, 2): class k in column 0, template t in 1."""

    def __init__(self, templates):
        self.templates = templates

    def __call__(self, texts):
        rows = []
        for text in texts:
            head, name = text.rsplit(" c", 1)
            rows.append([int(name), self.templates.index(head + " {}")])
        return torch.tensor(rows)


class NoisyReconstructor(nn.Module):
    """``reconstruct`` = a fixed per-pixel distortion of the input (deterministic, per image)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([0.9]))

    @torch.no_grad()
    def reconstruct(self, images):
        h, w = images.shape[-2:]
        ripple = torch.sin(torch.arange(h * w, dtype=images.dtype).reshape(h, w) * 0.7) * 0.05
        return (images * self.scale + ripple).clamp(-1, 1)


class ScriptedCaptioner(nn.Module):
    """``caption`` returns ``script[index]`` for the index carried by each image."""

    def __init__(self, script):
        super().__init__()
        self.script = script
        self.calls = []

    def caption(self, images, max_len=None, beam_size=1):
        self.calls.append((max_len, beam_size))
        return [self.script[i] for i in image_indices(images).tolist()]


def textured_images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """(n, 3, size, size) smooth random images in [-1, 1] (fixed seed)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, size // 4, size // 4, generator=g) * 2 - 1
    return F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
