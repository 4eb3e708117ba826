"""Conversation templates of LLaVA-1.5 (LLaVA's ``llava/conversation.py``) and their token ids
with labels: the loss covers the assistant's answers (and their end-of-sequence) only.

``plain`` (stage 1): the image, then the caption and "\\n"; no system prompt, no roles.
``vicuna_v1`` (stage 2): ``SYSTEM USER: <image>\\n{q} ASSISTANT: {a}</s>USER: ...``, LLaVA's
``conv_vicuna_v1`` with ``SeparatorStyle.TWO`` (sep " ", sep2 = the tokenizer's EOS).
``vicuna_v1_short``: the same without the system prompt (short sequences for tiny models).

The ``<image>`` placeholder becomes ``N`` copies of the image token (transformers' LLaVA
convention, as ``LlavaProcessor`` expands it), masked out of the labels. Each text segment is
tokenised on its own without special tokens, so training and generation see the same ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100
IMAGE = "<image>"
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


@dataclass(frozen=True)
class Template:
    name: str
    system: str = ""
    roles: tuple[str, str] = ("USER", "ASSISTANT")
    plain: bool = False


TEMPLATES = {
    "plain": Template("plain", plain=True),
    "vicuna_v1": Template("vicuna_v1", system=VICUNA_SYSTEM),
    "vicuna_v1_short": Template("vicuna_v1_short"),
}


def get_template(name: str) -> Template:
    if name not in TEMPLATES:
        raise ValueError(f"unknown conversation template {name!r}; choose from {sorted(TEMPLATES)}")
    return TEMPLATES[name]


def image_first(text: str) -> str:
    """LLaVA's ``preprocess_multimodal``: the ``<image>`` placeholder moves to the start of its
    turn, followed by a newline."""
    if IMAGE not in text:
        return text
    return f"{IMAGE}\n" + text.replace(IMAGE, "").strip()


def segments(template: Template, turns: list[tuple[str, str]]) -> list[tuple[str, bool]]:
    """(question, answer) turns -> text segments with a flag: True where the loss counts.
    An answer's segment is followed by an EOS segment ``("</s>", True)``; an empty final answer
    ends the list at the assistant's cue (a generation prompt)."""
    if template.plain:
        (question, answer), *_ = turns
        out = [(IMAGE, False)]
        return out + ([(answer + "\n", True)] if answer else [])
    user, assistant = template.roles
    out: list[tuple[str, bool]] = []
    prefix = template.system + " " if template.system else ""
    for i, (question, answer) in enumerate(turns):
        out.append(
            (f"{prefix}{user}: {image_first(question) if i == 0 else question} {assistant}:", False)
        )
        prefix = ""
        if answer:
            out += [(" " + answer, True), ("</s>", True)]
    return out


def encode(
    tokenizer,
    template: Template,
    turns: list[tuple[str, str]],
    image_token_id: int,
    num_image_tokens: int,
) -> tuple[list[int], list[int]]:
    """Token ids and labels (IGNORE_INDEX outside the answers) of a conversation; the BOS first
    when the tokenizer has one, ``<image>`` expanded to ``num_image_tokens`` image tokens."""
    ids = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    labels = [IGNORE_INDEX] * len(ids)
    for text, trained in segments(template, turns):
        if text == "</s>":
            piece = [tokenizer.eos_token_id]
        else:
            piece = []
            for j, part in enumerate(text.split(IMAGE)):
                if j:
                    piece += [image_token_id] * num_image_tokens
                if part.strip():
                    piece += tokenizer(part, add_special_tokens=False)["input_ids"]
        ids += piece
        keep = trained and text != IMAGE
        labels += [t if keep and t != image_token_id else IGNORE_INDEX for t in piece]
    return ids, labels


def prompt_ids(
    tokenizer, template: Template, question: str, image_token_id: int, num_image_tokens: int
) -> list[int]:
    """The generation prompt of one question about one image (ends at the assistant's cue)."""
    q = question if IMAGE in question else f"{IMAGE}\n{question}"
    return encode(tokenizer, template, [(q, "")], image_token_id, num_image_tokens)[0]


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


# The chat template of assembled checkpoints (Jinja, for ``apply_chat_template`` users): the
# vicuna_v1 layout, with the image placeholder first in the user's turn.
VICUNA_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}{{ \"" + VICUNA_SYSTEM + ' " }}{% endif %}'
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + ' ' }}"
    "{% elif message['role'] == 'user' %}{{ 'USER: ' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}{{ '<image>\n' }}"
    "{% endif %}{% endfor %}{% for item in message['content'] %}{% if item['type'] == 'text' %}"
    "{{ item['text'] }}{% endif %}{% endfor %}{% endif %}{{ ' ASSISTANT:' }}"
    "{% else %}{{ ' ' + (message['content'] if message['content'] is string else "
    "message['content'][0]['text']) + eos_token }}{% endif %}{% endfor %}"
)
