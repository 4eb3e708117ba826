"""VAE speed options applied from outside the model (CPU: what applies where, names kept)."""

import torch

from openvision3.models.vae import FrozenVAE
from openvision3.ov3.speed import speed_up_vae


def test_speed_up_vae_on_cpu_keeps_names():
    vae = FrozenVAE.from_config()
    names = set(vae.vae.state_dict())
    assert speed_up_vae(None, torch.device("cpu"), compile=True, channels_last=True) == []
    # channels_last is for CUDA only; compile wraps in place (compiles at the first call)
    assert speed_up_vae(vae, torch.device("cpu"), compile=True, channels_last=True) == ["compile"]
    assert set(vae.vae.state_dict()) == names  # no _orig_mod. prefixes
    assert not vae.vae.encoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
