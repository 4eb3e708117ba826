"""The batched ``ov3`` inference commands: encode, reconstruct, caption, classify, latent-stats.

Each reads an image file, a folder (recursive) or webdataset shards, decodes in threads, runs
the ``Pipeline`` batch by batch and writes through ``writers.py``: every input that is not
written (undecodable, a dangling symlink, a broken shard) is listed with its reason in
``summary.json``. The output folder is owned through ``openvision3.outputs.OutputDir``: the
options that shape the outputs are recorded, a rerun with other ones is refused, files the
command did not write are never replaced without ``--overwrite``, and running the same command
again continues an interrupted run and retries the inputs it skipped or that changed since.
Outputs name each input by its key (``inputs.list_items``): its path relative to the folder,
extension included, or the sample's ``__key__``.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from tyro.conf import Positional, arg

from openvision3.data.token_stats import TokenStats, load_token_stats, normalize
from openvision3.files import atomic_write
from openvision3.inference.api import Pipeline, load_pipeline
from openvision3.inference.inputs import Batch, batches, list_items
from openvision3.inference.writers import JsonlWriter, TokenShardWriter, image_name, save_image
from openvision3.outputs import OutputDir, file_stamp, model_identity

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class InferenceConfig:
    """Options shared by the inference commands."""

    model: Annotated[Positional[str], arg(metavar="MODEL")]
    """our export directory, a Hugging Face repo id, or a released OpenVision 3 encoder"""
    input: Annotated[Positional[str], arg(metavar="INPUT")]
    """an image file, a folder (searched recursively), or webdataset shards (a.tar, d-{0..9}.tar).
    Outputs key inputs by relative path (sub/photo.jpg) or __key__ (repeats get #2, #3, ...)"""
    output: str
    """output directory (created); running the same command again continues an interrupted
    run and retries inputs that were skipped or changed since"""
    batch_size: int = 32
    """images per forward; 0 = the largest that fits (GPU) or 32 (CPU)"""
    resolution: int | None = None
    """square input side in pixels; default: the one the export was last trained at (exports
    without it, and released encoders: the position grid's, 256 px for B/2)"""
    # how an image becomes a square: center_crop (short side, then centre), resize (squash), pad
    resize: Literal["center_crop", "resize", "pad"] = "center_crop"
    device: str = "auto"  # auto (CUDA when available) | cpu | cuda | cuda:N
    # dtype the weights are loaded in
    weights_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """auto: bf16 autocast on GPU, fp32 elsewhere"""
    compile: bool = False
    """torch.compile the VAE encoder and the ViT"""
    overwrite: bool = False
    """start again: delete this command's earlier outputs in --output and replace any file
    in the way (without it, a rerun with the same options continues, with others is refused)"""
    limit: int = 0
    """stop after this many new images (0: all)"""
    num_workers: int = 4
    """image decoding threads (0: decode in the main thread)"""
    progress: bool = True  # show a progress bar

    def __post_init__(self):
        for name in ("batch_size", "limit", "num_workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0")


@dataclass
class EncodeConfig(InferenceConfig):
    # output files: safetensors or npz shards, or webdataset tars
    format: Literal["safetensors", "npz", "webdataset"] = "safetensors"
    pooled: bool = False
    """also write the pooled, projected embedding (B, E) as `pooled`"""
    layout: Literal["tokens", "grid"] = "tokens"
    """tokens: (B, N, D); grid: (B, D, h, w), ready for a diffusion trainer"""
    normalize: str = ""
    """a latent-stats file: write (z - mean) / sqrt(var + eps) in the grid layout"""
    shard_size: int = 1024
    """images per output file (the unit of resume)"""
    save_dtype: Literal["float32", "float16", "bfloat16"] = "float32"  # dtype of the stored tokens

    def __post_init__(self):
        super().__post_init__()
        if self.shard_size < 1:
            raise ValueError("--shard-size must be >= 1")
        if self.normalize and self.layout != "grid":
            raise ValueError("--normalize needs --layout grid (the statistics are (D, h, w))")


@dataclass
class ReconstructConfig(InferenceConfig):
    """One image per input, named <key>.<ext>: the input's relative path with its own extension
    kept (sub/photo.jpg -> OUTPUT/sub/photo.jpg.png; webdataset sample s0 -> OUTPUT/s0.png), so
    photo.png and photo.jpg get their own outputs and a rerun finds the same names."""

    side_by_side: bool = False
    """write the (preprocessed) input and its reconstruction next to each other"""
    ext: Literal["png", "jpg", "webp"] = "png"  # image format of the reconstructions


@dataclass
class CaptionConfig(InferenceConfig):
    max_len: int = 0
    """longest caption in tokens (0: the caption decoder's context length)"""
    beam_size: int = 1  # beams of the search (1 = greedy)

    def __post_init__(self):
        super().__post_init__()
        if self.beam_size < 1 or self.max_len < 0:
            raise ValueError("--beam-size must be >= 1 and --max-len >= 0")


@dataclass
class ClassifyConfig(InferenceConfig):
    labels: tuple[str, ...] = ()
    """class names, e.g. --labels cat dog "traffic light" """
    labels_file: str = ""
    """a text file with one class name per line (instead of --labels)"""
    # prompts with {} for the class name; a class's text embedding is their mean
    templates: tuple[str, ...] = ("a photo of a {}.",)
    topk: int = 5  # labels written per image, best first

    def __post_init__(self):
        super().__post_init__()
        if bool(self.labels) == bool(self.labels_file):
            raise ValueError("pass exactly one of --labels and --labels-file")
        if self.topk < 1:
            raise ValueError("--topk must be >= 1")
        if any("{}" not in t for t in self.templates):
            raise ValueError("every template needs a {} for the class name")

    def label_names(self) -> list[str]:
        if self.labels:
            return list(self.labels)
        with open(self.labels_file, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]


@dataclass
class TokenStatsConfig(InferenceConfig):
    """Writes `latent_stats.safetensors` (`mean` / `var` (D, h, w)) into --output."""


# ---------------------------------------------------------------------- shared loop
def _pipeline(cfg: InferenceConfig) -> Pipeline:
    autocast = {"auto": None, "fp32": False, "bf16": True}[cfg.precision]
    return load_pipeline(
        cfg.model,
        device=None if cfg.device == "auto" else cfg.device,
        dtype=_DTYPES[cfg.weights_dtype],
        resolution=cfg.resolution,
        resize=cfg.resize,
        autocast=autocast,
        compile=cfg.compile,
    )


def _options(cfg: InferenceConfig, pipe: Pipeline, **more) -> dict:
    """What shapes every command's outputs: the model (its files' sizes and times), the input
    resolution and resize, the weights' dtype and autocast; plus the command's own ``more``."""
    return {
        "model": model_identity(cfg.model),
        "resolution": pipe.resolution,
        "resize": cfg.resize,
        "weights_dtype": cfg.weights_dtype,
        "autocast": pipe.use_autocast,
        **more,
    }


def _output(cfg: InferenceConfig, command: str, options: dict, outputs=()) -> OutputDir:
    return OutputDir(cfg.output, command, options, outputs, overwrite=cfg.overwrite)


def _progress(enabled: bool, total: int | None):
    from rich.progress import Progress

    return Progress(disable=not enabled, transient=False), total


def _stamp(item) -> list[int] | None:
    """An input file's size and mtime (None for tar members and unreadable entries)."""
    return file_stamp(item.data) if isinstance(item.data, str) and not item.error else None


def _todo(run: OutputDir, items, every: bool = False):
    """The items without an output (new, skipped before, or changed since), or ``every``
    item; their stamps go to ``run.input_stamps`` for the record."""
    for item in items:
        stamp = _stamp(item)
        if every or run.needs(item.key, stamp):
            run.input_stamps[item.key] = stamp
            yield item


def _run(
    command: str,
    cfg: InferenceConfig,
    pipe: Pipeline,
    run: OutputDir,
    handle: Callable[[Batch], None],
    finish: Callable[[], None] = lambda: None,
    extra: Callable[[], dict] = dict,
    finish_on_interrupt: bool = True,
    todo=None,
) -> int:
    """Feed batches of the inputs without an output to ``handle``; skipped inputs are
    recorded; ``finish`` writes what is buffered. Returns the exit code: 0, 1 when inputs were
    left to write and none was written, 130 when interrupted (run the same command again)."""
    items, total = list_items(cfg.input)
    todo = _todo(run, items) if todo is None else todo
    if cfg.limit:
        todo = itertools.islice(todo, cfg.limit)
    if run.resumed:
        log.info(
            "continuing in %s: %d done, %d skipped before (tried again)",
            run.path, len(run.done), len(run.skipped),
        )  # fmt: skip
    batch_size = cfg.batch_size or pipe.autotune_batch_size(start=32)
    left = None if total is None else max(0, total - len(run.done))
    progress, left = _progress(cfg.progress, left if not cfg.limit else cfg.limit)
    tried = 0
    try:
        with progress:
            task = progress.add_task(command, total=left)
            for batch in batches(todo, pipe.transform_cfg, batch_size, cfg.num_workers):
                for key, error in batch.bad:
                    log.warning("skipping %s", error)
                    run.record_skipped(key, error)
                if batch.keys:
                    handle(batch)
                tried += len(batch.keys) + len(batch.bad)
                progress.advance(task, len(batch.keys) + len(batch.bad))
        finish()
    except KeyboardInterrupt:
        if finish_on_interrupt:
            finish()
        log.warning("interrupted; run the same command again to continue")
        return 130
    summary = run.summary(extra())
    print(json.dumps({k: v for k, v in summary.items() if k != "files"}, indent=2))
    if tried and not run.written:
        log.error(
            "none of the %d inputs left was written (each one's reason: %s)",
            tried, run.path / "summary.json",
        )  # fmt: skip
        return 1
    return 0


# ---------------------------------------------------------------------- commands
def run_encode(cfg: EncodeConfig) -> int:
    """Tokens (and optionally pooled embeddings) of every image, in shards."""
    pipe = _pipeline(cfg)
    options = _options(
        cfg, pipe, format=cfg.format, pooled=cfg.pooled, layout=cfg.layout,
        normalize=model_identity(cfg.normalize) if cfg.normalize else "",
        save_dtype=cfg.save_dtype,
    )  # fmt: skip
    run = _output(cfg, "encode", options, outputs=("tokens-*",))
    stats = load_token_stats(cfg.normalize) if cfg.normalize else None
    meta = {
        "model": cfg.model,
        "resolution": pipe.resolution,
        "layout": "(B, D, h, w)" if cfg.layout == "grid" else "(B, N, D)",
        "grid": json.dumps(pipe.token_grid()),
        "normalized": bool(stats),
    }
    writer = TokenShardWriter(run, cfg.format, cfg.shard_size, _DTYPES[cfg.save_dtype], meta)

    def handle(batch: Batch) -> None:
        if cfg.pooled:
            tokens, pooled = pipe.encode_with_pooled(batch.pixels)
        else:
            tokens, pooled = pipe.encode(batch.pixels), None
        if cfg.layout == "grid":
            tokens = pipe.tokens_to_grid(tokens)
        if stats is not None:
            tokens = normalize(tokens, stats)
        arrays = {"tokens": tokens} if pooled is None else {"tokens": tokens, "pooled": pooled}
        writer.add(batch.keys, arrays)

    return _run("encode", cfg, pipe, run, handle, finish=writer.flush)


def run_reconstruct(cfg: ReconstructConfig) -> int:
    """One image file per input, ``<key>.<ext>``: the reconstruction, or input | reconstruction."""
    pipe = _pipeline(cfg)
    options = _options(cfg, pipe, side_by_side=cfg.side_by_side, ext=cfg.ext)
    run = _output(cfg, "reconstruct", options)

    def handle(batch: Batch) -> None:
        recon = pipe.to_pil(pipe.reconstruct(batch.pixels))
        if cfg.side_by_side:
            from PIL import Image

            inputs = pipe.to_pil(batch.pixels)
            pairs = []
            for a, b in zip(inputs, recon):
                canvas = Image.new("RGB", (a.width + b.width, a.height))
                canvas.paste(a, (0, 0))
                canvas.paste(b, (a.width, 0))
                pairs.append(canvas)
            recon = pairs
        names = [image_name(k, cfg.ext) for k in batch.keys]
        run.claim(names)  # refuses a file in the way before writing any
        for name, image in zip(names, recon):
            save_image(run, name, image)
        run.record_done(batch.keys, names)

    return _run("reconstruct", cfg, pipe, run, handle)


def run_caption(cfg: CaptionConfig) -> int:
    """``captions.jsonl``: one ``{"key", "caption"}`` row per image."""
    pipe = _pipeline(cfg)
    options = _options(cfg, pipe, max_len=cfg.max_len, beam_size=cfg.beam_size)
    run = _output(cfg, "caption", options, outputs=("captions.jsonl",))
    writer = JsonlWriter(run, "captions.jsonl")

    def handle(batch: Batch) -> None:
        caps = pipe.caption(batch.pixels, max_len=cfg.max_len or None, beam_size=cfg.beam_size)
        writer.write([{"key": k, "caption": c} for k, c in zip(batch.keys, caps)])

    return _run("caption", cfg, pipe, run, handle)


def run_classify(cfg: ClassifyConfig) -> int:
    """``predictions.jsonl``: ``{"key", "top": [{"label", "prob"}, ...]}`` per image."""
    pipe = _pipeline(cfg)
    labels = cfg.label_names()
    options = _options(cfg, pipe, labels=labels, templates=list(cfg.templates), topk=cfg.topk)
    run = _output(cfg, "classify", options, outputs=("predictions.jsonl",))
    writer = JsonlWriter(run, "predictions.jsonl")
    weights = pipe.class_weights(labels, cfg.templates)  # (K, E)
    k = min(cfg.topk, len(labels))

    def handle(batch: Batch) -> None:
        probs, idx = pipe.zero_shot(batch.pixels, weights).topk(k, dim=-1)  # (B, k)
        rows = [
            {"key": key, "top": [{"label": labels[i], "prob": round(p, 6)} for p, i in zip(ps, ix)]}
            for key, ps, ix in zip(batch.keys, probs.tolist(), idx.tolist())
        ]
        writer.write(rows)

    return _run("classify", cfg, pipe, run, handle)


def run_token_stats(cfg: TokenStatsConfig) -> int:
    """Per-position mean / variance of the tokens over the input images (RAE normalisation).

    The statistics cover every input, so a rerun computes them again over all of them when any
    input is new, changed or was skipped, and does nothing otherwise."""
    from openvision3.data.latents import FeatureCache

    name = FeatureCache.STATS_NAME  # the name a token cache gives its statistics
    pipe = _pipeline(cfg)
    run = _output(cfg, "latent-stats", _options(cfg, pipe), outputs=(name,))
    items, _ = list_items(cfg.input)
    complete = (run.path / name).exists() and not any(run.needs(i.key, _stamp(i)) for i in items)
    todo = iter(()) if complete else _todo(run, list_items(cfg.input)[0], every=True)
    stats, keys = TokenStats(), []

    def handle(batch: Batch) -> None:
        stats.update(pipe.encode(batch.pixels))
        keys.extend(batch.keys)

    def finish() -> None:
        if stats.count:
            meta = {"model": cfg.model, "resolution": pipe.resolution}
            atomic_write(run.target(name), lambda p: stats.save(str(p), pipe.token_grid(), meta))
            run.record_done(keys, [name])

    extra = lambda: {"images": len(run.done)}  # noqa: E731
    return _run(
        "latent-stats", cfg, pipe, run, handle, finish, extra, finish_on_interrupt=False, todo=todo
    )
