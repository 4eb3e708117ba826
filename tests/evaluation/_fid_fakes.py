"""Stand-ins for the FID tests: a random-init Inception saved to a local file, and a cheap
deterministic feature extractor whose calls are counted."""

from unittest import mock

import torch
from torch import nn


def save_random_inception(path: str, seed: int = 0) -> str:
    """torch-fidelity's Inception-v3 with random weights (He-normal convs, so the 2048-d
    features keep a useful scale), saved as a state dict to ``path``."""
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    # The constructor loads weights; skip that load (nothing may be downloaded in tests).
    with (
        mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None),
        mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: {}),
    ):
        net = fe.FeatureExtractorInceptionV3("random", ["2048"])
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, generator=g)
    torch.save(net.state_dict(), path)
    return path


class PooledFeatures:
    """uint8 (B, 3, H, W) -> (B, 12) float64: channel means over the four image quadrants.

    Per image (batch composition never changes a row); ``calls`` counts batches seen."""

    def __init__(self):
        self.calls = 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        x = images.double() / 255.0
        h, w = x.shape[-2] // 2, x.shape[-1] // 2
        quads = [x[..., :h, :w], x[..., :h, w:], x[..., h:, :w], x[..., h:, w:]]
        return torch.cat([q.mean(dim=(2, 3)) for q in quads], dim=1)  # (B, 12)
