"""LoRA on the language model (peft): only the adapters and the projector train, the merged
export equals the adapted model and is a plain LLaVA checkpoint, the projector takes its own LR,
a LoRA run resumes exactly, and stage 1's weights load under the adapters' names."""

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")

from openvision3.configs import get_preset  # noqa: E402
from openvision3.train.trainer import Trainer  # noqa: E402
from openvision3.understanding.lora import LoraSettings, add_lora, linear_names, merged  # noqa: E402
from openvision3.understanding.tiny import tiny_vlm  # noqa: E402


def _batch(vlm, processor):
    """Two sequences: a word, the image's tokens, eight words."""
    image = vlm.config.image_token_id
    words = torch.randint(4, len(processor.tokenizer), (2, 9))
    words[words == image] = 4
    n = vlm.config.vision_config.num_image_tokens
    ids = torch.cat([words[:, :1], torch.full((2, n), image), words[:, 1:]], 1)
    return {"input_ids": ids, "pixel_values": torch.rand(2, 3, 32, 32) * 2 - 1}


def test_lora_trains_adapters_and_projector_only():
    vlm = get_preset("llava15_ov3_b2_stage2_lora_smoke").build_task().build_model()
    trainable = {n for n, p in vlm.named_parameters() if p.requires_grad}
    lm = {n for n in trainable if n.startswith("model.language_model.")}
    assert lm and all(".lora_A." in n or ".lora_B." in n for n in lm)
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in lm}
    assert adapted == set(linear_names(tiny_vlm()[0].model.language_model))
    assert {n for n in trainable - lm} == {
        n for n, _ in vlm.named_parameters() if n.startswith("model.multi_modal_projector.")
    }


def test_merged_copy_equals_the_adapted_model_and_loads_as_plain_llava(tmp_path):
    from transformers import LlavaForConditionalGeneration

    from openvision3.understanding.assemble import save_vlm

    vlm, processor = tiny_vlm()
    plain_keys = set(vlm.state_dict())
    add_lora(vlm, LoraSettings(r=4, alpha=8, dropout=0.0))
    with torch.no_grad():  # lora_B starts at zero: give the adapters an effect
        for n, p in vlm.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.05)
    vlm.eval()
    batch = _batch(vlm, processor)
    with torch.no_grad():
        adapted = vlm(**batch).logits
        out = merged(vlm)
        assert out is not vlm and set(out.state_dict()) == plain_keys
        torch.testing.assert_close(out(**batch).logits, adapted, rtol=1e-4, atol=1e-5)
        base = vlm.model.language_model.layers[0].self_attn.q_proj.base_layer.weight
        assert not torch.equal(out.model.language_model.layers[0].self_attn.q_proj.weight, base)
    save_vlm(out, processor, str(tmp_path / "vlm"))
    back = LlavaForConditionalGeneration.from_pretrained(str(tmp_path / "vlm")).eval()
    with torch.no_grad():
        torch.testing.assert_close(back(**batch).logits, adapted, rtol=1e-4, atol=1e-5)
    plain, _ = tiny_vlm()
    assert merged(plain) is plain  # no adapters: nothing to merge


def _lora_smoke(tmp_path, steps, stop_at=0):
    cfg = get_preset("llava15_ov3_b2_stage2_lora_smoke")
    cfg.run_dir = str(tmp_path / "run")
    cfg.train.stages[0].steps = steps
    cfg.train.log_every, cfg.train.ckpt_every, cfg.train.stop_at = 1, 2, stop_at
    return cfg


def test_lora_preset_is_llava_finetune_lora_and_the_projector_takes_its_lr():
    cfg = get_preset("llava15_ov3_b2_stage2_lora")
    (stage,) = cfg.train.stages
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout) == (128, 256.0, 0.05)
    assert cfg.run_dir != get_preset("llava15_ov3_b2_stage2").run_dir  # its own checkpoints
    assert stage.lr == 2e-4
    trainer = Trainer(get_preset("llava15_ov3_b2_stage2_lora_smoke"))
    lrs = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups if g["params"]}
    proj = {id(p) for p in trainer.model.model.multi_modal_projector.parameters()}
    for g in trainer.optimizer.param_groups:
        if g["params"]:
            assert (g["lr_scale"] == 0.1) == all(id(p) in proj for p in g["params"])
    assert lrs["decay@0.1"] == pytest.approx(0.1 * lrs["decay"])


def test_lora_run_resumes_exactly_and_exports_merged(tmp_path):
    from openvision3.understanding import load_vlm

    full = Trainer(_lora_smoke(tmp_path / "a", 4))
    full.fit()
    assert Trainer(_lora_smoke(tmp_path / "b", 4, stop_at=2)).fit() == {"stopped_at": 2}
    resumed = Trainer(_lora_smoke(tmp_path / "b", 4))
    assert resumed.step == 2
    resumed.fit()
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    vlm = load_vlm(str(tmp_path / "a" / "run" / "final"))
    assert not any("lora_" in n for n, _ in vlm.model.named_parameters())


def test_lora_stage_reads_stage1_weights_under_the_adapters_names(tmp_path):
    from openvision3.understanding.assemble import save_vlm

    vlm, processor = tiny_vlm(seed=3)
    save_vlm(vlm, processor, str(tmp_path / "stage1"))
    cfg = _lora_smoke(tmp_path, 1)
    cfg.train.init_from = str(tmp_path / "stage1")
    trainer = Trainer(cfg)
    q = trainer.model.model.language_model.layers[0].self_attn.q_proj
    stage1 = vlm.model.language_model.layers[0].self_attn.q_proj.weight
    assert torch.equal(q.base_layer.weight, stage1)
