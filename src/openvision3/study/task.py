"""One arm x seed of a study on the training engine: ``OpenVision3Task`` with every head kept
(branches that do not train the encoder are probes, ``ObjectiveConfig.stop_gradient``) and a
held-out evaluation that measures every loss, PSNR and realism on a fixed set of val images.
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from dataclasses import dataclass, field
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from openvision3.data.loader import build_loader
from openvision3.evaluation.fid import FeatureStats, frechet_distance
from openvision3.evaluation.reconstruction import psnr_uint8
from openvision3.losses.caption import caption_loss
from openvision3.losses.contrastive import MAX_LOGIT_SCALE
from openvision3.losses.reconstruction import ReconstructionLoss
from openvision3.models.openvision3 import OpenVision3
from openvision3.ov3.config import ExperimentConfig, OV3StageConfig
from openvision3.ov3.task import OpenVision3Task
from openvision3.study.config import ProbeEvalConfig
from openvision3.train.task import register_task


@register_task
@dataclass
class StudyRunConfig(ExperimentConfig):
    """An arm x seed run: the experiment, the held-out evaluation and the realism extractor
    (``realism``: "" none, "inception", or the path of a feature network file)."""

    TASK = "ov3_study"

    arm: str = ""
    probe_eval: ProbeEvalConfig = field(default_factory=ProbeEvalConfig)
    realism: str = ""

    def build_task(self):
        return StudyTask(self)


class StudyTask(OpenVision3Task):
    cfg: StudyRunConfig

    def __init__(self, cfg: StudyRunConfig):
        super().__init__(cfg)
        self.keys_digest = 0  # crc32 over the sample keys this process trained on

    def build_model(self, frozen_from: nn.Module | None = None) -> OpenVision3:
        # Every head is built, whatever the arm: the probes measure every loss.
        if frozen_from is None:
            return OpenVision3(self.cfg.model)
        model = OpenVision3(self.cfg.model, vae=None)
        model.vae = frozen_from.vae
        return model

    def prepare(self, model: OpenVision3, device: torch.device) -> None:
        if self.cfg.model.vae.kind != "pixels":  # nothing to speed up without a VAE
            super().prepare(model, device)

    def forward_backward(self, train_model, model, batch, accum_steps, autocast):
        for key in batch.get("key", []):
            self.keys_digest = zlib.crc32(key.encode(), self.keys_digest)
        return super().forward_backward(train_model, model, batch, accum_steps, autocast)

    def evaluate(
        self, model: OpenVision3, stage: OV3StageConfig | None, out_dir: str | None
    ) -> dict:
        res = (stage or self.cfg.train.stages[-1]).resolution
        batches = heldout_batches(json.dumps(dataclasses.asdict(self.cfg.data)), res, self.cfg)
        metrics = heldout_metrics(model, batches, self.cfg.objective.latent_weight, self.cfg)
        metrics["keys_digest"] = self.keys_digest
        return {"metrics": metrics, "arm": self.cfg.arm}


def _batches_key(cfg: StudyRunConfig) -> tuple:
    return (cfg.probe_eval.num_images, cfg.probe_eval.batch_size)


def heldout_batches(data_json: str, resolution: int, cfg: StudyRunConfig) -> list[dict]:
    """The fixed evaluation batches (first ``num_images`` of the val split), cached per process:
    every arm of a study is scored on the same images."""
    return _heldout(data_json, resolution, *_batches_key(cfg))


@lru_cache(maxsize=4)
def _heldout(data_json: str, resolution: int, num_images: int, batch_size: int) -> list[dict]:
    from openvision3.data.loader import DataConfig
    from openvision3.dataclass_io import from_dict

    data = from_dict(DataConfig, json.loads(data_json))
    loader = build_loader(data, "val", resolution, batch_size, train=False)
    out, seen = [], 0
    for batch in loader:
        take = min(batch_size, num_images - seen)
        out.append({k: v[:take] for k, v in batch.items()})
        seen += take
        if seen >= num_images:
            break
    return out


def contrastive_local(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """CLIP loss on one batch, no gathering: (B, E) x (B, E) -> (); every rank scores the same
    held-out batches, so negatives from other ranks would repeat them."""
    logits = scale * img @ txt.T  # (B, B)
    labels = torch.arange(img.shape[0], device=img.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


@torch.no_grad()
def heldout_metrics(
    model: OpenVision3, batches: list[dict], latent_weight: float, cfg: StudyRunConfig
) -> dict:
    """Mean held-out losses of every head (probe or not), PSNR and realism over ``batches``.

    Returns ``rec`` (pixel L1 + latent_weight x latent L1), ``pixel_l1``, ``latent_l1``,
    ``contrastive``, ``caption``, ``psnr`` (dB, mean over images) and, when a realism
    extractor is set, ``realism_fd`` (Frechet distance, reconstructions vs originals).
    """
    from openvision3.losses.reconstruction import ReconstructionLossConfig

    device = model.encoder.cls_token.device
    rec_loss = ReconstructionLoss(ReconstructionLossConfig(latent_weight=latent_weight))
    extractor = realism_extractor(cfg.realism, device)
    stats = [FeatureStats(extractor.dim), FeatureStats(extractor.dim)] if extractor else None
    sums: dict[str, float] = {}
    n_total = 0
    for batch in batches:
        b = {k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)}
        out = model(b)  # eval mode: clean tokens to the decoder, every caption token kept
        n = b["images"].shape[0]
        rec, terms = rec_loss(out["images"], out["images_hat"], out["latents"], out["latents_hat"])
        scale = out["logit_scale"].clamp(max=MAX_LOGIT_SCALE)
        values = {
            "rec": rec,
            "pixel_l1": terms["pixel_l1"],
            "latent_l1": terms["latent_l1"],
            "contrastive": contrastive_local(out["image_embeds"], out["text_embeds"], scale),
            "caption": caption_loss(out["caption_logits"], out["caption_targets"]),
            "psnr": psnr_uint8(out["images"], out["images_hat"].clamp(-1, 1)).mean(),
        }
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + float(v) * n
        n_total += n
        if stats is not None:
            stats[0].add(extractor(out["images"]))
            stats[1].add(extractor(out["images_hat"].clamp(-1, 1)))
    metrics = {k: v / n_total for k, v in sums.items()}
    metrics["count"] = n_total
    if stats is not None:
        metrics["realism_fd"] = frechet_distance(*stats[0].mean_cov(), *stats[1].mean_cov())
    return metrics


def realism_extractor(spec: str, device: torch.device):
    """``spec`` "" -> None; "inception" -> Inception pool3 on uint8 images; else the path of
    a feature network file (``study/realism.py``). Cached per process and device."""
    if not spec:
        return None
    return _extractor(spec, str(device))


@lru_cache(maxsize=2)
def _extractor(spec: str, device: str):
    if spec == "inception":
        from openvision3.evaluation.fid import FEATURE_DIM, InceptionFeatures
        from openvision3.evaluation.reconstruction import _as_uint8

        net = InceptionFeatures().to(device)

        def inception(images: torch.Tensor) -> torch.Tensor:
            return net(_as_uint8(images))

        inception.dim = FEATURE_DIM
        return inception
    from openvision3.study.realism import load_feature_net

    net = load_feature_net(spec).to(device).eval()

    def features(images: torch.Tensor) -> torch.Tensor:
        return net.features(images).double()

    features.dim = net.cfg.feature_dim
    return features
