"""End to end on a tiny OpenVision 3 export: cache its tokens, train a generator with
``ov3 train``, ``ov3 sample`` (PNGs + npz; the images do not depend on the batch; an
interrupted run resumes) and ``ov3 eval generation`` (random-init Inception)."""

import json
import os

import numpy as np
import pytest
import torch

from openvision3.cli import main
from openvision3.data.transforms import to_pil
from openvision3.generation import load_generator
from openvision3.models.openvision3 import OpenVision3
from openvision3.models.presets import model_config
from openvision3.pretrained import save_pretrained
from tests.evaluation._fid_fakes import save_random_inception
from tests.generation.conftest import tiny_vae, write_cache


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    torch.manual_seed(0)
    ov3 = OpenVision3(model_config("ov3-mu"), vae=tiny_vae()).eval()
    save_pretrained(ov3, str(root / "ov3"))
    write_cache(root / "tokens", encoder=ov3.encoder)  # 32 px: 2 x 2 tokens of 32
    args = [
        "train", "demo_generation_smoke", "--data.cache", str(root / "tokens"),
        "--data.label-field", "small_label", "--decoder", str(root / "ov3"),
        "--run-dir", str(root / "run"), "--model.in-channels", "32", "--model.input-size", "2",
        "--model.num-classes", "5", "--class-names", "a", "b", "c", "d", "e",
        "--data.no-in-memory",
    ]  # fmt: skip
    assert main(args) == 0
    return root


@pytest.mark.slow
def test_sample_resume_and_batch_independence(generator, tmp_path):
    final = str(generator / "run" / "final")
    gen = load_generator(final)
    assert gen.class_names == ["a", "b", "c", "d", "e"]
    images = gen.sample([0, 3], cfg_scale=2.0, steps=4, seed=1)
    assert images.shape == (2, 3, 32, 32) and -1 <= images.min() and images.max() <= 1
    out = tmp_path / "s"
    base = ["sample", final, "--out", str(out), "--num", "6", "--per-class", "2", "--steps", "4"]
    assert main([*base, "--batch-size", "4", "--cfg-scale", "2"]) == 0
    first = np.load(out / "samples.npz")
    assert first["arr_0"].shape == (6, 32, 32, 3) and list(first["arr_1"]) == [0, 0, 1, 1, 2, 2]
    os.remove(out / "000004.png")
    assert main([*base, "--batch-size", "1", "--cfg-scale", "2"]) == 0  # only 000004 again
    again = np.load(out / "samples.npz")
    assert np.array_equal(again["arr_0"], first["arr_0"])  # batch 1 == batch 4, seeded per id
    ref = gen.sample([2], cfg_scale=2.0, steps=4, seed=0, ids=[4])
    # the PNG holds exactly what to_pil makes of the Python API's [-1, 1] sample
    assert np.array_equal(again["arr_0"][4], np.asarray(to_pil(ref)[0]))


@pytest.mark.slow
def test_eval_generation_writes_results(generator, tmp_path):
    final = str(generator / "run" / "final")
    args = ["sample", final, "--out", str(tmp_path / "s"), "--num", "8", "--per-class", "2"]
    assert main([*args, "--steps", "3"]) == 0
    weights = save_random_inception(str(tmp_path / "inception.pth"))
    npz = str(tmp_path / "s" / "samples.npz")
    out = tmp_path / "eval"
    cmd = ["eval", "generation", npz, "--reference", npz, "--inception-weights", weights]
    assert main([*cmd, "--out", str(out), "--batch-size", "4"]) == 0
    r = json.loads((out / "results.json").read_text())
    assert r["precision"] == r["recall"] == 1.0 and abs(r["fid"]) < 1e-3
    assert (out / "samples_grid.png").exists() and "| fid |" in (out / "report.md").read_text()


@pytest.mark.slow
def test_sample_rerun_with_other_settings_is_refused(generator, tmp_path, capsys):
    final = str(generator / "run" / "final")
    out = tmp_path / "s"
    base = ["sample", final, "--out", str(out), "--num", "4", "--per-class", "2", "--steps", "2"]
    assert main([*base, "--cfg-scale", "1"]) == 0
    npz = (out / "samples.npz").read_bytes()
    capsys.readouterr()
    assert main([*base, "--cfg-scale", "3"]) == 2  # guided samples never join unguided ones
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cfg_scale 1.0 -> 3.0" in err[0] and "--overwrite" in err[0]
    assert (out / "samples.npz").read_bytes() == npz
    assert main([*base, "--cfg-scale", "1", "--num", "6"]) == 0  # more of the same set
    assert np.load(out / "samples.npz")["arr_0"].shape[0] == 6
    assert json.loads((out / "summary.json").read_text())["written_this_run"] == 2
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "000001.png").write_bytes(b"the user's own file")
    assert main(["sample", final, "--out", str(mine), "--num", "2", "--steps", "2"]) == 2
    assert (mine / "000001.png").read_bytes() == b"the user's own file"
    assert main(["sample", final, "--out", str(mine), "--num", "2", "--steps", "2",
                 "--overwrite"]) == 0  # fmt: skip
    assert (mine / "000001.png").read_bytes()[:4] == b"\x89PNG"
