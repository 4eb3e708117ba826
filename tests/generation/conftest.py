"""A tiny token cache: 24 synthetic train images at 32 px through the demo_smoke VAE (seeded,
random) and a parameter-free "encoder" (latents (B, 16, 4, 4) -> tokens (B, 16, 16))."""

import pytest
import torch
from torch import nn

from openvision3.configs import get_preset
from openvision3.data.latents import CacheLatentsConfig, write_latent_cache
from openvision3.data.loader import DataConfig
from openvision3.data.synthetic.world import SyntheticConfig
from openvision3.models.vae import FrozenVAE

RES = 32
NUM_CLASSES = 5


class GridTokens(nn.Module):
    """(B, C, h, w) -> (B, h*w, C), counting its calls."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, z):
        self.calls += len(z)
        return z.flatten(2).transpose(1, 2) * 2.0 + 1.0


def tiny_vae() -> FrozenVAE:
    torch.manual_seed(0)
    return FrozenVAE(get_preset("demo_smoke").model.vae)


def write_cache(out, split="train", count=24, encoder=None, **kw) -> dict:
    cfg = CacheLatentsConfig(
        out=str(out), split=split, resolution=RES, flip=False, images=False, batch_size=5,
        shard_size=8, device="cpu",
        data=DataConfig(source="synthetic", synthetic=SyntheticConfig(train_size=count, val_size=8)),
        **kw,
    )  # fmt: skip
    return write_latent_cache(
        cfg, vae=tiny_vae(), encoder=encoder or GridTokens(),
        extra=lambda key: {"small_label": int(key.rsplit("-", 1)[1]) % NUM_CLASSES},
    )  # fmt: skip


@pytest.fixture(scope="session")
def token_cache(tmp_path_factory):
    out = tmp_path_factory.mktemp("tokens")
    write_cache(out)
    return out
