"""Webdataset tar shards as a deterministic, resumable stream of batches.

Train: each epoch shuffles the shard list with (seed, epoch); the stream is split into
``world_size * max(1, num_workers)`` parts, by shard when there are enough shards, else by
sample (every part reads all shards and keeps its own samples). Each part shuffles its
samples in a seeded buffer and makes full batches of good samples, epoch after epoch; its
position is (epoch, samples consumed), and resuming replays the raw stream up to it without
decoding. Eval: shards in order, rank r keeps samples r, r + world, ...; with workers, worker
w builds batches w, w + num_workers, ... so the DataLoader's round-robin keeps the order.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import random
from collections.abc import Callable, Iterator

import torch

from openvision3.errors import DataNotFoundError

log = logging.getLogger(__name__)

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "ppm", "gif")


def list_shards(path: str, split: str) -> list[str]:
    """Shard pattern (brace-expanded, ``{split}`` replaced) or directory -> tar paths.

    A directory yields its ``{split}-*.tar`` files, else ``{split}/*.tar``, else all ``*.tar``.
    """
    from webdataset.shardlists import expand_urls

    path = path.replace("{split}", split)
    if os.path.isdir(path):
        for pattern in (f"{split}-*.tar", f"{split}/*.tar", "*.tar"):
            shards = sorted(glob.glob(os.path.join(path, pattern)))
            if shards:
                break
    else:
        shards = expand_urls(path)
    if not shards:
        raise DataNotFoundError(
            f"--data.path: no webdataset shards for split {split!r} at {path!r}"
        )
    return list(shards)


def _log_and_continue(exn: Exception) -> bool:
    log.warning("webdataset read error, continuing: %r", exn)
    return True


def _tar_samples(shards: list[str]) -> Iterator[dict]:
    """Raw samples (dicts of bytes keyed by extension, plus ``__key__``) from shards in order."""
    from webdataset.tariterators import tarfile_samples

    return tarfile_samples([{"url": s} for s in shards], handler=_log_and_continue)


def raw_to_sample(raw: dict, alt_text_key: str = "txt", caption_key: str = "caption") -> dict:
    """Webdataset raw sample -> dict(image=bytes, alt_text, caption, label, key)."""
    key = raw.get("__key__", "?")
    image = next((raw[k] for k in IMAGE_KEYS if k in raw), None)
    meta = {}
    if "json" in raw:
        try:
            meta = json.loads(raw["json"])
        except ValueError:
            log.warning("sample %r has an unreadable .json; ignoring it", key)
    alt = raw.get(alt_text_key)
    alt = (
        alt.decode("utf-8", "replace")
        if isinstance(alt, bytes)
        else (alt or meta.get("alt_text", ""))
    )
    label = meta.get("label", None)
    if label is None and "cls" in raw:
        label = int(raw["cls"])
    return {
        "image": image,
        "alt_text": alt,
        "caption": meta.get(caption_key, "") or "",
        "label": label,
        "key": key,
    }


def _shuffle(samples, buffer_size: int, rng: random.Random):
    """Seeded buffer shuffle (webdataset's shuffle idea, with our own RNG for exact replay)."""
    buf = []
    for s in samples:
        buf.append(s)
        if len(buf) >= buffer_size:
            i = rng.randrange(len(buf))
            buf[i], buf[-1] = buf[-1], buf[i]
            yield buf.pop()
    rng.shuffle(buf)
    yield from buf


class WebDatasetStream(torch.utils.data.IterableDataset):
    """Iterable of collated batches, each with a ``_meta`` dict the loader turns into state."""

    def __init__(
        self,
        shards: list[str],
        *,
        process: Callable[[dict, int], dict],
        collate: Callable[[list[dict]], dict],
        batch_size: int,
        rank: int,
        world_size: int,
        seed: int,
        train: bool,
        num_workers: int,
        shuffle_buffer: int,
        alt_text_key: str,
        caption_key: str,
    ):
        self.shards, self.process, self.collate = shards, process, collate
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.seed, self.train, self.shuffle_buffer = seed, train, shuffle_buffer
        self.streams = max(1, num_workers)  # worker streams per rank
        self.text_keys = (alt_text_key, caption_key)
        self.position: dict = {}

    def set_position(self, state: dict) -> None:
        """Train: {"workers": [[epoch, samples], ...], "next_worker"}; eval: {"samples"}."""
        self.position = state

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        if self.train:
            # A fresh DataLoader asks worker slot 0 first; it plays the stream that is next.
            stream = (worker + self.position.get("next_worker", 0)) % self.streams
            yield from self._train(stream)
        else:
            yield from self._eval(worker)

    def _part(self, epoch: int, part: int, parts: int) -> Iterator[dict]:
        shards = list(self.shards)
        random.Random(f"{self.seed}/{epoch}").shuffle(shards)
        if len(shards) >= parts:
            yield from _tar_samples(shards[part::parts])
        else:  # too few shards: split by sample
            for i, raw in enumerate(_tar_samples(shards)):
                if i % parts == part:
                    yield raw

    def _try(self, raw: dict, epoch: int, samples: list, bad: list) -> None:
        key = raw.get("__key__", "?")
        try:
            samples.append(self.process(raw_to_sample(raw, *self.text_keys), epoch))
        except Exception as e:  # never crash on one sample; it is reported by the loader
            bad.append((key, f"{type(e).__name__}: {e}"))

    def _train(self, stream: int) -> Iterator[dict]:
        parts = self.world_size * self.streams
        part = self.rank * self.streams + stream
        epoch, consumed = self.position.get("workers", [[0, 0]] * self.streams)[stream]
        idle_epochs = 0
        while True:
            rng = random.Random(f"{self.seed}/{epoch}/{part}")
            samples, bad, pos, produced = [], [], 0, False
            for raw in _shuffle(self._part(epoch, part, parts), self.shuffle_buffer, rng):
                pos += 1
                if pos <= consumed:  # resume: replay the stream without decoding
                    continue
                self._try(raw, epoch, samples, bad)
                if len(samples) == self.batch_size:
                    meta = {"worker": stream, "epoch": epoch, "samples": pos, "bad": bad}
                    yield {**self.collate(samples), "_meta": meta}
                    samples, bad, produced = [], [], True
            # drop_last: a partial batch is dropped; its bad samples are still reported.
            if bad:
                yield {"_meta": {"worker": stream, "epoch": epoch + 1, "samples": 0, "bad": bad}}
            if pos == 0 or (not produced and consumed == 0):
                idle_epochs += 1
                if idle_epochs >= 2:
                    raise ValueError(
                        f"webdataset part {part}/{parts} yields fewer than one batch of "
                        f"{self.batch_size} good samples per epoch ({pos} samples, shards "
                        f"{self.shards[:3]}...); use fewer ranks/workers or more shards"
                    )
            else:
                idle_epochs = 0
            epoch, consumed = epoch + 1, 0

    def _eval(self, worker: int) -> Iterator[dict]:
        start = self.position.get("samples", 0)
        ours = -1  # window index being filled
        samples, bad, end = [], [], start

        def flush():
            meta = {"epoch": 0, "samples": end, "bad": bad}
            return {**(self.collate(samples) if samples else {}), "_meta": meta}

        rank_samples = (
            raw
            for i, raw in enumerate(_tar_samples(self.shards))
            if i % self.world_size == self.rank
        )
        for j, raw in enumerate(rank_samples):
            if j < start:
                continue
            window = (j - start) // self.batch_size
            if ours >= 0 and window != ours:
                yield flush()
                ours, samples, bad = -1, [], []
            if window % self.streams != worker:
                continue
            ours, end = window, j + 1
            self._try(raw, 0, samples, bad)
        if ours >= 0:
            yield flush()
