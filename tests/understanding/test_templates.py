"""Conversation templates: the loss covers the answers only, ``<image>`` becomes N image
tokens (ours and ``LlavaProcessor`` alike), the embeddings cover the grown vocabulary."""

import pytest
import torch

pytest.importorskip("transformers")

from openvision3.understanding.templates import (  # noqa: E402
    IGNORE_INDEX,
    encode,
    get_template,
    pad_batch,
    prompt_ids,
)
from tests.understanding._vlm_fakes import tiny  # noqa: E402


@pytest.fixture(scope="module")
def parts():
    vlm, processor, _ = tiny()
    return vlm, processor


def _words(tok, ids):
    return tok.decode([i for i in ids if i != IGNORE_INDEX], skip_special_tokens=False)


def test_only_answers_count(parts):
    vlm, processor = parts
    tok, image = processor.tokenizer, vlm.config.image_token_id
    turns = [
        ("<image>\nwhat colour is the large object?", "red"),
        ("is there a blue object?", "no"),
    ]
    ids, labels = encode(tok, get_template("vicuna_v1"), turns, image, 4)
    assert len(ids) == len(labels)
    kept = [t for t in labels if t != IGNORE_INDEX]
    assert kept == tok.convert_tokens_to_ids(["red", "</s>", "no", "</s>"])
    assert ids.count(image) == 4 and all(
        lab == IGNORE_INDEX for i, lab in zip(ids, labels) if i == image
    )
    assert ids[0] == tok.bos_token_id
    # the image comes first in its turn, then the question; the cue ends each user turn
    text = _words(tok, ids)
    tail = "<image> what colour is the large object? assistant : red </s> user : is there a blue object? assistant : no </s>"
    assert text.endswith(tail)


def test_plain_template_trains_the_caption_only(parts):
    vlm, processor = parts
    tok, image = processor.tokenizer, vlm.config.image_token_id
    ids, labels = encode(
        tok, get_template("plain"), [("<image>\ndescribe", "red circle")], image, 4
    )
    assert ids == [tok.bos_token_id] + [image] * 4 + tok.convert_tokens_to_ids(["red", "circle"])
    assert labels == [IGNORE_INDEX] * 5 + ids[5:]


def test_prompt_is_the_training_prefix(parts):
    vlm, processor = parts
    tok, image, t = processor.tokenizer, vlm.config.image_token_id, get_template("vicuna_v1_short")
    prompt = prompt_ids(tok, t, "what colour is the large object?", image, 4)
    full, _ = encode(tok, t, [("<image>\nwhat colour is the large object?", "red")], image, 4)
    assert full[: len(prompt)] == prompt


def test_left_padding_for_generation():
    batch = pad_batch([([5, 6, 7], [5, 6, 7]), ([8], [8])], pad_id=1, left=True)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [1, 1, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    right = pad_batch([([5, 6, 7], [5, 6, 7]), ([8], [8])], pad_id=1)
    assert right["labels"].tolist() == [[5, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]


def test_processor_expands_image_and_embeddings_are_resized(parts):
    vlm, processor = parts
    tok = processor.tokenizer
    assert vlm.get_input_embeddings().weight.shape[0] == len(tok)
    assert vlm.lm_head.weight.shape[0] == len(tok)
    assert tok.convert_tokens_to_ids("<image>") == vlm.config.image_token_id
    from PIL import Image

    out = processor(
        images=Image.new("RGB", (32, 32)), text="user: <image>\nwhat?", return_tensors="pt"
    )
    assert int((out["input_ids"] == vlm.config.image_token_id).sum()) == 4
    assert out["pixel_values"].shape == (1, 3, 32, 32)
    assert torch.allclose(out["pixel_values"], torch.full_like(out["pixel_values"], -1.0))


def test_chat_template_matches_the_vicuna_prompt(parts):
    _, processor = parts
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what?"}]}]
    text = processor.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text.endswith("USER: <image>\nwhat? ASSISTANT:")
    assert text.startswith("A chat between a curious user")
