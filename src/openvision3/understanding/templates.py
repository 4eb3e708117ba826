"""Conversation templates of LLaVA-1.5 (LLaVA's ``llava/conversation.py``) as Jinja chat
templates, and a conversation's model inputs through the saved processor.

``plain`` (stage 1): the image, then the caption and "\\n"; no system prompt, no roles.
``vicuna_v1`` (stage 2): ``SYSTEM USER: <image>\\n{q} ASSISTANT: {a}</s>USER: ...``, LLaVA's
``conv_vicuna_v1`` with ``SeparatorStyle.TWO`` (sep " ", sep2 = the tokenizer's EOS).
``vicuna_v1_short``: the same without the system prompt (short sequences for tiny models).

The Jinja text below is the one definition of each template: training, ``load_vlm``, the
commands, lmms-eval and transformers' ``apply_chat_template`` / ``pipeline`` all render it. The
assistant's answers (and their EOS) sit in ``{% generation %}`` blocks, so transformers'
``return_assistant_tokens_mask`` gives the tokens the loss covers. The whole conversation is
tokenised in one call by the processor, which expands ``<image>`` to the tower's N image tokens
(``LlavaProcessor``) and adds the tokenizer's own BOS.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100
IMAGE = "<image>"

# A message's text: the string itself, or its text items in order.
_TEXT = (
    "{%- macro text(content) -%}{%- if content is string -%}{{ content }}{%- else -%}"
    "{%- for item in content if item['type'] == 'text' -%}{{ item['text'] }}{%- endfor -%}"
    "{%- endif -%}{%- endmacro -%}"
)
# LLaVA's preprocess_plain: one exchange (the first); the user's turn becomes its image alone,
# then the caption and "\n".
_PLAIN = (
    _TEXT + "{%- for message in messages[:2] -%}"
    "{%- if message['role'] == 'user' -%}"
    "{%- if message['content'] is string -%}{{ '<image>' if '<image>' in message['content'] }}"
    "{%- else -%}{%- for item in message['content'] if item['type'] == 'image' -%}"
    "{{ '<image>' }}{%- endfor -%}{%- endif -%}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{%- generation -%}{{ text(message['content']) + '\n' }}{%- endgeneration -%}"
    "{%- endif -%}{%- endfor -%}"
)
# LLaVA's conv_vicuna_v1 (SeparatorStyle.TWO); the image first in its turn, then "\n"
# (preprocess_multimodal). A leading system message replaces the default system prompt.
_VICUNA = (
    _TEXT + "{%- set ns = namespace(system=SYSTEM) -%}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set ns.system = text(messages[0]['content']) -%}{%- endif -%}"
    "{%- if ns.system -%}{{ ns.system + ' ' }}{%- endif -%}"
    "{%- for message in messages if message['role'] != 'system' -%}"
    "{%- if message['role'] == 'user' -%}{{ 'USER: ' }}"
    "{%- if message['content'] is not string -%}"
    "{%- for item in message['content'] if item['type'] == 'image' -%}{{ '<image>\n' }}"
    "{%- endfor -%}{%- endif -%}{{ text(message['content']) + ' ASSISTANT:' }}"
    "{%- else -%}{{ ' ' }}{%- generation -%}{{ text(message['content']) + eos_token }}"
    "{%- endgeneration -%}{%- endif -%}{%- endfor -%}"
)
_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
TEMPLATES = {
    "plain": _PLAIN,
    "vicuna_v1": _VICUNA.replace("SYSTEM", repr(_SYSTEM), 1),
    "vicuna_v1_short": _VICUNA.replace("SYSTEM", "''", 1),
}


def get_template(name: str) -> str:
    """The Jinja chat template of ``name``."""
    if name not in TEMPLATES:
        raise ValueError(f"unknown conversation template {name!r}; choose from {sorted(TEMPLATES)}")
    return TEMPLATES[name]


def template_name(chat_template: str | None) -> str | None:
    """The name of a saved chat template, or None when it is none of ours."""
    return next((k for k, v in TEMPLATES.items() if v == chat_template), None)


def messages(turns: list[tuple[str, str]], image=None) -> list[dict]:
    """(question, answer) turns -> transformers chat messages. A question holding ``<image>``
    gets an image item first (LLaVA's ``preprocess_multimodal``), carrying ``image`` (a PIL
    image) when given; an empty answer ends the list at the user's turn (a generation prompt)."""
    out = []
    for question, answer in turns:
        content = [{"type": "text", "text": question}]
        if IMAGE in question:
            item = {"type": "image"} if image is None else {"type": "image", "image": image}
            content = [item, {"type": "text", "text": question.replace(IMAGE, "").strip()}]
        out.append({"role": "user", "content": content})
        if answer:
            out.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return out


def encode(
    processor, template: str, turns: list[tuple[str, str]], image=None, num_image_tokens: int = 0
) -> dict:
    """A conversation's ``ids``, ``labels`` (IGNORE_INDEX outside the answers) and, with an
    ``image`` (PIL), its ``pixel_values`` (3, R, R): ``processor.apply_chat_template`` with the
    assistant mask, in one call. Without an image (cached tower features) the same messages go
    through the tokenizer's ``apply_chat_template`` and ``<image>`` is expanded to
    ``num_image_tokens`` copies, as ``LlavaProcessor.replace_image_token`` does: ``<image>`` is an
    added token, so the text around it tokenises alike (tests pin the equality)."""
    msgs, chat = messages(turns, image), get_template(template)
    if image is not None:
        out = processor.apply_chat_template(
            msgs,
            chat_template=chat,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
            return_tensors="pt",
        )
        ids, mask = out["input_ids"][0].tolist(), out["assistant_masks"][0].tolist()
        result = {"pixel_values": out["pixel_values"][0]}
    else:
        tok = processor.tokenizer
        out = tok.apply_chat_template(
            msgs, chat_template=chat, return_dict=True, return_assistant_tokens_mask=True
        )
        # The tokenizer's own special tokens around a sequence (the BOS of a Llama tokenizer),
        # which the processor's call adds.
        prefix = tok("", add_special_tokens=True)["input_ids"]
        ids, mask = [], [0] * len(prefix)
        image_id = tok.convert_tokens_to_ids(IMAGE)
        for t, m in zip(out["input_ids"], out["assistant_masks"]):
            n = num_image_tokens if t == image_id else 1
            ids += [t] * n
            mask += [m] * n
        ids = prefix + ids
        result = {}
    result["ids"] = ids
    result["labels"] = [t if m else IGNORE_INDEX for t, m in zip(ids, mask)]
    return result


def prompt_text(processor, question: str) -> str:
    """The processor's chat template rendered for one question about one image, up to the
    assistant's cue (a question without ``<image>`` gets the image first)."""
    q = question if IMAGE in question else f"{IMAGE}\n{question}"
    return processor.apply_chat_template(messages([(q, "")]), add_generation_prompt=True)


def prompt_inputs(processor, questions: list[str], images: list, **image_kwargs) -> dict:
    """Generation prompts of the processor's own chat template (ending at the assistant's
    cue), left-padded, in one processor call: ``input_ids``, ``attention_mask`` (B, L) and
    ``pixel_values`` (B, 3, R, R). ``image_kwargs`` go to the image processor."""
    return processor(
        text=[prompt_text(processor, q) for q in questions],
        images=list(images),
        padding=True,
        padding_side="left",
        return_tensors="pt",
        **image_kwargs,
    )


def pad_batch(
    rows: list[tuple[list[int], list[int]]], pad_id: int, left: bool = False
) -> dict[str, torch.Tensor]:
    """Rows of (ids, labels) -> ``input_ids``, ``attention_mask``, ``labels`` (B, L), padded on
    the right for training or on the left for generation."""
    length = max(len(ids) for ids, _ in rows)
    ids_t = torch.full((len(rows), length), pad_id, dtype=torch.long)
    lab_t = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, (ids, labels) in enumerate(rows):
        span = slice(length - len(ids), length) if left else slice(0, len(ids))
        ids_t[i, span] = torch.tensor(ids)
        lab_t[i, span] = torch.tensor(labels)
        mask[i, span] = 1
    return {"input_ids": ids_t, "attention_mask": mask, "labels": lab_t}
