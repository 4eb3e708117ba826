"""What an evaluation ran on, as recorded in ``results.json``: the model, the data, the machine."""

from __future__ import annotations

import json
import os
import time

import torch
from torch import nn

from openvision3.data.sources import data_source
from openvision3.files import sha256_file


def model_identity(path: str | None, model: nn.Module) -> dict:
    """Where the model came from: path, config name, model card, weights file and its sha256.
    ``path`` None: a model in memory (evaluated during training)."""
    ident = {"path": path or "in memory (training)", "config_name": model.cfg.name}
    if path is not None:
        from openvision3.pretrained import (
            CARD_NAME,
            RELEASED_WEIGHTS,
            WEIGHTS_NAME,
            resolve,
        )

        local = resolve(path)
        ident["local"] = os.path.abspath(local)
        card = os.path.join(local, CARD_NAME)
        if os.path.isfile(card):
            with open(card) as f:
                ident["model_card"] = json.load(f)
        for name in (WEIGHTS_NAME, RELEASED_WEIGHTS):
            if os.path.isfile(os.path.join(local, name)):
                ident["weights"] = {"file": name, "sha256": sha256_file(os.path.join(local, name))}
                break
    ident["parameters"] = sum(p.numel() for p in model.parameters())
    return ident


def data_identity(cfg, pairs: list | None) -> dict:
    """The images evaluated: ``cfg`` is an ``EvalRunConfig``, ``pairs`` its read pairs (or None)."""
    d = cfg.data
    ident = {"name": d.source, "source": d.source, "split": cfg.split, "resize": d.resize}
    ident.update(data_source(d).identity())
    if pairs is not None:
        ann = cfg.pairs.annotations
        ident = {
            "name": os.path.basename(ann),
            "annotations": os.path.abspath(ann),
            "images_root": os.path.abspath(cfg.pairs.images_root or os.path.dirname(ann)),
            "pairs_split": cfg.pairs.split,
            "images": len(pairs),
            "resize": d.resize,
        }
    return ident


def environment(world_size: int, device: torch.device) -> dict:
    return {
        "world_size": world_size,
        "device": str(device),
        "torch": torch.__version__,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
