"""Anchor measurements on one GPU, independent of the openvision3 package.

The same pieces the training step and the encode path use, built straight from diffusers,
open_clip, timm and lpips with random weights (speed does not depend on the values), so a
benchmark of ours can be compared with them on the same card, in the same call:

  * the bf16 matmul ceiling of the card (8192^3; the MFU denominator);
  * the FLUX.1 VAE (diffusers ``AutoencoderKL`` with the FLUX config): encode fp32, encode and
    decode bf16 channels_last, decode forward + backward;
  * the released OpenVision 3 inference recipe (fp32 VAE posterior mean x 0.3611, then an
    open_clip ``VisionTransformer`` with a 16-channel 2x2 patch conv), and the same in bf16;
  * a ViT-B/2 encoder + ViT-B/1 decoder forward + backward (timm blocks, SDPA, bf16, batch 128);
  * LPIPS (VGG16 backbone) forward + backward;
  * with --compile-vae: the VAE's encoder and its decoder forward + backward under
    ``torch.compile`` (bf16 channels_last, cuDNN autotuning on), as ``train.compile_vae`` runs.

Prints one JSON object; writes it to $OUT/anchor.json when OUT is set (scripts/gpu_check.sh).
Usage: python scripts/anchor_bench.py [--smoke] [--compile-vae]
(--smoke: tiny sizes on CPU, to test the script)
"""

from __future__ import annotations

import json
import os
import sys
import time
from functools import partial

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

SMOKE = "--smoke" in sys.argv
COMPILE_VAE = "--compile-vae" in sys.argv
DEV = "cpu" if SMOKE else "cuda"
RES = 64 if SMOKE else 256
B = 2 if SMOKE else 32
SCALE = 0.3611  # the FLUX.1 VAE's scaling factor; the released recipe applies no shift


def sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


def median_seconds(fn, iters: int = 10, warmup: int = 3) -> float:
    """Median wall time of ``fn`` (the device synced after each call)."""
    if SMOKE:
        iters, warmup = 1, 1
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def record(results: dict, name: str, fn, batch: int) -> None:
    seconds = median_seconds(fn)
    flops = count_flops(fn)
    row = {
        "s_per_batch": round(seconds, 5),
        "img_per_s": round(batch / seconds, 1),
        "gflop_per_img": round(flops / batch / 1e9, 2),
        "tflop_per_s": round(flops / seconds / 1e12, 1),
    }
    results[name] = row
    print(name, row, flush=True)


def matmul_ceiling(results: dict) -> None:
    n = 512 if SMOKE else 8192
    a = torch.randn(n, n, device=DEV, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=DEV, dtype=torch.bfloat16)
    results["matmul_bf16_tflops"] = round(2 * n**3 / median_seconds(lambda: a @ b) / 1e12, 1)
    print("matmul", results["matmul_bf16_tflops"], flush=True)


def flux_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=16,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 32, 32) if SMOKE else (128, 256, 512, 512),
        layers_per_block=2,
        norm_num_groups=32,
        sample_size=1024,
        scaling_factor=SCALE,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def vae_and_recipe(results: dict) -> None:
    from open_clip.transformer import LayerNorm, VisionTransformer

    vae = flux_vae().to(DEV).eval().requires_grad_(False)
    results["vae_params_M"] = round(sum(p.numel() for p in vae.parameters()) / 1e6, 2)
    vae_bf = flux_vae().to(DEV).eval().requires_grad_(False)
    vae_bf.load_state_dict(vae.state_dict())
    vae_bf = vae_bf.to(torch.bfloat16).to(memory_format=torch.channels_last)
    x = torch.rand(B, 3, RES, RES, device=DEV) * 2 - 1  # (B, 3, R, R) in [-1, 1]
    xb = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        record(results, "vae_encode_fp32", lambda: vae.encode(x).latent_dist.mean, B)
        record(results, "vae_encode_bf16_cl", lambda: vae_bf.encode(xb).latent_dist.mean, B)
        z = vae_bf.encode(xb).latent_dist.mean  # (B, 16, R/8, R/8)
        record(results, "vae_decode_bf16_cl", lambda: vae_bf.decode(z).sample, B)

    def decode_forward_backward():
        latents = z.detach().clone().requires_grad_(True)
        vae_bf.decode(latents).sample.float().abs().mean().backward()

    record(results, "vae_decode_fwd_bwd_bf16_cl", decode_forward_backward, B)

    width = 64 if SMOKE else 768
    vit = VisionTransformer(
        image_size=RES // 8,
        patch_size=2,
        width=width,
        layers=2 if SMOKE else 12,
        heads=4 if SMOKE else 12,
        mlp_ratio=4.0,
        output_dim=512,
        no_ln_pre=True,
        pool_type="avg",
        final_ln_after_pool=True,
        norm_layer=partial(LayerNorm, eps=1e-6),
        output_tokens=True,
    )
    vit.conv1 = nn.Conv2d(16, width, kernel_size=2, stride=2, bias=False)
    vit = vit.to(DEV).eval().requires_grad_(False)

    def released_recipe():
        with torch.no_grad():
            return vit(vae.encode(x).latent_dist.mean * SCALE)[1]  # tokens (B, N, D)

    def released_recipe_bf16():
        with torch.no_grad(), torch.autocast(DEV, dtype=torch.bfloat16):
            return vit((vae_bf.encode(xb).latent_dist.mean * SCALE).float())[1]

    record(results, "official_recipe_encode_fp32", released_recipe, B)
    record(results, "same_recipe_encode_bf16", released_recipe_bf16, B)
    ref, got = released_recipe().float(), released_recipe_bf16().float()
    results["bf16_vs_fp32_rel_err"] = round(((got - ref).norm() / ref.norm()).item(), 5)


def compiled_vae(results: dict) -> None:
    torch.backends.cudnn.benchmark = True
    vae = flux_vae().to(DEV).eval().requires_grad_(False)
    vae = vae.to(torch.bfloat16).to(memory_format=torch.channels_last)
    x = torch.rand(B, 3, RES, RES, device=DEV) * 2 - 1
    x = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    z = torch.randn(B, 16, RES // 8, RES // 8, device=DEV, dtype=torch.bfloat16)
    z = z.contiguous(memory_format=torch.channels_last)
    encoder, decoder = torch.compile(vae.encoder), torch.compile(vae.decoder)

    def encode():
        with torch.no_grad():
            return encoder(x)

    def decode_forward_backward():
        latents = z.detach().clone().requires_grad_(True)
        decoder(latents).float().abs().mean().backward()

    for name, fn in (("encode", encode), ("decode_fwd_bwd", decode_forward_backward)):
        start = time.perf_counter()
        fn()  # compiles
        sync()
        results[f"vae_{name}_compile_s"] = round(time.perf_counter() - start, 1)
        results[f"vae_{name}_bf16_cl_compiled_img_per_s"] = round(B / median_seconds(fn), 1)
        print(name, "compiled", results[f"vae_{name}_bf16_cl_compiled_img_per_s"], flush=True)


def vit_encoder_decoder(results: dict) -> None:
    import timm
    from timm.models.vision_transformer import Block

    width, depth, heads = (64, 2, 4) if SMOKE else (768, 12, 12)
    batch = 4 if SMOKE else 128
    enc = timm.models.vision_transformer.VisionTransformer(
        img_size=RES // 8,
        patch_size=2,
        in_chans=16,
        embed_dim=width,
        depth=depth,
        num_heads=heads,
        num_classes=0,
        global_pool="avg",
    ).to(DEV)
    dec = nn.Sequential(*[Block(width, heads) for _ in range(depth)]).to(DEV)
    head = nn.Linear(width, 2 * 2 * 16).to(DEV)
    latents = torch.randn(batch, 16, RES // 8, RES // 8, device=DEV)

    def step():
        with torch.autocast(DEV, dtype=torch.bfloat16):
            tokens = enc.forward_features(latents)[:, enc.num_prefix_tokens :]  # (B, N, D)
            out = head(dec(tokens + 0.1 * torch.randn_like(tokens)))  # (B, N, 2*2*16)
            # A second encoder forward through the pooled head, weighted 0: part of the graph
            # the H200 figures of docs/performance.md were measured with.
            pooled = enc.forward_head(enc.forward_features(latents))
            loss = out.float().pow(2).mean() + pooled.float().pow(2).mean() * 0
        loss.backward()

    record(results, "vitB2_enc_plus_vitB1_dec_fwd_bwd_bf16", step, batch)


def lpips_vgg(results: dict) -> None:
    import lpips

    net = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
    net = net.to(DEV).eval().requires_grad_(False)
    target = torch.rand(B, 3, RES, RES, device=DEV) * 2 - 1

    def step():
        y = target.detach().clone().requires_grad_(True)
        with torch.autocast(DEV, dtype=torch.bfloat16):
            value = net(y, target).mean()
        value.backward()

    record(results, "lpips_vgg_fwd_bwd_bf16", step, B)


def main() -> dict:
    results = {
        "device": torch.cuda.get_device_name() if DEV == "cuda" else "cpu",
        "torch": torch.__version__,
    }
    matmul_ceiling(results)
    vae_and_recipe(results)
    if COMPILE_VAE:
        compiled_vae(results)
    vit_encoder_decoder(results)
    lpips_vgg(results)
    if DEV == "cuda":
        results["peak_mem_GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    print(json.dumps(results, indent=1))
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "anchor.json"), "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
