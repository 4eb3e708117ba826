"""One front door, one image convention: ``openvision3.load`` opens each kind of export by the
kind its folder records (tokenizer -> ``Pipeline``, generator -> ``Generator``, LLaVA ->
``VLM``) and refuses any other folder in one line; every facade returns images in [-1, 1] and
``to_pil`` writes the same PNG bytes the former [0, 1] path wrote; the VLM takes images as
``inputs.py`` does; a generator export is written whole or not at all."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import openvision3
from openvision3.artefacts import CARD_MARK
from openvision3.errors import USER_ERRORS, ConfigError
from tests.test_artefacts import PHRASES, _generator, _tokenizer, _vlm, _wrong_kinds

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("facades")
    tok = _tokenizer(root / "tok")
    out = {
        "tokenizer": tok,
        "generator": _generator(root / "gen", tok, root / "tokens"),
        "vlm": _vlm(root / "vlm", tok),
    }
    return out | _wrong_kinds(root)


@pytest.fixture(scope="module")
def loaded(folders) -> dict:
    return {
        k: openvision3.load(str(folders[k]), device="cpu")
        for k in ("tokenizer", "generator", "vlm")
    }


# ---------------------------------------------------------------------- dispatch
def test_load_returns_the_facade_of_each_recorded_kind(loaded):
    assert type(loaded["tokenizer"]) is openvision3.Pipeline
    assert type(loaded["generator"]) is openvision3.Generator
    assert type(loaded["vlm"]) is openvision3.VLM
    # the typed entry points stay, from the package's top level too
    assert openvision3.load_generator.__module__ == "openvision3.generation.pipeline"
    assert openvision3.load_vlm.__module__ == "openvision3.understanding.inference"


@pytest.mark.parametrize("name", ["checkpoint", "run", "empty", "images", "llama"])
def test_load_refuses_a_folder_of_no_model_kind_in_one_line(folders, name):
    with pytest.raises(USER_ERRORS) as err:
        openvision3.load(str(folders[name]), device="cpu")
    message = str(err.value)
    assert "\n" not in message and PHRASES[name] in message, message


def test_load_refuses_an_option_the_kind_does_not_take(folders):
    with pytest.raises(ConfigError, match=r"generator export.*decoder, guide.*not resolution"):
        openvision3.load(str(folders["generator"]), device="cpu", resolution=64)
    with pytest.raises(ConfigError, match=r"LLaVA.*not guide"):
        openvision3.load(str(folders["vlm"]), device="cpu", guide="x")


def test_load_passes_each_kinds_options(folders):
    pipe = openvision3.load(str(folders["tokenizer"]), device="cpu", resolution=64)
    assert pipe.resolution == 64
    vlm = openvision3.load(str(folders["vlm"]), device="cpu", dtype="bfloat16")
    assert vlm.dtype == torch.bfloat16


# ---------------------------------------------------------------------- one range
def _old_png(images01: torch.Tensor) -> list[bytes]:
    """The former writers: images in [0, 1] -> ``(x.clamp(0, 1) * 255).round()`` -> PNG."""
    arr = (images01.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [_png(Image.fromarray(a)) for a in arr]


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_generator_returns_minus1_1_through_the_tokenizers_decode(loaded):
    gen = loaded["generator"]
    with torch.no_grad():
        tokens = gen.tokens([0, 1, 2], steps=3, seed=4)  # (3, N, D)
    images = gen.decode(tokens)
    grid = (gen.cfg.model.input_size,) * 2
    with torch.no_grad():
        raw = gen.decoder.decode(tokens, grid).float()  # OpenVision3.decode: decode_latents + VAE
    torch.testing.assert_close(images, raw.clamp(-1, 1), rtol=0, atol=0)
    assert images.min() < 0 and -1 <= images.min() and images.max() <= 1
    sampled = gen.sample([0, 1, 2], steps=3, seed=4)
    torch.testing.assert_close(sampled, images, rtol=0, atol=0)
    # the same PNG bytes as the former [0, 1] output written by the former rounding
    old = ((raw + 1) / 2).clamp(0, 1)
    assert [_png(im) for im in openvision3.to_pil(sampled)] == _old_png(old)


def test_pipeline_returns_minus1_1(loaded):
    pipe = loaded["tokenizer"]
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    for images in (pipe.reconstruct(x), pipe.decode(pipe.encode(x))):
        assert images.shape == (2, 3, 32, 32) and -1 <= images.min() and images.max() <= 1
        assert images.min() < 0


def test_to_pil_writes_the_bytes_of_the_former_0_1_path():
    # values across the range, beyond it, and on the rounding boundaries (k + 0.5) / 255
    boundaries = (torch.arange(768) % 256 + 0.5) / 127.5 - 1
    v = torch.cat([torch.linspace(-1.2, 1.2, 3 * 32 * 24 - 768), boundaries])
    v = v[torch.randperm(len(v), generator=torch.Generator().manual_seed(0))]
    v = v.reshape(1, 3, 32, 24)
    assert [_png(im) for im in openvision3.to_pil(v.clamp(-1, 1))] == _old_png((v + 1) / 2)


# ---------------------------------------------------------------------- VLM inputs
def test_vlm_takes_every_input_kind_of_inputs_py(loaded, tmp_path):
    vlm = loaded["vlm"]
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)  # (H, W, 3), not square
    pil = Image.fromarray(arr)
    path = tmp_path / "a.png"
    pil.save(path)
    chw = torch.from_numpy(arr).permute(2, 0, 1)
    inputs = [pil, str(path), path, path.read_bytes(), arr, chw, chw.float() / 127.5 - 1]
    ref = vlm.pixel_values([pil])
    for x in inputs:
        torch.testing.assert_close(vlm.pixel_values([x]), ref, rtol=0, atol=0)
    # a batch as a list of paths, and as one (B, 3, H, W) uint8 tensor
    q = ["what colour is the large object?"] * 2
    answers = vlm.generate([path, path], q, max_new_tokens=2)
    assert vlm.generate(torch.stack([chw, chw]), q, max_new_tokens=2) == answers
    with pytest.raises(ValueError, match="2 images but 1 questions"):
        vlm.generate([path, path], q[:1])


# ---------------------------------------------------------------------- atomic exports
def _export(folders, out: Path):
    return _generator(out, folders["tokenizer"], out.parent / "tokens")


def test_an_interrupted_generator_export_leaves_no_folder(folders, tmp_path, monkeypatch):
    import safetensors.torch

    real = safetensors.torch.save_file
    calls = []

    def dies_on_the_second_file(tensors, filename, *a, **kw):
        calls.append(filename)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real(tensors, filename, *a, **kw)

    monkeypatch.setattr(safetensors.torch, "save_file", dies_on_the_second_file)
    out = tmp_path / "gen"
    with pytest.raises(KeyboardInterrupt):
        _export(folders, out)
    assert not out.exists()
    assert not any(p.name.startswith(".gen.tmp") for p in tmp_path.iterdir())


def test_an_interrupted_re_export_keeps_the_old_files_and_the_users_readme(
    folders, tmp_path, monkeypatch
):
    import safetensors.torch

    out = tmp_path / "gen"
    _export(folders, out)
    assert CARD_MARK in (out / "README.md").read_text()
    (out / "README.md").write_text("my notes")  # the user's own card
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def dies(*a, **kw):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(safetensors.torch, "save_file", dies)
    with pytest.raises(KeyboardInterrupt):
        _export(folders, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    monkeypatch.undo()
    _export(folders, out)  # a complete re-export replaces ours, never the user's README
    assert (out / "README.md").read_text() == "my notes"
    assert json.loads((out / "config.json").read_text())["task"] == "generation"
    assert sorted(p.name for p in out.iterdir()) == sorted(before)
    assert (out / "model.safetensors").stat().st_mode & 0o044  # readable as a plain file is


# ---------------------------------------------------------------------- cache names, run config
def test_the_cache_names_its_files(tmp_path):
    from openvision3.data.latents import FeatureCache, read_cache_meta
    from tests.generation.conftest import write_cache

    write_cache(tmp_path, count=6)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert FeatureCache.meta_name("train") in names
    assert all(n.startswith(FeatureCache.split_files("train")) for n in names)
    assert read_cache_meta(str(tmp_path), "train")["written"] == 6
    assert FeatureCache.stats_path(tmp_path) == str(tmp_path / "latent_stats.safetensors")


def test_a_demo_run_is_read_by_one_helper(tmp_path):
    """Both downstream demos read a finished run's synthetic world through ``run_world``."""
    from openvision3.configs import get_preset
    from openvision3.data.synthetic.tokens import run_world

    cfg = get_preset("demo_smoke")
    (tmp_path / "config.json").write_text(cfg.to_json())
    assert run_world(str(tmp_path)) == cfg.data.synthetic
    with pytest.raises(ConfigError, match="not a run directory"):
        run_world(str(tmp_path / "nothing"))
    (tmp_path / "config.json").write_text('{"data": {}}')
    with pytest.raises(ValueError, match="not the config of an `ov3 demo` run"):
        run_world(str(tmp_path))


def test_an_interrupted_vlm_save_leaves_no_folder(loaded, tmp_path, monkeypatch):
    from openvision3.understanding.assemble import save_vlm

    vlm = loaded["vlm"]

    def dies(*a, **kw):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(vlm.processor, "save_pretrained", dies)  # after the weights
    with pytest.raises(KeyboardInterrupt):
        save_vlm(vlm.model, vlm.processor, str(tmp_path / "vlm"))
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    save_vlm(vlm.model, vlm.processor, str(tmp_path / "vlm"))
    assert type(openvision3.load(str(tmp_path / "vlm"), device="cpu")) is openvision3.VLM


def test_the_one_grid_writer_gives_torchvisions_grid_bytes(tmp_path):
    """``ov3 eval``'s reconstructions.png was torchvision's make_grid + save_image."""
    from torchvision.utils import make_grid, save_image

    from openvision3.data.transforms import write_grid

    gen = torch.Generator().manual_seed(0)
    tiles = torch.randint(0, 256, (8, 3, 10, 12), dtype=torch.uint8, generator=gen)
    save_image(make_grid(tiles.float() / 255.0, nrow=2, padding=2), tmp_path / "tv.png")
    arr = tiles.permute(0, 2, 3, 1).numpy()
    write_grid(arr, tmp_path / "ours.png", cols=2, pad=2, fill=0, border=True)
    assert (tmp_path / "ours.png").read_bytes() == (tmp_path / "tv.png").read_bytes()


def test_vlm_chat_names_an_undecodable_image_in_one_line(folders, tmp_path, capsys):
    from openvision3.cli import main

    bad = tmp_path / "cat.jpg"
    bad.write_bytes(b"not an image")
    assert main(["vlm", "chat", str(folders["vlm"]), str(bad), "what is it?"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "cannot decode image" in err and "cat.jpg" in err, err


def test_an_interrupted_tokenizer_export_keeps_the_old_folder(tmp_path, monkeypatch):
    """``save_pretrained`` writes the whole folder beside the target and moves it in: a kill
    after the new weights and config are written leaves a first export as it was, the user's
    README included."""
    import openvision3.pretrained as pretrained
    from openvision3.models.openvision3 import OpenVision3
    from openvision3.models.presets import model_config

    out = tmp_path / "ov3"
    model = OpenVision3(model_config("ov3-mu")).eval()
    pretrained.save_pretrained(model, str(out), resolution=32)
    (out / "README.md").write_text("my notes")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    other = OpenVision3(model_config("ov3-mu")).eval()  # other random weights
    real = pretrained.write_json

    def killed_at_the_card(path, value):
        if str(path).endswith("model_card.json"):
            raise KeyboardInterrupt("killed")
        return real(path, value)

    monkeypatch.setattr(pretrained, "write_json", killed_at_the_card)
    with pytest.raises(KeyboardInterrupt):
        pretrained.save_pretrained(other, str(out), resolution=64)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert [p.name for p in tmp_path.iterdir()] == ["ov3"]  # no temporary folder left
    monkeypatch.undo()
    pretrained.save_pretrained(other, str(out), resolution=64)  # finished: new files, same README
    assert (out / "README.md").read_text() == "my notes"
    assert json.loads((out / "config.json").read_text())["resolution"] == 64
