"""``OpenVision3Task``: the unified tokenizer on the training engine (``train/task.py``).

It builds the model (heads of zero-weight losses pruned), the image-text loaders, the paper's
objective per stage (the stage's LPIPS weight), the step with OpenVision 3's gradient
accumulation (contrastive negatives over the whole batch, ``ov3/accumulate.py``), the
temperature clamp after each step, the evaluation suite and the export.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from openvision3.artefacts import portable_name
from openvision3.data.latents import build_latent_loader, check_cache_vae
from openvision3.data.loader import build_loader
from openvision3.losses.contrastive import MAX_LOGIT_SCALE
from openvision3.losses.objective import Objective, ObjectiveConfig
from openvision3.models.openvision3 import ModelConfig, OpenVision3
from openvision3.ov3.accumulate import forward_backward
from openvision3.ov3.speed import speed_up_vae
from openvision3.pretrained import save_pretrained
from openvision3.tokenizer import EOT_ID, SOT_ID
from openvision3.train.task import Task

if TYPE_CHECKING:  # annotations only: ov3/config.py builds this task
    from openvision3.ov3.config import ExperimentConfig, OV3StageConfig

log = logging.getLogger(__name__)


def prune_model_config(model: ModelConfig, objective) -> ModelConfig:
    """Drop the heads whose loss weight is zero (ablations), so every parameter gets a gradient."""
    return dataclasses.replace(
        model,
        decoder=model.decoder if objective.needs_reconstruction else None,
        text=model.text if objective.needs_contrastive else None,
        caption=model.caption if objective.needs_caption else None,
    )


def stage_objective(objective: ObjectiveConfig, stage: OV3StageConfig) -> ObjectiveConfig:
    """The objective of one stage: its LPIPS weight when the stage sets one."""
    if stage.lpips_weight is None:
        return objective
    return dataclasses.replace(objective, lpips_weight=stage.lpips_weight)


def _token_rows(batch: int, length: int, gen: torch.Generator) -> torch.Tensor:
    """(B, L) int64 rows [SOT, random tokens, EOT], as the tokenizer writes a text that fills
    the context."""
    ids = torch.randint(1, SOT_ID, (batch, length), generator=gen)
    ids[:, 0], ids[:, -1] = SOT_ID, EOT_ID
    return ids


class OpenVision3Task(Task):
    cfg: ExperimentConfig

    def __init__(self, cfg: ExperimentConfig):
        super().__init__(cfg)
        self.objective: Objective | None = None
        self.branches: dict = {}

    def build_model(self, frozen_from: nn.Module | None = None) -> OpenVision3:
        model_cfg = prune_model_config(self.cfg.model, self.cfg.objective)
        if frozen_from is None:
            return OpenVision3(model_cfg)
        model = OpenVision3(model_cfg, vae=None)
        model.vae = frozen_from.vae  # frozen, never in a state dict: shared, not copied
        return model

    def init_from(self, model: OpenVision3, path: str) -> tuple[list[str], list[str]]:
        """Our exports and checkpoints (``Task.init_from``), or a released encoder (a folder or
        hub id): its weights go into the encoder, whose architecture ``ExperimentConfig``
        took from it (``resolve_inputs``)."""
        from openvision3.pretrained import is_released, read_released, resolve

        local = resolve(path)
        if not is_released(local):
            return super().init_from(model, local)
        _, sd = read_released(local)
        model.encoder.load_state_dict(sd, strict=True)
        encoder = {f"encoder.{k}" for k in sd}
        return [k for k in model.state_dict() if k not in encoder], []

    def prepare(self, model: OpenVision3, device: torch.device) -> None:
        tc = self.cfg.train
        speed_up_vae(model.vae, device, tc.compile_vae, tc.channels_last_vae)

    def build_loader(self, stage: OV3StageConfig, batch_size: int, rank: int, world: int):
        data, seed = self.cfg.data, self.cfg.train.seed
        if data.latents:  # the VAE's latents, cached once (`ov3 cache-latents`)
            return build_latent_loader(
                data, "train", stage.resolution, batch_size, rank, world, seed
            )
        return build_loader(
            data, "train", stage.resolution, batch_size, rank, world, train=True, seed=seed
        )

    def synthetic_batch(self, stage: OV3StageConfig, batch_size=None, *, device="cpu", seed=0):
        """The image-text loader's batch (``data/loader.py``): images (B, 3, R, R) in [-1, 1]
        at the stage's resolution; text, text_2 (the second view, present when every sample
        has alt text and a caption, as in the paper's data) and caption ids (B, L) at the
        data's context lengths, full-length rows [SOT, tokens, EOT] (no padding: the costliest
        case); keys. With ``data.latents`` the latent loader's: uint8 images and latents
        (B, C, R / f, R / f)."""
        b, r, data = batch_size or stage.batch_size, stage.resolution, self.cfg.data
        gen = torch.Generator().manual_seed(seed)
        if data.latents:
            vae = self.cfg.model.vae
            grid = r // vae.downsample
            images = torch.randint(0, 256, (b, 3, r, r), generator=gen, dtype=torch.uint8)
            latents = torch.randn(b, vae.latent_channels, grid, grid, generator=gen)
            batch = {"images": images, "latents": latents}
        else:
            batch = {"images": torch.rand(b, 3, r, r, generator=gen) * 2 - 1}
        batch["text"] = _token_rows(b, data.text_context, gen)
        batch["caption"] = _token_rows(b, data.caption_context, gen)
        batch["text_2"] = _token_rows(b, data.text_context, gen)
        batch = {k: v.to(device) for k, v in batch.items()}
        batch["key"] = [f"synthetic-{i}" for i in range(b)]
        return batch

    def begin_stage(self, stage: OV3StageConfig, model: OpenVision3, loader) -> None:
        device = model.encoder.cls_token.device
        self.objective = Objective(stage_objective(self.cfg.objective, stage)).to(device)
        oc = self.objective.cfg
        self.branches = dict(
            reconstruction=oc.needs_reconstruction,
            contrastive=oc.needs_contrastive,
            caption=oc.needs_caption,
            pixel_fraction=oc.pixel_loss_fraction,
            detach=oc.stop_gradient,
        )
        if self.cfg.data.latents and loader is not None:
            check_cache_vae(loader.latent_meta, model.vae)

    def describe_stage(self, stage: OV3StageConfig) -> str:
        lpips = stage_objective(self.cfg.objective, stage).lpips_weight
        return f"{stage.resolution} px, lpips {lpips:.2f}"

    def stage_scalars(self, stage: OV3StageConfig) -> dict[str, float]:
        return {"resolution": stage.resolution}

    def forward_backward(self, train_model, model, batch, accum_steps, autocast):
        return forward_backward(
            train_model, model, self.objective, batch, accum_steps, self.branches, autocast
        )

    def after_step(self, model: OpenVision3) -> None:
        if model.text is not None:
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(MAX_LOGIT_SCALE))

    def evaluate(
        self, model: OpenVision3, stage: OV3StageConfig | None, out_dir: str | None
    ) -> dict:
        from openvision3.evaluation.suite import evaluate_model

        ec = self.cfg.eval
        res = ec.resolution or (stage or self.cfg.train.stages[-1]).resolution
        if not self.cfg.data.has_images:  # trained from a latent cache alone
            log.warning("no evaluation: set --data.path to evaluate on the held-out split")
            return {"metrics": {}, "skipped": "no --data.path (trained from --data.latents)"}
        return evaluate_model(model, self.cfg.data, ec, res, out_dir=out_dir)

    def export(self, model: OpenVision3, path: str, card: dict, stage: OV3StageConfig) -> None:
        data = {"data": self.cfg.data.source}
        if self.cfg.data.path:  # by its name: the card travels with the folder
            data["data_path"] = portable_name(self.cfg.data.path)
        save_pretrained(model, path, resolution=stage.resolution, card={**card, **data})
