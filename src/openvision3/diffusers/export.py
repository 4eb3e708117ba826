"""Our exports <-> diffusers folders.

``to_diffusers(export, out)``: a tokenizer export (``openvision3.save_pretrained``) becomes an
``OpenVision3Autoencoder`` folder (``config.json`` + ``diffusion_pytorch_model.safetensors``);
a generator export (``GenerationTask.export``) becomes an ``OpenVision3DiTPipeline`` folder
(``model_index.json``, ``transformer/``, ``vae/`` with the generator's token statistics,
``scheduler/``). Each gets a ``README.md`` model card whose code loads it.

``load_diffusers_folder(path)`` reads such folders back into this package's facades: the
autoencoder as an ``openvision3.load``-style ``Pipeline``, the pipeline as a ``Generator``
(what ``load_generator`` returns), so ``ov3 serve --generator`` and ``openvision3.load`` take
them.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from openvision3.artefacts import (
    AUTOENCODER_CLASS,
    DIFFUSERS_AUTOENCODER,
    DIFFUSERS_PIPELINE,
    GENERATOR,
    PIPELINE_CLASS,
    TOKENIZER,
    Card,
    folder_kind,
    portable_name,
    refuse,
    users_file,
    write_card,
)
from openvision3.errors import ConfigError
from openvision3.files import staged_folder


def diffusers_kind(path: str) -> str:
    """ "pipeline", "autoencoder", or "" for a folder that is neither of ours."""
    kind = folder_kind(path).name
    return {DIFFUSERS_PIPELINE: "pipeline", DIFFUSERS_AUTOENCODER: "autoencoder"}.get(kind, "")


def is_diffusers_folder(path: str) -> bool:
    """True for a folder written by ``to_diffusers`` (an OpenVision 3 pipeline or autoencoder)."""
    return os.path.isdir(path) and bool(diffusers_kind(path))


# ---------------------------------------------------------------------- writing
def to_diffusers(export: str, out: str, solver: str = "euler", guide: str = "") -> str:
    """Write the diffusers folder of ``export`` (a tokenizer or generator export) to ``out``;
    ``solver``: the pipeline's scheduler, euler (diffusers' ``FlowMatchEulerDiscreteScheduler``)
    or heun (``OpenVision3FlowScheduler``); ``guide``: a second generator export, AutoGuidance's
    weaker model, saved as the pipeline's ``guide_transformer``. Returns ``out``.

    The folder is written whole beside ``out`` and moved in (``files.staged_folder``), as our
    other exports are: ``out`` may be missing, empty, or an earlier diffusers folder of the same
    kind (replaced; a README.md of the user's is kept); any other folder is refused in one line,
    so an export never writes into a folder it did not write."""
    kind = folder_kind(export).name
    if kind not in (TOKENIZER, GENERATOR):
        raise ConfigError(
            f"{export!r} is {folder_kind(export).what}, not an OpenVision 3 tokenizer or "
            "generator export: --format diffusers converts those"
        )
    writes = DIFFUSERS_AUTOENCODER if kind == TOKENIZER else DIFFUSERS_PIPELINE
    there = folder_kind(out)
    if there.name not in ("missing", "empty", writes):
        refuse(out, there, f"a new folder, or {_KINDS_WRITTEN[writes]} to replace")
    last = "config.json" if kind == TOKENIZER else "model_index.json"  # what names the folder
    with staged_folder(out, last=last, keep=users_file) as tmp:
        if kind == TOKENIZER:
            _autoencoder_folder(export, str(tmp), name=portable_name(out))
        else:
            _pipeline_folder(export, str(tmp), solver, guide, name=portable_name(out))
    return out


_KINDS_WRITTEN = {
    DIFFUSERS_AUTOENCODER: "an OpenVision 3 autoencoder folder",
    DIFFUSERS_PIPELINE: "an OpenVision 3 pipeline folder",
}


def _autoencoder_folder(export: str, out: str, stats: dict | None = None, name: str = "") -> str:
    from openvision3.data.token_stats import load_token_stats
    from openvision3.diffusers.autoencoder import OpenVision3Autoencoder
    from openvision3.generation.task import STATS_NAME
    from openvision3.pretrained import load_pretrained, trained_resolution

    ov3 = load_pretrained(export, device="cpu")
    if stats is None and os.path.isfile(os.path.join(export, STATS_NAME)):
        stats = load_token_stats(os.path.join(export, STATS_NAME))
    res = trained_resolution(export)  # the grid the card shows; statistics fix it
    grid = (res // ov3.cfg.pixel_patch,) * 2 if res else None
    ae = OpenVision3Autoencoder.from_openvision3(ov3, stats, token_grid=grid)
    ae.save_pretrained(out)
    write_card(out, _autoencoder_card(name or portable_name(out), ae))
    return out


def _pipeline_folder(export: str, out: str, solver: str, guide: str = "", name: str = "") -> str:
    from diffusers import FlowMatchEulerDiscreteScheduler

    from openvision3.diffusers.autoencoder import OpenVision3Autoencoder
    from openvision3.diffusers.pipeline import OpenVision3DiTPipeline
    from openvision3.diffusers.scheduler import OpenVision3FlowScheduler
    from openvision3.diffusers.transformer import DiTDHTransformer2DModel
    from openvision3.generation.pipeline import load_generator

    gen = load_generator(export, device="cpu", guide=guide)
    transformer = DiTDHTransformer2DModel.from_dit(gen.model, gen.cfg.class_names)
    weak = DiTDHTransformer2DModel.from_dit(gen.guide) if gen.guide is not None else None
    vae = OpenVision3Autoencoder.from_openvision3(gen.decoder, gen.stats)
    if solver == "euler":  # RAE's fixed shift; the pipeline passes RAE's grid as sigmas
        scheduler = FlowMatchEulerDiscreteScheduler(shift=gen.shift, use_dynamic_shifting=False)
    elif solver == "heun":
        scheduler = OpenVision3FlowScheduler(shift=gen.shift, solver="heun")
    else:
        raise ConfigError(f"solver must be euler or heun, got {solver!r}")
    pipe = OpenVision3DiTPipeline(transformer, vae, scheduler, guide_transformer=weak)
    pipe.save_pretrained(out)
    card = _pipeline_card(name or portable_name(out), transformer.config, gen.shift)
    write_card(out, card)
    return out


def _autoencoder_card(name: str, ae) -> Card:
    d, (h, w) = ae.model.cfg.encoder.width, ae.config.token_grid
    res = h * ae.model.cfg.pixel_patch
    return Card(
        title="OpenVision 3 autoencoder (diffusers)",
        summary=(
            "The OpenVision 3 tokenizer as a diffusers autoencoder: `encode` takes images in "
            f"[-1, 1] (B, 3, H, W) and returns unified tokens (B, {d}, H/16, W/16) in "
            "`.latent`, normalised per position by the stored token statistics "
            "`(z - mean) / sqrt(var + 1e-5)`"
            + ("" if ae.config.has_stats else " (this folder stores none: raw tokens)")
            + "; `decode` returns images in [-1, 1] in `.sample`."
        ),
        kind=AUTOENCODER_CLASS,
        facts={"token grid": f"({d}, {h}, {w}) at {res} px"},
        python=f"""
import torch
import openvision3.diffusers  # registers the OpenVision 3 classes with diffusers
from openvision3.diffusers import OpenVision3Autoencoder

ae = OpenVision3Autoencoder.from_pretrained("{name}")
images = torch.rand(1, 3, {res}, {res}) * 2 - 1  # in [-1, 1]
z = ae.encode(images).latent  # (1, {d}, {h}, {w})
recon = ae.decode(z).sample  # (1, 3, {res}, {res})
""",
        commands=[],
        library_name="diffusers",
        tags=("autoencoder",),
    )


def _pipeline_card(name: str, cfg, shift: float) -> Card:
    return Card(
        title="OpenVision 3 DiT-DH pipeline (diffusers)",
        summary=(
            "A class-conditional DiT-DH (RAE's diffusion transformer with a wide head) on "
            f"OpenVision 3 unified tokens ({cfg.in_channels}, {cfg.input_size}, "
            f"{cfg.input_size}), {cfg.num_classes} classes, as a diffusers pipeline: "
            "`transformer`, `vae` (the OpenVision 3 autoencoder with the token statistics) and "
            f"`scheduler` (time shift {shift:.4g}). `num_inference_steps` counts steps: RAE's "
            "50-point grid is 49."
        ),
        kind=PIPELINE_CLASS,
        facts={"classes": ", ".join(cfg.class_names or []) or cfg.num_classes},
        python=f"""
import openvision3.diffusers  # registers the OpenVision 3 classes with diffusers
from openvision3.diffusers import OpenVision3DiTPipeline

pipe = OpenVision3DiTPipeline.from_pretrained("{name}")
images = pipe([0, 1], guidance_scale=3.0, num_inference_steps=49).images  # PIL images
""",
        commands=[],
        library_name="diffusers",
        pipeline_tag="unconditional-image-generation",
        tags=("dit-dh", "class-conditional"),
    )


# ---------------------------------------------------------------------- reading
def load_diffusers_generator(path: str, device: str = "cpu"):
    """A pipeline folder -> ``Generator`` (``generation/pipeline.py``) with the folder's
    transformer, guide, token statistics, decoder and time shift."""
    from openvision3.diffusers.pipeline import OpenVision3DiTPipeline
    from openvision3.generation.pipeline import Generator
    from openvision3.generation.task import FlowConfig, GenerationConfig

    pipe = OpenVision3DiTPipeline.from_pretrained(path).to(device)
    t = pipe.transformer
    shift = float(pipe.scheduler.config.shift)
    cfg = GenerationConfig(
        model=t.cfg, flow=FlowConfig(shift=shift), class_names=list(t.config.class_names or [])
    )
    stats = {k: v.detach().clone() for k, v in pipe.vae.stats.items()}
    guide = pipe.guide_transformer
    guide = _plain_dit(guide) if guide is not None else None
    return Generator(_plain_dit(t), stats, pipe.vae.openvision3(), cfg, guide)


def _plain_dit(transformer):
    """The ``DiTDH`` (tensor in, tensor out) over a transformer's own tensors (no copy)."""
    from openvision3.generation.models import DiTDH

    with torch.device("meta"):
        dit = DiTDH(transformer.cfg)
    dit.load_state_dict(transformer.state_dict(), assign=True)
    return dit.eval()


def load_diffusers_folder(path: str, device: str | torch.device = "cpu", **pipeline_kw):
    """A folder of ours in diffusers' format -> our facade: a pipeline folder -> ``Generator``;
    an autoencoder folder -> ``openvision3.load``'s ``Pipeline`` (``pipeline_kw``: its
    ``PipelineConfig`` fields; the resolution defaults to the statistics' grid)."""
    kind = diffusers_kind(path)
    if kind == "pipeline":
        return load_diffusers_generator(path, str(device))
    if kind != "autoencoder":
        raise ConfigError(f"{path!r} is not an OpenVision 3 diffusers folder")
    from openvision3.diffusers.autoencoder import OpenVision3Autoencoder
    from openvision3.inference.api import Pipeline, PipelineConfig

    ae = OpenVision3Autoencoder.from_pretrained(path).to(device)
    if ae.config.has_stats and "resolution" not in pipeline_kw:
        pipeline_kw["resolution"] = ae.config.token_grid[0] * ae.model.cfg.pixel_patch
    return Pipeline(ae.openvision3(), PipelineConfig(**pipeline_kw))


def export_diffusers(
    checkpoint: str | Path, out_dir: str | Path, weights: str = "auto", scheduler: str = "euler"
) -> Path:
    """``ov3 export --format diffusers``: ``checkpoint`` (a checkpoint, a run, or already a
    tokenizer / generator export) -> the diffusers folder ``out_dir``
    (``to_diffusers``). A checkpoint is exported first into a new temporary folder beside
    ``out_dir`` (a generator records its decoder relative to it), then removed."""
    import shutil
    import tempfile

    from openvision3.train.export import export_checkpoint

    out = Path(out_dir)
    if folder_kind(checkpoint).name in (TOKENIZER, GENERATOR):
        return Path(to_diffusers(str(checkpoint), str(out), scheduler))
    out.parent.mkdir(parents=True, exist_ok=True)
    native = Path(tempfile.mkdtemp(prefix=f".{out.name}.ov3-export-", dir=out.parent))
    try:
        export_checkpoint(checkpoint, native / "export", weights)
        return Path(to_diffusers(str(native / "export"), str(out), scheduler))
    finally:
        shutil.rmtree(native, ignore_errors=True)
