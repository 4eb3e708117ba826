"""Training data of the LLaVA recipe: LLaVA's JSON format and a resumable, rank-sharded loader.

LLaVA's format is a JSON list of ``{"id", "image": "rel/path.jpg", "conversations": [{"from":
"human", "value": "<image>\\n..."}, {"from": "gpt", "value": "..."}, ...]}`` (LLaVA's
``train.py``: ``LazySupervisedDataset``). Each conversation goes through the model's processor
in one call (``templates.encode``): its ids, the answer-token labels and the pixels (padded to a
square of the mean colour, ``--image_aspect_ratio pad``, at the tower's input size), the same
inputs ``load_vlm`` and transformers' ``AutoProcessor`` give.
"""

from __future__ import annotations

import json
import os

import torch
from PIL import Image

from openvision3.errors import ConfigError
from openvision3.understanding.templates import IMAGE, encode, pad_batch


def turns_of(conversations: list[dict]) -> list[tuple[str, str]]:
    """LLaVA's alternating human / gpt messages -> (question, answer) pairs."""
    turns = []
    for i in range(0, len(conversations) - 1, 2):
        human, gpt = conversations[i], conversations[i + 1]
        if human.get("from") != "human" or gpt.get("from") != "gpt":
            raise ValueError(f"conversation turn {i // 2} is not a human / gpt pair")
        turns.append((human["value"], gpt["value"]))
    return turns


def read_llava_json(path: str) -> list[dict]:
    if not os.path.isfile(path):
        raise ConfigError(f"--data.json-path: {path!r} does not exist")
    with open(path) as f:
        records = json.load(f)
    if not isinstance(records, list) or not all("conversations" in r for r in records):
        raise ConfigError(f"--data.json-path: {path!r} is not a LLaVA JSON list of conversations")
    return records


class ConversationDataset(torch.utils.data.Dataset):
    """LLaVA records -> ``input_ids``, ``labels`` (lists) and ``pixel_values`` (3, R, R).

    Records without an image are text-only conversations (no image tokens, zero pixels that the
    model never reads: their rows carry no image token)."""

    def __init__(
        self,
        records: list[dict],
        image_folder: str,
        processor,
        template: str,
        image_size: int,
        max_length: int,
    ):
        self.records, self.image_folder = records, image_folder
        self.processor, self.template = processor, template
        self.image_size, self.max_length = image_size, max_length

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        rec = self.records[i]
        image = None
        if "image" in rec:
            with Image.open(os.path.join(self.image_folder, rec["image"])) as im:
                image = im.convert("RGB")
        out = encode(self.processor, self.template, turns_of(rec["conversations"]), image)
        ids, labels = out["ids"], out["labels"]
        image_id = self.processor.tokenizer.convert_tokens_to_ids(IMAGE)
        n_image = sum(t == image_id for t in ids)
        if n_image and len(ids) > self.max_length and self.max_length < n_image + 1:
            raise ConfigError(f"--data.max-length {self.max_length} cannot hold the image tokens")
        pixels = out.get("pixel_values", torch.zeros(3, self.image_size, self.image_size))
        return {
            "ids": ids[: self.max_length],
            "labels": labels[: self.max_length],
            "pixel_values": pixels,
            "has_image": image is not None,
        }


def collate(samples: list[dict], pad_id: int) -> dict:
    """Right-padded ``input_ids`` / ``attention_mask`` / ``labels`` (B, L); ``pixel_values``
    (B, 3, R, R) with ``has_image`` (B,) marking the rows whose pixels are read, or
    ``image_tokens`` (B, N, D) for cached features. Every tensor keeps one row per sample, so
    a micro-batch's slice of each belongs to the same conversations."""
    batch = pad_batch([(s["ids"], s["labels"]) for s in samples], pad_id)
    for key in ("pixel_values", "image_tokens"):
        if key in samples[0]:
            batch[key] = torch.stack([s[key] for s in samples])
    if "has_image" in samples[0]:
        batch["has_image"] = torch.tensor([bool(s["has_image"]) for s in samples])
    return batch


class EpochLoader:
    """This rank's endless batches of a map-style dataset; its position is the samples it has
    consumed. Each epoch is a permutation seeded by ``(seed, epoch)``; rank r of w takes the
    global positions r, r + w, ..., so a position moves between world sizes (the engine's
    ``data_position``)."""

    def __init__(self, dataset, batch_size: int, rank: int, world: int, collate_fn, seed: int = 0):
        self.dataset, self.batch_size, self.rank, self.world = dataset, batch_size, rank, world
        self.collate_fn, self.seed = collate_fn, seed
        self.samples, self.skipped = 0, 0
        self._perm: tuple[int, list[int]] = (-1, [])

    def _index(self, local: int) -> int:
        g = self.rank + self.world * local  # the global position
        epoch, pos = divmod(g, len(self.dataset))
        if self._perm[0] != epoch:
            gen = torch.Generator().manual_seed(self.seed * 7919 + epoch)
            self._perm = (epoch, torch.randperm(len(self.dataset), generator=gen).tolist())
        return self._perm[1][pos]

    def __iter__(self):
        while True:
            idx = [self._index(self.samples + j) for j in range(self.batch_size)]
            self.samples += self.batch_size
            yield self.collate_fn([self.dataset[i] for i in idx])

    def state_dict(self) -> dict:
        return {"samples": self.samples, "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.samples, self.skipped = int(state["samples"]), int(state.get("skipped", 0))
