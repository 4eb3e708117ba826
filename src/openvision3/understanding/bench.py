"""``ov3 bench vlm``: the speed of a LLaVA-1.5 stage-2 step on OpenVision 3 tokens.

A random 7B-shaped language model (Vicuna-7B's width 4096, 32 heads, MLP 11008, vocabulary
32000) at a small depth, the mlp2x_gelu projector and a frozen random OpenVision 3 tower (a
random FLUX-shaped VAE inside), trained by the engine with the stage-2 recipe
(``llava15_ov3_b2_stage2``: the tower frozen, AdamW without weight decay, clip 1; bf16
autocast on CUDA, fp32 on CPU; no activation checkpointing): tokens/s and MFU (FLOPs counted by
``torch.utils.flop_counter`` over the measured ceiling of a large matmul) of the engine's own
step (``Trainer.train_step``: the task's answer-token loss, backward, clip, AdamW, schedule) on
the task's synthetic batch, and the tower's images/s on its own.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import torch

from openvision3.understanding.task import LlavaRunConfig, LlavaTask


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


def vision_config(args: BenchVLMArgs):
    """The tower: the ``tower`` preset's encoder on a FLUX-shaped VAE at ``image_size``."""
    import openvision3.understanding  # noqa: F401  (registers the tower)
    from openvision3.models.presets import model_config
    from openvision3.models.vae import FLUX_VAE_ARCH
    from openvision3.understanding.tower import OpenVision3VisionConfig

    enc = model_config(args.tower).encoder
    return OpenVision3VisionConfig(
        encoder=enc.__dict__, vae_arch=dict(FLUX_VAE_ARCH), image_size=args.image_size
    )


def llava_config(args: BenchVLMArgs):
    """The ``LlavaConfig`` of the random VLM of ``args``: the tower, a Llama-shaped LM."""
    from transformers import LlamaConfig, LlavaConfig

    vision = vision_config(args)
    text = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=4096,
    )
    return LlavaConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_id=args.vocab - 1,
        image_seq_length=vision.num_image_tokens,
        vision_feature_layer=-1,
    )


def build(args: BenchVLMArgs):
    """The random VLM of ``args`` (fp32, on the CPU; the engine moves it)."""
    from transformers import LlavaForConditionalGeneration

    return LlavaForConditionalGeneration(llava_config(args))


class RandomVLMTask(LlavaTask):
    """The LLaVA task on ``build(args)`` instead of a VLM folder (no processor: the benchmark
    feeds ``synthetic_batch``)."""

    cfg: BenchVLMRun

    def load_model(self):
        return build(self.cfg.bench)

    def load_inputs(self) -> tuple:
        return None, llava_config(self.cfg.bench)


@dataclass
class BenchVLMRun(LlavaRunConfig):
    bench: BenchVLMArgs = field(default_factory=BenchVLMArgs)

    def build_task(self) -> RandomVLMTask:
        return RandomVLMTask(self)


def bench_run(args: BenchVLMArgs) -> BenchVLMRun:
    """The stage-2 recipe on the random VLM: one stage of ``batch_size`` conversations of
    1 + N image + ``text_tokens`` tokens at its peak LR (no warm-up), in one process."""
    from openvision3.configs import get_preset

    recipe = get_preset("llava15_ov3_b2_stage2")
    stage = dataclasses.replace(
        recipe.train.stages[0], steps=1_000_000, batch_size=args.batch_size, warmup_steps=0
    )
    n = vision_config(args).num_image_tokens
    train = dataclasses.replace(
        recipe.train, stages=[stage], device=args.device, precision="auto", parallel="auto",
        activation_checkpointing=False,
    )  # fmt: skip
    data = dataclasses.replace(recipe.data, max_length=1 + n + args.text_tokens)
    return BenchVLMRun(
        name="bench_vlm", train=train, data=data, template=recipe.template, bench=args
    )


def main(argv: list[str]) -> int:
    import tyro

    from openvision3.distributed.process import pick_device
    from openvision3.errors import require
    from openvision3.perf import benchmark, count_flops, device_name, matmul_ceiling
    from openvision3.train.trainer import synthetic_engine

    require("transformers", "understanding", "ov3 bench vlm")
    args = tyro.cli(BenchVLMArgs, args=argv, prog="ov3 bench vlm")
    device = pick_device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    trainer, batch = synthetic_engine(bench_run(args), device)
    model, ids = trainer.model, batch["input_ids"]
    n = model.config.vision_config.num_image_tokens

    def step():
        return trainer.train_step(batch)["loss"]

    _, flops = count_flops(step)
    _, times, _ = benchmark(step, args.steps, args.warmup, device)
    seconds = sorted(times)[len(times) // 2]
    ceiling = matmul_ceiling(device, dtype)
    tower, pixels = model.model.vision_tower, batch["pixel_values"]

    def encode():
        with torch.no_grad(), trainer.autocast():
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
