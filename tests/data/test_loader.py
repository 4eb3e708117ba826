"""Loaders: batch contents, determinism, exact resume, rank sharding, bad samples, sources."""

import io
import itertools
import json
import logging

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from openvision3.data import DataConfig, build_loader
from openvision3.data.synthetic.world import SyntheticConfig, SyntheticWorld, write_shards
from openvision3.errors import ConfigError
from openvision3.tokenizer import Tokenizer

SYN = SyntheticConfig(seed=0, train_size=40, val_size=11)


def take(loader, n):
    return list(itertools.islice(iter(loader), n))


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        assert x["key"] == y["key"]
        for k in x:
            if torch.is_tensor(x[k]):
                assert torch.equal(x[k], y[k]), k


def keys(batches):
    return [k for b in batches for k in b["key"]]


# --------------------------------------------------------------------------- synthetic


def test_synthetic_batch_contents():
    (b,) = take(build_loader(DataConfig(synthetic=SYN), "train", 32, 4), 1)
    assert b["images"].shape == (4, 3, 32, 32) and b["images"].dtype == torch.float32
    assert -1 <= b["images"].min() and b["images"].max() <= 1
    for k, length in [("text", 80), ("text_2", 80), ("caption", 128)]:
        assert b[k].shape == (4, length) and b[k].dtype == torch.long
    assert b["label"].shape == (4,) and b["label"].dtype == torch.long
    world = SyntheticWorld(0)
    tok = Tokenizer()
    for i, key in enumerate(b["key"]):
        split, index = key.split("-")
        s = world.sample(split, int(index), 32)
        assert b["label"][i] == s["label"]
        assert tok.decode(b["text"][i]).replace(" ", "") == s["alt_text"].replace(" ", "")
        assert tok.decode(b["caption"][i]).replace(" ", "") == s["caption"].lower().replace(" ", "")
        expected = torch.from_numpy(s["image"].copy()).permute(2, 0, 1).float() / 127.5 - 1
        assert torch.allclose(b["images"][i], expected, atol=1e-5)


def test_deterministic_and_seeded():
    cfg = DataConfig(synthetic=SYN)
    a = take(build_loader(cfg, "train", 32, 4, seed=1), 3)
    assert_same_batches(a, take(build_loader(cfg, "train", 32, 4, seed=1), 3))
    other = take(build_loader(cfg, "train", 32, 4, seed=2), 3)
    assert keys(a) != keys(other)


def test_train_is_infinite_reshuffled_and_rank_disjoint():
    cfg = DataConfig(synthetic=SYN)
    r0 = take(build_loader(cfg, "train", 16, 4, rank=0, world_size=2), 10)  # 2 epochs of 20
    r1 = take(build_loader(cfg, "train", 16, 4, rank=1, world_size=2), 5)
    e0, e1 = keys(r0[:5]), keys(r0[5:])
    assert len(set(e0)) == len(set(e1)) == 20 and e0 != e1  # reshuffled per epoch
    assert not set(e0) & set(keys(r1))  # ranks take disjoint shares of an epoch
    assert len(set(e0) | set(keys(r1))) == 40


@pytest.mark.parametrize("workers", [0, 2])
def test_synthetic_exact_resume(workers):
    cfg = DataConfig(synthetic=SYN, num_workers=workers, hflip=0.5, crop_scale=(0.5, 1.0))
    full = take(build_loader(cfg, "train", 16, 8), 7)  # crosses the epoch boundary (5 batches)
    first = build_loader(cfg, "train", 16, 8)
    assert_same_batches(take(first, 3), full[:3])
    state = json.loads(json.dumps(first.state_dict()))
    assert state == {"epoch": 0, "samples": 24, "skipped": 0}
    resumed = build_loader(cfg, "train", 16, 8)
    resumed.load_state_dict(state)
    assert_same_batches(take(resumed, 4), full[3:7])


def test_position_survives_resolution_and_batch_size_change():
    cfg = DataConfig(synthetic=SYN)
    full = take(build_loader(cfg, "train", 16, 4), 5)
    first = build_loader(cfg, "train", 16, 4)
    take(first, 3)
    bigger = build_loader(cfg, "train", 32, 8)
    bigger.load_state_dict(first.state_dict())
    (b,) = take(bigger, 1)
    assert b["images"].shape == (8, 3, 32, 32)
    assert b["key"] == keys(full[3:5])


def test_eval_two_ranks_cover_each_sample_once():
    cfg = DataConfig(synthetic=SYN)
    ranks = [
        list(build_loader(cfg, "val", 16, 4, rank=r, world_size=2, train=False)) for r in (0, 1)
    ]
    assert [len(b["key"]) for b in ranks[0]] == [4, 2] and [len(b["key"]) for b in ranks[1]] == [
        4,
        1,
    ]
    all_keys = keys(ranks[0]) + keys(ranks[1])
    assert sorted(all_keys) == [f"val-{i:08d}" for i in range(11)]
    assert keys(ranks[0]) == [f"val-{i:08d}" for i in range(0, 11, 2)]  # in order
    loader = build_loader(cfg, "val", 16, 4, rank=0, world_size=2, train=False)
    assert keys(loader) == keys(loader)  # each pass starts at the beginning


def test_workers_give_the_same_batches():
    cfg = DataConfig(synthetic=SYN)
    a = list(build_loader(cfg, "val", 16, 4, train=False))
    b = list(build_loader(DataConfig(synthetic=SYN, num_workers=2), "val", 16, 4, train=False))
    assert_same_batches(a, b)


def test_caller_rng_untouched():
    cfg = DataConfig(synthetic=SYN, hflip=0.5)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    take(build_loader(cfg, "train", 16, 4), 2)
    assert torch.equal(torch.get_rng_state(), state)


# --------------------------------------------------------------------------- webdataset


def _png(img):
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(img):
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


ODD = {  # key -> (member, bytes, expected RGB of the decoded image)
    "odd-cmyk": (
        "jpg",
        _jpeg(Image.new("RGB", (20, 20), (200, 50, 10)).convert("CMYK")),
        (200, 50, 10),
    ),
    "odd-rgba": ("png", _png(Image.new("RGBA", (24, 20), (0, 0, 0, 0))), (255, 255, 255)),
    "odd-16bit": (
        "png",
        _png(Image.fromarray(np.full((20, 30), 40000, np.uint16))),
        (156, 156, 156),
    ),
    "odd-gray": ("png", _png(Image.new("L", (20, 20), 77)), (77, 77, 77)),
}


@pytest.fixture
def shards(tmp_path):
    write_shards(SyntheticWorld(0), "train", tmp_path, 32, samples_per_shard=8, count=24)
    write_shards(SyntheticWorld(0), "val", tmp_path, 32, samples_per_shard=4, count=9)
    with wds.TarWriter(str(tmp_path / "val-planted.tar")) as sink:
        sink.write({"__key__": "bad-garbage", "png": b"\x89PNG garbage bytes", "txt": "red circle"})
        sink.write({"__key__": "bad-notext", "png": ODD["odd-gray"][1]})
        for key, (ext, data, _) in ODD.items():
            sink.write(
                {"__key__": key, ext: data, "txt": "odd image", "json": {"caption": "An odd one."}}
            )
    return tmp_path


def test_webdataset_odd_images_converted_bad_ones_skipped(shards, caplog):
    cfg = DataConfig(source="webdataset", path=str(shards))
    loader = build_loader(cfg, "val", 16, 4, train=False)
    with caplog.at_level(logging.WARNING):
        batches = list(loader)
    got = keys(batches)
    assert sorted(got) == sorted([f"val-{i:08d}" for i in range(9)] + list(ODD))
    assert loader.skipped == 2 and loader.state_dict()["skipped"] == 2
    assert "bad-garbage" in caplog.text and "bad-notext" in caplog.text
    images = torch.cat([b["images"] for b in batches])
    assert images.shape == (13, 3, 16, 16) and images.min() >= -1 and images.max() <= 1
    for key, (_, _, rgb) in ODD.items():
        px = images[got.index(key), :, 8, 8]
        assert torch.allclose(px, torch.tensor(rgb) / 127.5 - 1, atol=8 / 127.5), key
    # Labels come out where the batch has any (-1 marks samples without one).
    labels = {k: int(v) for b in batches if "label" in b for k, v in zip(b["key"], b["label"])}
    assert all(labels[f"val-{i:08d}"] >= 0 for i in range(9))
    assert all(labels.get(k, -1) == -1 for k in ODD)


@pytest.mark.parametrize("workers", [0, 2])
def test_webdataset_exact_resume(shards, workers):
    cfg = DataConfig(source="webdataset", path=str(shards), shuffle_buffer=5, num_workers=workers)
    full = take(build_loader(cfg, "train", 16, 4), 8)  # > one epoch per worker stream
    first = build_loader(cfg, "train", 16, 4)
    assert_same_batches(take(first, 3), full[:3])
    state = json.loads(json.dumps(first.state_dict()))
    resumed = build_loader(cfg, "train", 32, 4)  # another resolution: same samples
    resumed.load_state_dict(state)
    nxt = take(resumed, 2)
    assert keys(nxt) == keys(full[3:5])
    assert nxt[0]["images"].shape == (4, 3, 32, 32)
    same_res = build_loader(cfg, "train", 16, 4)
    same_res.load_state_dict(state)
    assert_same_batches(take(same_res, 2), full[3:5])


def test_webdataset_epochs_reshuffle_and_ranks_are_disjoint(shards):
    cfg = DataConfig(source="webdataset", path=str(shards), shuffle_buffer=5)
    r0 = take(build_loader(cfg, "train", 16, 4, rank=0, world_size=2), 6)
    r1 = take(build_loader(cfg, "train", 16, 4, rank=1, world_size=2), 2)
    e0 = keys(r0[:2])
    assert not set(e0) & set(keys(r1[:2]))
    assert len(set(keys(r0))) > 8  # the shard assignment changes between epochs


def test_webdataset_eval_two_ranks_cover_each_sample_once(shards):
    cfg = DataConfig(source="webdataset", path=str(shards), num_workers=2)
    per_rank = [
        keys(build_loader(cfg, "val", 16, 2, rank=r, world_size=2, train=False)) for r in (0, 1)
    ]
    everything = keys(
        build_loader(DataConfig(source="webdataset", path=str(shards)), "val", 16, 3, train=False)
    )
    assert len(everything) == 13
    assert sorted(per_rank[0] + per_rank[1]) == sorted(everything)
    assert not set(per_rank[0]) & set(per_rank[1])
    assert per_rank[0] == everything[0::2]  # rank r takes samples r, r + world, ... in order
    # Two workers build alternate batches; the round-robin keeps the stream order.
    assert keys(build_loader(cfg, "val", 16, 2, train=False)) == everything


def test_webdataset_too_small_for_a_batch_raises(shards):
    loader = build_loader(DataConfig(source="webdataset", path=str(shards)), "train", 16, 64)
    with pytest.raises(ValueError, match="fewer than one batch"):
        take(loader, 1)


# --------------------------------------------------------------------------- folder


def test_folder_source_with_classes_and_captions(tmp_path):
    for cls, color in [("cat", (200, 0, 0)), ("dog", (0, 0, 200))]:
        (tmp_path / "val" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (20, 30), color).save(tmp_path / "val" / cls / f"{i}.png")
    (tmp_path / "val" / "dog" / "broken.jpg").write_bytes(b"nope")
    cfg = DataConfig(source="folder", path=str(tmp_path))
    loader = build_loader(cfg, "val", 16, 4, train=False)
    batches = list(loader)
    assert loader.class_names == ["cat", "dog"] and loader.skipped == 1
    labels = torch.cat([b["label"] for b in batches]).tolist()
    assert labels == [0, 0, 0, 1, 1, 1]
    assert Tokenizer().decode(batches[0]["text"][0]) == "cat"
    assert "text_2" not in batches[0]

    # Train batches stay full: a bad sample is replaced by another (deterministic) one.
    train = build_loader(cfg, "val", 16, 3, train=True)
    batches = take(train, 6)
    assert all(len(b["key"]) == 3 == len(set(b["key"])) for b in batches)
    assert train.skipped >= 1 and "dog/broken.jpg" not in keys(batches)

    rows = [{"file": "cat/0.png", "alt_text": "a red thing", "caption": "A red picture."}]
    (tmp_path / "caps.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    cfg = DataConfig(
        source="folder", path=str(tmp_path), captions_file=str(tmp_path / "caps.jsonl")
    )
    (b,) = list(build_loader(cfg, "val", 16, 4, train=False))
    assert b["key"] == ["cat/0.png"] and "text_2" in b
    assert Tokenizer().decode(b["text_2"][0]) == "a red picture ."


def test_config_validation():
    for bad in [dict(source="s3"), dict(num_workers=-1), dict(resize="x")]:
        with pytest.raises(ValueError):
            DataConfig(**bad)
    # A file source builds without a path (presets leave it to the command line); reading it
    # without one is an error that names the flag.
    folder = DataConfig(source="folder")
    with pytest.raises(ConfigError, match="--data.path is required for source 'folder'"):
        build_loader(folder, "val", 16, 4, train=False)
    with pytest.raises(ValueError, match="fewer than one batch"):
        build_loader(DataConfig(synthetic=SYN), "train", 16, 64)
