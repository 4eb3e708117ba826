"""Second runs into the same --output: a user's file is never replaced, other options are
refused, skipped or changed inputs are tried again, and the summary and exit status say so."""

import json
import os
import stat

import numpy as np
import pytest

from openvision3.inference.api import load
from openvision3.inference.command import main
from openvision3.inference.writers import read_token_shards
from tests.inference._inference_helpers import BAD, GOOD, RES, random_image

FAST = ["--resolution", str(RES), "--no-progress", "--num-workers", "0"]


def ov3(name, *args):
    return main(name, FAST + [str(a) for a in args])  # a later --resolution wins


def summary(out):
    return json.loads((out / "summary.json").read_text())


def test_a_users_file_is_not_replaced_by_a_rerun(model_dir, awkward_folder, tmp_path, capsys):
    out = tmp_path / "keep"
    out.mkdir()
    (out / "good.png.png").write_bytes(b"the user's own file")
    for _ in range(2):
        assert ov3("reconstruct", model_dir, awkward_folder, "--output", out) == 2
        assert (out / "good.png.png").read_bytes() == b"the user's own file"
        assert "--overwrite" in capsys.readouterr().err
    assert ov3("reconstruct", model_dir, awkward_folder, "--output", out, "--overwrite") == 0
    assert (out / "good.png.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "command, first, second, differ",
    [
        ("encode", ["--format", "npz"], ["--format", "safetensors"], "format"),
        ("encode", [], ["--resolution", 2 * RES], "resolution"),
        ("reconstruct", [], ["--ext", "jpg"], "ext"),
        ("classify", ["--labels", "cat", "dog"], ["--labels", "car", "ship"], "labels"),
    ],
)
def test_a_rerun_with_other_options_is_refused(
    model_dir, tmp_path, capsys, command, first, second, differ
):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        random_image(i).save(images / f"{i}.png")
    out = tmp_path / "out"
    assert ov3(command, model_dir, images, "--output", out, *first) == 0
    listing = sorted(p.name for p in out.rglob("*"))
    assert ov3(command, model_dir, images, "--output", out, *second) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and differ in err[0] and "--overwrite" in err[0], err
    assert sorted(p.name for p in out.rglob("*")) == listing  # nothing written
    assert ov3(command, model_dir, images, "--output", out, *second, "--overwrite") == 0
    assert summary(out)["written_this_run"] == 2 and summary(out)["done"] == 2


def test_skipped_and_changed_inputs_are_tried_again(model_dir, awkward_folder, tmp_path):
    out = tmp_path / "cap"
    args = ("--output", out, "--max-len", 4)
    assert ov3("caption", model_dir, awkward_folder, *args) == 0
    assert sorted(x["key"] for x in summary(out)["skipped"]) == BAD
    random_image(7).save(awkward_folder / "broken.png")  # the user fixes the file
    assert ov3("caption", model_dir, awkward_folder, *args) == 0
    s = summary(out)
    assert [x["key"] for x in s["skipped"]] == ["notes.jpg"]
    assert s["written_this_run"] == 1 and s["retried_this_run"] == 1 and s["done"] == 6
    rows = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert sorted(r["key"] for r in rows) == sorted(GOOD + ["broken.png"])  # one row per key

    tokens = tmp_path / "tokens"
    assert ov3("encode", model_dir, awkward_folder, "--output", tokens, "--format", "npz") == 0
    random_image(8).save(awkward_folder / "good.png")  # changed since: size and mtime differ
    assert ov3("encode", model_dir, awkward_folder, "--output", tokens, "--format", "npz") == 0
    s = summary(tokens)
    assert s["written_this_run"] == 1 and s["retried_this_run"] == 1
    latest = read_token_shards(tokens)["good.png"]
    ref = load(model_dir, device="cpu", resolution=RES).encode(str(awkward_folder / "good.png"))
    assert np.allclose(latest, ref[0].numpy(), atol=1e-5)
    assert sorted(s["files"]) == ["tokens-00000.npz", "tokens-00001.npz"]


def test_summary_lists_files_and_all_bad_inputs_fail(model_dir, awkward_folder, tmp_path):
    out = tmp_path / "tokens"
    assert ov3("encode", model_dir, awkward_folder, "--output", out) == 0
    assert summary(out)["files"] == ["tokens-00000.safetensors"]
    assert ov3("encode", model_dir, awkward_folder, "--output", out) == 1  # only BAD left
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"not a png")
    assert ov3("encode", model_dir, bad, "--output", tmp_path / "none") == 1
    clean = tmp_path / "clean"
    clean.mkdir()
    random_image(0).save(clean / "a.png")
    for _ in range(2):  # a rerun with everything done exits 0
        assert ov3("encode", model_dir, clean, "--output", tmp_path / "c") == 0


def test_a_run_that_wrote_nothing_does_not_hold_its_options(model_dir, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.png").write_bytes(b"not a png")
    out = tmp_path / "tokens"
    assert ov3("encode", model_dir, images, "--output", out, "--format", "npz") == 1
    random_image(0).save(images / "a.png")  # fixed; and the user picks another format
    assert ov3("encode", model_dir, images, "--output", out, "--format", "safetensors") == 0
    assert summary(out)["files"] == ["tokens-00000.safetensors"]
    assert ov3("encode", model_dir, images, "--output", out, "--format", "npz") == 2  # now held


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_written_files_follow_the_umask(model_dir, awkward_folder, tmp_path, mask):
    old = os.umask(mask)
    try:
        out = tmp_path / "tokens"
        assert ov3("encode", model_dir, awkward_folder, "--output", out) == 0
    finally:
        os.umask(old)
    for name in ("tokens-00000.safetensors", "summary.json"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o666 & ~mask, name
