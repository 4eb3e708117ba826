"""Export a training checkpoint (``single`` or ``dcp``, any world size) as a pretrained model.

``ov3 export <checkpoint or run dir> <out dir>`` writes what ``Trainer.finish`` writes into
``run_dir/final`` (for OpenVision 3 runs ``config.json`` + ``model.safetensors`` +
``model_card.json`` + the ``README.md`` model card, and ``vae/`` for config-built VAEs; other
tasks write their own export), in one process and without a process group: DCP reads every
rank's shards into full tensors. ``openvision3.load_pretrained(out_dir)`` loads the result. Both record
the resolution of the stage that ran the last step, the one ``openvision3.load`` runs at.
``--format diffusers`` writes diffusers' layout instead (``diffusers/export.py``'s
``export_diffusers``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import torch
from tyro.conf import arg

from openvision3.artefacts import folder_kind
from openvision3.errors import CheckpointError
from openvision3.train.checkpoint import find_latest, load_weights, read_meta
from openvision3.train.config import StageConfig
from openvision3.train.task import config_from_checkpoint

log = logging.getLogger(__name__)


def last_trained_stage(stages: list[StageConfig], step: int) -> StageConfig:
    """The stage that ran the last of ``step`` optimizer steps (the first before any step; the
    last past the end)."""
    end = 0
    for stage in stages:
        end += stage.steps
        if step <= end:
            return stage
    return stages[-1]


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, weights: str = "auto") -> Path:
    """Write ``out_dir`` (``save_pretrained`` layout) from a checkpoint directory, or from the
    newest checkpoint of a run directory. ``weights``: ``auto`` (the EMA when the run kept
    one, as ``Trainer.finish``), ``ema`` or ``live``. Returns ``out_dir``.

    The model is rebuilt by the run's task from its config with the run's seed, so a part
    built from a config (a random VAE, e.g. ``ov3-mu``'s) comes out exactly as in training;
    pretrained parts load from their own source.
    """
    if weights not in ("auto", "ema", "live"):
        raise ValueError(f"weights must be auto, ema or live, got {weights!r}")
    path = Path(checkpoint)
    if not (path / "state.json").is_file():
        latest = find_latest(path)
        if latest is None:
            raise CheckpointError(
                folder_kind(path).describe(str(path), not_="a checkpoint or a run with checkpoints")
            )
        path = latest
    meta = read_meta(path)
    cfg = config_from_checkpoint(meta["state"])
    task = cfg.build_task()
    has_ema = (path / "ema.safetensors").is_file() or bool(meta.get("ema"))
    use_ema = has_ema if weights == "auto" else weights == "ema"
    torch.manual_seed(cfg.train.seed)  # as Trainer.__init__: the same config-built parts
    model = task.build_model()
    load_weights(path, model, ema=use_ema, strict=True)
    card = {
        "experiment": cfg.name,
        "steps": meta["step"],
        "samples_seen": meta["state"].get("samples_seen"),
        "weights": "ema" if use_ema else "live",
        # the checkpoint by its place in the run, not by this machine's path
        "exported_from": f"{cfg.name}/{path.name}"
        if path.parent.name == "checkpoints"
        else path.name,
    }
    task.export(model, str(out_dir), card, last_trained_stage(cfg.train.stages, meta["step"]))
    log.info("exported %s (%s weights) to %s", path, "EMA" if use_ema else "live", out_dir)
    return Path(out_dir)


@dataclass
class ExportArgs:
    """`ov3 export`: a training checkpoint -> `config.json` + `model.safetensors`."""

    # a checkpoint directory (step_XXXXXXXX) or a run directory (its newest)
    checkpoint: Annotated[str, arg(metavar="CHECKPOINT")]
    out: Annotated[str, arg(metavar="OUT")]  # output directory
    weights: Literal["auto", "ema", "live"] = "auto"  # auto: EMA when the run kept one
    # ov3: our layout; diffusers: an OpenVision3Autoencoder folder for a tokenizer, an
    # OpenVision3DiTPipeline folder for a generator (CHECKPOINT may then be an export folder)
    format: Literal["ov3", "diffusers"] = "ov3"
    # the diffusers pipeline's scheduler: euler (diffusers' FlowMatchEulerDiscreteScheduler on
    # RAE's grid) or heun (OpenVision3FlowScheduler)
    scheduler: Literal["euler", "heun"] = "euler"
