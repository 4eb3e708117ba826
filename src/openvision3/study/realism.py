"""Realism without Inception: a small feature network trained once on the synthetic world's own
labels (the main object's colour, shape and grid cell), as Inception-v3 is trained on ImageNet
labels, and the Frechet distance between the features of reconstructions and of their originals
(``evaluation/fid.py``'s ``frechet_distance``). It sees only rendered images and their labels:
no arm of a study has any part in it.

The network is trained once per (world seed, resolution, settings) and cached as
``feature_net.safetensors`` + ``feature_net.json`` (settings and held-out accuracies).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from openvision3.data.synthetic.world import CELL_NAMES, COLORS, SHAPES, SyntheticWorld
from openvision3.files import atomic_write, write_json
from openvision3.study.config import RealismConfig

log = logging.getLogger(__name__)
HEADS = {"colour": len(COLORS), "shape": len(SHAPES), "cell": len(CELL_NAMES)}


@dataclass
class FeatureNetConfig:
    width: int = 32
    feature_dim: int = 64


class FeatureNet(nn.Module):
    """``features(images (B, 3, H, W) in [-1, 1]) -> (B, F)``; ``forward`` -> logits per label.

    Four stride-2 3x3 convolutions (width w, 2w, 4w, 4w) with GroupNorm and GELU, global mean
    pool, a linear layer to F features, and one linear head per label."""

    def __init__(self, cfg: FeatureNetConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        chans = [3, w, 2 * w, 4 * w, 4 * w]
        layers = []
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GroupNorm(8, c_out)]
            layers.append(nn.GELU())
        self.trunk = nn.Sequential(*layers)
        self.proj = nn.Linear(4 * w, cfg.feature_dim)
        self.heads = nn.ModuleDict({k: nn.Linear(cfg.feature_dim, n) for k, n in HEADS.items()})

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = self.trunk(images).mean(dim=(2, 3))  # (B, 3, H, W) -> (B, 4w)
        return self.proj(x)  # (B, F)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        f = F.gelu(self.features(images))
        return {k: head(f) for k, head in self.heads.items()}


def labelled_images(world: SyntheticWorld, split: str, n: int, resolution: int):
    """(n, 3, R, R) images in [-1, 1] and their labels {colour, shape, cell} (n,) each."""
    images, labels = [], {k: [] for k in HEADS}
    for i in range(n):
        scene = world.scene(split, i)
        images.append(world.render(scene, resolution))
        main = scene.objects[0]
        labels["colour"].append(list(COLORS).index(main.color))
        labels["shape"].append(SHAPES.index(main.shape))
        labels["cell"].append(main.cell)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return x, {k: torch.tensor(v) for k, v in labels.items()}


def train_feature_net(
    cfg: RealismConfig, world_seed: int, resolution: int, val_images: int = 500
) -> tuple[FeatureNet, dict]:
    """Train on ``cfg.train_images`` train scenes; returns the net and its val accuracies."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        world = SyntheticWorld(world_seed)
        x, y = labelled_images(world, "train", cfg.train_images, resolution)
        net = FeatureNet(FeatureNetConfig(cfg.width, cfg.feature_dim))
        opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=0.01)
        batch = min(64, len(x))
        steps = cfg.epochs * (len(x) // batch)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=max(steps, 1))
        net.train()
        for _ in range(cfg.epochs):
            perm = torch.randperm(len(x))
            for i in range(len(x) // batch):
                idx = perm[i * batch : (i + 1) * batch]
                logits = net(x[idx])
                loss = sum(F.cross_entropy(logits[k], y[k][idx]) for k in HEADS)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        net.eval()
        xv, yv = labelled_images(world, "val", val_images, resolution)
        with torch.no_grad():
            logits = net(xv)
        acc = {k: float((logits[k].argmax(-1) == yv[k]).float().mean()) for k in HEADS}
    return net, acc


def cached_feature_net(cfg: RealismConfig, world_seed: int, resolution: int, folder: Path) -> str:
    """The path of the feature network for these settings, training it first if absent."""
    from safetensors.torch import save_model

    key = dict(asdict(cfg), world_seed=world_seed, resolution=resolution)
    key.pop("kind")
    path = Path(folder) / "feature_net.safetensors"
    meta = Path(folder) / "feature_net.json"
    if path.is_file() and meta.is_file() and json.loads(meta.read_text())["settings"] == key:
        return str(path)
    t0 = time.perf_counter()
    net, acc = train_feature_net(cfg, world_seed, resolution)
    atomic_write(path, lambda p: save_model(net, str(p)))
    info = {
        "settings": key,
        "net": asdict(net.cfg),
        "val_accuracy": acc,
        "seconds": time.perf_counter() - t0,
    }
    write_json(meta, info)
    log.info("realism feature network: val accuracy %s in %.0f s", acc, info["seconds"])
    return str(path)


def load_feature_net(path: str) -> FeatureNet:
    from safetensors.torch import load_model

    info = json.loads(Path(path).with_suffix(".json").read_text())
    net = FeatureNet(FeatureNetConfig(**info["net"]))
    load_model(net, path)
    return net.requires_grad_(False)
