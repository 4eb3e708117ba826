"""The OpenVision 3 tower in transformers' LLaVA: CLIP-style hidden states, registration,
``save_pretrained`` -> ``from_pretrained`` with equal logits (fp32, bf16 with an fp32 VAE,
sdpa), and ``vision_feature_layer=-1`` + "default" selecting exactly the unified tokens."""

import json
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers")

from transformers import AutoConfig, AutoModel, LlavaForConditionalGeneration  # noqa: E402

from openvision3.understanding import OpenVision3VisionConfig, OpenVision3VisionModel  # noqa: E402
from tests.understanding._vlm_fakes import tiny  # noqa: E402


def _inputs(vlm, batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    n = vlm.config.vision_config.num_image_tokens
    size = vlm.config.vision_config.image_size
    ids = torch.tensor([[2] + [vlm.config.image_token_id] * n + [5, 6, 7, 8]] * batch)
    return ids, torch.rand(batch, 3, size, size, generator=g) * 2 - 1


def test_hidden_states_follow_clip_and_last_layer_is_the_unified_tokens():
    vlm, _, ov3 = tiny()
    tower = vlm.model.vision_tower
    x = _inputs(vlm)[1]
    for flag in (None, 0, -1, [0, -1], True):  # 5.24 passes the layer index itself
        out = tower(x, output_hidden_states=flag)
        assert len(out.hidden_states) == ov3.encoder.cfg.depth + 1
    n = vlm.config.vision_config.num_image_tokens
    assert out.last_hidden_state.shape == (2, 1 + n, ov3.encoder.cfg.width)
    with torch.no_grad():
        torch.testing.assert_close(out.hidden_states[-1][:, 1:], ov3.encode(x), rtol=0, atol=0)
        states = ov3.encoder.hidden_states(ov3.vae.encode(x), include_prefix=True)
    for a, b in zip(out.hidden_states, states):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # CLS first, embeddings at index 0


def test_llava_reads_the_unified_tokens_with_layer_minus_one():
    vlm, _, ov3 = tiny()
    assert vlm.config.vision_feature_layer == -1
    assert vlm.config.vision_feature_select_strategy == "default"
    x = _inputs(vlm)[1]
    with torch.no_grad():
        feats = vlm.model.get_image_features(pixel_values=x).pooler_output
        expected = vlm.model.multi_modal_projector(ov3.encode(x))
    torch.testing.assert_close(torch.stack(list(feats)), expected, rtol=0, atol=0)


def test_registered_with_auto_classes():
    cfg = AutoConfig.for_model("openvision3_vision", image_size=32)
    assert isinstance(cfg, OpenVision3VisionConfig)
    assert cfg.num_image_tokens == 4 and cfg.patch_size == 16
    assert isinstance(AutoModel.from_config(cfg), OpenVision3VisionModel)


def test_import_openvision3_does_not_register_or_import_transformers():
    code = "import sys, openvision3; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_save_from_pretrained_round_trip(tmp_path):
    vlm, processor, _ = tiny()
    ids, x = _inputs(vlm)
    with torch.no_grad():
        ref = vlm(input_ids=ids, pixel_values=x).logits
    vlm.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["vision_config"]["model_type"] == "openvision3_vision"
    assert "auto_map" not in config  # no trust_remote_code
    back = LlavaForConditionalGeneration.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        got = back(input_ids=ids, pixel_values=x).logits
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)
    for (k, a), b in zip(vlm.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), k
    sdpa = LlavaForConditionalGeneration.from_pretrained(tmp_path, attn_implementation="sdpa")
    with torch.no_grad():
        torch.testing.assert_close(
            sdpa(input_ids=ids, pixel_values=x).logits, ref, rtol=0, atol=1e-5
        )


def test_bf16_load_keeps_the_vae_fp32(tmp_path):
    vlm, _, _ = tiny()
    ids, x = _inputs(vlm)
    with torch.no_grad():
        ref = vlm(input_ids=ids, pixel_values=x).logits
    vlm.save_pretrained(tmp_path)
    half = LlavaForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    tower = half.model.vision_tower
    assert {p.dtype for p in tower.vae.parameters()} == {torch.float32}
    assert tower.encoder.patch_embed.weight.dtype == torch.bfloat16
    assert half.lm_head.weight.dtype == torch.bfloat16
    with torch.no_grad():
        got = half(input_ids=ids, pixel_values=x.bfloat16()).logits.float()
    assert (got - ref).abs().max() < 0.1 * ref.abs().max()


def test_generate_runs_through_the_tower():
    vlm, _, _ = tiny()
    ids, x = _inputs(vlm)
    out = vlm.generate(input_ids=ids, pixel_values=x, max_new_tokens=3, do_sample=False)
    assert out.shape == (2, ids.shape[1] + 3)
