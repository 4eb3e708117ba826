import pytest
import torch
import torchvision
from safetensors.torch import save_file

from openvision3.losses import ReconstructionLoss, ReconstructionLossConfig


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    latents = torch.randn(2, 4, 4, 4, generator=g)
    return images, latents


def test_terms_on_known_inputs():
    images, latents = _batch()
    loss, terms = ReconstructionLoss(ReconstructionLossConfig())(
        images, images + 0.25, latents, latents - 2.0
    )
    assert set(terms) == {"pixel_l1", "latent_l1"}
    torch.testing.assert_close(terms["pixel_l1"], torch.tensor(0.25))
    torch.testing.assert_close(terms["latent_l1"], torch.tensor(2.0))
    torch.testing.assert_close(loss, torch.tensor(0.25 + 0.4 * 2.0))
    assert not any(t.requires_grad for t in terms.values())


def test_latent_weight_and_gradients():
    images, latents = _batch()
    images_hat = torch.zeros_like(images, requires_grad=True)
    latents_hat = torch.zeros_like(latents, requires_grad=True)
    loss, _ = ReconstructionLoss(ReconstructionLossConfig(latent_weight=0.0))(
        images, images_hat, latents, latents_hat
    )
    torch.testing.assert_close(loss, images.abs().mean())
    loss.backward()
    assert images_hat.grad.abs().sum() > 0
    assert latents_hat.grad.abs().sum() == 0


@pytest.mark.parametrize("bad", [{"latent_weight": -1.0}, {"lpips_weight": float("nan")}])
def test_config_rejects_bad_weights(bad):
    with pytest.raises(ValueError):
        ReconstructionLossConfig(**bad)


def test_config_rejects_unknown_net():
    with pytest.raises(ValueError, match="lpips_net"):
        ReconstructionLossConfig(lpips_net="resnet")


@pytest.fixture(scope="module")
def random_vgg(tmp_path_factory) -> tuple[str, dict]:
    """A randomly initialised torchvision VGG16 (features only, the rest is unused)."""
    torch.manual_seed(1)
    features = torchvision.models.vgg16().features.state_dict()
    state = {f"features.{k}": v.contiguous() for k, v in features.items()}
    path = tmp_path_factory.mktemp("vgg") / "vgg16.safetensors"
    save_file(state, str(path))
    return str(path), state


def test_lpips_loads_local_weights(random_vgg):
    path, state = random_vgg
    loss_fn = ReconstructionLoss(ReconstructionLossConfig(lpips_weight=0.5, lpips_weights=path))
    images, latents = _batch()
    images_hat = (images + 0.3 * torch.randn_like(images)).clamp(-1, 1).requires_grad_(True)

    loss, terms = loss_fn(images, images_hat, latents, latents)
    assert set(terms) == {"pixel_l1", "latent_l1", "lpips"}
    assert terms["lpips"] > 0
    torch.testing.assert_close(loss.detach(), terms["pixel_l1"] + 0.5 * terms["lpips"])
    loss.backward()
    assert images_hat.grad.abs().sum() > 0

    same, same_terms = loss_fn(images, images.clone(), latents, latents)
    assert same_terms["lpips"].item() == pytest.approx(0.0, abs=1e-6)

    lpips_model = loss_fn._lpips[0]
    # The backbone came from the file, by torchvision layer index, and is frozen.
    torch.testing.assert_close(
        lpips_model.net.slice3.get_submodule("14").weight, state["features.14.weight"]
    )
    torch.testing.assert_close(
        lpips_model.net.slice5.get_submodule("28").bias, state["features.28.bias"]
    )
    assert not any(p.requires_grad for p in lpips_model.parameters())
    assert not lpips_model.training
    # ... and stays out of the loss module: no parameters, no checkpoint entries.
    assert loss_fn.state_dict() == {} and list(loss_fn.parameters()) == []

    # The frozen network follows the inputs' dtype (and device).
    _, double_terms = loss_fn(images.double(), images_hat.double(), latents, latents)
    assert double_terms["lpips"].dtype == torch.float64
    torch.testing.assert_close(double_terms["lpips"].float(), terms["lpips"], rtol=1e-4, atol=1e-6)


def test_lpips_loads_pth_from_torch_hub_cache(random_vgg, tmp_path, monkeypatch):
    _, state = random_vgg
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth")
    loss_fn = ReconstructionLoss(ReconstructionLossConfig(lpips_weight=1.0))
    images, latents = _batch()
    _, terms = loss_fn(images, -images, latents, latents)
    assert terms["lpips"] > 0


def test_lpips_missing_weights_message(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    loss_fn = ReconstructionLoss(ReconstructionLossConfig(lpips_weight=0.5))
    images, latents = _batch()
    # Nothing happens until LPIPS is first needed.
    assert loss_fn._lpips == []
    with pytest.raises(FileNotFoundError) as err:
        loss_fn(images, images, latents, latents)
    message = str(err.value)
    assert "https://download.pytorch.org/models/vgg16-397923af.pth" in message
    assert str(tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth") in message
    assert "lpips_weights" in message

    missing = str(tmp_path / "nope.pth")
    loss_fn = ReconstructionLoss(ReconstructionLossConfig(lpips_weight=0.5, lpips_weights=missing))
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        loss_fn(images, images, latents, latents)


def test_lpips_rejects_wrong_state_dict(tmp_path):
    path = tmp_path / "not_vgg.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, path)
    loss_fn = ReconstructionLoss(
        ReconstructionLossConfig(lpips_weight=0.5, lpips_weights=str(path))
    )
    images, latents = _batch()
    with pytest.raises(ValueError, match="missing"):
        loss_fn(images, images, latents, latents)
