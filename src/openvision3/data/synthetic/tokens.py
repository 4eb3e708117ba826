"""The frozen demo model's unified tokens of synthetic scenes, in the feature cache
(``data/latents.py``): one cache per demo run, ``<run>/tokens``, which the generation and
understanding demos both train on. Each sample carries its scene's ``color_cell`` label (the
generation demo's class)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import torch

from openvision3.data.synthetic.world import CELL_NAMES, COLORS, SyntheticConfig, SyntheticWorld

log = logging.getLogger(__name__)

COLOR_NAMES = list(COLORS)
NUM_COLOR_CELLS = len(COLOR_NAMES) * len(CELL_NAMES)  # 72


def color_cell(world: SyntheticWorld, key: str) -> int:
    """Label of a synthetic key ("train-00000012"): colour index x 9 + cell of the main
    (largest) object, one of ``NUM_COLOR_CELLS``."""
    split, index = key.rsplit("-", 1)
    main = world.scene(split, int(index)).objects[0]
    return COLOR_NAMES.index(main.color) * len(CELL_NAMES) + main.cell


def _cached(out: str, split: str, resolution: int, size: int) -> bool:
    """Whether ``out`` holds a finished ``split`` of ``size`` samples at ``resolution``; one
    of another size or resolution is removed (it is rebuilt)."""
    from openvision3.data.latents import FeatureCache

    meta_path = os.path.join(out, FeatureCache.meta_name(split))
    if not os.path.exists(meta_path):
        return False
    meta = json.loads(open(meta_path).read())
    if meta.get("resolution") == resolution and meta.get("written", 0) == size:
        return True
    log.info("rebuilding the %s tokens in %s (%d cached at %s px, %d wanted at %d px)", split,
             out, meta.get("written", 0), meta.get("resolution"), size, resolution)  # fmt: skip
    for name in os.listdir(out):
        if name.startswith(FeatureCache.split_files(split)):
            os.remove(os.path.join(out, name))
    stats = FeatureCache.stats_path(out)  # computed from the train split
    if split == "train" and os.path.exists(stats):
        os.remove(stats)
    return False


def cache_demo_tokens(
    model, synthetic: SyntheticConfig, out: str, resolution: int, train: int, val: int = 0
) -> str:
    """Tokens (no pixel targets, no flips) of the first ``train`` train and ``val`` val scenes
    of ``synthetic``'s world at ``resolution`` into ``out``. A split already cached with as
    many samples at that resolution is kept, and the cache writer resumes an interrupted one.
    ``val`` 0 leaves the val split as it is."""
    from openvision3.data.latents import CacheLatentsConfig, write_latent_cache
    from openvision3.data.loader import DataConfig

    world = SyntheticWorld(synthetic.seed)
    syn = dataclasses.replace(synthetic, train_size=train, val_size=val or synthetic.val_size)
    for split, size in (("train", train), ("val", val)):
        if not size or _cached(out, split, resolution, size):
            continue
        cfg = CacheLatentsConfig(
            out=out, split=split, resolution=resolution, flip=False, images=False,
            batch_size=64, shard_size=1024, device="cpu",
            data=DataConfig(source="synthetic", synthetic=syn),
        )  # fmt: skip
        with torch.no_grad():
            write_latent_cache(
                cfg, vae=model.vae, encoder=model.encoder,
                extra=lambda key: {"color_cell": color_cell(world, key)},
            )  # fmt: skip
    return out


def run_tokens(run: str) -> str:
    """The demo run's shared token cache folder."""
    return os.path.join(run, "tokens")


def run_world(run: str) -> SyntheticConfig:
    """The synthetic world a finished demo run trained on: ``data.synthetic`` of the run's
    ``config.json``, the one part of an OpenVision 3 run config the downstream demos read."""
    from openvision3.dataclass_io import from_dict
    from openvision3.errors import ConfigError

    path = os.path.join(run, "config.json")
    if not os.path.isfile(path):
        raise ConfigError(f"{run!r} is not a run directory (no config.json)")
    with open(path) as f:
        data = json.load(f).get("data", {})
    if not isinstance(data.get("synthetic"), dict):
        raise ValueError(f"{path} is not the config of an `ov3 demo` run (no data.synthetic)")
    return from_dict(SyntheticConfig, data["synthetic"], "data.synthetic")
