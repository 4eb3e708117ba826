"""Latent cache: the writer stores the VAE posterior means (and of the flipped image) with the
exact pixel targets, skips corrupt inputs with a count, and training from the cache equals
training with on-the-fly encoding of the same images, flips included."""

import io
import json

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image
from safetensors.torch import load, load_file

from openvision3.cli import main
from openvision3.configs import get_preset
from openvision3.data.latents import (
    LATENT_EXT,
    CacheLatentsConfig,
    build_latent_loader,
    check_cache_vae,
    read_cache_meta,
    write_latent_cache,
)
from openvision3.data.loader import DataConfig, SampleProcessor, build_loader
from openvision3.data.synthetic.world import SyntheticWorld, encode_png, write_shards
from openvision3.data.transforms import pil_to_tensor
from openvision3.models.vae import FrozenVAE
from openvision3.ov3.config import OV3StageConfig, peak_lr
from openvision3.train.checkpoint import find_latest
from openvision3.train.trainer import Trainer

RES = 32


@pytest.fixture
def images(tmp_path):
    """16 synthetic train images in 2 webdataset shards of 8."""
    root = tmp_path / "images"
    write_shards(SyntheticWorld(0), "train", root, RES, samples_per_shard=8, count=16)
    return root


def smoke(run_dir, images, **data):
    cfg = get_preset("demo_smoke")
    cfg.run_dir = str(run_dir)
    cfg.data = DataConfig(
        source="webdataset", path=str(images), text_context=32, caption_context=32, **data
    )
    cfg.train.seed = 3  # orders the data (and seeds the weights)
    cfg.train.stages = [OV3StageConfig(resolution=RES, steps=2, batch_size=4, lr=peak_lr(0.05, 4))]
    cfg.train.ckpt_every, cfg.train.log_every, cfg.train.stop_at = 2, 1, 2
    return cfg


def cache(cfg, out, **kw) -> dict:
    """Write the train split's cache with the trainer's own (seeded, random) tiny VAE."""
    return write_latent_cache(
        CacheLatentsConfig.from_experiment(cfg, out=str(out), shard_size=8, batch_size=5, **kw)
    )


def read_samples(out) -> dict:
    samples = {}
    for shard in sorted(out.glob("train-*.tar")):
        for s in wds.WebDataset(str(shard), shardshuffle=False):
            meta = json.loads(s["json"])
            samples[meta["key"]] = {**s, **load(s[LATENT_EXT])}
    return samples


def test_writer_stores_means_targets_and_skips_corrupt(tmp_path, images):
    with wds.TarWriter(str(images / "train-000099.tar")) as sink:
        sink.write({"__key__": "bad-garbage", "png": b"\x89PNG garbage", "txt": "a red circle"})
        sink.write({"__key__": "bad-notext", "png": encode_png(np.zeros((RES, RES, 3), np.uint8))})
    cfg = smoke(tmp_path / "run", images)
    meta = cache(cfg, tmp_path / "cache")
    assert meta["written"] == 16 and meta["skipped"] == 2
    assert set(meta["skipped_keys"]) == {"bad-garbage", "bad-notext"}
    assert meta["shards"] == ["train-000-000000.tar", "train-000-000001.tar"]
    assert read_cache_meta(str(tmp_path / "cache"), "train")["written"] == 16

    torch.manual_seed(cfg.train.seed)
    vae = FrozenVAE(cfg.model.vae)  # what the trainer builds
    check_cache_vae(meta, vae)
    processor = SampleProcessor(cfg.data, RES, train=False)
    samples = read_samples(tmp_path / "cache")
    raw = list(wds.WebDataset(str(images / "train-000001.tar"), shardshuffle=False))
    assert len(samples) == 16
    for r in raw[:3]:
        s = samples[r["__key__"]]
        x = processor({"image": r["png"], "alt_text": r["txt"].decode(), "key": r["__key__"]})
        target = pil_to_tensor(Image.open(io.BytesIO(s["png"])))
        assert torch.equal(target, x["image"])  # the pixel target is bit-exact
        torch.testing.assert_close(s["mean"], vae.encode(x["image"][None])[0], atol=1e-5, rtol=0)
        flipped = vae.encode(x["image"].flip(-1)[None])[0]
        torch.testing.assert_close(s["mean_flip"], flipped, atol=1e-5, rtol=0)
        assert s["txt"].decode() == r["txt"].decode()

    torch.manual_seed(123)
    with pytest.raises(ValueError, match="another VAE"):
        check_cache_vae(meta, FrozenVAE(cfg.model.vae))


def test_latent_loader_matches_image_loader_with_flips(tmp_path, images):
    cfg = smoke(tmp_path / "run", images, hflip=0.5)
    cache(cfg, tmp_path / "cache")
    torch.manual_seed(cfg.train.seed)
    vae = FrozenVAE(cfg.model.vae)
    on_the_fly = build_loader(cfg.data, "train", RES, 4, seed=cfg.train.seed)
    latent_cfg = DataConfig(**{**vars(cfg.data), "latents": str(tmp_path / "cache")})
    cached = build_latent_loader(latent_cfg, "train", RES, 4, 0, 1, cfg.train.seed)
    flipped, world = 0, SyntheticWorld(0)
    for a, b, _ in zip(on_the_fly, cached, range(6)):  # 1.5 epochs: flips re-drawn per epoch
        assert a["key"] == b["key"]
        assert torch.equal(a["images"], b["images"])
        for name in ("text", "text_2", "caption"):
            assert torch.equal(a[name], b[name]), name
        torch.testing.assert_close(b["latents"], vae.encode(a["images"]), atol=1e-5, rtol=0)
        plain = torch.stack(
            [
                pil_to_tensor(Image.fromarray(world.sample("train", int(k[-8:]), RES)["image"]))
                for k in a["key"]
            ]
        )
        flipped += int((a["images"] != plain).flatten(1).any(1).sum())
    assert 0 < flipped < 24  # both flipped and plain samples took part
    assert cached.state_dict() == on_the_fly.state_dict()


def test_training_from_latents_equals_on_the_fly_encoding(tmp_path, images):
    base = smoke(tmp_path / "images_run", images, hflip=0.5)
    cache(base, tmp_path / "cache")
    Trainer(base).fit()
    latent = smoke(tmp_path / "latents_run", images, hflip=0.5, latents=str(tmp_path / "cache"))
    trainer = Trainer(latent)
    calls = []
    trainer.model.vae.vae.encoder.register_forward_hook(lambda *a: calls.append(1))
    trainer.fit()
    assert not calls  # the VAE encoder never ran
    a = load_file(str(find_latest(tmp_path / "images_run") / "model.safetensors"))
    b = load_file(str(find_latest(tmp_path / "latents_run") / "model.safetensors"))
    for name in a:  # latents differ from on-the-fly ones by float noise only (1e-6)
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-4, msg=name)


def test_latent_config_is_checked(tmp_path, images):
    with pytest.raises(ValueError, match="crops cannot be cached"):
        DataConfig(latents="x", crop_scale=(0.5, 1.0))
    cfg = smoke(tmp_path / "run", images)
    cache(cfg, tmp_path / "cache", flip=False)
    data = DataConfig(**{**vars(cfg.data), "latents": str(tmp_path / "cache"), "hflip": 0.5})
    with pytest.raises(ValueError, match="written with flips"):
        build_latent_loader(data, "train", RES, 4, 0, 1, cfg.train.seed)
    with pytest.raises(ValueError, match="64 px"):
        build_latent_loader(data, "train", 64, 4, 0, 1, 0)
    with pytest.raises(FileNotFoundError, match="cache-latents"):
        build_latent_loader(data, "val", RES, 4, 0, 1, 0)
    with pytest.raises(ValueError, match="build_latent_loader"):  # images only
        build_loader(data, "train", RES, 4)


def test_cli_cache_latents_then_train(tmp_path):
    out = tmp_path / "cache-r{resolution}"
    args = ["--out", str(out), "--resolution", "32", "--shard-size", "100", "--batch-size", "64"]
    assert main(["cache-latents", "demo_smoke", *args]) == 0
    meta = json.loads((tmp_path / "cache-r32" / "train-000.json").read_text())
    assert meta["written"] == 256 and meta["skipped"] == 0 and len(meta["shards"]) == 3
    assert meta["latent_shape"] == [16, 4, 4] and meta["flip"]
    run = tmp_path / "run"
    train = ["train", "demo_smoke", "--run-dir", str(run), "--data.latents", str(out)]
    assert main([*train, "--train.stop-at", "2"]) == 0
    assert (find_latest(run) / "model.safetensors").is_file()
    with pytest.raises(SystemExit):
        main(["cache-latents", "demo_smoke", "--no-such-flag"])


def test_cache_rerun_continues_exactly_and_refuses_other_options(tmp_path, images, monkeypatch):
    from openvision3.data import latents
    from openvision3.outputs import NothingWrittenError, OutputConflictError

    cfg = smoke(tmp_path / "run", images)
    full = read_samples_of(cache(cfg, tmp_path / "full"), tmp_path / "full")
    out = tmp_path / "cache"
    write = latents._encode_and_write
    calls = {"n": 0}

    def interrupted(*args):  # batches of 5: the first shard of 8 is complete at the 2nd
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        write(*args)

    monkeypatch.setattr(latents, "_encode_and_write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cache(cfg, out)
    monkeypatch.setattr(latents, "_encode_and_write", write)
    meta = cache(cfg, out)
    assert meta["written"] == 16 and meta["written_this_run"] == 8
    assert read_samples_of(meta, out).keys() == full.keys()  # each sample once
    again = cache(cfg, out)  # complete: nothing more
    assert again["written_this_run"] == 0 and again["shards"] == meta["shards"]
    (out / meta["shards"][-1]).unlink()  # a recorded shard gone: written again, once
    assert cache(cfg, out)["written_this_run"] == 8
    again = cache(cfg, out)
    assert again["written"] == 16 and again["written_this_run"] == 0
    with pytest.raises(OutputConflictError, match=r"dtype 'float32' -> 'bfloat16'.*--overwrite"):
        cache(cfg, out, dtype="bfloat16")
    assert cache(cfg, out, dtype="bfloat16", overwrite=True)["written_this_run"] == 16
    (out / "train-001-000000.tar").write_bytes(b"the user's own file")
    with pytest.raises(OutputConflictError, match="not written by"):
        cache(cfg, out, part=1, parts=2)
    bad = tmp_path / "bad"
    bad.mkdir()
    with wds.TarWriter(str(bad / "train-000000.tar")) as sink:
        sink.write({"__key__": "garbage", "png": b"\x89PNG garbage", "txt": "a red circle"})
    with pytest.raises(NothingWrittenError, match="garbage"):
        cache(smoke(tmp_path / "run", bad), tmp_path / "none")


def read_samples_of(meta, out) -> dict:
    keys = [json.loads(s["json"])["key"] for shard in meta["shards"]
            for s in wds.WebDataset(str(out / shard), shardshuffle=False)]  # fmt: skip
    assert len(keys) == len(set(keys))
    return dict.fromkeys(keys)
