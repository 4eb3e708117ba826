import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from openvision3.data.synthetic.world import SyntheticWorld
from openvision3.models.vae import FrozenVAE, VAEConfig
from openvision3.ov3 import demo_vae as vae_mod
from openvision3.ov3.demo_vae import (
    VAETrainConfig,
    calibrate_latent_scale,
    count_flops,
    demo_vae_dir,
    evaluate_psnr,
    psnr_uint8,
    reproduce_command,
    train_vae,
)
from openvision3.train.metrics import read_metrics

WEIGHTS = "diffusion_pytorch_model.safetensors"


def _tiny(out_dir, **kw) -> VAETrainConfig:
    cfg = dict(
        out_dir=str(out_dir),
        block_out_channels=(8, 8, 8, 8),
        norm_num_groups=4,
        resolutions=(32,),
        crop_size=0,
        finetune_crop_size=0,
        finetune_steps=0,
        train_images=4,  # one fixed batch: the loss must fall
        steps=40,
        batch_size=4,
        lr=3e-3,
        warmup_steps=0,
        val_images=4,
        val_resolutions=(32,),
        log_every=10,
        num_threads=1,
    )
    return VAETrainConfig(**{**cfg, **kw})


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return train_vae(_tiny(tmp_path_factory.mktemp("vae") / "run"))


def test_tiny_run_writes_a_folder_frozen_vae_loads(tiny_run):
    vae = FrozenVAE(VAEConfig(pretrained=tiny_run, subfolder=""))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    z = vae.encode(x)
    assert z.shape == (2, 16, 4, 4)
    assert vae.decode(z).shape == (2, 3, 32, 32)
    info = json.load(open(f"{tiny_run}/training.json"))
    assert info["steps"] == 40 and info["config"]["block_out_channels"] == [8, 8, 8, 8]
    assert set(info["val_psnr_db"]) == {"32"} and info["val_psnr_db"]["32"] > 5
    assert info["command"].startswith("ov3 train-vae --out-dir ")
    assert info["torch_version"] == torch.__version__


def test_tiny_run_loss_decreases(tiny_run):
    mse = [r["mse"] for r in read_metrics(tiny_run)]  # the default pixel loss
    assert len(mse) == 4
    assert mse[-1] < 0.7 * mse[0], mse


def test_same_seed_same_weights_other_seed_differs(tiny_run, tmp_path):
    first = load_file(f"{tiny_run}/{WEIGHTS}")  # tiny_run ran first, in the same process
    again = load_file(f"{train_vae(_tiny(tmp_path / 'again'))}/{WEIGHTS}")
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    other = load_file(f"{train_vae(_tiny(tmp_path / 'other', seed=1, steps=2))}/{WEIGHTS}")
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_calibration_sets_latent_std_and_keeps_reconstructions():
    from diffusers import AutoencoderKL

    ae = AutoencoderKL(**_tiny("unused").arch()).eval()
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        before = ae(x).sample
        s = calibrate_latent_scale(ae, x, 1.0)
        after = ae(x).sample
        std = (ae.encode(x).latent_dist.mean * 0.3611).std().item()
    assert s != pytest.approx(1.0)
    assert std == pytest.approx(1.0, rel=1e-4)
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)


def test_psnr_uint8():
    a = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    b = a.clone()
    b[1] = 255
    p = psnr_uint8(a, b)
    assert p[1].item() == pytest.approx(0.0) and p[0].item() > 90


def test_config_validation_and_command():
    with pytest.raises(ValueError, match="4 entries"):
        VAETrainConfig(block_out_channels=(8, 16, 32))
    with pytest.raises(ValueError, match="norm_num_groups"):
        VAETrainConfig(block_out_channels=(6, 16, 32, 32), norm_num_groups=4)
    with pytest.raises(ValueError, match="crop_size"):
        VAETrainConfig(resolutions=(64,), crop_size=128, finetune_crop_size=0)
    cmd = reproduce_command(VAETrainConfig(out_dir="x", steps=700, resolutions=(128,)))
    assert cmd == "ov3 train-vae --out-dir x --resolutions 128 --steps 700"


def test_demo_vae_dir_missing_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setattr(vae_mod, "DEMO_VAE_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="ov3 train-vae"):
        demo_vae_dir()


def test_shipped_demo_vae():
    path = demo_vae_dir()
    vae = FrozenVAE(VAEConfig(pretrained=path, subfolder=""))
    assert vae.vae.config.latent_channels == 16 and vae.vae.config.scaling_factor == 0.3611
    assert vae.vae.config.shift_factor == 0.1159
    assert vae.vae.quant_conv is None and vae.vae.post_quant_conv is None
    assert all(p.dtype == torch.float32 for p in vae.parameters())
    z = vae.encode(torch.zeros(1, 3, 64, 48))
    assert z.shape == (1, 16, 8, 6)  # 8x down
    world = SyntheticWorld(0)
    assert evaluate_psnr(vae, world, 64, num_images=8, batch_size=8) >= 25.0
    images = torch.from_numpy(np.stack([world.sample("val", i, 64)["image"] for i in range(8)]))
    latents = vae.encode(images.permute(0, 3, 1, 2).float() / 127.5 - 1)
    assert 0.5 < latents.std().item() < 2.0  # calibrated: mean * 0.3611 has std ~1
    assert count_flops(vae.vae, 128)["decode"] <= 0.6
    info = json.load(open(f"{path}/training.json"))
    assert min(info["val_psnr_db"].values()) >= 28.0
