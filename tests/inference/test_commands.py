"""End-to-end ``ov3`` inference commands on a tiny model: awkward files, no overwrite, resume."""

import json
import os
from urllib.parse import unquote

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from openvision3.inference import runs
from openvision3.inference.api import Pipeline, load
from openvision3.inference.command import main
from openvision3.inference.writers import read_token_shards
from tests.inference._inference_helpers import BAD, GOOD, RES, random_image

FAST = ["--resolution", str(RES), "--no-progress", "--num-workers", "0"]


def ov3(name, *args):
    return main(name, [str(a) for a in args] + FAST)


def summary(out):
    return json.loads((out / "summary.json").read_text())


def test_folder_with_broken_files(model_dir, awkward_folder, tmp_path):
    out = tmp_path / "tokens"
    assert ov3("encode", model_dir, awkward_folder, "--output", out, "--batch-size", 3) == 0
    s = summary(out)
    assert sorted(x["key"] for x in s["skipped"]) == BAD
    assert s["done"] == len(GOOD)
    tokens = read_token_shards(out)
    assert sorted(tokens) == GOOD
    pipe = load(model_dir, device="cpu", resolution=RES)
    ref = pipe.encode(str(awkward_folder / "sub" / "good2.jpg"))[0]
    assert np.allclose(tokens["sub/good2.jpg"], ref.numpy(), atol=1e-5)


def test_no_overwrite_without_the_flag(model_dir, awkward_folder, tmp_path):
    out = tmp_path / "captions"
    out.mkdir()
    (out / "captions.jsonl").write_text('{"key": "mine", "caption": "keep me"}\n')
    assert ov3("caption", model_dir, awkward_folder, "--output", out, "--max-len", 4) == 2
    assert (out / "captions.jsonl").read_text() == '{"key": "mine", "caption": "keep me"}\n'
    assert (
        ov3("caption", model_dir, awkward_folder, "--output", out, "--max-len", 4, "--overwrite")
        == 0
    )
    rows = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert sorted(r["key"] for r in rows) == GOOD
    # Reconstructions: a foreign file with an output's name is never replaced silently.
    rec = tmp_path / "rec"
    rec.mkdir()
    (rec / "good.png.png").write_bytes(b"precious")
    assert ov3("reconstruct", model_dir, awkward_folder, "--output", rec) == 2
    assert (rec / "good.png.png").read_bytes() == b"precious"
    assert (
        ov3(
            "reconstruct",
            model_dir,
            awkward_folder,
            "--output",
            rec,
            "--overwrite",
            "--side-by-side",
        )
        == 0
    )
    from PIL import Image

    assert Image.open(rec / "good.png.png").size == (2 * RES, RES)
    assert Image.open(rec / "sub" / "good2.jpg.png").size == (2 * RES, RES)
    # Running a finished command again writes nothing: only the two broken files are tried
    # again, and fail again (exit 1: inputs were left and none was written).
    before = {p.name: p.stat().st_mtime_ns for p in rec.rglob("*.png")}
    assert ov3("reconstruct", model_dir, awkward_folder, "--output", rec, "--side-by-side") == 1
    assert summary(rec)["written_this_run"] == 0
    assert sorted(x["key"] for x in summary(rec)["skipped"]) == BAD
    assert {p.name: p.stat().st_mtime_ns for p in rec.rglob("*.png")} == before


def test_resume_after_interruption(model_dir, awkward_folder, tmp_path, monkeypatch):
    full = tmp_path / "full"
    assert ov3("encode", model_dir, awkward_folder, "--output", full, "--format", "npz") == 0
    out = tmp_path / "resumed"
    args = ("--output", out, "--format", "npz", "--batch-size", 1, "--shard-size", 1)
    assert ov3("encode", model_dir, awkward_folder, *args, "--limit", 2) == 0
    assert summary(out)["done"] + len(summary(out)["skipped"]) == 2
    calls = {"n": 0}
    encode = Pipeline.encode

    def flaky(self, images):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return encode(self, images)

    monkeypatch.setattr(Pipeline, "encode", flaky)
    assert ov3("encode", model_dir, awkward_folder, *args) == 130
    monkeypatch.setattr(Pipeline, "encode", encode)
    progress = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    done_before = [k for r in progress for k in r.get("done", [])]
    assert 0 < len(done_before) < len(GOOD)
    assert ov3("encode", model_dir, awkward_folder, *args) == 0
    s = summary(out)
    assert s["written_this_run"] == len(GOOD) - len(done_before)
    assert sorted(x["key"] for x in s["skipped"]) == BAD
    keys = [str(k) for p in sorted(out.glob("tokens-*.npz")) for k in np.load(p)["keys"]]
    assert sorted(keys) == GOOD  # every image exactly once
    a, b = read_token_shards(full), read_token_shards(out)
    assert all(np.allclose(a[k], b[k], atol=1e-5) for k in GOOD)


def test_caption_resume_drops_unrecorded_rows(model_dir, awkward_folder, tmp_path):
    out = tmp_path / "cap"
    assert (
        ov3("caption", model_dir, awkward_folder, "--output", out, "--limit", 3, "--max-len", 4)
        == 0
    )
    with open(out / "captions.jsonl", "a") as f:  # a crash after the append, before the record
        f.write('{"key": "sub/good2.jpg", "caption": "half writ')
    assert ov3("caption", model_dir, awkward_folder, "--output", out, "--max-len", 4) == 0
    rows = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert sorted(r["key"] for r in rows) == GOOD


def test_inputs_with_one_stem_get_their_own_outputs(model_dir, tmp_path):
    """photo.png, photo.jpg and sub/photo.png: three outputs named ``<relative path>.<ext>``;
    a rerun continues an interrupted run without losing or replacing any."""
    from PIL import Image

    root = tmp_path / "same"
    (root / "sub").mkdir(parents=True)
    random_image(0).save(root / "photo.png")
    random_image(1).save(root / "photo.jpg", quality=95)
    random_image(2).save(root / "sub" / "photo.png")
    keys = ["photo.jpg", "photo.png", "sub/photo.png"]
    rec = tmp_path / "rec"
    args = ("--output", rec, "--batch-size", 1)
    assert ov3("reconstruct", model_dir, root, *args, "--limit", 2) == 0
    first = {k: (rec / f"{k}.png").stat().st_mtime_ns for k in keys[:2]}
    assert ov3("reconstruct", model_dir, root, *args) == 0
    s = summary(rec)
    assert (s["done"], s["written_this_run"], s["skipped"]) == (3, 1, [])
    written = sorted(p.relative_to(rec).as_posix() for p in rec.rglob("*.png"))
    assert written == [f"{k}.png" for k in keys]
    assert {k: (rec / f"{k}.png").stat().st_mtime_ns for k in keys[:2]} == first
    pipe = load(model_dir, device="cpu", resolution=RES)
    for k in keys:  # each output is the reconstruction of its own input
        ref = np.asarray(pipe.to_pil(pipe.reconstruct(str(root / k)))[0], dtype=int)
        assert np.abs(np.asarray(Image.open(rec / f"{k}.png"), dtype=int) - ref).max() <= 1, k
    cap = tmp_path / "cap"
    assert ov3("caption", model_dir, root, "--output", cap, "--max-len", 4) == 0
    rows = [json.loads(line) for line in (cap / "captions.jsonl").read_text().splitlines()]
    assert sorted(r["key"] for r in rows) == keys
    # webdataset token shards: one sample per input (a dot would end the sample key there)
    import webdataset as wds

    tok = tmp_path / "tok"
    assert ov3("encode", model_dir, root, "--output", tok, "--format", "webdataset") == 0
    shard = str(next(tok.glob("tokens-*.tar")))
    samples = list(wds.WebDataset(shard, shardshuffle=False).decode())
    assert [s["__key__"] for s in samples] == ["photo%2Ejpg", "photo%2Epng", "sub/photo%2Epng"]
    assert [unquote(s["__key__"]) for s in samples] == [s["json"]["key"] for s in samples] == keys
    assert all(s["tokens.npy"].shape == (4, 32) for s in samples)


def test_every_file_not_written_is_listed_with_its_reason(model_dir, tmp_path):
    root = tmp_path / "odd"
    (root / "album.png").mkdir(parents=True)  # a folder named like an image is searched, not listed
    random_image(0).save(root / "good.png")
    random_image(1).save(root / "album.png" / "inner.jpg")
    (root / "linked.png").symlink_to(root / "good.png")  # a working link is an input as any other
    (root / "dangling.png").symlink_to(root / "gone.png")
    (root / "loop.png").symlink_to(root / "loop.png")
    os.mkfifo(root / "pipe.png")  # must never be opened: reading it would block
    (root / "empty.jpg").write_bytes(b"")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    reasons = {
        "corrupt.png": "cannot decode",
        "dangling.png": "dangling symlink",
        "empty.jpg": "cannot decode",
        "loop.png": "dangling symlink",
        "pipe.png": "not a regular file",
    }
    if os.geteuid() != 0:  # root reads any file
        random_image(2).save(root / "locked.png")
        os.chmod(root / "locked.png", 0)
        reasons["locked.png"] = "PermissionError"
    out = tmp_path / "tokens"
    # The rerun tries the bad files again, writes nothing (exit 1) and lists the same files.
    for code in (0, 1):
        assert ov3("encode", model_dir, root, "--output", out, "--batch-size", 2) == code
        skipped = {x["key"]: x["error"] for x in summary(out)["skipped"]}
        assert sorted(skipped) == sorted(reasons)
        assert all(reasons[k] in e for k, e in skipped.items()), skipped
        assert sorted(read_token_shards(out)) == ["album.png/inner.jpg", "good.png", "linked.png"]
    assert summary(out)["written_this_run"] == 0


def test_webdataset_repeated_keys_and_a_broken_shard(model_dir, tmp_path):
    """Samples repeating an earlier ``__key__`` get ``#2``, ``#3``, ...; a shard that breaks
    off is listed with its reason after the samples read before the break."""
    import tarfile

    import webdataset as wds

    for i, keys in enumerate((["s0", "s1"], ["s0", "s1"], ["t0", "t1"])):
        with wds.TarWriter(str(tmp_path / f"d-{i}.tar")) as sink:
            for j, key in enumerate(keys):
                sink.write({"__key__": key, "png": random_image(2 * i + j, (64, 64))})
    broken = tmp_path / "d-2.tar"
    with tarfile.open(broken) as tar:
        cut = next(m.offset_data for m in tar.getmembers() if m.name.startswith("t1")) + 100
    broken.write_bytes(broken.read_bytes()[:cut])
    out = tmp_path / "cap"
    shards = tmp_path / "d-{0..2}.tar"
    for code in (0, 1):  # the rerun tries the shard again, writes nothing, lists it again
        assert ov3("caption", model_dir, shards, "--output", out, "--max-len", 4) == code
        rows = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
        assert [r["key"] for r in rows] == ["s0", "s1", "s0#2", "s1#2", "t0"]
        [skipped] = summary(out)["skipped"]
        assert skipped["key"] == str(broken) and "unreadable webdataset shard" in skipped["error"]
    assert summary(out)["written_this_run"] == 0


def test_classify_topk(model_dir, awkward_folder, tmp_path):
    out = tmp_path / "cls"
    labels = ["cat", "dog", "car"]
    assert (
        ov3(
            "classify", model_dir, awkward_folder, "--output", out, "--labels", *labels, "--topk", 2
        )
        == 0
    )
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted(r["key"] for r in rows) == GOOD
    pipe = load(model_dir, device="cpu", resolution=RES)
    probs = pipe.zero_shot(str(awkward_folder / "good.png"), labels)[0]
    row = next(r for r in rows if r["key"] == "good.png")
    assert [t["label"] for t in row["top"]] == [
        labels[i] for i in probs.argsort(descending=True)[:2]
    ]
    assert row["top"][0]["prob"] == pytest.approx(float(probs.max()), abs=1e-4)
    assert main("classify", [model_dir, str(awkward_folder), "--output", str(out)]) == 2


def test_webdataset_input_and_output(model_dir, tmp_path):
    import webdataset as wds

    shard = tmp_path / "data-000.tar"
    with wds.TarWriter(str(shard)) as sink:
        for i in range(3):
            sink.write({"__key__": f"s{i}", "png": random_image(i), "txt": "x"})
        sink.write({"__key__": "bad", "jpg": b"garbage", "txt": "x"})
    out = tmp_path / "wds"
    assert (
        ov3("encode", model_dir, shard, "--output", out, "--format", "webdataset", "--pooled") == 0
    )
    assert [x["key"] for x in summary(out)["skipped"]] == ["bad"]
    samples = list(wds.WebDataset(str(next(out.glob("tokens-*.tar"))), shardshuffle=False).decode())
    assert [s["__key__"] for s in samples] == ["s0", "s1", "s2"]
    assert samples[0]["tokens.npy"].shape == (4, 32) and samples[0]["pooled.npy"].shape == (16,)


def test_latent_stats_and_normalised_grid(model_dir, awkward_folder, tmp_path):
    st = tmp_path / "stats"
    assert ov3("latent-stats", model_dir, awkward_folder, "--output", st, "--batch-size", 2) == 0
    stats = load_file(st / "latent_stats.safetensors")
    pipe = load(model_dir, device="cpu", resolution=RES)
    grid = pipe.tokens_to_grid(pipe.encode([str(awkward_folder / k) for k in GOOD]))  # (5, D, h, w)
    assert stats["mean"].shape == (32, 2, 2)
    assert torch.allclose(stats["mean"], grid.mean(0), atol=1e-5)
    assert torch.allclose(stats["var"], grid.var(0, unbiased=False), atol=1e-5)
    # Again: the broken files are tried again, so the statistics are computed again (over all).
    assert ov3("latent-stats", model_dir, awkward_folder, "--output", st) == 0
    assert summary(st)["retried_this_run"] == len(GOOD) and summary(st)["images"] == len(GOOD)
    out = tmp_path / "grid"
    assert (
        ov3(
            "encode",
            model_dir,
            awkward_folder,
            "--output",
            out,
            "--layout",
            "grid",
            "--normalize",
            st / "latent_stats.safetensors",
        )
        == 0
    )
    z = torch.from_numpy(np.stack(list(read_token_shards(out).values())))
    assert z.shape == (5, 32, 2, 2)
    assert z.mean(0).abs().max() < 1e-4 and (z.var(0, unbiased=False) - 1).abs().max() < 1e-2


def test_config_validation():
    with pytest.raises(ValueError, match="--layout grid"):
        runs.EncodeConfig("m", "i", "o", normalize="stats.safetensors")
    assert main("encode", ["m", "i", "--output", "o", "--batch-size", "-1"]) == 2
    assert main("bench", ["decode"]) == 2
