"""The generation half of claim 4 (``paper-small-generation``): a class-conditional DiT-DH on
each finished arm's frozen tokens, and the realism of its samples.

Per arm x seed, after the arm has trained: the arm's tokens of ``train_images`` synthetic train
scenes go into a cache under ``<run>/generation/tokens`` (labelled with the main object's
colour x cell, 72 classes, as the generation demo); DiT-DH-demo trains on them
(``generation.demo.token_generator_config``, the arm's seed); ``per_class`` samples per class
(CFG at ``cfg_scale``) decode through the arm's own decoder (the pixel ViT's decoder gives
pixels, the latent ViT's goes through the VAE); their Frechet distance to ``real_images``
held-out val images in the study's realism feature space is ``generation_fd``. Each step is
kept once finished (``<run>/generation/results.json``), so a cut study resumes.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from openvision3.errors import ConfigError
from openvision3.files import write_json
from openvision3.study.config import StudyConfig

log = logging.getLogger(__name__)

RESULTS = "results.json"


def _features(extractor, images: torch.Tensor, batch: int = 64):
    """Feature mean and covariance of images (B, 3, H, W) in [-1, 1]."""
    from openvision3.evaluation.fid import FeatureStats

    stats = FeatureStats(extractor.dim)
    for i in range(0, len(images), batch):
        stats.add(extractor(images[i : i + batch]))
    return stats.mean_cov()


def real_images(seed: int, resolution: int, n: int) -> torch.Tensor:
    """The first ``n`` synthetic val images (B, 3, R, R) in [-1, 1]."""
    from openvision3.data.synthetic.world import SyntheticWorld

    world = SyntheticWorld(seed)
    x = np.stack([world.sample("val", i, resolution)["image"] for i in range(n)])
    return torch.from_numpy(x).permute(0, 3, 1, 2).float() / 127.5 - 1


def generate_for_run(study: StudyConfig, run: Path, seed: int, extractor, real_stats) -> dict:
    """Cache the arm's tokens, train its generator, sample, score; returns the results dict."""
    from openvision3.data.synthetic.tokens import cache_demo_tokens
    from openvision3.evaluation.fid import frechet_distance
    from openvision3.generation.demo import NUM_CLASSES, token_generator_config
    from openvision3.generation.pipeline import load_generator
    from openvision3.pretrained import load_pretrained
    from openvision3.train.trainer import Trainer

    g, out = study.generation, run / "generation"
    t0 = time.perf_counter()
    model = load_pretrained(str(run / "final"), device="cpu")
    resolution = study.base.train.stages[-1].resolution
    cache = cache_demo_tokens(
        model, study.base.data.synthetic, str(out / "tokens"), resolution, g.train_images
    )
    del model
    cfg = token_generator_config(
        cache, str(run / "final"), str(out / "run"), g.steps, g.batch_size, seed
    )
    if not (out / "run" / "final" / "model.safetensors").is_file():
        Trainer(cfg).fit()
    gen = load_generator(str(out / "run" / "final"), device="cpu")
    labels = torch.arange(NUM_CLASSES).repeat(g.per_class)
    images = gen.sample(labels, cfg_scale=g.cfg_scale, steps=g.sample_steps, seed=seed)
    fd = frechet_distance(*real_stats, *_features(extractor, images))  # both in [-1, 1]
    return {
        "metrics": {"generation_fd": float(fd)},
        "samples": len(labels),
        "real_images": g.real_images,
        "train_steps": cfg.train.stages[0].steps,
        "seconds": time.perf_counter() - t0,
    }


def run_generation_stage(study: StudyConfig, realism: str) -> None:
    """``generate_for_run`` on every finished arm x seed without its results yet."""
    from openvision3.study.task import realism_extractor

    extractor = realism_extractor(realism, torch.device("cpu"))
    if extractor is None:
        raise ConfigError(
            f"study {study.name!r} scores generated images by realism: set --realism.kind "
            "features (the synthetic world) or inception"
        )
    resolution = study.base.train.stages[-1].resolution
    real = real_images(study.base.data.synthetic.seed, resolution, study.generation.real_images)
    real_stats = _features(extractor, real)
    for seed in study.seeds:
        for arm in study.arms:
            run = Path(study.run_dir) / arm.name / f"seed{seed}"
            done = run / "generation" / RESULTS
            if done.is_file() or not (run / "final").is_dir():
                continue
            log.info("study %s: generator on %s seed %d", study.name, arm.name, seed)
            write_json(done, generate_for_run(study, run, seed, extractor, real_stats))


def generation_metrics(run: Path) -> dict:
    """The generation stage's metrics of a run ({} before it has finished)."""
    path = run / "generation" / RESULTS
    return json.loads(path.read_text())["metrics"] if path.is_file() else {}
