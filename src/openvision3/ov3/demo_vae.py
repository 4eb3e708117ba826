"""Train the small frozen VAE of the offline demo (a stand-in for the FLUX.1 VAE).

The paper freezes the FLUX.1 VAE (diffusers ``AutoencoderKL``: 8x down, 16 latent channels, no
quant convs). Offline it cannot be downloaded, so the demo uses a small ``AutoencoderKL`` with
the same interface, trained here on the synthetic world with MSE (L1 optional) + a tiny KL term,
then frozen.
The shipped weights live in ``openvision3/ov3/assets/demo_vae`` (reproduce: ``ov3 train-vae``).

After training, the latent scale is calibrated so that ``mean * 0.3611`` (the "ov3" convention
of :class:`~openvision3.models.vae.FrozenVAE`) has the standard deviation ``latent_std``, as for
FLUX.1 whose ``scaling_factor`` gives unit-variance latents. The calibration rescales the
encoder's mean/log-variance outputs and the decoder's first conv, so the decoded images stay
exactly the same.
"""

from __future__ import annotations

import json
import math
import os
import platform
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from openvision3.data.synthetic.world import SyntheticWorld
from openvision3.data.transforms import from_uint8, to_uint8
from openvision3.dataclass_io import to_dict
from openvision3.evaluation.reconstruction import psnr_uint8
from openvision3.models.vae import FLUX_VAE_ARCH, FrozenVAE, VAEConfig
from openvision3.train.metrics import MetricsLogger, ProgressBar
from openvision3.train.optim import build_scheduler

DEMO_VAE_DIR = Path(__file__).resolve().parent / "assets" / "demo_vae"
DEMO_VAE_FILES = ("config.json", "diffusion_pytorch_model.safetensors")
# Run from the repository root; the defaults of VAETrainConfig are the shipped recipe.
REPRODUCE_COMMAND = "ov3 train-vae --out-dir src/openvision3/ov3/assets/demo_vae"


@dataclass
class VAETrainConfig:
    """Architecture, data and optimisation of the small demo VAE (defaults = the shipped one).

    Images are rendered by `SyntheticWorld(world_seed)` at a resolution drawn from
    `resolutions` (one per step) and randomly cropped to `crop_size` (0 = no crop); the
    last `finetune_steps` of `steps` use `finetune_crop_size` instead. The network is
    convolutional, so small crops of 128 px renders teach it 128 px statistics cheaply; the
    larger final crops adapt the normalisation and the attention to larger grids.
    """

    out_dir: str = "runs/demo_vae"  # output folder (checkpoint, samples, report)
    block_out_channels: tuple[int, ...] = (8, 16, 32, 32)  # 4 blocks = 8x down
    layers_per_block: int = 1  # ResNet layers per encoder / decoder block
    norm_num_groups: int = 4  # GroupNorm groups
    latent_channels: int = 16  # latent channels C
    resolutions: tuple[int, ...] = (64, 128)  # render sizes in pixels, one drawn per step
    crop_size: int = 32  # random crop side in pixels (0 = no crop)
    finetune_crop_size: int = 64  # crop side of the last --finetune-steps
    train_images: int = 0  # 0 = fresh images every step; N = cycle over the first N (overfit tests)
    steps: int = 7500  # optimizer steps in all
    finetune_steps: int = 500  # last steps trained on the larger crops
    batch_size: int = 16  # images per step
    lr: float = 2e-3  # peak AdamW learning rate
    warmup_steps: int = 100  # linear warmup steps
    min_lr_ratio: float = 0.05  # cosine floor as a fraction of the peak
    weight_decay: float = 0.0  # AdamW weight decay
    grad_clip: float = 1.0  # max gradient norm
    # MSE, not L1: L1 (median-seeking) left the saturated colours of the small objects grey for
    # thousands of steps; MSE weighs those large errors more and is what PSNR measures.
    l1_weight: float = 0.0  # weight of the L1 reconstruction loss
    mse_weight: float = 1.0  # weight of the MSE reconstruction loss
    kl_weight: float = 1e-6  # weight of the KL term
    # Initial posterior log-variance (bias of the encoder's log-variance outputs). With the
    # default init (std 1) the sampling noise swamped the colour of small objects for thousands
    # of steps: Adam moves a bias by ~lr per step. FLUX.1's posterior std is small too.
    init_logvar: float = -10.0  # initial posterior log-variance
    latent_std: float = 1.0  # target std of `mean * scaling_factor`; 0 = no calibration
    val_images: int = 256  # validation images per resolution
    val_resolutions: tuple[int, ...] = (64, 128)  # validation render sizes
    seed: int = 0  # seeds initialisation and crops
    world_seed: int = 0  # the synthetic world (objects, colours) the images come from
    num_threads: int = 1  # torch threads (more ran slower on 2 shared cores: docs/demo-learning.md)
    log_every: int = 100  # log every N steps

    def __post_init__(self):
        if len(self.block_out_channels) != 4:
            raise ValueError(
                f"block_out_channels needs 4 entries (8x down, like FLUX.1), got {self.block_out_channels}"
            )
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(
                f"norm_num_groups={self.norm_num_groups} must divide every block_out_channels "
                f"entry {self.block_out_channels}"
            )
        if self.layers_per_block < 1 or self.latent_channels < 1:
            raise ValueError("layers_per_block and latent_channels must be >= 1")
        if not self.resolutions or any(r < 8 or r % 8 for r in self.resolutions):
            raise ValueError(f"resolutions must be multiples of 8, got {self.resolutions}")
        for name in ("crop_size", "finetune_crop_size"):
            crop = getattr(self, name)
            if crop and (crop % 8 or crop > min(self.resolutions)):
                raise ValueError(
                    f"{name} must be 0 or a multiple of 8 <= min(resolutions), got {crop}"
                )
        if any(r < 8 or r % 8 for r in self.val_resolutions):
            raise ValueError(f"val_resolutions must be multiples of 8, got {self.val_resolutions}")
        if self.train_images < 0:
            raise ValueError(f"train_images must be >= 0, got {self.train_images}")
        if self.steps < 1 or self.batch_size < 1 or self.num_threads < 1 or self.log_every < 1:
            raise ValueError("steps, batch_size, num_threads and log_every must be >= 1")
        if min(self.l1_weight, self.mse_weight) < 0 or self.l1_weight + self.mse_weight <= 0:
            raise ValueError("l1_weight and mse_weight must be >= 0, not both 0")
        if self.lr <= 0 or self.kl_weight < 0 or self.latent_std < 0 or self.val_images < 0:
            raise ValueError("lr must be > 0; kl_weight, latent_std and val_images >= 0")
        if not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(f"warmup_steps must be in [0, steps], got {self.warmup_steps}")
        if not 0 <= self.finetune_steps <= self.steps:
            raise ValueError(f"finetune_steps must be in [0, steps], got {self.finetune_steps}")

    def arch(self) -> dict:
        """diffusers ``AutoencoderKL`` arguments: FLUX.1's interface with small widths."""
        return dict(
            FLUX_VAE_ARCH,
            block_out_channels=list(self.block_out_channels),
            layers_per_block=self.layers_per_block,
            norm_num_groups=self.norm_num_groups,
            latent_channels=self.latent_channels,
            sample_size=max(self.resolutions),
        )


def demo_vae_dir() -> str:
    """Folder of the shipped demo VAE (diffusers layout); raises if its files are missing."""
    missing = [f for f in DEMO_VAE_FILES if not (DEMO_VAE_DIR / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"The demo VAE is missing {missing} in {DEMO_VAE_DIR}. Re-create it with "
            f"`{REPRODUCE_COMMAND}` (about 15 minutes on 2 CPU cores)."
        )
    return str(DEMO_VAE_DIR)


def reproduce_command(cfg: VAETrainConfig) -> str:
    """The ``ov3 train-vae`` command line that re-creates ``cfg`` (non-default fields only)."""
    parts = ["ov3 train-vae"]
    default = VAETrainConfig()
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if f.name != "out_dir" and value == getattr(default, f.name):
            continue
        flag = "--" + f.name.replace("_", "-")
        shown = " ".join(map(str, value)) if isinstance(value, tuple) else str(value)
        parts.append(f"{flag} {shown}")
    return " ".join(parts)


def _val_batch(world: SyntheticWorld, start: int, stop: int, resolution: int) -> torch.Tensor:
    """uint8 val images ``start..stop-1`` -> (B, 3, H, W)."""
    imgs = np.stack([world.sample("val", i, resolution)["image"] for i in range(start, stop)])
    return torch.from_numpy(imgs).permute(0, 3, 1, 2)


@torch.no_grad()
def evaluate_psnr(
    vae: FrozenVAE, world: SyntheticWorld, resolution: int, num_images: int, batch_size: int = 32
) -> float:
    """Mean per-image PSNR (dB) of ``decode(encode(x))`` on val images ``0..num_images-1``.

    Images (B, 3, H, W) go through the FrozenVAE path used downstream (posterior mean, scaled
    latents (B, C, H/8, W/8)); reconstructions are rounded to uint8 before comparing.
    """
    total = 0.0
    for start in range(0, num_images, batch_size):
        target = _val_batch(world, start, min(start + batch_size, num_images), resolution)
        recon = to_uint8(vae.decode(vae.encode(from_uint8(target))))
        total += psnr_uint8(recon, target).sum().item()
    return total / max(num_images, 1)


def _train_batch(
    world: SyntheticWorld, cfg: VAETrainConfig, step: int, rng: np.random.Generator
) -> torch.Tensor:
    """Images of step ``step``: fresh train indices, a drawn resolution, random crops.

    Returns (B, 3, h, w) in [-1, 1] with h = w = the crop size (or the resolution when 0).
    """
    res = int(rng.choice(cfg.resolutions))
    finetune = step >= cfg.steps - cfg.finetune_steps
    crop = (cfg.finetune_crop_size if finetune else cfg.crop_size) or res
    out = np.empty((cfg.batch_size, crop, crop, 3), dtype=np.uint8)
    for i in range(cfg.batch_size):
        index = step * cfg.batch_size + i
        img = world.sample("train", index % cfg.train_images if cfg.train_images else index, res)
        img = img["image"]
        y, x = rng.integers(0, res - crop + 1, size=2)
        out[i] = img[y : y + crop, x : x + crop]
    return from_uint8(torch.from_numpy(out).permute(0, 3, 1, 2))


def _build_autoencoder(cfg: VAETrainConfig) -> nn.Module:
    from diffusers import AutoencoderKL

    # A forked RNG: the initialisation depends on cfg.seed only and leaves the caller's RNG alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        ae = AutoencoderKL(**cfg.arch())
    with torch.no_grad():  # conv_out outputs (mean, log-variance) as (B, 2C, h, w)
        ae.encoder.conv_out.bias[cfg.latent_channels :] = cfg.init_logvar
    return ae


@torch.no_grad()
def calibrate_latent_scale(
    autoencoder: nn.Module, images: torch.Tensor, target_std: float
) -> float:
    """Rescale the latents in place so that ``mean * scaling_factor`` has std ``target_std``.

    ``images`` (B, 3, H, W) in [-1, 1]. The encoder's last conv outputs (mean, log-variance)
    as (B, 2C, h, w); multiplying the mean by ``s`` (log-variance + 2 log s) and dividing the
    decoder's first conv weight by ``s`` leaves reconstructions unchanged. Returns ``s``.
    """
    ae = autoencoder
    if ae.quant_conv is not None or ae.post_quant_conv is not None:
        raise ValueError("latent calibration needs use_quant_conv=False, use_post_quant_conv=False")
    std = ae.encode(images).latent_dist.mean.std().item() * ae.config.scaling_factor
    s = target_std / max(std, 1e-8)
    c = ae.config.latent_channels
    conv_out, conv_in = ae.encoder.conv_out, ae.decoder.conv_in
    conv_out.weight[:c] *= s
    conv_out.bias[:c] *= s
    conv_out.bias[c:] += 2 * math.log(s)
    conv_in.weight /= s
    return s


def count_flops(autoencoder: nn.Module, resolution: int) -> dict[str, float]:
    """Forward GFLOPs per image of encode (posterior) and decode at ``resolution`` px."""
    from torch.utils.flop_counter import FlopCounterMode

    c, down = (
        autoencoder.config.latent_channels,
        2 ** (len(autoencoder.config.block_out_channels) - 1),
    )
    with torch.no_grad():
        with FlopCounterMode(display=False) as enc:
            autoencoder.encode(torch.zeros(1, 3, resolution, resolution))
        with FlopCounterMode(display=False) as dec:
            autoencoder.decode(torch.zeros(1, c, resolution // down, resolution // down))
    return {"encode": enc.get_total_flops() / 1e9, "decode": dec.get_total_flops() / 1e9}


def _save(autoencoder: nn.Module, out_dir: Path, info: dict) -> None:
    """Write the diffusers folder + training.json; each file appears whole (atomic rename)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}-") as tmp:
        autoencoder.save_pretrained(tmp, safe_serialization=True)
        with open(Path(tmp) / "training.json", "w") as f:
            json.dump(info, f, indent=1)
        for name in os.listdir(tmp):
            os.chmod(Path(tmp) / name, 0o644)  # temp files are private; outputs are not
            os.replace(Path(tmp) / name, out_dir / name)


def _run(cfg: VAETrainConfig) -> str:
    import diffusers

    start = time.monotonic()
    out_dir = Path(cfg.out_dir)
    world = SyntheticWorld(cfg.world_seed)
    rng = np.random.default_rng([cfg.seed, 1])  # resolutions and crops
    noise = torch.Generator().manual_seed(cfg.seed)  # posterior samples
    ae = _build_autoencoder(cfg).train()
    opt = torch.optim.AdamW(ae.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = build_scheduler(opt, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
    (out_dir / "metrics.jsonl").unlink(missing_ok=True)  # a fresh run, not a resume
    log = MetricsLogger(out_dir)
    bar = ProgressBar(cfg.steps, description="train-vae")
    l1_sum, mse_sum, n_sum = 0.0, 0.0, 0
    for step in range(cfg.steps):
        x = _train_batch(world, cfg, step, rng)  # (B, 3, h, w)
        posterior = ae.encode(x).latent_dist
        recon = ae.decode(posterior.sample(noise)).sample
        l1, mse = (recon - x).abs().mean(), (recon - x).square().mean()
        kl = posterior.kl().mean()  # summed over (C, h, w), mean over B (LDM convention)
        loss = cfg.l1_weight * l1 + cfg.mse_weight * mse + cfg.kl_weight * kl
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite VAE loss {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(ae.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        l1_sum, mse_sum, n_sum = l1_sum + l1.item(), mse_sum + mse.item(), n_sum + 1
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            scalars = {"l1": l1_sum / n_sum, "mse": mse_sum / n_sum, "kl": kl.item()}
            scalars["grad_norm"] = grad_norm.item()
            log.log(step + 1, dict(scalars, lr=sched.get_last_lr()[0]), (step + 1) * cfg.batch_size)
            bar.update(step + 1, loss=loss.item())
            l1_sum, mse_sum, n_sum = 0.0, 0.0, 0
    bar.close()
    log.close()
    train_time = time.monotonic() - start

    ae.eval()
    scale = 1.0
    if cfg.latent_std > 0:  # calibrate on train images (never the val images that are scored)
        calib = torch.cat([_train_batch(world, cfg, cfg.steps + i, rng) for i in range(4)])
        scale = calibrate_latent_scale(ae, calib, cfg.latent_std)
    vae = FrozenVAE(VAEConfig(pretrained="", arch=cfg.arch()), autoencoder=ae)
    psnr = {str(r): evaluate_psnr(vae, world, r, cfg.val_images) for r in cfg.val_resolutions}
    for r, v in psnr.items():
        print(f"train-vae val PSNR @{r}px: {v:.2f} dB ({cfg.val_images} images)", flush=True)
    info = {
        "config": to_dict(cfg),
        "steps": cfg.steps,
        "train_time_s": round(train_time, 1),
        "wall_time_s": round(time.monotonic() - start, 1),
        "val_psnr_db": psnr,
        "val_images": cfg.val_images,
        "latent_rescale": scale,
        "num_params": sum(p.numel() for p in ae.parameters()),
        "gflops_per_image_128px": count_flops(ae, 128),
        "torch_version": torch.__version__,
        "diffusers_version": diffusers.__version__,
        "python_version": platform.python_version(),
        "command": reproduce_command(cfg),
    }
    _save(ae, out_dir, info)
    return str(out_dir)


def train_vae(cfg: VAETrainConfig) -> str:
    """Train the small ``AutoencoderKL`` on the synthetic world and write it to ``cfg.out_dir``.

    Writes ``config.json`` + ``diffusion_pytorch_model.safetensors`` (diffusers layout, loadable
    by ``FrozenVAE(VAEConfig(pretrained=out_dir, subfolder=""))``), ``training.json`` (config,
    wall time, val PSNR per resolution, versions, the command to reproduce) and
    ``metrics.jsonl``. Deterministic given ``cfg`` (same seeds and ``num_threads``).
    Returns ``out_dir``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.num_threads)
    try:
        return _run(cfg)
    finally:
        torch.set_num_threads(threads)
