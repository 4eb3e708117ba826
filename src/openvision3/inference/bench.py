"""``ov3 bench encode``: images/s of our encode path against the authors' released recipe.

The released recipe (how the authors run their ``UCSC-VLAA/openvision3-vit-*`` checkpoints):
fp32 ``AutoencoderKL`` posterior mean x 0.3611 (no shift), then an open_clip
``VisionTransformer`` with a 16-channel patch conv, in fp32. Here
it runs with the *same weights* as ours (the VAE copied, our encoder converted back to the
open_clip layout), in the same process, on the same card and on the same input batch, so the
table gives both the speed-up and the relative error of our tokens against the fp32 recipe.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from openvision3.inference.api import Pipeline, PipelineConfig, default_device
from openvision3.models.encoder import Encoder
from openvision3.models.openvision3 import OpenVision3
from openvision3.perf import benchmark, device_name

RELEASED_SCALE = 0.3611  # the released recipe: mean * 0.3611, no shift


@dataclass
class BenchConfig:
    """Encode throughput of ours vs the released recipe. JSON on stdout (and in --output)."""

    model: str = ""
    """export directory / hub id / released encoder; empty: --preset with random weights"""
    preset: str = "ov3-B/2"
    """model preset used when --model is empty (random weights, VAE built from its arch)"""
    resolution: int | None = None
    """input side in pixels; default: the one --model was last trained at, else its grid's"""
    batch_size: int = 32  # images per forward
    steps: int = 10  # timed forwards
    warmup: int = 3  # untimed forwards first
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    compile: bool = False
    """also torch.compile the VAE encoder and the ViT on our fast path"""
    output: str = ""
    """write the JSON table to this file too"""

    def __post_init__(self):
        if self.batch_size < 1 or self.steps < 1 or self.warmup < 0:
            raise ValueError("need --batch-size >= 1, --steps >= 1 and --warmup >= 0")


def open_clip_vit(encoder: Encoder, grid: tuple[int, int]) -> nn.Module:
    """Our ``Encoder`` -> the equivalent open_clip ``VisionTransformer`` (the released layout)
    for latent grids of ``grid`` tokens, weights copied (the inverse of
    ``pretrained.convert_released_state_dict``; sin-cos tables are materialised)."""
    from open_clip.transformer import LayerNorm, VisionTransformer

    cfg = encoder.cfg
    p = cfg.patch_size
    vit = VisionTransformer(
        image_size=(grid[0] * p, grid[1] * p),
        patch_size=p,
        width=cfg.width,
        layers=cfg.depth,
        heads=cfg.heads,
        mlp_ratio=cfg.mlp_ratio,
        no_ln_pre=True,
        pool_type="avg",
        final_ln_after_pool=True,
        output_tokens=True,
        output_dim=cfg.embed_dim,
        norm_layer=partial(LayerNorm, eps=cfg.ln_eps),
    )
    vit.conv1 = nn.Conv2d(cfg.in_channels, cfg.width, p, p, bias=cfg.patch_bias)
    names = {
        "norm1": "ln_1",
        "norm2": "ln_2",
        "attn.qkv.weight": "attn.in_proj_weight",
        "attn.qkv.bias": "attn.in_proj_bias",
        "attn.proj": "attn.out_proj",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
    }
    sd = {}
    for key, value in encoder.state_dict().items():
        if key.startswith("blocks."):
            _, idx, name = key.split(".", 2)
            for new, old in names.items():
                if name.startswith(new):
                    name = old + name[len(new) :]
                    break
            sd[f"transformer.resblocks.{idx}.{name}"] = value
        elif key.startswith("patch_embed."):
            sd["conv1." + key[len("patch_embed.") :]] = value
        elif key.startswith("norm."):
            sd["ln_post." + key[len("norm.") :]] = value
    sd["class_embedding"] = encoder.cls_token.detach()
    sd["proj"] = encoder.head.weight.detach().t()
    with torch.no_grad():
        sd["positional_embedding"] = encoder.position_table(grid, "cpu", torch.float32)
    vit.load_state_dict(sd, strict=True)
    return vit.eval()


def _model(cfg: BenchConfig, device: str) -> OpenVision3:
    from openvision3.models.presets import model_config
    from openvision3.pretrained import load_pretrained

    if cfg.model:
        return load_pretrained(cfg.model, device=device)
    mc = model_config(cfg.preset)
    mc = dataclasses.replace(
        mc, decoder=None, text=None, caption=None, vae=dataclasses.replace(mc.vae, pretrained="")
    )
    return OpenVision3(mc).eval().to(device)


@torch.no_grad()
def _time(fn: Callable, x: torch.Tensor, steps: int, warmup: int) -> tuple[torch.Tensor, float]:
    """-> (last output, mean seconds per batch)."""
    out, times, _ = benchmark(lambda: fn(x), steps, warmup, x.device)
    return out, sum(times) / len(times)


def _released_recipe(model: OpenVision3, grid: tuple[int, int], device) -> Callable:
    """images (B, 3, H, W) -> tokens (B, N, D), the authors' way, on copies of the weights."""
    vae = copy.deepcopy(model.vae.vae).float().eval()
    vit = open_clip_vit(model.encoder, grid).to(device)

    def recipe(images: torch.Tensor) -> torch.Tensor:
        latents = vae.encode(images).latent_dist.mean * RELEASED_SCALE
        return vit(latents)[1]  # (pooled (B, E), tokens (B, N, D)) -> tokens

    return recipe


def bench_encode(cfg: BenchConfig) -> dict:
    """Time the released recipe, our fp32 path and our fast path on one random batch.

    Returns {"device", "batch_size", "resolution", "tokens", "rows": [{"path", "images_per_s",
    "ms_per_batch", "speedup", "rel_error", "max_abs_error"}]}; errors are against the recipe's
    tokens (relative error = ||ours - ref|| / ||ref||, Frobenius).
    """
    from openvision3.pretrained import trained_resolution

    device = torch.device(default_device() if cfg.device == "auto" else cfg.device)
    model = _model(cfg, str(device))
    if model.vae is None:
        raise ValueError("the benchmark needs a model with a VAE")
    resolution = cfg.resolution
    if resolution is None and cfg.model:
        resolution = trained_resolution(cfg.model)
    fp32 = Pipeline(model, PipelineConfig(resolution, autocast=False, channels_last=False))
    res = fp32.resolution
    grid = fp32.token_grid()
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(cfg.batch_size, 3, res, res, generator=gen) * 2 - 1).to(device)

    recipe = _released_recipe(model, grid, device)
    rows = []
    ref, t_ref = _time(recipe, x, cfg.steps, cfg.warmup)
    rows.append(("released recipe (fp32 VAE mean x 0.3611 + open_clip ViT, fp32)", ref, t_ref))
    del recipe  # frees the recipe's copy of the weights before the fast path
    out, t = _time(fp32.encode, x, cfg.steps, cfg.warmup)
    rows.append(("ours, fp32", out, t))
    fast = Pipeline(model, PipelineConfig(resolution, autocast=True, compile=cfg.compile))
    name = "ours, bf16 autocast" + (", channels_last VAE" if device.type == "cuda" else "")
    out, t = _time(fast.encode, x, cfg.steps, cfg.warmup)
    rows.append((name + (", torch.compile" if cfg.compile else ""), out, t))

    ref = ref.float()
    table = []
    for path, tokens, seconds in rows:
        diff = tokens.float() - ref
        table.append(
            {
                "path": path,
                "images_per_s": round(cfg.batch_size / seconds, 2),
                "ms_per_batch": round(seconds * 1e3, 3),
                "speedup": round(t_ref / seconds, 3),
                "rel_error": float(diff.norm() / ref.norm().clamp_min(1e-12)),
                "max_abs_error": float(diff.abs().max()),
            }
        )
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "model": cfg.model or f"{cfg.preset} (random weights)",
        "batch_size": cfg.batch_size,
        "resolution": res,
        "tokens": list(ref.shape[1:]),
        "steps": cfg.steps,
        "rows": table,
    }
