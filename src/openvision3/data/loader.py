"""Image-text loaders for every source, with an exact, resumable data position.

``build_loader(cfg, split, resolution, batch_size, rank, world_size, train, seed)`` returns an
``ImageTextLoader``: iterate it for batch dicts (see ``ImageTextLoader``). Train loaders are
infinite, reshuffled per epoch from ``seed + epoch`` (the run's ``train.seed``), each rank a disjoint share, drop_last;
eval loaders make one ordered pass, rank r taking samples r, r + world, ... (no padding).

The position (``state_dict``) is counted in samples, not batches, so it survives a change of
resolution or batch size. Map-style sources (synthetic, folder) resume by offsetting the
sampler; webdataset resumes by replaying its deterministic stream without decoding.
Bad samples are skipped, counted in ``loader.skipped`` and logged with their key.
"""

from __future__ import annotations

import copy
import logging
import zlib
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from openvision3.data.images import decode_image
from openvision3.data.sources import data_source, source_names
from openvision3.data.synthetic.world import SyntheticConfig
from openvision3.data.transforms import RESIZE_POLICIES, ImageTransformConfig, build_transform
from openvision3.data.webdataset import WebDatasetStream, list_shards
from openvision3.errors import ConfigError
from openvision3.tokenizer import Tokenizer

log = logging.getLogger(__name__)

MAX_REFILL_TRIES = 8


@dataclass
class DataConfig:
    """Where image-text pairs come from and how they become batches.

    path: webdataset shard pattern ("dir/train-{000000..000009}.tar", "{split}" is replaced by
    the split) or a directory of `{split}-*.tar`; or an image folder. captions_file: folder
    source only, JSONL/CSV with `file` and `alt_text` and/or `caption`. alt_text_key:
    webdataset member holding the alt text; caption_key: json field with the long caption.
    latents: a latent cache written by `ov3 cache-latents` (a directory; "{resolution}" is
    replaced by the stage resolution). When set, train loaders read the cached VAE latents
    and pixel targets from it instead of decoding `path`; evaluation still reads `path`.
    """

    source: str = "synthetic"  # synthetic | webdataset | folder
    path: str = ""  # webdataset shards (a {000..009} pattern; {split} replaced) or an image folder
    captions_file: str = ""  # folder source: JSONL / CSV with file and alt_text and / or caption
    alt_text_key: str = "txt"  # webdataset member holding the alt text
    caption_key: str = "caption"  # JSON field holding the long caption
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    num_workers: int = 0  # data loader worker processes
    text_context: int = 80  # tokens of the contrastive text (the text tower's context)
    caption_context: int = 128  # tokens of the caption target (the caption decoder's context)
    hflip: float = 0.0  # train-only horizontal flip probability
    # center_crop (short side, centre crop) | resize (squash) | pad (grey)
    resize: str = "center_crop"
    # train-only random resized crop area range; (1, 1) = off
    crop_scale: tuple[float, float] = (1.0, 1.0)
    shuffle_buffer: int = 1000  # webdataset train: in-stream shuffle after the shard shuffle
    # a latent cache of `ov3 cache-latents` to train from ("{resolution}" allowed)
    latents: str = ""

    def __post_init__(self):
        if isinstance(self.synthetic, dict):
            self.synthetic = SyntheticConfig(**self.synthetic)
        self.crop_scale = tuple(float(v) for v in self.crop_scale)
        if self.source not in source_names():
            raise ValueError(f"source must be one of {source_names()}, got {self.source!r}")
        if self.num_workers < 0 or self.shuffle_buffer < 1:
            raise ValueError("num_workers must be >= 0 and shuffle_buffer >= 1")
        if self.text_context < 3 or self.caption_context < 3:
            raise ValueError("text_context and caption_context must be >= 3 (SOT, token, EOT)")
        if self.resize not in RESIZE_POLICIES:
            raise ValueError(f"resize must be one of {RESIZE_POLICIES}, got {self.resize!r}")
        if not 0.0 <= self.hflip <= 1.0:
            raise ValueError(f"hflip must be in [0, 1], got {self.hflip}")
        if self.latents and self.crop_scale != (1.0, 1.0):
            raise ValueError(
                "data.latents: random resized crops cannot be cached; set crop_scale=(1, 1)"
            )

    @property
    def has_images(self) -> bool:
        """Whether images can be read (a path, or a source that makes its own, such as the
        synthetic world); the training split can also come from ``latents`` alone."""
        return data_source(self).has_images()

    def require_images(self) -> None:
        """Raise ``ConfigError`` naming the flag when a file source has no ``path``.

        Not in ``__post_init__``: presets set the source and leave the path to the command line,
        so a preset must build before its flags are applied."""
        if not self.has_images:
            raise ConfigError(f"--data.path is required for source {self.source!r}")


class BadSample(ValueError):
    """A sample that cannot be used (no text, no image); skipped and counted."""


def sample_seed(*parts) -> int:
    """A stable 31-bit seed from strings/ints (Python's hash() is salted per process)."""
    return zlib.crc32("/".join(map(str, parts)).encode()) & 0x7FFFFFFF


class SampleProcessor:
    """Raw sample -> processed sample (image tensor + texts); a list of them -> a batch.

    Picklable, so it runs inside DataLoader workers; random transforms are seeded per sample
    (from ``seed``, epoch and key) so batches do not depend on worker count or timing.
    """

    def __init__(self, cfg: DataConfig, resolution: int, train: bool, seed: int = 0):
        self.tcfg = ImageTransformConfig(resolution, cfg.resize, cfg.crop_scale, cfg.hflip)
        self.transform = build_transform(self.tcfg, train)
        self.random = self.tcfg.is_random(train)
        self.draft_size = resolution * (2 if self.random else 1)
        self.seed = seed
        self.text_context, self.caption_context = cfg.text_context, cfg.caption_context
        self.tokenizer = Tokenizer(cfg.text_context)

    def __call__(self, raw: dict, epoch: int = 0) -> dict:
        key = str(raw.get("key", "?"))
        alt, caption = (raw.get("alt_text") or "").strip(), (raw.get("caption") or "").strip()
        if not alt and not caption:
            raise BadSample(f"sample {key!r} has no alt text and no caption")
        img = raw.get("image")
        if img is None:
            raise BadSample(f"sample {key!r} has no image")
        if isinstance(img, np.ndarray):
            img = Image.fromarray(img)
        elif not isinstance(img, Image.Image):
            img = decode_image(img, key, draft_size=self.draft_size)
        if self.random:
            with torch.random.fork_rng(devices=[]):  # leave the caller's RNG untouched
                torch.manual_seed(sample_seed(self.seed, epoch, key))
                x = self.transform(img)
        else:
            x = self.transform(img)
        label = raw.get("label")
        return {"image": x, "alt_text": alt, "caption": caption, "label": label, "key": key}

    def collate(self, samples: list[dict]) -> dict:
        """Processed samples -> batch dict (see ``ImageTextLoader``)."""
        alts = [s["alt_text"] for s in samples]
        caps = [s["caption"] for s in samples]
        batch = {
            # (B, 3, R, R); stacked in numpy: torch's intra-op threads only add overhead here
            "images": torch.from_numpy(np.stack([s["image"].numpy() for s in samples])),
            "text": self.tokenizer([a or c for a, c in zip(alts, caps)], self.text_context),
            "caption": self.tokenizer([c or a for a, c in zip(alts, caps)], self.caption_context),
            "key": [s["key"] for s in samples],
        }
        if all(alts) and all(caps):  # second view: the loss averages both (OpenVision's code)
            batch["text_2"] = self.tokenizer(caps, self.text_context)
        labels = [s["label"] for s in samples]
        if any(v is not None for v in labels):
            batch["label"] = torch.tensor([-1 if v is None else int(v) for v in labels])
        return batch


class _Window(NamedTuple):
    """One batch worth of positions of this rank's epoch order: [start, end)."""

    epoch: int
    start: int
    end: int
    indices: list[int]


class _WindowSampler:
    """Batch sampler over a map-style source: windows of ``batch_size`` positions from a start."""

    def __init__(self, n, batch_size, rank, world_size, seed, train, epoch, start):
        self.n, self.batch_size, self.rank, self.world_size = n, batch_size, rank, world_size
        self.seed, self.train, self.epoch, self.start = seed, train, epoch, start

    def order(self, epoch: int) -> np.ndarray:
        if not self.train:
            return np.arange(self.rank, self.n, self.world_size)
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return perm[self.rank :: self.world_size][: self.n // self.world_size]  # equal shares

    def __iter__(self):
        epoch, start = self.epoch, self.start
        while True:
            order = self.order(epoch)
            while start < len(order) and (not self.train or start + self.batch_size <= len(order)):
                end = min(start + self.batch_size, len(order))
                yield _Window(epoch, start, end, order[start:end].tolist())
                start = end
            if not self.train:
                return
            epoch, start = epoch + 1, 0


class _MapDataset(torch.utils.data.Dataset):
    """Decodes a whole window in ``__getitems__``; train windows refill bad samples."""

    def __init__(self, source, processor: SampleProcessor, train: bool, seed: int):
        self.source, self.processor, self.train, self.seed = source, processor, train, seed

    def __len__(self) -> int:
        return len(self.source)

    def _try(self, index: int, epoch: int, samples: list, bad: list) -> None:
        key = str(index)
        try:
            raw = self.source.load(index)
            key = raw.get("key", key)
            samples.append(self.processor(raw, epoch))
        except Exception as e:  # never crash on one sample; it is reported by the loader
            bad.append((key, f"{type(e).__name__}: {e}"))

    def __getitems__(self, window: _Window) -> dict:
        samples, bad = [], []
        for i in window.indices:
            self._try(i, window.epoch, samples, bad)
        if self.train and bad:
            # Keep train batches full (cross-rank feature gathers need equal shapes): replace
            # bad samples by deterministic random others from the same source.
            rng = np.random.default_rng([self.seed, window.epoch, window.start])
            used = set(window.indices)
            for _ in range(MAX_REFILL_TRIES * len(bad)):
                if len(samples) == len(window.indices):
                    break
                j = int(rng.integers(len(self.source)))
                if j not in used:
                    used.add(j)
                    self._try(j, window.epoch, samples, bad)
        batch = self.processor.collate(samples) if samples else {}
        batch["_meta"] = {"epoch": window.epoch, "samples": window.end, "bad": bad}
        return batch


def _passthrough(batch):
    return batch


def _worker_init(_):
    torch.set_num_threads(1)  # workers decode in parallel; intra-op threads would oversubscribe


class ImageTextLoader:
    """Iterable of batch dicts with a resumable position.

    Batch: ``images`` float32 (B, 3, R, R) in [-1, 1]; ``text`` long (B, L) alt text (or the
    caption); ``text_2`` long (B, L) long caption, only when every sample has both texts;
    ``caption`` long (B, L_cap) long caption (or the alt text); ``label`` long (B,) when the
    source has labels (-1 where missing); ``key`` list[str].
    ``state_dict()``/``load_state_dict()`` save and restore the position; ``skipped`` counts
    bad samples. Each ``iter()`` of a train loader continues from the current position; each
    ``iter()`` of an eval loader starts a fresh pass (from a loaded state, if one was loaded).
    """

    def __init__(self, dataset, make_sampler, *, train: bool, num_workers: int, class_names=None):
        self.dataset, self.make_sampler = dataset, make_sampler
        self.train, self.num_workers, self.class_names = train, num_workers, class_names
        self.streaming = isinstance(dataset, WebDatasetStream)
        self.skipped = 0
        self._state = self._initial_state()
        self._loaded = False

    def _initial_state(self) -> dict:
        if self.streaming and self.train:
            return {"workers": [[0, 0] for _ in range(max(1, self.num_workers))], "next_worker": 0}
        return {"epoch": 0, "samples": 0}

    def _dataloader(self) -> torch.utils.data.DataLoader:
        common = dict(
            num_workers=self.num_workers,
            collate_fn=_passthrough,
            worker_init_fn=_worker_init if self.num_workers else None,
            # Its own generator: creating a DataLoader iterator must not draw from (and so
            # change) the training loop's global RNG.
            generator=torch.Generator().manual_seed(0),
        )
        if self.streaming:
            self.dataset.set_position(copy.deepcopy(self._state))
            return torch.utils.data.DataLoader(self.dataset, batch_size=None, **common)
        sampler = self.make_sampler(self._state["epoch"], self._state["samples"])
        return torch.utils.data.DataLoader(self.dataset, batch_sampler=sampler, **common)

    def __iter__(self):
        if not self.train and not self._loaded:
            self._state = self._initial_state()
        self._loaded = False
        for batch in self._dataloader():
            meta = batch.pop("_meta")
            self._advance(meta)
            for key, reason in meta["bad"]:
                self.skipped += 1
                log.warning(
                    "skipped bad sample %r (%s); %d skipped so far", key, reason, self.skipped
                )
            if batch:
                yield batch

    def _advance(self, meta: dict) -> None:
        if "worker" in meta:  # webdataset train: one position per worker stream
            w = meta["worker"]
            self._state["workers"][w] = [meta["epoch"], meta["samples"]]
            self._state["next_worker"] = (w + 1) % len(self._state["workers"])
        else:
            self._state = {"epoch": meta["epoch"], "samples": meta["samples"]}

    def state_dict(self) -> dict:
        """JSON-able position: epoch, samples consumed in the epoch on this rank, skipped."""
        state = {**self._state, "skipped": self.skipped}
        if "workers" in state:  # summary fields; "workers" is the exact position
            state["epoch"] = min(e for e, _ in state["workers"])
            state["samples"] = sum(s for e, s in state["workers"] if e == state["epoch"])
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore a position from ``state_dict()`` (valid across resolution/batch changes)."""
        self.skipped = int(state.get("skipped", 0))
        if self.streaming and self.train:
            workers = state.get("workers")
            if workers is None or len(workers) != max(1, self.num_workers):
                raise ValueError(
                    f"webdataset position was saved with {len(workers or [])} worker streams; "
                    f"build the loader with num_workers={len(workers or [])} to resume it exactly"
                )
            self._state = {
                "workers": [[int(e), int(s)] for e, s in workers],
                "next_worker": int(state["next_worker"]),
            }
        else:
            self._state = {"epoch": int(state["epoch"]), "samples": int(state["samples"])}
        self._loaded = True


def stream_loader(
    stream_cls: type[WebDatasetStream],
    shards: list[str],
    processor,
    cfg: DataConfig,
    batch_size: int,
    rank: int,
    world_size: int,
    train: bool,
    alt_text_key: str | None = None,
    caption_key: str | None = None,
    seed: int = 0,
) -> ImageTextLoader:
    """An ``ImageTextLoader`` over a ``stream_cls`` (``WebDatasetStream`` or a subclass) of
    ``shards``, batched by ``processor``, shuffled from ``seed``; the text keys default to the
    config's."""
    stream = stream_cls(
        shards,
        process=processor,
        collate=processor.collate,
        batch_size=batch_size,
        rank=rank,
        world_size=world_size,
        seed=seed,
        train=train,
        num_workers=cfg.num_workers,
        shuffle_buffer=cfg.shuffle_buffer,
        alt_text_key=alt_text_key or cfg.alt_text_key,
        caption_key=caption_key or cfg.caption_key,
    )
    return ImageTextLoader(stream, None, train=train, num_workers=cfg.num_workers)


def build_loader(
    cfg: DataConfig,
    split: str,
    resolution: int,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    train: bool = True,
    seed: int = 0,
) -> ImageTextLoader:
    """The loader of ``split`` for this rank; batches of ``batch_size`` images (3, R, R).
    ``seed`` (the run's ``train.seed``) orders a train loader's samples and draws their
    augmentations."""
    if cfg.latents and train:
        raise ValueError(
            "data.latents is set: a train loader over the latent cache is "
            "data.latents.build_latent_loader's"
        )
    cfg.require_images()
    if batch_size < 1 or not 0 <= rank < world_size:
        raise ValueError(
            f"need batch_size >= 1 and 0 <= rank < world_size, got {batch_size}, {rank}, {world_size}"
        )
    processor = SampleProcessor(cfg, resolution, train, seed)
    if cfg.source == "webdataset":
        shards = list_shards(cfg.path, split)
        return stream_loader(
            WebDatasetStream, shards, processor, cfg, batch_size, rank, world_size, train,
            seed=seed,
        )  # fmt: skip
    source = data_source(cfg).map_source(split, resolution)
    if train and len(source) // world_size < batch_size:
        raise ValueError(
            f"{cfg.source} split {split!r} has {len(source)} samples: fewer than one batch of "
            f"{batch_size} per rank over {world_size} ranks"
        )
    dataset = _MapDataset(source, processor, train, seed)

    def make_sampler(epoch: int, start: int) -> _WindowSampler:
        return _WindowSampler(len(source), batch_size, rank, world_size, seed, train, epoch, start)

    names = getattr(source, "class_names", None)
    return ImageTextLoader(
        dataset, make_sampler, train=train, num_workers=cfg.num_workers, class_names=names
    )
