"""One definition of a VLM's inputs, the processor saved in the folder: training (the
``llava_json`` dataset of ``LlavaTask``), ``load_vlm`` (``ov3 vlm chat/answer``, ``ov3 eval vqa``)
and transformers' own ``AutoProcessor.apply_chat_template`` give identical ids, masks and
pixels, with a word-level and a Llama-style SentencePiece tokenizer, single- and multi-turn
conversations and three aspect ratios; ``pipeline("image-text-to-text")``, ``generate`` on the
processor's inputs and ``ov3 vlm answer`` give the same greedy tokens."""

import copy
import json

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from PIL import Image  # noqa: E402
from transformers import AutoProcessor, LlavaForConditionalGeneration, pipeline  # noqa: E402

from openvision3.understanding.assemble import save_vlm  # noqa: E402
from openvision3.understanding.templates import IGNORE_INDEX  # noqa: E402
from tests.understanding._vlm_fakes import tiny, tiny_sentencepiece_vlm  # noqa: E402

SIZES = [(451, 300), (300, 451), (64, 64)]
TURNS = [
    [("<image>\nwhat colour is the large object?", "red")],
    [
        ("<image>\nwhat colour is the large object?", "red"),
        ("is there a blue object?", "yes"),
        ("where is the large object?", "top left"),
    ],
]


def _image(size, seed):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _hf_messages(turns, image):
    """The conversation as a transformers user writes it."""
    out = []
    for q, a in turns:
        text = q.replace("<image>", "").strip()
        content = [{"type": "text", "text": text}]
        if "<image>" in q:
            content = [{"type": "image", "image": image}] + content
        out.append({"role": "user", "content": content})
        out.append({"role": "assistant", "content": [{"type": "text", "text": a}]})
    return out


@pytest.fixture(scope="module", params=["word", "sentencepiece"])
def folder(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    if request.param == "word":
        vlm, processor, _ = tiny(template="vicuna_v1")
    else:
        vlm, processor = tiny_sentencepiece_vlm(template="vicuna_v1")
    save_vlm(vlm, processor, str(root / "vlm"))
    images, records = root / "images", []
    images.mkdir()
    for i, size in enumerate(SIZES):
        _image(size, i).save(images / f"{i}.png")
        for turns in TURNS:
            conv = []
            for q, a in turns:
                conv += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
            records.append({"id": len(records), "image": f"{i}.png", "conversations": conv})
    (root / "data.json").write_text(json.dumps(records))
    return root


def _training_items(root):
    from openvision3.understanding.task import LlavaRunConfig, VLMDataConfig

    cfg = LlavaRunConfig(
        name="t",
        run_dir=str(root / "run"),
        model=str(root / "vlm"),
        template="vicuna_v1",
        data=VLMDataConfig(json_path=str(root / "data.json"), image_folder=str(root / "images")),
    )
    data = cfg.build_task().dataset()  # the folder's processor and config; no weights needed
    return [data[i] for i in range(len(data))]


def test_training_equals_auto_processor(folder):
    """Every (tokenizer, aspect ratio, turns) case: the training item's ids and pixels are
    ``AutoProcessor.apply_chat_template``'s; its labels are the assistant mask's tokens."""
    processor = AutoProcessor.from_pretrained(folder / "vlm")
    assert type(processor.image_processor).__name__ == "LlavaImageProcessor"
    records = json.loads((folder / "data.json").read_text())
    for item, rec in zip(_training_items(folder), records):
        turns = [(h["value"], g["value"]) for h, g in zip(*[iter(rec["conversations"])] * 2)]
        with Image.open(folder / "images" / rec["image"]) as im:
            image = im.convert("RGB")
        ref = processor.apply_chat_template(
            _hf_messages(turns, image),
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
            return_tensors="pt",
        )
        assert item["ids"] == ref["input_ids"][0].tolist()
        assert item["labels"] == [
            t if m else IGNORE_INDEX
            for t, m in zip(ref["input_ids"][0].tolist(), ref["assistant_masks"][0].tolist())
        ]
        assert torch.equal(item["pixel_values"], ref["pixel_values"][0])
        answers = processor.tokenizer.decode([t for t in item["labels"] if t != IGNORE_INDEX])
        assert answers.replace(" ", "") == "".join(a + "</s>" for _, a in turns).replace(" ", "")


def test_generation_prompt_equals_auto_processor_and_prefixes_training(folder):
    """``load_vlm``'s inputs (those of ``ov3 vlm chat/answer``, ``ov3 eval vqa``, lmms-eval)
    are ``apply_chat_template(add_generation_prompt=True)``'s, batched with left padding, and
    each prompt is the start of the training sequence; the image is padded, not cropped."""
    from openvision3.understanding import load_vlm

    vlm = load_vlm(str(folder / "vlm"))
    processor = AutoProcessor.from_pretrained(folder / "vlm")
    images = [_image(size, i) for i, size in enumerate(SIZES)]
    questions = ["what colour is the large object?", "is there a blue object?", "how many?"]
    batch = vlm.inputs(images, questions)
    items = _training_items(folder)
    width = batch["input_ids"].shape[1]
    for i, (image, q) in enumerate(zip(images, questions)):
        msgs = [
            {
                "role": "user",
                "content": [{"type": "image", "image": image}, {"type": "text", "text": q}],
            }
        ]
        ref = processor.apply_chat_template(
            msgs, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )
        ids = ref["input_ids"][0]
        pad = width - len(ids)
        assert torch.equal(batch["input_ids"][i, pad:], ids)
        assert batch["attention_mask"][i].tolist() == [0] * pad + [1] * len(ids)
        assert torch.equal(batch["pixel_values"][i], ref["pixel_values"][0])
        if i == 0:  # the first question of the training conversations
            assert items[2 * i]["ids"][: len(ids)] == ids.tolist()
    # 451 x 300 padded to a square of 127 (the mean), not centre-cropped: the top rows are the fill
    top = batch["pixel_values"][0, :, 0]
    torch.testing.assert_close(top, torch.full_like(top, 127 / 255 * 2 - 1), atol=1e-6, rtol=0)


def test_cached_feature_path_equals_the_processor(folder):
    """Training on cached tower features (no pixels: the tokenizer's ``apply_chat_template``,
    ``<image>`` expanded) gives the processor's ids and labels."""
    from openvision3.understanding.templates import encode

    processor = AutoProcessor.from_pretrained(folder / "vlm")
    for template in ("plain", "vicuna_v1", "vicuna_v1_short"):
        for turns in TURNS:
            with_pixels = encode(processor, template, turns, _image((451, 300), 0))
            cached = encode(processor, template, turns, None, 4)
            assert (cached["ids"], cached["labels"]) == (with_pixels["ids"], with_pixels["labels"])


def test_sentencepiece_prompt_has_no_stray_space():
    """With ``prepend_scheme="first"`` the text after ``<image>`` gets no "▁" of its own: one
    call tokenises the prompt (pieces tokenised one by one would add it)."""
    vlm, processor = tiny_sentencepiece_vlm()
    from openvision3.understanding.templates import encode

    out = encode(processor, "vicuna_v1", [("<image>\nwhat?", "red")], None, 4)
    tokens = processor.tokenizer.convert_ids_to_tokens(out["ids"])
    after = tokens[tokens.index("<image>") + 4]
    assert after == "<0x0A>", tokens


def test_pipeline_generate_and_answer_agree(folder, capsys):
    """Greedy tokens: transformers' ``pipeline("image-text-to-text")``, ``generate`` on the
    processor's inputs, ``ov3 vlm answer``."""
    from openvision3.cli import main

    path = str(folder / "vlm")
    rows = [
        {"image": str(folder / "images" / f"{i}.png"), "question": "what colour is it?"}
        for i in range(3)
    ]
    (folder / "q.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert main(["vlm", "answer", path, str(folder / "q.jsonl"), "--max-new-tokens", "6"]) == 0
    ours = [json.loads(line)["answer"] for line in capsys.readouterr().out.splitlines()]
    pipe = pipeline("image-text-to-text", model=path)
    model = LlavaForConditionalGeneration.from_pretrained(path).eval()
    processor = AutoProcessor.from_pretrained(path)
    for row, answer in zip(rows, ours):
        image = Image.open(row["image"]).convert("RGB")
        msgs = [
            {
                "role": "user",
                "content": [
                    {"type": "image", "image": image},
                    {"type": "text", "text": row["question"]},
                ],
            }
        ]
        got = pipe(
            text=msgs,
            return_full_text=False,
            generate_kwargs={"max_new_tokens": 6, "do_sample": False},
        )
        inputs = processor.apply_chat_template(
            msgs, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        direct = processor.tokenizer.decode(
            out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True
        )
        assert got[0]["generated_text"].strip() == direct.strip() == answer


def _legacy_folder(path):
    """A folder as older versions saved it: ``CLIPImageProcessor`` (centre crop), a fixed
    Vicuna chat template, a word-level tokenizer that did not add its BOS (the ids got it by
    hand); the model trained with vicuna_v1_short."""
    from tokenizers import processors
    from transformers import CLIPImageProcessor, LlavaProcessor

    vlm, processor, _ = tiny(template="vicuna_v1_short")
    tok = copy.deepcopy(processor.tokenizer)
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B")
    old = "{% for m in messages %}{{ 'USER: ' + m['content'] }}{% endfor %}"
    tok.chat_template = old
    legacy = LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": 32},
            crop_size={"height": 32, "width": 32},
            image_mean=[0.5] * 3,
            image_std=[0.5] * 3,
        ),
        tokenizer=tok,
        patch_size=16,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=old,
    )
    save_vlm(vlm, legacy, str(path))
    return vlm, processor


def test_legacy_folder_converts_on_load_and_upgrade_saves_it(tmp_path, caplog, capsys):
    """An older folder loads with a one-line note and the inputs it was trained with (BOS, its
    own template) padded as LLaVA-1.5; ``ov3 vlm upgrade`` writes that, after which transformers'
    ``AutoProcessor`` reads the same inputs and the note is gone."""
    import logging

    from openvision3.cli import main
    from openvision3.understanding import load_vlm
    from openvision3.understanding.templates import encode

    _, processor = _legacy_folder(tmp_path / "old")
    image, question = _image((451, 300), 0), "what colour is the large object?"
    with caplog.at_level(logging.WARNING):
        vlm = load_vlm(str(tmp_path / "old"))
    notes = [r.getMessage() for r in caplog.records if "older processor" in r.getMessage()]
    assert len(notes) == 1 and "\n" not in notes[0] and "ov3 vlm upgrade" in notes[0]
    assert vlm.template == "vicuna_v1_short"
    ids = vlm.inputs([image], [question])["input_ids"][0].tolist()
    trained = encode(processor, "vicuna_v1_short", [(f"<image>\n{question}", "red")], None, 4)
    assert ids[0] == processor.tokenizer.bos_token_id and trained["ids"][: len(ids)] == ids
    assert main(["vlm", "upgrade", str(tmp_path / "old")]) == 0
    auto = AutoProcessor.from_pretrained(tmp_path / "old")
    msgs = [
        {
            "role": "user",
            "content": [{"type": "image", "image": image}, {"type": "text", "text": question}],
        }
    ]
    ref = auto.apply_chat_template(
        msgs, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    assert ref["input_ids"][0].tolist() == ids
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = load_vlm(str(tmp_path / "old"))
    assert not [r for r in caplog.records if "older processor" in r.getMessage()]
    assert torch.equal(again.inputs([image], [question])["pixel_values"], ref["pixel_values"])
