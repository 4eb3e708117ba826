"""The LLaVA-1.5 recipe as a task of the training engine (``train/task.py``).

Stage 1 (LLaVA's ``scripts/v1_5/pretrain.sh``): captions, the ``plain`` template, only the
projector trains (``freeze``: the tower, the language model and its head). Stage 2
(``finetune.sh``): instructions, ``vicuna_v1``, projector + language model. Each stage is its
own run (the engine fixes the trained parameters when DDP / FSDP2 wrap the model); stage 2
starts from stage 1's export (``--model``). The loss is the mean cross-entropy over the answer
tokens of the whole global batch (the same on any number of ranks and micro-batches).

Data sources: ``llava_json`` (LLaVA's JSON + an image folder), ``synthetic`` (the synthetic
world rendered on the fly; smoke runs) and ``synthetic_cache`` (the demo: the tower's unified
tokens read from a feature cache, ``data/latents.py``, projected and placed at the image
tokens; one process).
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from openvision3.artefacts import VLM, portable_name, relative_paths, require_kind
from openvision3.dataclass_io import to_dict
from openvision3.errors import ConfigError
from openvision3.files import write_json
from openvision3.train.accumulate import no_grad_sync, split_batch
from openvision3.train.config import StageConfig
from openvision3.train.task import RunConfig, Task, register_task
from openvision3.understanding.lora import LoraSettings
from openvision3.understanding.templates import IGNORE_INDEX

SOURCES = ("llava_json", "synthetic", "synthetic_cache")
QUESTIONS = ("describe", "vqa", "vqa_single")
TINY = "tiny"  # --model tiny: the tiny random VLM of the smoke presets (understanding/tiny.py)


@dataclass
class VLMDataConfig:
    """`source`: llava_json | synthetic | synthetic_cache. `questions` (synthetic sources):
    describe (stage 1's captions), vqa (stage 2's questions, every type in one shuffled
    multi-turn conversation) or vqa_single (one question per conversation: each scene once per
    question type, or `repeats[type]` times, each repeat its own draw of the question)."""

    source: str = "llava_json"  # llava_json | synthetic | synthetic_cache
    json_path: str = ""  # llava_json: LLaVA's conversation JSON
    image_folder: str = ""  # llava_json: folder its image paths are relative to
    cache: str = ""  # synthetic_cache: a feature cache with "tokens" (data/latents.py)
    questions: str = "vqa"  # synthetic: describe | vqa (all types, one conversation) | vqa_single
    synthetic_seed: int = 0  # synthetic: the world's seed
    synthetic_size: int = 4096  # synthetic: scenes
    max_length: int = 2048  # longest conversation in tokens (longer ones are cut)
    repeats: dict[str, int] = field(default_factory=dict)  # vqa_single: type -> draws per scene

    def __post_init__(self):
        from openvision3.understanding.synthetic_vqa import QUESTION_TYPES

        if self.source not in SOURCES:
            raise ValueError(f"data.source must be one of {SOURCES}, got {self.source!r}")
        if self.questions not in QUESTIONS:
            raise ValueError(f"data.questions must be one of {QUESTIONS}, got {self.questions!r}")
        bad = {k: v for k, v in self.repeats.items() if k not in QUESTION_TYPES or int(v) < 1}
        if bad:
            raise ValueError(
                f"data.repeats maps question types {QUESTION_TYPES} to counts >= 1, got {bad}"
            )
        if self.repeats and self.questions != "vqa_single":
            raise ValueError("data.repeats applies to --data.questions vqa_single only")


@register_task
@dataclass
class LlavaRunConfig(RunConfig):
    """A LLaVA run: `model` is an assembled VLM folder (`ov3 vlm build`, or the previous
    stage's `final/`), or `tiny`. `lora.r` > 0 trains LoRA adapters on the language
    model instead of its weights (`understanding/lora.py`)."""

    TASK: ClassVar[str] = "llava"

    model: str = ""  # the VLM folder to train (`ov3 vlm build`, a stage's final/) or "tiny"
    template: str = "vicuna_v1"  # conversation template (vicuna_v1: LLaVA-1.5's)
    data: VLMDataConfig = field(default_factory=VLMDataConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)

    def validate(self) -> None:
        super().validate()
        from openvision3.understanding.templates import TEMPLATES

        if not self.model:
            raise ConfigError("--model is required: an assembled VLM folder (ov3 vlm build)")
        if self.model != TINY:  # one line for a folder of another kind, before any build
            try:
                require_kind(self.model, VLM)
            except (ConfigError, FileNotFoundError) as err:
                raise ConfigError(f"--model: {err}") from None
        if self.template not in TEMPLATES:
            raise ConfigError(f"--template must be one of {sorted(TEMPLATES)}")
        if self.data.source == "llava_json" and not self.data.json_path:
            raise ConfigError("--data.json-path is required for source llava_json")
        if self.data.source == "synthetic_cache" and not self.data.cache:
            raise ConfigError("--data.cache is required for source synthetic_cache")

    def build_task(self) -> LlavaTask:
        return LlavaTask(self)


def load_vlm_model(path: str) -> nn.Module:
    """The VLM of a folder or ``tiny``, in fp32."""
    import openvision3.understanding  # noqa: F401  (registers the tower)

    if path == TINY:
        from openvision3.understanding.tiny import tiny_vlm

        return tiny_vlm()[0]
    from transformers import LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32)


def load_vlm_inputs(path: str) -> tuple:
    """(processor, ``LlavaConfig``) of a VLM folder or ``tiny``, without its weights: what the
    data reads (the chat template, the tokenizer, the tower's input size and token count)."""
    import openvision3.understanding  # noqa: F401  (registers the tower's config)

    if path == TINY:
        from openvision3.understanding.tiny import tiny_vlm

        # Deterministic in its seed: the model ``load_vlm_model`` builds has this config.
        model, processor = tiny_vlm()
        return processor, model.config
    from transformers import AutoConfig

    from openvision3.understanding.assemble import TEMPLATE_KEY, load_processor

    config = AutoConfig.from_pretrained(path)
    return load_processor(path, getattr(config, TEMPLATE_KEY, "vicuna_v1")), config


def decoder_layer_names(model: nn.Module) -> list[str]:
    """The language model's repeated layers: the unit of FSDP2 and activation checkpointing."""
    names = getattr(model.model.language_model, "_no_split_modules", None) or []
    if not names:
        raise ValueError(f"{type(model.model.language_model).__name__} declares no decoder layers")
    return list(names)


class LlavaTask(Task):
    cfg: LlavaRunConfig

    @functools.cached_property
    def _inputs(self) -> tuple:
        return self.load_inputs()

    @property
    def processor(self):
        """The processor of ``cfg.model``, read once on first use; ``export`` saves it with
        the stage's template."""
        return self._inputs[0]

    @property
    def model_config(self):
        """The ``LlavaConfig`` of ``cfg.model``."""
        return self._inputs[1]

    # ------------------------------------------------------------------ model
    def load_model(self) -> nn.Module:
        """The VLM of ``cfg.model`` (a folder or ``tiny``) in fp32."""
        return load_vlm_model(self.cfg.model)

    def load_inputs(self) -> tuple:
        """(processor, ``LlavaConfig``) of ``cfg.model``, without its weights."""
        return load_vlm_inputs(self.cfg.model)

    def build_model(self, frozen_from: nn.Module | None = None) -> nn.Module:
        model = self.load_model()
        # The engine shards and checkpoints the declared blocks: the LM's decoder layers (the
        # frozen tower stays whole on every rank, outside FSDP's groups).
        model._no_split_modules = decoder_layer_names(model)
        model.model.vision_tower.requires_grad_(False)
        if self.cfg.lora.r:
            from openvision3.understanding.lora import add_lora

            add_lora(model, self.cfg.lora)
            model.get_output_embeddings().requires_grad_(False)  # as the LM's own weights
        return model.train()

    def init_from(self, model: nn.Module, path: str) -> tuple[list[str], list[str]]:
        from transformers import LlavaForConditionalGeneration

        source = LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32)
        weights = source.state_dict()
        # Under LoRA a Linear's own weight is ``<name>.base_layer.weight``.
        for key in model.state_dict():
            plain = key.replace(".base_layer.", ".")
            if plain != key and plain in weights:
                weights[key] = weights.pop(plain)
        result = model.load_state_dict(weights, strict=False)
        missing = [k for k in result.missing_keys if "lora_" not in k]  # adapters start fresh
        return missing, list(result.unexpected_keys)

    # ------------------------------------------------------------------ data
    def dataset(self, split: str = "train"):
        d, model_cfg = self.cfg.data, self.model_config
        size = model_cfg.vision_config.image_size
        if d.source == "llava_json":
            from openvision3.understanding.data import ConversationDataset, read_llava_json

            return ConversationDataset(
                read_llava_json(d.json_path),
                d.image_folder,
                self.processor,
                self.cfg.template,
                image_size=size,
                max_length=d.max_length,
            )
        if d.source == "synthetic_cache" and model_cfg.vision_feature_layer != -1:
            raise ConfigError("--data.source synthetic_cache holds the last layer's tokens only")
        return SyntheticConversations(
            d,
            split,
            size,
            cached=d.source == "synthetic_cache",
            processor=self.processor,
            template=self.cfg.template,
            num_image_tokens=model_cfg.vision_config.num_image_tokens,
        )

    def build_loader(self, stage, batch_size: int, rank: int, world: int):
        from openvision3.understanding.data import EpochLoader, collate

        if self.cfg.data.source == "synthetic_cache" and world > 1:
            raise ConfigError("--data.source synthetic_cache trains in one process")
        pad = self.processor.tokenizer.pad_token_id
        return EpochLoader(
            self.dataset(), batch_size, rank, world, lambda s: collate(s, pad), self.cfg.train.seed
        )

    def synthetic_batch(self, stage, batch_size=None, *, device="cpu", seed=0) -> dict:
        """``collate``'s batch (``understanding/data.py``) of conversations that fill
        ``data.max_length`` (no padding: the costliest case): ``input_ids`` (B, L) int64 =
        [BOS, the image token x N, random text], ``attention_mask`` (B, L) ones, ``labels``
        (B, L) the text (the prompt ignored); ``pixel_values`` (B, 3, R, R) in the
        processor's range, or ``image_tokens`` (B, N, D) for ``synthetic_cache``."""
        config, b = self.model_config, batch_size or stage.batch_size
        vision, n = config.vision_config, config.vision_config.num_image_tokens
        length = self.cfg.data.max_length
        if length < n + 2:
            raise ConfigError(f"--data.max-length {length} cannot hold the {n} image tokens")
        gen = torch.Generator().manual_seed(seed)
        vocab = config.text_config.vocab_size
        ids = torch.randint(0, vocab, (b, length), generator=gen)
        ids = ids.masked_fill(ids == config.image_token_id, 0)
        bos = config.text_config.bos_token_id
        ids[:, 0] = 0 if bos is None else bos
        ids[:, 1 : 1 + n] = config.image_token_id
        labels = ids.clone()
        labels[:, : 1 + n] = IGNORE_INDEX
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
        if self.cfg.data.source == "synthetic_cache":
            batch["image_tokens"] = torch.randn(b, n, vision.hidden_size, generator=gen)
        else:
            r = vision.image_size
            batch["pixel_values"] = torch.rand(b, 3, r, r, generator=gen) * 2 - 1
        return {k: v.to(device) for k, v in batch.items()}

    def describe_stage(self, stage) -> str:
        return f"{self.cfg.data.source} ({self.cfg.data.questions if self.cfg.data.source != 'llava_json' else self.cfg.template})"

    # ------------------------------------------------------------------ step
    @staticmethod
    def logits(train_model: nn.Module, model: nn.Module, mb: dict) -> torch.Tensor:
        """(B, L, V) logits of a micro-batch through transformers' LLaVA forward: pixels through
        the tower, or cached unified tokens (B, N, D) projected here and handed over as the
        image encoder's output (``mm_encoder_outputs``), which ``LlavaModel.forward`` places
        at the ``<image>`` tokens after checking their count (``get_placeholder_mask``)."""
        inputs = {"input_ids": mb["input_ids"], "attention_mask": mb["attention_mask"]}
        if "image_tokens" in mb:
            from transformers.modeling_outputs import BaseModelOutputWithPooling

            feats = model.model.multi_modal_projector(mb["image_tokens"])  # (B, N, H)
            # One (N, H) per image, as ``LlavaModel.get_image_features`` returns them.
            image = BaseModelOutputWithPooling(pooler_output=list(feats))
            inputs["mm_encoder_outputs"] = {"image": image}
        elif "pixel_values" in mb:
            # Text-only conversations (``has_image`` False) carry zero pixels the tower skips.
            pixels, rows = mb["pixel_values"], mb.get("has_image")
            pixels = pixels if rows is None else pixels[rows]  # (B', 3, R, R)
            inputs["pixel_values"] = pixels if len(pixels) else None
        try:
            return train_model(**inputs).logits
        except ValueError as err:  # transformers' count check, on data a user can fix
            if "image tokens do not match" not in str(err):
                raise
            found = int((mb["input_ids"] == model.config.image_token_id).sum())
            given = mb.get("image_tokens", inputs.get("pixel_values"))
            images = 0 if given is None else len(given)
            n = model.config.vision_config.num_image_tokens
            n = mb["image_tokens"].shape[1] if "image_tokens" in mb else n
            raise ConfigError(
                f"a batch holds {found} <image> tokens for {images} images of {n} tokens: a "
                "conversation cut inside its image (raise --data.max-length) or <image> in a "
                f"record without an image (transformers: {err})"
            ) from None

    def forward_backward(self, train_model, model, batch, accum_steps, autocast):
        """Cross-entropy summed over the answer tokens, divided by the global batch's count
        (all ranks): each rank's gradient is then its share of the global mean, and the
        engine's average over ranks is the global mean itself."""
        import torch.distributed as dist

        from openvision3.distributed.process import get_world_size

        targets = batch["labels"][:, 1:]
        count = (targets != IGNORE_INDEX).sum().float()
        world = get_world_size()
        if world > 1:
            dist.all_reduce(count)
        scale = world / count.clamp(min=1)
        loss = torch.zeros((), device=targets.device)
        for j, mb in enumerate(split_batch(batch, accum_steps)):
            last = j == accum_steps - 1
            with contextlib.nullcontext() if last else no_grad_sync(train_model):
                with autocast():
                    logits = self.logits(train_model, model, mb)
                ce = F.cross_entropy(
                    logits[:, :-1].float().flatten(0, 1),
                    mb["labels"][:, 1:].flatten(),
                    ignore_index=IGNORE_INDEX,
                    reduction="sum",
                )
                micro = ce * scale
                micro.backward()
            loss += micro.detach()
        return {"loss": loss / world, "answer_tokens": count / world}

    # ------------------------------------------------------------------ export
    def export(self, model: nn.Module, path: str, card: dict, stage: StageConfig) -> None:
        from openvision3.understanding.assemble import TEMPLATE_KEY, save_vlm, set_template
        from openvision3.understanding.lora import merged

        # The stage's own template, in the config and in the processor's chat template.
        setattr(model.config, TEMPLATE_KEY, self.cfg.template)
        set_template(self.processor, self.cfg.template)
        model.eval()
        lora = {"lora": vars(self.cfg.lora), "lora_merged": True} if self.cfg.lora.r else {}
        d = self.cfg.data
        names = {"model": portable_name(self.cfg.model), "template": self.cfg.template}
        names["data"] = portable_name(d.json_path or d.cache) or d.source
        save_vlm(merged(model), self.processor, path, {**card, **names, **lora})
        run_config = relative_paths(to_dict(self.cfg), os.path.abspath(path))  # relative to it
        write_json(os.path.join(path, "run_config.json"), run_config)


class SyntheticConversations(torch.utils.data.Dataset):
    """Scenes of the synthetic world as LLaVA conversations: ``describe`` (the long caption),
    ``vqa`` (every question type, shuffled, one multi-turn conversation) or ``vqa_single``
    (item i: scene i // S asked the question of slot i % S alone; the S slots are each type's
    draws 0 .. repeats[type] - 1). Pixels are rendered at the tower's size, or (``cached``) the
    scene's unified tokens come from the cache."""

    def __init__(
        self, d: VLMDataConfig, split, image_size, cached, processor, template, num_image_tokens
    ):
        from openvision3.data.synthetic.world import SyntheticWorld
        from openvision3.understanding.synthetic_vqa import QUESTION_TYPES

        self.d, self.split, self.image_size = d, split, image_size
        self.world = SyntheticWorld(d.synthetic_seed)
        self.processor, self.template, self.num_image_tokens = processor, template, num_image_tokens
        self.tokens, self.indices = None, list(range(d.synthetic_size))
        # vqa_single: (type index, draw) of each item of a scene; other modes: one item a scene.
        self.slots = [
            (t, draw)
            for t, kind in enumerate(QUESTION_TYPES)
            for draw in range(self.d.repeats.get(kind, 1))
        ]
        self.per_scene = len(self.slots) if d.questions == "vqa_single" else 1
        if cached:
            from openvision3.data.latents import read_features

            feats = read_features(d.cache, split, name="tokens")
            self.tokens = feats["tokens"]  # (M, N, D)
            self.indices = [int(k.rsplit("-", 1)[1]) for k in feats["keys"]]
            if self.tokens.shape[1] != num_image_tokens:
                raise ConfigError(
                    f"--data.cache holds {self.tokens.shape[1]} tokens per image, the model "
                    f"expects {num_image_tokens}"
                )

    def __len__(self) -> int:
        return len(self.indices) * self.per_scene

    def turns(self, i: int) -> list[tuple[str, str]]:
        from openvision3.understanding.synthetic_vqa import describe, scene_questions

        index = self.indices[i // self.per_scene]
        scene = self.world.scene(self.split, index)
        if self.d.questions == "describe":
            q, a = describe(scene)
            return [(f"<image>\n{q}", a)]
        if self.d.questions == "vqa_single":
            t, draw = self.slots[i % self.per_scene]
            qa = scene_questions(scene, self.split, index, self.d.synthetic_seed, draw=draw)
            _, q, a = qa[t]
            return [(f"<image>\n{q}", a)]
        qa = [
            (q, a) for _, q, a in scene_questions(scene, self.split, index, self.d.synthetic_seed)
        ]
        order = np.random.default_rng([self.d.synthetic_seed, index, 11]).permutation(len(qa))
        turns = [qa[k] for k in order]
        return [(f"<image>\n{turns[0][0]}", turns[0][1])] + turns[1:]

    def __getitem__(self, i: int) -> dict:
        from openvision3.understanding.templates import encode

        j = i // self.per_scene
        image = None
        if self.tokens is None:  # the processor makes the pixels, as at inference
            from PIL import Image

            scene = self.world.scene(self.split, self.indices[j])
            image = Image.fromarray(self.world.render(scene, self.image_size))
        out = encode(self.processor, self.template, self.turns(i), image, self.num_image_tokens)
        if self.tokens is not None:
            out["image_tokens"] = self.tokens[j]  # (N, D)
        return out
