"""Feature cache: the frozen VAE's posterior mean, and optionally a frozen OpenVision 3
encoder's unified tokens, computed once and read back in training.

``write_latent_cache(cfg)`` (``ov3 cache-latents``) runs the VAE encoder over a split once.
Training with ``data.latents=<dir>`` then reads these shards instead of decoding and encoding
images: the encoder step and the VAE encoder (273 GFLOP per 256 px image, as counted by
``scripts/anchor_bench.py``) disappear from the training step. The pixel losses still decode through the frozen VAE
decoder, against the stored image.

A cache directory holds, for one resolution, per split and writer part ``p`` of ``n``:

    {split}-{p:03d}-{shard:06d}.tar   webdataset shards; one sample per image:
        png                  the transformed image (3, R, R) as 8-bit PNG: the pixel target,
                             bit-exact with the on-the-fly pipeline (x = level / 127.5 - 1)
                             (left out with ``images=False``: a token cache for a generator)
        txt, json            alt text; {"key", "caption", "label"} (the raw loader layout) plus
                             any fields an ``extra`` function gives for the key
        latent.safetensors   {"mean": (C, R/8, R/8)[, "mean_flip": the same for the
                             horizontally flipped image]}, already scaled (``FrozenVAE.encode``);
                             with ``tokens=<OpenVision 3 export>`` also "tokens": (N, D), the
                             frozen encoder's unified tokens (row-major grid) [, "tokens_flip"]
    {split}-{p:03d}.json              the part's meta, written last (its presence marks a
                                      complete part): resolution, VAE identity, counts
    {split}-{p:03d}.progress.jsonl    the part's record (``openvision3.outputs.OutputDir``):
                                      the options, then each shard with the samples it used

Resume: the options that shape the cache are recorded by the first run and a rerun with others
is refused (``--overwrite`` starts again); a rerun continues after the last recorded shard
(samples come in a fixed order, so the samples the record counts, written or skipped, are
passed over without being encoded), and writes nothing more when the split has no more.
Reading: ``build_latent_loader`` streams shards for OpenVision 3 training; ``FeatureCache`` is
the map-style (random access) view for generators and language models, and
``read_features`` loads a small cache into memory.

Flips: a sample is flipped when ``torch.rand(1)`` under ``sample_seed(seed, epoch, key)`` is
below ``data.hflip``, the same draw ``RandomHorizontalFlip`` makes on the fly, so cached and
on-the-fly training see the same flips. Random resized crops cannot be cached (refused).
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import io
import json
import logging
import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from openvision3.data.images import decode_image
from openvision3.data.loader import (
    BadSample,
    DataConfig,
    ImageTextLoader,
    SampleProcessor,
    sample_seed,
    stream_loader,
)
from openvision3.data.sources import data_source
from openvision3.data.transforms import pil_to_tensor, to_uint8
from openvision3.data.webdataset import WebDatasetStream, _tar_samples, list_shards, raw_to_sample
from openvision3.dataclass_io import to_dict
from openvision3.files import write_json
from openvision3.models.vae import FrozenVAE, VAEConfig
from openvision3.outputs import NothingWrittenError, OutputDir, model_identity

log = logging.getLogger(__name__)

FORMAT = "ov3-latent-cache"
VERSION = 1
LATENT_EXT = "latent.safetensors"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class CacheLatentsConfig:
    """`ov3 cache-latents`: which split to encode, with which VAE, into which directory.

    `out` may hold "{resolution}"; `part`/`parts` split the work between processes
    (one per GPU), process `part` taking samples part, part + parts, ...; `seed` seeds the
    construction of a config-built (random) VAE exactly as the trainer does (`train.seed`).
    """

    out: str = ""  # the cache directory (may hold "{resolution}")
    split: str = "train"  # the data split to encode
    resolution: int = 128  # image side in pixels (a multiple of 16)
    flip: bool = True  # also store the latent of the horizontally flipped image
    batch_size: int = 64  # images per VAE forward
    shard_size: int = 1000  # samples per tar shard
    dtype: str = "float32"  # of the stored latents: float32 | bfloat16 | float16
    part: int = 0  # this process's part (0 .. parts - 1): samples part, part + parts, ...
    parts: int = 1  # processes sharing the work (one per GPU)
    device: str = "auto"  # auto | cpu | cuda
    seed: int = 0  # seeds a config-built (random) VAE as the trainer does
    tokens: str = ""  # an OpenVision 3 export (or released encoder): also store its tokens
    images: bool = True  # store the pixel target PNG (OpenVision 3 training needs it)
    overwrite: bool = False  # delete this part's earlier shards and record, and start again
    data: DataConfig = field(default_factory=DataConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)

    def __post_init__(self):
        if self.resolution <= 0 or self.resolution % 16:
            raise ValueError(f"resolution must be a positive multiple of 16, got {self.resolution}")
        if self.batch_size < 1 or self.shard_size < 1:
            raise ValueError("batch_size and shard_size must be >= 1")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if not 0 <= self.part < self.parts:
            raise ValueError(f"need 0 <= part < parts, got {self.part}, {self.parts}")

    @classmethod
    def from_experiment(cls, exp, **overrides) -> CacheLatentsConfig:
        """Defaults from an ``ExperimentConfig``: its data, VAE, seed, first stage resolution."""
        fields = dict(
            out=exp.data.latents,
            resolution=exp.train.stages[0].resolution,
            seed=exp.train.seed,
            data=dataclasses.replace(exp.data, latents=""),
            vae=exp.model.vae,
        )
        return cls(**{**fields, **overrides})


def cache_options(cfg: CacheLatentsConfig) -> dict:
    """What shapes a cache part (its record's options): everything but the device, the batch
    size and the output folder. The VAE by its config (and seed), the token encoder by its
    files' sizes and times: nothing is hashed."""
    data = {k: v for k, v in to_dict(cfg.data).items() if k not in ("num_workers", "latents")}
    options = to_dict(cfg)
    for name in ("out", "device", "batch_size", "overwrite", "part", "split", "data"):
        options.pop(name)
    return {**options, "data": data, "tokens": model_identity(cfg.tokens) if cfg.tokens else ""}


def resolve(path: str, resolution: int) -> str:
    return path.replace("{resolution}", str(resolution))


def vae_fingerprint(vae: FrozenVAE) -> str:
    """sha256 of the VAE's weights and latent convention: the cache is only valid for it."""
    h = hashlib.sha256()
    c = vae.cfg
    h.update(f"{c.convention}/{c.scaling_factor}/{c.shift_factor}".encode())
    for name, t in sorted(vae.vae.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------- writer
def _raw_samples(data: DataConfig, split: str, resolution: int, stride: int, offset: int):
    """Loaders of this share's raw samples (as ``SampleProcessor`` takes them): samples
    offset, offset + stride, ... of the source, or whole shards when there are enough."""
    if data.source == "webdataset":
        shards = list_shards(data.path, split)
        if len(shards) >= stride:
            shards, stride, offset = shards[offset::stride], 1, 0
        for i, raw in enumerate(_tar_samples(shards)):
            if i % stride == offset:
                yield lambda raw=raw: raw_to_sample(raw, data.alt_text_key, data.caption_key)
        return
    source = data_source(data).map_source(split, resolution)
    for i in range(offset, len(source), stride):
        yield lambda i=i: source.load(i)


def _identity(x):
    return x


class _ProcessedSamples(torch.utils.data.IterableDataset):
    """This part's samples, processed (eval transform) in DataLoader workers; a failure becomes
    ``{"bad": (key, reason)}`` so the writer counts it instead of stopping."""

    def __init__(self, cfg: CacheLatentsConfig, skip: int = 0):
        self.cfg, self.skip = cfg, skip
        self.processor = SampleProcessor(cfg.data, cfg.resolution, train=False)

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        c = self.cfg
        stride, offset = c.parts * workers, c.part * workers + worker
        # The loader takes the workers' samples in turn: output j is worker j % workers's
        # (j // workers)-th, so skipping the first ``skip`` outputs skips these of this worker.
        skip = max(0, -(-(self.skip - worker) // workers))
        for i, load in enumerate(_raw_samples(c.data, c.split, c.resolution, stride, offset)):
            if i < skip:
                continue
            key = "?"
            try:
                raw = load()
                key = str(raw.get("key", key))
                yield self.processor(raw)
            except Exception as e:  # never stop a long job on one sample; counted and logged
                yield {"bad": (key, f"{type(e).__name__}: {e}")}


def _png(image: torch.Tensor) -> bytes:
    """(3, H, W) in [-1, 1] -> PNG bytes (exact: the tensor came from 8-bit levels)."""
    buf = io.BytesIO()
    Image.fromarray(to_uint8(image).permute(1, 2, 0).numpy()).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


class _ShardSink:
    """Webdataset tars of at most ``shard_size`` samples, each written to a temporary name and
    renamed when complete, then recorded in ``run`` with the loader outputs it used (written
    and skipped), so a rerun passes exactly these over and a crash never leaves a truncated
    shard under a shard name."""

    def __init__(self, run: OutputDir, prefix: str, shard_size: int):
        self.run, self.prefix, self.shard_size = run, prefix, shard_size
        parts: list[tuple[str, int, int]] = []  # (shard or "", samples used, written)
        for rec in run.history:
            tars = [f for f in rec["files"] if f.endswith(".tar")]
            names = [p[0] for p in parts]
            if tars and tars[0] in names:  # written again after a gone shard: from there on
                parts = parts[: names.index(tars[0])]
            if "used" in rec:
                parts.append((tars[0] if tars else "", rec["used"], len(rec["done"])))
        for i, (name, _, _) in enumerate(parts):  # up to the first shard that is gone
            if name and not (run.path / name).is_file():
                parts = parts[:i]
                break
        self.shards = [p[0] for p in parts if p[0]]
        self.consumed = sum(p[1] for p in parts)
        self.written = sum(p[2] for p in parts)
        self.writer, self.count, self.keys, self.bad = None, 0, [], []

    def skip(self, key: str, reason: str) -> None:
        self.bad.append((key, reason))  # recorded with the shard that follows it

    def write(self, sample: dict, key: str) -> None:
        import webdataset as wds

        if self.writer is None:
            self.name = f"{self.prefix}-{len(self.shards):06d}.tar"
            self.tmp = str(self.run.target(self.name)) + ".tmp"
            self.writer, self.count = wds.TarWriter(self.tmp), 0
        self.writer.write(sample)
        self.count += 1
        self.keys.append(key)
        if self.count == self.shard_size:
            self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            os.replace(self.tmp, self.run.path / self.name)
            self.shards.append(self.name)
            self.writer = None
        if self.keys or self.bad:
            for key, reason in self.bad:
                self.run.record_skipped(key, reason)
            files = [self.name] if self.keys else []
            self.run.record_done(self.keys, files, used=len(self.keys) + len(self.bad))
            self.consumed += len(self.keys) + len(self.bad)
            self.written += len(self.keys)
            self.keys, self.bad = [], []


@torch.no_grad()
def _features(vae, encoder, x: torch.Tensor, dtype) -> dict[str, torch.Tensor]:
    """(B, 3, R, R) -> {"mean": (B, C, R/8, R/8)[, "tokens": (B, N, D)]} on the CPU."""
    mean = vae.encode(x)
    out = {"mean": mean.to("cpu", dtype)}
    if encoder is not None:
        out["tokens"] = encoder(mean).to("cpu", dtype)
    return out


def _encode_and_write(vae, samples: list[dict], cfg, sink, device, encoder, extra) -> None:
    x = torch.stack([s["image"] for s in samples]).to(device)  # (B, 3, R, R)
    dtype = DTYPES[cfg.dtype]
    from safetensors.torch import save

    feats = _features(vae, encoder, x, dtype)
    if cfg.flip:
        flipped = _features(vae, encoder, x.flip(-1), dtype)
        feats.update({f"{k}_flip": v for k, v in flipped.items()})
    for i, s in enumerate(samples):
        tensors = {k: v[i].contiguous() for k, v in feats.items()}
        meta = {"key": s["key"], "caption": s["caption"], "label": s["label"]}
        if extra is not None:
            meta.update(extra(s["key"]))
        sample = {
            "__key__": s["key"].replace(".", "_").replace("/", "_"),  # tar keys: no dots
            "txt": s["alt_text"],
            "json": meta,
            LATENT_EXT: save(tensors),
        }
        if cfg.images:
            sample["png"] = _png(s["image"])
        sink.write(sample, s["key"])


def write_latent_cache(
    cfg: CacheLatentsConfig,
    vae: FrozenVAE | None = None,
    encoder: torch.nn.Module | None = None,
    extra=None,
) -> dict:
    """Encode ``cfg.split`` (this part of it) and write shards + meta; returns the meta.

    ``vae``: the frozen VAE to use; default built from ``cfg.vae`` (after seeding with
    ``cfg.seed``, so a config-built VAE equals the trainer's). ``encoder``: a frozen OpenVision 3
    encoder (scaled latents (B, C, h, w) -> tokens (B, N, D)) whose tokens are stored too;
    ``cfg.tokens`` loads one (and its VAE) from an export instead. ``extra``: key -> dict of
    more JSON fields per sample (a demo's labels). Unreadable samples are skipped, logged with
    their key and counted in ``meta["skipped"]``. An interrupted part resumes (module docstring).
    """
    from openvision3.distributed.process import pick_device

    if not cfg.out:
        raise ValueError("cache-latents needs an output directory: --out DIR")
    device = pick_device(cfg.device)
    if cfg.tokens and encoder is None:
        from openvision3.pretrained import load_pretrained

        model = load_pretrained(cfg.tokens, device=device)
        vae, encoder = model.vae, model.encoder
    if vae is None:
        torch.manual_seed(cfg.seed)
        vae = FrozenVAE(cfg.vae)
    vae = vae.to(device).eval()
    if encoder is not None:
        encoder = encoder.to(device).eval()
    out = resolve(cfg.out, cfg.resolution)
    prefix = FeatureCache.part_prefix(cfg.split, cfg.part)
    run = OutputDir(
        out, "cache-latents", cache_options(cfg), (f"{prefix}-*.tar", f"{prefix}.json"),
        cfg.overwrite, record=f"{prefix}.progress.jsonl", flag="--out", summary=False,
    )  # fmt: skip
    sink = _ShardSink(run, prefix, cfg.shard_size)
    done = sink.consumed
    if done:
        log.info("continuing %s part %d after %d samples", cfg.split, cfg.part, done)
    loader = torch.utils.data.DataLoader(
        _ProcessedSamples(cfg, skip=done),
        batch_size=None,
        num_workers=cfg.data.num_workers,
        collate_fn=_identity,
    )
    pending, bad = [], []
    for sample in loader:
        if "bad" in sample:
            bad.append(sample["bad"])
            sink.skip(*sample["bad"])
            log.warning("skipped %r (%s); %d skipped so far", *sample["bad"], len(bad))
            continue
        pending.append(sample)
        if len(pending) == cfg.batch_size:
            _encode_and_write(vae, pending, cfg, sink, device, encoder, extra)
            pending = []
    if pending:
        _encode_and_write(vae, pending, cfg, sink, device, encoder, extra)
    sink.close()
    if bad and not run.written:
        raise NothingWrittenError(
            f"none of the {len(bad)} samples of split {cfg.split!r} left to cache could be "
            f"read; the first, {bad[0][0]!r}: {bad[0][1]}"
        )
    c = cfg.resolution // vae.cfg.downsample
    tokens = None
    if encoder is not None:
        with torch.no_grad():
            probe = torch.zeros(1, vae.cfg.latent_channels, c, c, device=device)
            n, d = encoder(probe).shape[1:]
        side = math.isqrt(n)
        tokens = {"shape": [n, d], "grid": [side, n // side], "source": cfg.tokens or "given"}
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "split": cfg.split,
        "resolution": cfg.resolution,
        "resize": cfg.data.resize,
        "flip": cfg.flip,
        "dtype": cfg.dtype,
        "latent_shape": [vae.cfg.latent_channels, c, c],
        "tokens": tokens,
        "images": cfg.images,
        "vae": {
            "pretrained": cfg.vae.pretrained,
            "convention": vae.cfg.convention,
            "scaling_factor": vae.cfg.scaling_factor,
            "shift_factor": vae.cfg.shift_factor,
            "fingerprint": vae_fingerprint(vae),
        },
        "source": {"source": cfg.data.source, "path": cfg.data.path},
        "part": cfg.part,
        "parts": cfg.parts,
        "written": sink.written,
        "written_this_run": run.written,
        "skipped": len(run.skipped),
        "skipped_keys": sorted(run.skipped)[:100],
        "shards": sink.shards,
    }
    meta_name = FeatureCache.meta_name(cfg.split, cfg.part)
    write_json(run.target(meta_name), meta)
    run.record_done([], [meta_name])
    log.info("cached %d latents of %r in %s (%d skipped)", run.written, cfg.split, out, len(bad))
    return meta


# ---------------------------------------------------------------------- reader
def read_cache_meta(path: str, split: str) -> dict:
    """The merged meta of every written part of ``split`` under ``path`` (a cache directory)."""
    metas = []
    for p in sorted(glob.glob(os.path.join(path, FeatureCache.meta_glob(split)))):
        with open(p) as f:
            metas.append(json.load(f))
    if not metas:
        raise FileNotFoundError(
            f"no latent cache of split {split!r} in {path!r}: write it with `ov3 cache-latents`"
        )
    parts = {m["parts"] for m in metas}
    if len(parts) != 1 or len(metas) != parts.pop():
        raise ValueError(
            f"latent cache {path!r}: {len(metas)} parts written of {metas[0]['parts']}"
        )
    same = ("format", "version", "resolution", "resize", "flip", "latent_shape", "vae", "tokens")
    for m in metas:  # caches written before tokens existed
        m.setdefault("tokens", None)
        m.setdefault("images", True)
    for m in metas[1:]:
        diff = [k for k in same if m[k] != metas[0][k]]
        if diff:
            raise ValueError(f"latent cache {path!r}: parts disagree on {diff}")
    merged = {k: metas[0][k] for k in same + ("split", "dtype", "source", "images")}
    merged["written"] = sum(m["written"] for m in metas)
    merged["skipped"] = sum(m["skipped"] for m in metas)
    return merged


def check_cache_vae(meta: dict, vae: FrozenVAE | None) -> None:
    """Raise unless the cache was written by exactly this VAE, with posterior means."""
    if vae is None:
        raise ValueError("data.latents: the model has no VAE to decode the pixel losses with")
    if vae.cfg.sample_posterior:
        raise ValueError(
            "data.latents stores posterior means; set model.vae.sample_posterior=False"
        )
    if meta["vae"]["fingerprint"] != vae_fingerprint(vae):
        raise ValueError(
            f"data.latents was written with another VAE ({meta['vae']['pretrained']!r}, "
            f"{meta['vae']['convention']}) than the model's ({vae.cfg.pretrained!r}, "
            f"{vae.cfg.convention}); rewrite it with `ov3 cache-latents`"
        )


class LatentSampleProcessor:
    """Raw cached sample -> {"image", "latent", texts, label, key}; a list -> a batch.

    Picklable (runs in DataLoader workers). The flip is drawn per sample from
    ``sample_seed(seed, epoch, key)`` like the on-the-fly transform (module docstring).
    """

    def __init__(self, cfg: DataConfig, resolution: int, seed: int = 0):
        self.text = SampleProcessor(dataclasses.replace(cfg, hflip=0.0), resolution, train=False)
        self.resolution, self.hflip, self.seed = resolution, cfg.hflip, seed

    def __call__(self, raw: dict, epoch: int = 0) -> dict:
        from safetensors.torch import load

        key = raw["key"]
        alt, caption = (raw.get("alt_text") or "").strip(), (raw.get("caption") or "").strip()
        if not alt and not caption:
            raise BadSample(f"sample {key!r} has no alt text and no caption")
        if raw.get("image") is None or raw.get("latent") is None:
            raise BadSample(f"sample {key!r} has no image or no {LATENT_EXT}")
        x = pil_to_tensor(decode_image(raw["image"], key))  # (3, R, R)
        if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            raise BadSample(f"sample {key!r} is {tuple(x.shape)}, not {self.resolution} px")
        tensors = load(raw["latent"])
        flip = False
        if self.hflip > 0:
            g = torch.Generator().manual_seed(sample_seed(self.seed, epoch, key))
            flip = bool(torch.rand(1, generator=g) < self.hflip)
        if flip:
            x, z = x.flip(-1), tensors["mean_flip"]
        else:
            z = tensors["mean"]
        return {
            "image": x,
            "latent": z.float(),
            "alt_text": alt,
            "caption": caption,
            "label": raw.get("label"),
            "key": key,
        }

    def collate(self, samples: list[dict]) -> dict:
        """The image loader's batch plus ``latents`` float32 (B, C, R/8, R/8)."""
        batch = self.text.collate(samples)
        batch["latents"] = torch.from_numpy(np.stack([s["latent"].numpy() for s in samples]))
        return batch


class LatentStream(WebDatasetStream):
    """The webdataset stream (same order, sharding and resume) over latent-cache shards."""

    def _try(self, raw: dict, epoch: int, samples: list, bad: list) -> None:
        key = raw.get("__key__", "?")
        try:
            sample = raw_to_sample(raw, *self.text_keys)
            meta = json.loads(raw["json"]) if "json" in raw else {}
            sample["key"] = meta.get("key", sample["key"])  # the source's key (flip seed)
            sample["latent"] = raw.get(LATENT_EXT)
            samples.append(self.process(sample, epoch))
        except Exception as e:  # never crash on one sample; it is reported by the loader
            bad.append((key, f"{type(e).__name__}: {e}"))


def build_latent_loader(
    cfg: DataConfig,
    split: str,
    resolution: int,
    batch_size: int,
    rank: int,
    world_size: int,
    seed: int = 0,
) -> ImageTextLoader:
    """Train loader over a latent cache: the image loader's batches plus ``latents``, ordered
    and flipped from ``seed`` (the run's ``train.seed``).

    Same order, resume and skipping as the webdataset train loader; ``loader.latent_meta``
    holds the cache meta (check it against the model's VAE with ``check_cache_vae``).
    """
    path = resolve(cfg.latents, resolution)
    meta = read_cache_meta(path, split)
    if meta["resolution"] != resolution:
        raise ValueError(
            f"latent cache {path!r} is at {meta['resolution']} px, the stage at {resolution} px; "
            "put '{resolution}' in data.latents and cache every stage's resolution"
        )
    if meta["resize"] != cfg.resize:
        raise ValueError(f"latent cache used resize={meta['resize']!r}, data.resize={cfg.resize!r}")
    if cfg.hflip > 0 and not meta["flip"]:
        raise ValueError("data.hflip > 0 needs a cache written with flips (cache-latents --flip)")
    processor = LatentSampleProcessor(cfg, resolution, seed)
    shards = list_shards(path, split)
    # The cache's own text layout (txt + json caption), whatever the source used.
    loader = stream_loader(
        LatentStream,
        shards,
        processor,
        cfg,
        batch_size,
        rank,
        world_size,
        train=True,
        alt_text_key="txt",
        caption_key="caption",
        seed=seed,
    )
    loader.latent_meta = meta
    return loader


# ---------------------------------------------------------------------- map-style reader
class FeatureCache:
    """Random access to a cache's samples: ``cache[i]`` -> {"key", "label", "caption",
    "alt_text", <the JSON's other fields>, and the stored tensors ("mean", "tokens", their
    "_flip" twins) as float32}; ``len(cache)`` samples over every part, in shard order.

    The index holds each sample's byte range in its tar (``tarfile`` headers only), so
    ``cache[i]`` reads one sample; ``cache.meta`` is ``read_cache_meta``'s merged meta.

    The cache's file names (the module docstring's layout) are the class methods below; every
    reader and writer of a cache names its files through them.
    """

    # Per-position token statistics of the train split (``data.token_stats``), beside
    # the shards; a generator export carries its copy under the same name.
    STATS_NAME = "latent_stats.safetensors"

    @staticmethod
    def part_prefix(split: str, part: int = 0) -> str:
        """``{split}-{part:03d}``: the prefix of a part's shards, meta and record."""
        return f"{split}-{part:03d}"

    @classmethod
    def meta_name(cls, split: str, part: int = 0) -> str:
        """A part's meta file, written last: its presence marks the part finished."""
        return f"{cls.part_prefix(split, part)}.json"

    @staticmethod
    def meta_glob(split: str) -> str:
        """The glob of every part's meta file of ``split``."""
        return f"{split}-[0-9][0-9][0-9].json"

    @staticmethod
    def split_files(split: str) -> str:
        """The prefix every file of ``split`` starts with (shards, metas, records)."""
        return f"{split}-"

    @classmethod
    def stats_path(cls, path: str | os.PathLike) -> str:
        """The token statistics file of the cache at ``path``."""
        return os.path.join(os.fspath(path), cls.STATS_NAME)

    def __init__(self, path: str, split: str):
        import tarfile

        self.path, self.split = path, split
        self.meta = read_cache_meta(path, split)
        self.shards = list_shards(path, split)
        self.index: list[tuple[int, dict[str, tuple[int, int]]]] = []  # (shard, ext -> range)
        for s, shard in enumerate(self.shards):
            members: dict[str, dict[str, tuple[int, int]]] = {}
            with tarfile.open(shard) as tar:
                for m in tar:
                    if m.isfile():
                        key, ext = m.name.split(".", 1)
                        members.setdefault(key, {})[ext] = (m.offset_data, m.size)
            self.index += [(s, exts) for exts in members.values()]
        self._files: dict[int, object] = {}

    def __len__(self) -> int:
        return len(self.index)

    def _read(self, shard: int, span: tuple[int, int]) -> bytes:
        f = self._files.get(shard)
        if f is None:
            f = self._files[shard] = open(self.shards[shard], "rb")  # noqa: SIM115
        f.seek(span[0])
        return f.read(span[1])

    def __getitem__(self, i: int) -> dict:
        from safetensors.torch import load

        shard, exts = self.index[i]
        meta = json.loads(self._read(shard, exts["json"]))
        out = {**meta, "alt_text": self._read(shard, exts["txt"]).decode() if "txt" in exts else ""}
        for name, t in load(self._read(shard, exts[LATENT_EXT])).items():
            out[name] = t.float()
        return out

    def __getstate__(self):  # picklable for DataLoader workers: files reopen lazily
        return {**self.__dict__, "_files": {}}


def read_features(path: str, split: str, name: str = "tokens") -> dict:
    """A small cache in memory: {name: (M, ...) float32 stacked, "keys", "labels" (M,) int64,
    "captions", "alt_texts", "records" (each sample's JSON), "meta"}."""
    cache = FeatureCache(path, split)
    records = [cache[i] for i in range(len(cache))]
    if records and name not in records[0]:
        raise KeyError(f"cache {path!r} stores no {name!r} (has {sorted(records[0])})")
    return {
        name: torch.stack([r.pop(name) for r in records]) if records else torch.empty(0),
        "keys": [r["key"] for r in records],
        "labels": torch.tensor([int(r.get("label") or 0) for r in records]),
        "captions": [r.get("caption", "") for r in records],
        "alt_texts": [r.get("alt_text", "") for r in records],
        "records": [{k: v for k, v in r.items() if not torch.is_tensor(v)} for r in records],
        "meta": cache.meta,
    }
