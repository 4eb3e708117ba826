"""``ov3 bench vlm``: the speed of a LLaVA-1.5 stage-2 step on OpenVision 3 tokens.

A random 7B-shaped language model (Vicuna-7B's width 4096, 32 heads, MLP 11008, vocabulary
32000) at a small depth, the mlp2x_gelu projector and a frozen random OpenVision 3 tower (a
random FLUX-shaped VAE inside): tokens/s and MFU (FLOPs counted by ``torch.utils.flop_counter``
over the measured ceiling of a large matmul) of a forward + backward + AdamW step of the
projector and the LM, bf16 autocast on CUDA, and the tower's images/s on its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class BenchVLMArgs:
    layers: int = 2  # Vicuna-7B has 32; the per-layer cost is what the bench measures
    hidden: int = 4096  # LM hidden size (Vicuna-7B: 4096)
    heads: int = 32  # LM attention heads
    intermediate: int = 11008  # LM MLP width
    vocab: int = 32000  # LM vocabulary
    text_tokens: int = 128  # text tokens per sample after the image tokens
    batch_size: int = 8  # samples per step
    image_size: int = 224  # image side in pixels
    tower: str = "ov3-B/2"  # model preset of the vision tower (random weights)
    steps: int = 5  # timed steps
    warmup: int = 2  # untimed steps first
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    out: str = ""  # also write the JSON here


def build(args: BenchVLMArgs, device: torch.device):
    from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    import openvision3.understanding  # noqa: F401  (registers the tower)
    from openvision3.models.presets import model_config
    from openvision3.models.vae import FLUX_VAE_ARCH
    from openvision3.understanding.tower import OpenVision3VisionConfig

    enc = model_config(args.tower).encoder
    vision = OpenVision3VisionConfig(
        encoder=enc.__dict__, vae_arch=dict(FLUX_VAE_ARCH), image_size=args.image_size
    )
    text = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=4096,
    )
    config = LlavaConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_id=args.vocab - 1,
        image_seq_length=vision.num_image_tokens,
        vision_feature_layer=-1,
    )
    model = LlavaForConditionalGeneration(config).to(device)
    model.model.vision_tower.requires_grad_(False)
    return model


def main(argv: list[str]) -> int:
    import tyro

    from openvision3.distributed.process import pick_device
    from openvision3.errors import require
    from openvision3.perf import benchmark, count_flops, device_name, matmul_ceiling

    require("transformers", "understanding", "ov3 bench vlm")
    args = tyro.cli(BenchVLMArgs, args=argv, prog="ov3 bench vlm")
    device = pick_device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = build(args, device).train()
    n = model.config.vision_config.num_image_tokens
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, args.vocab - 1, (args.batch_size, 1 + n + args.text_tokens), generator=g)
    ids[:, 1 : 1 + n] = model.config.image_token_id
    labels = ids.clone()
    labels[:, : 1 + n] = -100
    ids, labels = ids.to(device), labels.to(device)
    pixels = (
        torch.rand(args.batch_size, 3, args.image_size, args.image_size, generator=g) * 2 - 1
    ).to(device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(input_ids=ids, pixel_values=pixels).logits
        loss = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    _, flops = count_flops(step)
    _, times, _ = benchmark(step, args.steps, args.warmup, device)
    seconds = sorted(times)[len(times) // 2]
    ceiling = matmul_ceiling(device, dtype)
    tower = model.model.vision_tower

    def encode():
        with (
            torch.no_grad(),
            torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"),
        ):
            return tower(pixels)

    _, tower_times, _ = benchmark(encode, args.steps, args.warmup, device)
    result = {
        "device": device_name(device),
        "lm": {"layers": args.layers, "hidden": args.hidden, "vocab": args.vocab},
        "batch_size": args.batch_size,
        "sequence": int(ids.shape[1]),
        "image_tokens": n,
        "step_seconds": seconds,
        "tokens_per_s": args.batch_size * ids.shape[1] / seconds,
        "step_tflop": flops / 1e12,
        "mfu": flops / seconds / ceiling,
        "matmul_ceiling_tflop_per_s": ceiling / 1e12,
        "tower_images_per_s": args.batch_size / sorted(tower_times)[len(tower_times) // 2],
    }
    text = json.dumps(result, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0
