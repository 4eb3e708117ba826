"""The plain DiT is RAE's LightningDiT and the DiT-DH RAE's DiTwDDTHead: exact parameter names and
shapes of RAE's XL models (``rae_state_dicts.txt``, listed from RAE's code on the meta device), a
hand-written LightningDiT forward (t + y into adaLN, SiLU once), LightningDiT's xavier init and
sin-cos table, and old plain-DiT checkpoints converted on load."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from openvision3.dataclass_io import to_dict
from openvision3.generation.models import DiTDH, DiTDHConfig, count_parameters
from openvision3.generation.pipeline import _read_model
from openvision3.generation.presets import MODEL_PRESETS
from openvision3.generation.task import STATS_NAME, GenerationConfig

RAE_LISTS = Path(__file__).with_name("rae_state_dicts.txt")
RAE_MODELS = {"# DiTwDDTHead": "dit-dh-xl", "# LightningDiT": "dit-xl"}


def rae_state_dicts() -> dict[str, tuple[int, dict[str, tuple[int, ...]]]]:
    """preset -> (parameter count, {name: shape}) as the file lists them."""
    out, current = {}, None
    for line in RAE_LISTS.read_text().splitlines():
        if head := next((p for h, p in RAE_MODELS.items() if line.startswith(h)), None):
            current = head
            out[current] = (0, {})
        elif m := re.match(r"# (\d+) parameters", line):
            out[current] = (int(m[1]), out[current][1])
        elif line and not line.startswith("#"):
            name, shape = line.split(" ", 1)
            out[current][1][name] = tuple(int(v) for v in re.findall(r"\d+", shape))
    return out


@pytest.mark.parametrize("preset", ["dit-dh-xl", "dit-xl"])
def test_state_dict_names_and_shapes_are_raes(preset):
    count, rae = rae_state_dicts()[preset]
    with torch.device("meta"):
        model = DiTDH(MODEL_PRESETS[preset]())
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(rae) > 300 and count > 6e8  # the file was read
    assert sorted(ours.keys() - rae.keys()) == [] and sorted(rae.keys() - ours.keys()) == []
    assert ours == rae
    assert count_parameters(model) == count


def tiny(**kw) -> DiTDHConfig:
    base = dict(in_channels=8, input_size=4, width=32, depth=2, heads=2, head_depth=0,
                num_classes=5)  # fmt: skip
    return DiTDHConfig(**{**base, **kw})


def randomized(cfg: DiTDHConfig, seed: int = 0) -> DiTDH:
    """A model whose every trainable tensor is random (adaLN-Zero would hide the condition)."""
    torch.manual_seed(seed)
    model = DiTDH(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(std=0.1)
    return model


def lightningdit_reference(m: DiTDH, x, t, y, silu_condition: bool = False) -> torch.Tensor:
    """LightningDiT.forward written out from its paper / code description, using only ``m``'s
    tensors: c = t_emb + y_emb; per block x += g1 attn(mod(rms(x))), x += g2 swiglu(mod(rms(x)))
    with (shift, scale, gate) = Linear(SiLU(c)); final mod(rms(x)) -> Linear; unpatchify."""
    sd = m.state_dict()
    lin = lambda v, name: F.linear(v, sd[name + ".weight"], sd[name + ".bias"])  # noqa: E731
    rms = lambda v, w: v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + 1e-6) * w  # noqa: E731
    cos, sin = sd["feat_rope.freqs_cos"], sd["feat_rope.freqs_sin"]

    def rope(q):  # EVA's rotate_half on interleaved pairs
        q1, q2 = q[..., 0::2], q[..., 1::2]
        return q * cos + torch.stack([-q2, q1], dim=-1).flatten(-2) * sin

    angle = 2 * math.pi * t[:, None] * sd["t_embedder.W"][None]
    t_emb = lin(F.silu(lin(torch.cat([angle.sin(), angle.cos()], -1), "t_embedder.mlp.0")),
                "t_embedder.mlp.2")  # fmt: skip
    c = t_emb + sd["y_embedder.embedding_table.weight"][y]
    if silu_condition:
        c = F.silu(c)
    b, ch, hh, ww = x.shape
    h = F.conv2d(x, sd["x_embedder.proj.weight"], sd["x_embedder.proj.bias"])
    h = h.flatten(2).transpose(1, 2) + sd["pos_embed"]  # (B, N, D)
    heads = m.cfg.heads
    for i in range(m.cfg.depth):
        p = f"blocks.{i}."
        mods = lin(F.silu(c), p + "adaLN_modulation.1")[:, None].chunk(6, dim=-1)
        a = rms(h, sd[p + "norm1.weight"]) * (1 + mods[1]) + mods[0]
        q, k, v = lin(a, p + "attn.qkv").unflatten(-1, (3, heads, -1)).permute(2, 0, 3, 1, 4)
        att = torch.softmax(rope(q) @ rope(k).transpose(-1, -2) / math.sqrt(q.shape[-1]), -1)
        h = h + mods[2] * lin((att @ v).transpose(1, 2).flatten(2), p + "attn.proj")
        a = rms(h, sd[p + "norm2.weight"]) * (1 + mods[4]) + mods[3]
        x1, x2 = lin(a, p + "mlp.w12").chunk(2, dim=-1)
        h = h + mods[5] * lin(F.silu(x1) * x2, p + "mlp.w3")
    shift, scale = lin(F.silu(c), "final_layer.adaLN_modulation.1")[:, None].chunk(2, dim=-1)
    out = lin(rms(h, sd["final_layer.norm_final.weight"]) * (1 + scale) + shift,
              "final_layer.linear")  # fmt: skip
    return out.transpose(1, 2).reshape(b, ch, hh, ww)  # patch 1: token n is pixel (n // W, n % W)


def test_plain_dit_forward_is_lightningdits():
    model = randomized(tiny())
    x, t, y = torch.randn(3, 8, 4, 4), torch.rand(3), torch.tensor([0, 4, 5])
    with torch.no_grad():
        ours = model(x, t, y)
        ref = lightningdit_reference(model, x, t, y)
        twice = lightningdit_reference(model, x, t, y, silu_condition=True)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert (ours - twice).abs().max() > 1e-2  # SiLU(t + y) would be a different function


def test_plain_dit_init_is_lightningdits():
    torch.manual_seed(0)
    model = DiTDH(tiny(width=64, heads=4))
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear) or "adaLN" in name or name == "final_layer.linear":
            continue  # adaLN-Zero
        w = mod.weight.detach()
        if name.startswith("t_embedder"):  # N(0, 0.02) after the xavier pass
            assert abs(float(w.std()) - 0.02) < 0.004, name
        else:  # xavier-uniform: U(-a, a), a = sqrt(6 / (fan_in + fan_out)); std a / sqrt(3)
            a = math.sqrt(6 / sum(w.shape))
            assert float(w.abs().max()) <= a and abs(float(w.std()) * math.sqrt(3) / a - 1) < 0.1
        assert torch.equal(mod.bias, torch.zeros_like(mod.bias)), name  # PyTorch's are not 0


def test_dit_dh_keeps_pytorchs_linear_init():
    """DiTwDDTHead's default ``xavier_uniform_init=False``: its qkv biases are PyTorch's, not 0."""
    torch.manual_seed(0)
    model = DiTDH(tiny(head_depth=1, head_width=48, head_heads=2))
    assert model.blocks[0].attn.qkv.bias.abs().max() > 0


def mae_sincos(dim: int, side: int) -> np.ndarray:
    """MAE's 2-D table as LightningDiT initialises it: meshgrid(w, h), the first half from
    grid[0] (the column), each half [sin, cos] of pos / 10000^(2i / (dim / 2))."""
    grid = np.stack(
        np.meshgrid(np.arange(side, dtype=np.float32), np.arange(side, dtype=np.float32))
    )

    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1)


def test_plain_dit_position_table_is_lightningdits():
    model = DiTDH(tiny(width=64, heads=4, input_size=6))
    ref = torch.from_numpy(mae_sincos(64, 6)).float()
    torch.testing.assert_close(model.pos_embed[0], ref, rtol=0, atol=1e-6)


def legacy_state_dict(model: DiTDH) -> dict:
    """``model``'s state dict under the plain DiT's names before LightningDiT's."""
    rename = {"x_embedder.": "s_embedder.", "feat_rope.": "enc_feat_rope."}
    out = {}
    for k, v in model.state_dict().items():
        old = next((o for o in rename if k.startswith(o)), None)
        out[rename[old] + k[len(old) :] if old else k] = v.clone()
    return out


def write_old_export(model: DiTDH, path: Path) -> None:
    """A generator export as written before the rename: old names, no ``legacy_silu_condition``
    in its config."""
    cfg = to_dict(GenerationConfig(model=tiny()))
    del cfg["model"]["legacy_silu_condition"]
    meta = {"task": GenerationConfig.TASK, "config": cfg, "decoder": "", "card": {}}
    path.mkdir()
    (path / "config.json").write_text(json.dumps(meta))
    save_file(legacy_state_dict(model), str(path / "model.safetensors"))
    stats = {"mean": torch.zeros(8, 4, 4), "var": torch.ones(8, 4, 4)}
    save_file(stats, str(path / STATS_NAME))


def test_old_plain_dit_export_loads_and_keeps_its_function(tmp_path):
    """An export written before the rename (``s_embedder``, ``enc_feat_rope``; trained on
    SiLU(t + y)) loads through the generator loader and computes what it computed then."""
    trained = randomized(tiny(), seed=1)
    write_old_export(trained, tmp_path / "old")
    model, cfg, _, _ = _read_model(str(tmp_path / "old"), "cpu")
    assert cfg.model.legacy_silu_condition  # recorded in the config, so a re-export keeps it
    assert {k for k in model.state_dict() if "s_embedder" in k or "enc_" in k} == set()
    x, t, y = torch.randn(2, 8, 4, 4), torch.rand(2), torch.tensor([1, 5])
    with torch.no_grad():
        ref = lightningdit_reference(trained, x, t, y, silu_condition=True)
        torch.testing.assert_close(model.eval()(x, t, y), ref, rtol=1e-5, atol=1e-5)
    # The same weights strictly, under the old names; and under LightningDiT's, unconverted.
    strict = DiTDH(tiny())
    strict.load_state_dict(load_file(str(tmp_path / "old" / "model.safetensors")), strict=True)
    assert strict.cfg.legacy_silu_condition
    other = DiTDH(tiny())
    other.load_state_dict(trained.state_dict(), strict=True)
    assert not other.cfg.legacy_silu_condition
    # A DiT-DH's state dict (s_embedder and x_embedder) is not mistaken for an old plain DiT.
    dh = DiTDH(tiny(head_depth=1, head_width=48, head_heads=2)).state_dict()
    with pytest.raises(RuntimeError, match="s_embedder"):
        DiTDH(tiny()).load_state_dict(dh, strict=True)


def test_legacy_condition_is_plain_dit_only():
    with pytest.raises(ValueError, match="plain-DiT"):
        tiny(head_depth=1, head_width=48, head_heads=2, legacy_silu_condition=True)
