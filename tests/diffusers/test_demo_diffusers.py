"""The generation demo's generator, exported to diffusers, gives the demo's samples through
``OpenVision3DiTPipeline`` (slow: it trains the demo_smoke model and the demo's DiT-DH)."""

import json

import pytest
import torch

from openvision3.cli import main
from openvision3.diffusers import OpenVision3Autoencoder, OpenVision3DiTPipeline, to_diffusers
from openvision3.generation.demo import NUM_CLASSES, pixels, score
from openvision3.generation.pipeline import load_generator, sample_noise
from openvision3.pretrained import load_pretrained
from tests.diffusers.test_diffusers import as_pipeline_range

# the README test's shrunk demo (tests/test_readme.py, _GEN_DEMO)
GEN_DEMO = "--steps 2 --train-size 64 --val-size 16 --per-class 1 --sample-steps 3"


@pytest.mark.slow
def test_demo_generator_in_diffusers_gives_the_demos_samples(tmp_path):
    run = tmp_path / "demo"
    assert main(["demo", "--preset", "demo_smoke", "--run-dir", str(run)]) == 0
    assert main(["demo", "--generation", "--run", str(run), *GEN_DEMO.split()]) == 0
    report = json.loads((run / "generation" / "report.json").read_text())
    final = str(run / "generation" / "run" / "final")
    pipe = OpenVision3DiTPipeline.from_pretrained(to_diffusers(final, str(tmp_path / "pipe")))
    gen = load_generator(final)
    w, points = report["cfg_scale"], report["sample_steps"]
    labels = torch.arange(NUM_CLASSES)  # the demo's CFG set: per class 1, noise seed 1
    ref = as_pipeline_range(gen.sample(labels, cfg_scale=w, steps=points, seed=1))
    noise = sample_noise(1, range(len(labels)), gen.shape, "cpu")
    images = pipe(labels, guidance_scale=w, num_inference_steps=points - 1, latents=noise,
                  output_type="pt").images  # fmt: skip
    assert (images - ref).abs().max() <= 1e-5
    got = score(pixels(images * 2 - 1), labels.numpy())  # the pipeline's [0, 1] -> [-1, 1]
    want = report["judge"][f"CFG samples (w = {w:g})"]
    for k in ("color", "cell"):  # the judge's figures, within one sample of the demo's
        assert abs(got[k] - want[k]) <= 1 / want["n"] + 1e-9
    # `ov3 export RUN OUT --format diffusers` from the runs' checkpoints: the same folders
    gen_run = str(run / "generation" / "run")
    assert main(["export", gen_run, str(tmp_path / "ckpt"), "--format", "diffusers"]) == 0
    assert not list(tmp_path.glob(".ckpt.ov3-export*"))  # the intermediate export is removed
    again = OpenVision3DiTPipeline.from_pretrained(str(tmp_path / "ckpt"))
    for name in ("transformer", "vae"):
        a, b = getattr(pipe, name).state_dict(), getattr(again, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert main(["export", str(run), str(tmp_path / "ae"), "--format", "diffusers"]) == 0
    ae = OpenVision3Autoencoder.from_pretrained(str(tmp_path / "ae"))
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    ref_tokens = load_pretrained(str(run / "final")).encode(x)  # (B, N, D)
    assert torch.equal(ae.encode(x).latent.flatten(2).transpose(1, 2), ref_tokens)
