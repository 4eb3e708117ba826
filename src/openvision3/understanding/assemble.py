"""Assemble a LLaVA checkpoint: the OpenVision 3 tower + LLaVA's ``mlp2x_gelu`` projector (the
``LlavaMultiModalProjector`` of transformers) + any causal language model.

The ``<image>`` token is added to the tokenizer and the embeddings resized; the tokenizer gets
the vicuna_v1 chat template; the processor (``LlavaProcessor``) expands ``<image>`` to the N
image tokens of the tower (``(R / 16)^2``). The result loads with
``LlavaForConditionalGeneration.from_pretrained`` once ``openvision3.understanding`` is imported.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
from PIL import Image
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPImageProcessor,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from openvision3.understanding.templates import IMAGE, VICUNA_CHAT_TEMPLATE
from openvision3.understanding.tower import OpenVision3VisionModel

# Stored in the LLaVA config: the conversation template the model was trained with.
TEMPLATE_KEY = "ov3_template"


@dataclass
class BuildArgs:
    """`ov3 vlm build`: write a LLaVA checkpoint from an OpenVision 3 encoder and an LLM."""

    vision: str  # an OpenVision 3 export, or a released encoder (folder or hub id)
    llm: str  # a causal language model (folder or hub id) with its tokenizer; "tiny": a random one
    out: str  # the output folder
    image_size: int = 0  # 0 = the export's training resolution, else 224
    vision_feature_layer: int = -1  # -1 = the unified tokens; LLaVA-1.5's CLIP reads -2
    # conversation template stored with the model (vicuna_v1: LLaVA-1.5's)
    template: str = "vicuna_v1"
    vae: str = "auto"  # the VAE of a released encoder (hub id or folder); auto = its default


def image_processor(image_size: int) -> CLIPImageProcessor:
    """Pixels in [-1, 1] at ``image_size`` (the input range of OpenVision 3)."""
    return CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        do_convert_rgb=True,
    )


def pad_to_square(image: Image.Image, fill: tuple[int, int, int] = (127, 127, 127)) -> Image.Image:
    """LLaVA-1.5's ``expand2square`` (``--image_aspect_ratio pad``): centre the image on a square
    of the processor's mean colour."""
    image = image.convert("RGB")
    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(image, ((side - w) // 2, (side - h) // 2))
    return canvas


def add_image_token(tokenizer) -> int:
    """Add ``<image>`` (and a pad token if missing) to ``tokenizer``; returns the image id."""
    if IMAGE not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE]})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer.convert_tokens_to_ids(IMAGE)


def assemble(
    tower: OpenVision3VisionModel,
    lm: nn.Module,
    tokenizer,
    vision_feature_layer: int = -1,
    template: str = "vicuna_v1",
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """The VLM (tower and LM weights copied, projector initialised) and its processor."""
    image_id = add_image_token(tokenizer)
    tokenizer.chat_template = VICUNA_CHAT_TEMPLATE
    n = tower.config.num_image_tokens
    config = LlavaConfig(
        vision_config=tower.config.to_dict(),
        text_config=lm.config.to_dict(),
        image_token_id=image_id,
        image_seq_length=n,
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
    )
    setattr(config, TEMPLATE_KEY, template)
    vlm = LlavaForConditionalGeneration(config)
    vlm.model.vision_tower.load_state_dict(tower.state_dict())
    vlm.model.language_model.load_state_dict(lm.get_decoder().state_dict())
    vlm.lm_head.load_state_dict(lm.get_output_embeddings().state_dict())
    vlm.resize_token_embeddings(len(tokenizer))
    vlm.config.text_config.vocab_size = len(tokenizer)
    processor = LlavaProcessor(
        image_processor=image_processor(tower.config.image_size),
        tokenizer=tokenizer,
        patch_size=tower.config.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=VICUNA_CHAT_TEMPLATE,
        image_token=IMAGE,
    )
    return vlm.eval(), processor


def save_vlm(vlm: LlavaForConditionalGeneration, processor, out: str, card: dict | None = None):
    os.makedirs(out, exist_ok=True)
    vlm.save_pretrained(out)
    processor.save_pretrained(out)
    if card is not None:
        with open(os.path.join(out, "model_card.json"), "w") as f:
            json.dump(card, f, indent=2)


def build_vlm(args: BuildArgs) -> str:
    """``ov3 vlm build``: load the encoder and the LLM, assemble, save; returns ``args.out``."""
    from openvision3.pretrained import load_pretrained, trained_resolution
    from openvision3.understanding.templates import get_template

    get_template(args.template)
    vae = "auto" if args.vae == "auto" else args.vae
    ov3 = load_pretrained(args.vision, vae=vae)
    size = args.image_size or trained_resolution(args.vision) or 224
    tower = OpenVision3VisionModel.from_openvision3(ov3, size)
    if args.llm == "tiny":  # a random word-level Llama over the synthetic world's words
        from openvision3.understanding.synthetic_vqa import vocabulary
        from openvision3.understanding.tiny import tiny_llama

        tokenizer = word_tokenizer(vocabulary())
        lm = tiny_llama(len(tokenizer))
    else:
        lm = AutoModelForCausalLM.from_pretrained(args.llm, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(args.llm)
    vlm, processor = assemble(tower, lm, tokenizer, args.vision_feature_layer, args.template)
    card = {"vision": args.vision, "llm": args.llm, "image_size": size}
    save_vlm(vlm, processor, args.out, card)
    return args.out


def word_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer (``tokenizers``' ``WordLevel``) over ``words`` plus the special
    tokens ``<unk> <pad> <s> </s> <image>``; splits on whitespace and punctuation, lower case.
    Small vocabularies keep a tiny language model's embedding and head small."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    specials = ["<unk>", "<pad>", "<s>", "</s>", IMAGE]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(specials + list(words)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=[IMAGE],
    )
    return fast
