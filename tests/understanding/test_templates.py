"""Conversation templates: the Jinja chat template is the one definition; the loss covers the
answers only; with the demo's word-level tokenizer the ids are those the demo was measured
with; the saved processor carries the template the model was trained with."""

import pytest
import torch

pytest.importorskip("transformers")

from openvision3.understanding.templates import (  # noqa: E402
    IGNORE_INDEX,
    TEMPLATES,
    encode,
    pad_batch,
    prompt_text,
)
from tests.understanding._vlm_fakes import tiny  # noqa: E402


@pytest.fixture(scope="module")
def parts():
    vlm, processor, _ = tiny()
    return vlm, processor


def test_word_level_ids_are_pinned(parts):
    """The demo's tokenizer: exactly the ids the understanding demo was trained and measured
    with (BOS, image tokens, words; the answers and their EOS in the labels)."""
    vlm, processor = parts
    tok, image = processor.tokenizer, vlm.config.image_token_id
    words = lambda s: tok.convert_tokens_to_ids(s.split())  # noqa: E731
    turns = [
        ("<image>\nwhat colour is the large object?", "red"),
        ("is there a blue object?", "no"),
    ]
    out = encode(processor, "vicuna_v1_short", turns, None, 4)
    expected = (
        [tok.bos_token_id]
        + words("user :")
        + [image] * 4
        + words("what colour is the large object ? assistant : red </s>")
        + words("user : is there a blue object ? assistant : no </s>")
    )
    assert out["ids"] == expected
    assert [t for t in out["labels"] if t != IGNORE_INDEX] == words("red </s> no </s>")
    plain = encode(processor, "plain", [("<image>\ndescribe", "red circle")], None, 4)
    assert plain["ids"] == [tok.bos_token_id] + [image] * 4 + words("red circle")
    assert plain["labels"] == [IGNORE_INDEX] * 5 + words("red circle")


def test_vicuna_system_prompt_and_cue(parts):
    _, processor = parts
    tok = processor.tokenizer
    out = encode(processor, "vicuna_v1", [("<image>\nwhat?", "red")], None, 4)
    text = tok.decode(out["ids"])
    assert text.startswith("<s> a <unk> <unk> a <unk> user") and text.endswith(
        "assistant : red </s>"
    )


def test_prompt_is_the_training_prefix(parts):
    _, processor = parts
    prompt = processor(
        text=[prompt_text(processor, "what colour is the large object?")],
        images=[__import__("PIL.Image").Image.new("RGB", (32, 32))],
    )["input_ids"][0]
    full = encode(
        processor,
        "vicuna_v1_short",
        [("<image>\nwhat colour is the large object?", "red")],
        None,
        4,
    )
    assert full["ids"][: len(prompt)] == list(prompt)


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


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_saved_chat_template_is_the_trained_one(name, tmp_path):
    """Each template is saved with the processor and read back by ``AutoProcessor``, whose
    ``apply_chat_template`` then renders the same prompt as ours."""
    from transformers import AutoProcessor

    from openvision3.understanding.assemble import save_vlm

    vlm, processor, _ = tiny(template=name)
    save_vlm(vlm, processor, str(tmp_path))
    back = AutoProcessor.from_pretrained(tmp_path)
    assert back.chat_template == TEMPLATES[name]
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what?"}]}]
    text = back.apply_chat_template(msgs, add_generation_prompt=True)
    expected = {
        "plain": "<image>",
        "vicuna_v1_short": "USER: <image>\nwhat? ASSISTANT:",
        "vicuna_v1": "A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions. "
        "USER: <image>\nwhat? ASSISTANT:",
    }[name]
    assert text == expected == prompt_text(back, "what?")
