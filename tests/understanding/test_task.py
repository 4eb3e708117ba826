"""The LLaVA recipe on the engine: stage 1 trains the projector alone, stage 2 the projector and
the language model; the loss is the global answer-token mean whatever the micro-batching; the
smoke presets train, export and reload through ``load_vlm``."""

import contextlib

import pytest
import torch

pytest.importorskip("transformers")

from openvision3.configs import get_preset  # noqa: E402
from openvision3.train.trainer import Trainer  # noqa: E402


def _smoke(name, tmp_path, steps=1):
    cfg = get_preset(name)
    cfg.run_dir = str(tmp_path / name)
    cfg.train.stages[0].steps = steps
    cfg.train.log_every = cfg.train.ckpt_every = steps
    return cfg


def _changed(before, model):
    return {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}


def test_presets_carry_llava_15_numbers():
    s1, s2 = get_preset("llava15_ov3_b2_stage1"), get_preset("llava15_ov3_b2_stage2")
    (a,), (b,) = s1.train.stages, s2.train.stages
    assert (a.batch_size, a.lr) == (256, 1e-3)
    assert (b.batch_size, b.lr) == (128, 2e-5)
    assert a.warmup_steps == -(-3 * a.steps // 100) and b.warmup_steps == -(-3 * b.steps // 100)
    assert (s1.template, s2.template) == ("plain", "vicuna_v1")
    assert s1.train.optim.weight_decay == 0 and s1.train.parallel == "fsdp"
    assert s1.train.precision == "bf16" and s2.train.activation_checkpointing


def test_stage1_trains_only_the_projector(tmp_path):
    trainer = Trainer(_smoke("llava15_ov3_b2_stage1_smoke", tmp_path))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    changed = _changed(before, trainer.model)
    assert changed and all(k.startswith("model.multi_modal_projector.") for k in changed)
    assert len(changed) == 4  # linear_1 and linear_2, weight and bias
    n_opt = sum(p.numel() for g in trainer.optimizer.param_groups for p in g["params"])
    n_proj = sum(p.numel() for p in trainer.model.model.multi_modal_projector.parameters())
    assert n_opt == n_proj


def test_stage2_trains_projector_and_lm_and_exports(tmp_path):
    from openvision3.understanding import load_vlm

    trainer = Trainer(_smoke("llava15_ov3_b2_stage2_smoke", tmp_path))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    changed = _changed(before, trainer.model)
    assert any(k.startswith("model.language_model.") for k in changed)
    assert any(k.startswith("model.multi_modal_projector.") for k in changed)
    assert not any(k.startswith("model.vision_tower.") for k in changed)
    vlm = load_vlm(str(tmp_path / "llava15_ov3_b2_stage2_smoke" / "final"))
    assert vlm.template == "vicuna_v1"  # the stage's own template, saved with the processor
    answers = vlm.generate(torch.rand(2, 3, 32, 32), ["what colour is the large object?"] * 2, 2)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


def test_loss_is_the_answer_token_mean_under_accumulation():
    cfg = get_preset("llava15_ov3_b2_stage2_smoke")
    task = cfg.build_task()
    model = task.build_model()
    loader = iter(task.build_loader(cfg.train.stages[0], 4, 0, 1))
    batch = next(loader)
    labels = batch["labels"][:, 1:]
    assert len({int((row != -100).sum()) for row in labels}) > 1  # unequal answer lengths

    def grads(k):
        model.zero_grad()
        terms = task.forward_backward(model, model, batch, k, contextlib.nullcontext)
        return terms["loss"], {
            n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
        }

    loss1, g1 = grads(1)
    loss2, g2 = grads(2)
    with torch.no_grad():
        logits = model(
            **{k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
        ).logits
    ref = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), labels.flatten(), ignore_index=-100
    )
    torch.testing.assert_close(loss1, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss2, ref, rtol=1e-5, atol=1e-6)
    for n in g1:
        torch.testing.assert_close(g2[n], g1[n], rtol=1e-4, atol=1e-7, msg=n)


def test_synthetic_questions_multi_turn_or_one_per_conversation():
    """vqa: one conversation per scene with every type; vqa_single: each scene once per type,
    one question each, the same answers."""
    from openvision3.understanding.synthetic_vqa import QUESTION_TYPES

    cfg = get_preset("llava15_ov3_b2_stage2_smoke")
    multi = cfg.build_task().dataset()
    cfg = get_preset("llava15_ov3_b2_stage2_smoke")
    cfg.data.questions = "vqa_single"
    one = cfg.build_task().dataset()
    t = len(QUESTION_TYPES)
    assert len(one) == t * len(multi)
    for scene in range(3):
        turns = multi.turns(scene)
        asked = [one.turns(scene * t + k) for k in range(t)]
        assert all(len(a) == 1 and a[0][0].startswith("<image>\n") for a in asked)
        strip = lambda q: q.replace("<image>\n", "")  # noqa: E731
        assert sorted((strip(q), a) for ((q, a),) in asked) == sorted(
            (strip(q), a) for q, a in turns
        )
        assert torch.equal(one[scene * t + 2]["pixel_values"], multi[scene]["pixel_values"])


def test_repeated_question_types_draw_their_own_questions():
    """repeats: a type asked k times per scene, each its own draw (presence about other
    colours), draw 0 the held-out questions' own; bad repeats are refused."""
    from openvision3.understanding.synthetic_vqa import QUESTION_TYPES, scene_questions
    from openvision3.understanding.task import VLMDataConfig

    cfg = get_preset("llava15_ov3_b2_stage2_smoke")
    cfg.data.questions, cfg.data.repeats = "vqa_single", {"presence": 4}
    data = cfg.build_task().dataset()
    t, per = len(QUESTION_TYPES), len(QUESTION_TYPES) + 3
    assert data.per_scene == per and len(data) == per * cfg.data.synthetic_size
    asked = set()
    for scene in range(8):
        rows = [data.turns(scene * per + k)[0] for k in range(per)]
        presence = [(q, a) for q, a in rows if q.startswith("<image>\nis there")]
        assert len(presence) == 4 and len(rows) - 4 == t - 1
        s = data.world.scene("train", scene)
        present = {o.color for o in s.objects}
        for q, a in presence:
            assert a == ("yes" if q.split()[4] in present else "no")
        first = scene_questions(s, "train", scene, cfg.data.synthetic_seed)
        assert presence[0] == ("<image>\n" + first[2][1], first[2][2])
        asked.add(len(set(presence)))
    assert max(asked) > 1  # the draws ask about other colours
    for bad in ({"presense": 2}, {"presence": 0}):
        with pytest.raises(ValueError, match="repeats"):
            VLMDataConfig(source="synthetic", questions="vqa_single", repeats=bad)
    with pytest.raises(ValueError, match="vqa_single only"):
        VLMDataConfig(source="synthetic", questions="vqa", repeats={"presence": 2})


def _task_batch(n: int = 4):
    """The stage-2 smoke task, one batch of n synthetic conversations (read before the model
    is built: the data needs only the model's processor and config) and the model."""
    cfg = get_preset("llava15_ov3_b2_stage2_smoke")
    task = cfg.build_task()
    batch = next(iter(task.build_loader(cfg.train.stages[0], n, 0, 1)))
    return task, task.build_model(), batch


def _loss_and_grads(task, model, batch, k: int = 1):
    model.zero_grad()
    loss = task.forward_backward(model, model, batch, k, contextlib.nullcontext)["loss"]
    return loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _cached(model, batch, tokens=None):
    """The batch with the tower's unified tokens (B, N, D) in place of its pixels."""
    if tokens is None:
        with torch.no_grad():
            tokens = model.model.vision_tower.encode(batch["pixel_values"])
    return {k: v for k, v in batch.items() if k != "pixel_values"} | {"image_tokens": tokens}


def test_cached_tokens_train_as_pixels_do():
    """Cached unified tokens, projected and handed to transformers' LLaVA forward as the image
    encoder's output, give the pixel path's loss and gradients bit for bit."""
    task, model, batch = _task_batch()
    loss_p, grads_p = _loss_and_grads(task, model, batch)
    loss_c, grads_c = _loss_and_grads(task, model, _cached(model, batch))
    assert torch.equal(loss_c, loss_p)
    assert grads_c.keys() == grads_p.keys()
    assert any(n.startswith("model.multi_modal_projector.") for n in grads_c)
    for n in grads_p:
        assert torch.equal(grads_c[n], grads_p[n]), n


@pytest.mark.parametrize("extra", [1, -1])
def test_transformers_checks_the_image_token_count(extra):
    """Cached tokens of another length than the run of <image> tokens: transformers' own check
    (``LlavaModel.get_placeholder_mask``) refuses the batch, surfaced as a ConfigError; a longer
    run is not silently cut to fit."""
    from openvision3.errors import ConfigError

    task, model, batch = _task_batch(2)
    with torch.no_grad():
        tokens = model.model.vision_tower.encode(batch["pixel_values"])  # (2, N, D)
    n = tokens.shape[1]
    tokens = torch.cat([tokens, tokens[:, :1]], 1) if extra > 0 else tokens[:, :-1]
    with pytest.raises(
        ConfigError, match=rf"holds {2 * n} <image> tokens for 2 images of {n + extra} tokens"
    ):
        _loss_and_grads(task, model, _cached(model, batch, tokens))


def _llava_json(root, images: list[bool]) -> None:
    """``root/data.json``: one conversation per entry of ``images``, about ``root/images/0.png``
    where True, text-only where False."""
    import json

    import numpy as np
    from PIL import Image

    (root / "images").mkdir()
    Image.fromarray(np.full((40, 30, 3), 200, np.uint8)).save(root / "images" / "0.png")
    records = []
    for i, image in enumerate(images):
        q = "what colour is the large object?"
        conv = [{"from": "human", "value": f"<image>\n{q}" if image else q}]
        records.append({"id": i, "conversations": conv + [{"from": "gpt", "value": "red"}]})
        if image:
            records[-1]["image"] = "0.png"
    (root / "data.json").write_text(json.dumps(records))


def test_text_only_conversations_under_accumulation(tmp_path):
    """LLaVA JSON mixing image and text-only conversations (the 665K mix holds both): every
    micro-batch pairs its own conversations with their own pixels, so the loss and gradients
    are the same at 1, 2 and 4 micro-batches."""
    from openvision3.understanding.data import collate

    _llava_json(tmp_path, [False, True, False, True])
    cfg = get_preset("llava15_ov3_b2_stage2_smoke")
    cfg.data.source, cfg.data.json_path = "llava_json", str(tmp_path / "data.json")
    cfg.data.image_folder = str(tmp_path / "images")
    task = cfg.build_task()
    data = task.dataset()
    batch = collate([data[i] for i in range(4)], task.processor.tokenizer.pad_token_id)
    assert batch["has_image"].tolist() == [False, True, False, True]
    model = task.build_model()
    loss1, grads1 = _loss_and_grads(task, model, batch, 1)
    assert any(n.startswith("model.multi_modal_projector.") for n in grads1)
    for k in (2, 4):
        loss, grads = _loss_and_grads(task, model, batch, k)
        torch.testing.assert_close(loss, loss1, rtol=1e-5, atol=1e-6)
        for n in grads1:
            torch.testing.assert_close(grads[n], grads1[n], rtol=1e-4, atol=1e-7, msg=n)


def test_conversation_cut_inside_its_image_is_one_line(tmp_path, capsys):
    """``ov3 train`` on LLaVA JSON whose --data.max-length cuts the image tokens: transformers'
    count check, printed as one line naming the flag, exit status 2."""
    from openvision3.cli import main

    _llava_json(tmp_path, [True, True])
    # vicuna_v1 puts 32 tokens (BOS, system prompt, "USER:") before the 4 image tokens.
    argv = ["train", "llava15_ov3_b2_stage2_smoke", "--run-dir", str(tmp_path / "run")]
    argv += ["--data.source", "llava_json", "--data.json-path", str(tmp_path / "data.json")]
    argv += ["--data.image-folder", str(tmp_path / "images"), "--data.max-length", "34"]
    argv += ["--train.stages.0.steps", "1", "--train.stages.0.batch-size", "2"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("ov3 train: error: a batch holds 4 <image> tokens for 2 images")
    assert "--data.max-length" in last
