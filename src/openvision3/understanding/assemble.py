"""Assemble a LLaVA checkpoint: the OpenVision 3 tower + LLaVA's ``mlp2x_gelu`` projector (the
``LlavaMultiModalProjector`` of transformers) + any causal language model.

The ``<image>`` token is added to the tokenizer and the embeddings resized; the processor
(``LlavaProcessor``) carries the chat template the model is (to be) trained with, pads images to
a square of the mean colour (``LlavaImageProcessor(do_pad=True)``: LLaVA-1.5's
``--image_aspect_ratio pad``) and expands ``<image>`` to the N image tokens of the tower
(``(R / 16)^2``). The result loads with ``LlavaForConditionalGeneration.from_pretrained`` once
``openvision3.understanding`` is imported; ``AutoProcessor`` needs no import at all.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaImageProcessor,
    LlavaProcessor,
)

from openvision3.artefacts import (
    CARD_NAME,
    KIND_KEY,
    portable_name,
    users_file,
    vlm_card,
    write_card,
)
from openvision3.artefacts import VLM as VLM_KIND
from openvision3.files import staged_folder, write_json
from openvision3.understanding.templates import IMAGE, get_template
from openvision3.understanding.tower import OpenVision3VisionModel

log = logging.getLogger(__name__)

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


def image_processor(image_size: int) -> LlavaImageProcessor:
    """Pixels in [-1, 1] at ``image_size`` (the input range of OpenVision 3); a non-square image
    is first padded to a square of the mean colour (127 for 0.5: ``int(0.5 * 255)``), as
    LLaVA-1.5's ``expand2square``, then resized: nothing is cropped away."""
    return LlavaImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        do_pad=True,
        do_convert_rgb=True,
    )


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
    tokenizer.chat_template = get_template(template)
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
        chat_template=get_template(template),
        image_token=IMAGE,
    )
    return vlm.eval(), processor


def set_template(processor, template: str) -> None:
    """The chat template ``template`` in the processor and its tokenizer (what ``save_vlm``
    writes): each training stage exports the template it trained with."""
    processor.chat_template = processor.tokenizer.chat_template = get_template(template)


def load_processor(path: str, template: str):
    """``AutoProcessor.from_pretrained(path)``; a folder saved before the processor defined the
    inputs (a centre-cropping ``CLIPImageProcessor`` and the fixed vicuna_v1 chat template, the
    BOS added by hand) is converted in memory with a one-line note: ``LlavaImageProcessor(do_pad=
    True)`` at the same size, the ``template`` the model was trained with, a tokenizer that adds
    its BOS. ``ov3 vlm upgrade`` writes the conversion into the folder."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(path)
    old = processor.image_processor
    if type(old).__name__ != "CLIPImageProcessor":
        return processor
    processor.image_processor = image_processor(int(old.crop_size["height"]))
    set_template(processor, template)
    tok = processor.tokenizer
    if tok.bos_token_id is not None and tok("")["input_ids"][:1] != [tok.bos_token_id]:
        from tokenizers import processors

        bos = (tok.bos_token, tok.bos_token_id)
        tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos[0]} $A", pair=f"{bos[0]} $A {bos[0]} $B", special_tokens=[bos]
        )
    log.warning(
        "%s: an older processor (CLIPImageProcessor, fixed chat template) converted in memory to "
        "LlavaImageProcessor(do_pad=True) and the %r template; `ov3 vlm upgrade %s` saves it",
        path,
        template,
        path,
    )
    return processor


def save_vlm(vlm: LlavaForConditionalGeneration, processor, out: str, card: dict | None = None):
    """The model and processor (transformers' layout), ``model_card.json`` (the kind and
    ``card``: sources by hub id or folder name) and the ``README.md`` model card, written into a
    temporary folder and moved into ``out`` (``files.staged_folder``): an interrupted save
    leaves no half folder, and a ``README.md`` of the user's in ``out`` is kept."""
    card = {KIND_KEY: VLM_KIND, **(card or {})}
    card.setdefault("template", getattr(vlm.config, TEMPLATE_KEY, None))
    vision, text = vlm.config.vision_config, vlm.config.text_config
    readme = vlm_card(
        portable_name(out), card, vision.image_size, vision.num_image_tokens, text.model_type
    )
    # config.json (what names the folder a VLM) lands last
    with staged_folder(out, last="config.json", keep=users_file) as tmp:
        vlm.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        write_json(tmp / "model_card.json", card)
        if not users_file(os.path.join(out, CARD_NAME)):
            write_card(tmp, readme)


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
        from openvision3.understanding.tiny_lm import tiny_llama, word_tokenizer

        tokenizer = word_tokenizer(vocabulary())
        lm = tiny_llama(len(tokenizer))
    else:
        lm = AutoModelForCausalLM.from_pretrained(args.llm, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(args.llm)
    vlm, processor = assemble(tower, lm, tokenizer, args.vision_feature_layer, args.template)
    card = {
        "vision": portable_name(args.vision),
        "llm": portable_name(args.llm),
        "image_size": size,
    }
    save_vlm(vlm, processor, args.out, card)
    return args.out
