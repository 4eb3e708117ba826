"""Stand-ins for weights that cannot be downloaded here, written where the real ones go.

- ``write_metric_weights(torch_home)``: LPIPS's VGG16 trunk (``features.*`` only, the part
  LPIPS reads) and torch-fidelity's Inception-v3, random, in ``torch_home/hub/checkpoints``
  under their real file names.
- ``write_released_in_hub_cache(cache, repo_id)``: a tiny encoder in the authors' released
  layout (``open_clip_config.json`` + ``open_clip_pytorch_model.bin``) as a Hugging Face cache
  snapshot, so the repo id resolves with ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tests.evaluation._fid_fakes import save_random_inception
from tests.inference.test_released import upstream_vit, write_released

VGG16_FILE = "vgg16-397923af.pth"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


def write_metric_weights(torch_home: str | Path) -> Path:
    from torchvision.models import vgg16

    ckpt = Path(torch_home) / "hub" / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    features = {f"features.{k}": v for k, v in vgg16().features.state_dict().items()}
    torch.save(features, ckpt / VGG16_FILE)
    save_random_inception(str(ckpt / INCEPTION_FILE))
    return ckpt


def write_released_in_hub_cache(cache: str | Path, repo_id: str, grid: int = 16) -> Path:
    """A snapshot of ``repo_id`` in the hub cache layout (``models--org--name``)."""
    repo = Path(cache) / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    torch.manual_seed(0)
    write_released(snapshot, upstream_vit(width=64, layers=2, heads=1, grid=grid, embed_dim=32))
    return snapshot
