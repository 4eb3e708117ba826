import pytest
import torch
from diffusers import AutoencoderKL

from openvision3.models.vae import TINY_VAE_ARCH, FrozenVAE, MissingWeightsError, VAEConfig


def test_conventions_against_diffusers(tmp_path):
    torch.manual_seed(0)
    ae = AutoencoderKL(**TINY_VAE_ARCH)
    ae.save_pretrained(tmp_path / "vae")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    mean = ae.encode(x).latent_dist.mean
    ov3 = FrozenVAE.from_pretrained(str(tmp_path), subfolder="vae")
    flux = FrozenVAE.from_pretrained(str(tmp_path), subfolder="vae", convention="flux")
    assert torch.allclose(ov3.encode(x), mean * 0.3611, atol=1e-6)
    assert torch.allclose(flux.encode(x), (mean - 0.1159) * 0.3611, atol=1e-6)
    z = torch.randn(2, 16, 4, 4)
    assert torch.allclose(ov3.decode(z), ae.decode(z / 0.3611).sample, atol=1e-5)
    assert torch.allclose(flux.decode(z), ae.decode(z / 0.3611 + 0.1159).sample, atol=1e-5)
    # a local folder that is the VAE itself also loads
    assert torch.allclose(FrozenVAE.from_pretrained(str(tmp_path / "vae")).encode(x), ov3.encode(x))


def test_frozen_no_grad_to_weights_but_grad_through_decoder():
    vae = FrozenVAE.from_config()
    assert not any(p.requires_grad for p in vae.parameters())
    vae.train()
    assert not vae.vae.training
    z = torch.randn(1, 16, 4, 4, requires_grad=True)
    vae.decode(z).square().mean().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert all(p.grad is None for p in vae.parameters())
    assert not vae.encode(torch.zeros(1, 3, 32, 32)).requires_grad


def test_frozen_weights_stay_out_of_state_dicts():
    vae = FrozenVAE.from_config()
    assert vae.state_dict() == {}
    before = [p.clone() for p in vae.parameters()]
    vae.load_state_dict({}, strict=True)
    assert all(torch.equal(a, b) for a, b in zip(before, vae.parameters()))


def test_sample_posterior_option():
    vae = FrozenVAE(VAEConfig(pretrained="", arch=dict(TINY_VAE_ARCH), sample_posterior=True))
    x = torch.rand(1, 3, 32, 32)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    assert not torch.allclose(vae.encode(x, g1), vae.encode(x, g2))


def test_missing_weights_message(tmp_path):
    with pytest.raises(MissingWeightsError, match="huggingface-cli download black-forest-labs"):
        FrozenVAE.from_pretrained(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="convention"):
        VAEConfig(convention="sd")
