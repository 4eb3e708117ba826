"""OpenVision 3 in diffusers' format: the autoencoder equals ``openvision3.load``'s encode /
decode, the transformer equals the DiT-DH, the pipeline's images equal
``load_generator(...).sample`` from the same noise (Euler through diffusers' own scheduler,
Heun through ours; CFG inside an interval, mixed labels, AutoGuidance), and the folders load
with diffusers' ``from_pretrained`` offline in a fresh process."""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from PIL import Image

import openvision3
from openvision3.cli import main
from openvision3.data.token_stats import denormalize, load_token_stats, normalize
from openvision3.diffusers import (
    DiTDHTransformer2DModel,
    OpenVision3Autoencoder,
    OpenVision3DiTPipeline,
    OpenVision3FlowScheduler,
    is_diffusers_folder,
    load_diffusers_folder,
    to_diffusers,
)
from openvision3.generation.flow import sample_grid
from openvision3.generation.pipeline import load_generator, sample_noise
from openvision3.generation.task import STATS_NAME
from openvision3.models.openvision3 import OpenVision3
from openvision3.models.presets import model_config
from tests.diffusers.conftest import CLASSES, RES, write_generator
from tests.generation.conftest import tiny_vae

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LABELS = [0, 3, 1, 4, 3]  # mixed classes, one repeated


def as_pipeline_range(images: torch.Tensor) -> torch.Tensor:
    """``Generator.sample``'s images -> the pipeline's ``output_type="pt"`` range, [0, 1]
    (diffusers' ``VaeImageProcessor.postprocess``). The one place that knows our range."""
    return (images + 1) / 2


def run_offline(code: str, cwd) -> str:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.path.join(ROOT, "src") + ":" + ROOT)
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def folders(exports, tmp_path_factory):
    root = tmp_path_factory.mktemp("diffusers")
    return {
        "autoencoder": to_diffusers(exports["tokenizer"], str(root / "ae")),
        "euler": to_diffusers(exports["generator"], str(root / "euler")),
        "heun": to_diffusers(exports["generator"], str(root / "heun"), solver="heun"),
    }


# ---------------------------------------------------------------------- autoencoder
def test_autoencoder_equals_openvision3_load(exports):
    pipe = openvision3.load(exports["tokenizer"], device="cpu", resolution=RES)
    stats = load_token_stats(os.path.join(exports["generator"], STATS_NAME))
    ae = OpenVision3Autoencoder.from_openvision3(pipe.model, stats)
    x = torch.rand(3, 3, RES, RES, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z = ae.encode(x).latent  # (B, D, h, w), normalised
    tokens = pipe.encode(x)  # (B, N, D)
    assert z.shape == (3, 32, 2, 2)
    ref = normalize(pipe.tokens_to_grid(tokens), stats)
    assert (z - ref).abs().max() <= 1e-6
    images = ae.decode(z).sample  # the VAE's output, unclamped
    ref_images = pipe.decode(denormalize(z, stats).flatten(2).transpose(1, 2))  # clamped
    assert images.shape == (3, 3, RES, RES)
    assert (images.clamp(-1, 1) - ref_images).abs().max() <= 1e-6
    (tuple_z,) = ae.encode(x, return_dict=False)
    assert torch.equal(tuple_z, z) and torch.equal(ae.decode(z, return_dict=False)[0], images)
    with pytest.raises(ValueError, match="statistics"):  # 64 px: a 4 x 4 grid, stats are 2 x 2
        ae.encode(torch.zeros(1, 3, 64, 64))


def test_autoencoder_without_statistics_returns_raw_tokens(exports, folders):
    ae = OpenVision3Autoencoder.from_pretrained(folders["autoencoder"])
    assert not ae.config.has_stats
    pipe = openvision3.load(exports["tokenizer"], device="cpu", resolution=64)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    assert (ae.encode(x).latent - pipe.tokens_to_grid(pipe.encode(x))).abs().max() <= 1e-6


# ---------------------------------------------------------------------- transformer
def test_transformer_is_the_dit_with_the_same_weights(exports):
    gen = load_generator(exports["generator"])
    t = DiTDHTransformer2DModel.from_dit(gen.model, gen.class_names)
    assert t.state_dict().keys() == gen.model.state_dict().keys()
    x, tt = torch.randn(4, 32, 2, 2), torch.rand(4)
    y = torch.tensor([0, 2, CLASSES, 4])  # the null class too
    assert torch.equal(t(x, tt, y).sample, gen.model(x, tt, y))
    assert torch.equal(t(hidden_states=x, timestep=0.5, class_labels=y, return_dict=False)[0],
                       gen.model(x, torch.full((4,), 0.5), y))  # fmt: skip


# ---------------------------------------------------------------------- scheduler grids
def test_scheduler_grids_match_raes():
    """diffusers' Euler with RAE's unshifted grid as sigmas reproduces ``sample_grid`` (plus an
    appended 0, not taken); its default ``set_timesteps`` does not; ours is RAE's exactly."""
    s, points = 2.0, 50
    ours = sample_grid(points, s)
    euler = FlowMatchEulerDiscreteScheduler(shift=s)
    u = 1 - torch.linspace(0, 0.999, points, dtype=torch.float64)
    euler.set_timesteps(sigmas=u.tolist())
    assert len(euler.sigmas) == points + 1 and euler.sigmas[-1] == 0
    assert (euler.sigmas[:-1].double() - ours).abs().max() < 1e-7
    euler.set_timesteps(points)  # the default grid ends elsewhere (sigma_min shifted twice)
    assert abs(float(euler.sigmas[-2]) - float(ours[-1])) > 1e-3
    heun = OpenVision3FlowScheduler(shift=s, solver="heun")
    heun.set_timesteps(points - 1)
    assert torch.equal(heun.sigmas, ours) and len(heun.timesteps) == 2 * (points - 1)


# ---------------------------------------------------------------------- sampling parity
@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_pipeline_images_equal_load_generator_samples(exports, folders, solver):
    gen = load_generator(exports["generator"])
    pipe = OpenVision3DiTPipeline.from_pretrained(folders[solver])
    noise = sample_noise(3, range(len(LABELS)), gen.shape, "cpu")  # load_generator's seeds
    for steps, w, interval in ((7, 1.0, (0.0, 1.0)), (6, 3.0, (0.3, 0.8))):
        kw = dict(cfg_scale=w, steps=steps, sampler=solver, seed=3, interval=interval)
        ref = as_pipeline_range(gen.sample(LABELS, **kw))
        out = pipe(LABELS, guidance_scale=w, num_inference_steps=steps - 1,
                   guidance_interval=interval, latents=noise, output_type="pt").images  # fmt: skip
        assert out.shape == ref.shape == (len(LABELS), 3, RES, RES)
        assert (out - ref).abs().max() <= (1e-5 if solver == "euler" else 1e-6)
    # guidance inside the interval changes the images; w = 1 does not use the null class
    unguided = pipe(LABELS, num_inference_steps=5, latents=noise, output_type="pt").images
    assert (out - unguided).abs().max() > 1e-3


def test_pipeline_output_types_follow_diffusers(folders):
    pipe = OpenVision3DiTPipeline.from_pretrained(folders["euler"])
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    pil = pipe([1, 2], num_inference_steps=3, generator=g()).images
    arr = pipe([1, 2], num_inference_steps=3, generator=g(), output_type="np").images
    pt = pipe([1, 2], num_inference_steps=3, generator=g(), output_type="pt").images
    assert all(isinstance(im, Image.Image) and im.size == (RES, RES) for im in pil)
    assert arr.shape == (2, RES, RES, 3) and 0 <= arr.min() and arr.max() <= 1
    assert np.allclose(arr, pt.permute(0, 2, 3, 1).numpy())
    assert np.array_equal(np.asarray(pil[0]), pipe.image_processor.numpy_to_pil(arr)[0])
    assert pipe.get_label_ids(["b", "e"]) == [1, 4]


def test_autoguidance_with_a_guide_transformer(exports, tmp_path):
    gen = load_generator(exports["generator"], guide=exports["guide"])
    folder = to_diffusers(exports["generator"], str(tmp_path / "ag"), guide=exports["guide"])
    index = json.loads(open(os.path.join(folder, "model_index.json")).read())
    assert index["guide_transformer"] == ["openvision3.diffusers", "DiTDHTransformer2DModel"]
    pipe = OpenVision3DiTPipeline.from_pretrained(folder)
    noise = sample_noise(0, range(len(LABELS)), gen.shape, "cpu")
    ref = gen.sample(LABELS, cfg_scale=1.42, steps=6, guidance="autoguidance", interval=(0, 0.7))
    out = pipe(LABELS, guidance_scale=1.42, num_inference_steps=5, guidance_interval=(0, 0.7),
               latents=noise, output_type="pt").images  # fmt: skip
    assert (out - as_pipeline_range(ref)).abs().max() <= 1e-5
    again = load_generator(folder)  # the facade reads the guide from the folder too
    assert torch.equal(again.sample(LABELS, cfg_scale=1.42, steps=6, guidance="autoguidance",
                                    interval=(0, 0.7)), ref)  # fmt: skip


# ---------------------------------------------------------------------- folders
def test_recorded_module_paths_are_public(folders):
    index = json.loads(open(os.path.join(folders["euler"], "model_index.json")).read())
    assert index["_class_name"] == "OpenVision3DiTPipeline"
    assert index["transformer"] == ["openvision3.diffusers", "DiTDHTransformer2DModel"]
    assert index["vae"] == ["openvision3.diffusers", "OpenVision3Autoencoder"]
    assert index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    assert index["guide_transformer"] == [None, None]
    heun = json.loads(open(os.path.join(folders["heun"], "model_index.json")).read())
    assert heun["scheduler"] == ["openvision3.diffusers", "OpenVision3FlowScheduler"]
    assert is_diffusers_folder(folders["euler"]) and is_diffusers_folder(folders["autoencoder"])


def test_a_save_from_the_pipeline_reloads_to_identical_weights(folders, tmp_path):
    pipe = OpenVision3DiTPipeline.from_pretrained(folders["heun"])
    pipe.save_pretrained(str(tmp_path / "again"))
    again = OpenVision3DiTPipeline.from_pretrained(str(tmp_path / "again"))
    for name in ("transformer", "vae"):
        a, b = getattr(pipe, name).state_dict(), getattr(again, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert dict(again.scheduler.config) == dict(pipe.scheduler.config)


# ---------------------------------------------------------------------- export and facades
def test_export_then_a_fresh_process_loads_offline_with_one_import(exports, tmp_path):
    """``ov3 export --format diffusers`` of both exports; then, in one new interpreter offline,
    each model card's usage lines, and the documented load gives this process's images."""
    for src, name in ((exports["generator"], "pipe"), (exports["tokenizer"], "ae")):
        assert main(["export", src, str(tmp_path / name), "--format", "diffusers"]) == 0
    assert is_diffusers_folder(str(tmp_path / "pipe")) and is_diffusers_folder(str(tmp_path / "ae"))
    cards = []
    for name in ("pipe", "ae"):
        card = (tmp_path / name / "README.md").read_text()
        assert 'library_name: "diffusers"' in card
        cards.append(card.split("```python\n", 1)[1].split("```", 1)[0])
    noise = torch.randn(2, 32, 2, 2, generator=torch.Generator().manual_seed(5))
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    torch.save({"noise": noise, "x": x}, tmp_path / "inputs.pt")
    pipe = OpenVision3DiTPipeline.from_pretrained(str(tmp_path / "pipe"))
    ref = pipe([2, 0], guidance_scale=2.0, num_inference_steps=4, latents=noise, output_type="np")
    ae_ref = OpenVision3Autoencoder.from_pretrained(str(tmp_path / "ae")).encode(x).latent
    check = """
import numpy as np, torch
import openvision3.diffusers  # the one import
from openvision3.diffusers import OpenVision3Autoencoder, OpenVision3DiTPipeline
inputs = torch.load("inputs.pt")
pipe = OpenVision3DiTPipeline.from_pretrained("pipe")
np.save("images.npy", pipe([2, 0], guidance_scale=2.0, num_inference_steps=4,
                           latents=inputs["noise"], output_type="np").images)
ae = OpenVision3Autoencoder.from_pretrained("ae")
torch.save(ae.encode(inputs["x"]).latent, "z.pt")
"""
    run_offline("\n".join([*cards, check]), tmp_path)
    assert np.array_equal(np.load(tmp_path / "images.npy"), ref.images)
    assert torch.equal(torch.load(tmp_path / "z.pt"), ae_ref)
    assert main(["export", str(tmp_path), str(tmp_path / "x"), "--format", "diffusers"]) == 1


def test_facades_load_the_diffusers_folders(exports, folders):
    gen = load_generator(folders["euler"])  # what `ov3 serve --generator DIR` calls
    ref = load_generator(exports["generator"])
    assert gen.class_names == ref.class_names == ["a", "b", "c", "d", "e"]
    kw = dict(cfg_scale=2.0, steps=4, seed=1, interval=(0.1, 0.9))
    assert torch.equal(gen.sample(LABELS, **kw), ref.sample(LABELS, **kw))
    model = load_diffusers_folder(folders["autoencoder"], "cpu", resolution=RES)
    x = torch.rand(2, 3, RES, RES) * 2 - 1
    pipe = openvision3.load(exports["tokenizer"], device="cpu", resolution=RES)
    assert torch.equal(model.encode(x), pipe.encode(x))
    assert torch.equal(model.reconstruct(x), pipe.reconstruct(x))


def test_a_generator_with_another_time_shift_keeps_it(exports, tmp_path):
    """The scheduler's shift is the generator's: a 4x wider token budget doubles s."""
    gen_dir = write_generator(tmp_path / "g", os.path.relpath(exports["tokenizer"], tmp_path / "g"))
    meta = json.loads((tmp_path / "g" / "config.json").read_text())
    meta["config"]["flow"]["shift"] = 3.5
    (tmp_path / "g" / "config.json").write_text(json.dumps(meta))
    out = to_diffusers(gen_dir, str(tmp_path / "d"))
    assert OpenVision3DiTPipeline.from_pretrained(out).scheduler.config.shift == 3.5
    assert load_generator(out).shift == 3.5


def test_a_vae_read_from_a_folder_keeps_its_own_architecture(tmp_path):
    """A tokenizer whose VAE was read from a folder (its config's ``arch`` left at FLUX's)
    exports the VAE it really has, and the autoencoder reloads to the same tokens."""
    from openvision3.models.vae import FLUX_VAE_ARCH, VAEConfig

    tiny_vae().vae.save_pretrained(str(tmp_path / "vae"))
    cfg = model_config("ov3-mu")
    cfg = dataclasses.replace(cfg, vae=VAEConfig(pretrained=str(tmp_path / "vae"), subfolder=""))
    assert cfg.vae.arch == FLUX_VAE_ARCH  # not what the folder holds
    torch.manual_seed(0)
    model = OpenVision3(cfg).eval()
    ae = OpenVision3Autoencoder.from_openvision3(model)
    ae.save_pretrained(str(tmp_path / "ae"))
    again = OpenVision3Autoencoder.from_pretrained(str(tmp_path / "ae"))
    x = torch.rand(2, 3, RES, RES) * 2 - 1
    ref = model.encode(x).transpose(1, 2).reshape(2, -1, 2, 2)  # (B, N, D) -> (B, D, h, w)
    assert torch.equal(again.encode(x).latent, ae.encode(x).latent)
    assert (again.encode(x).latent - ref).abs().max() <= 1e-6


def test_export_twice_replaces_its_own_folder_and_refuses_others(exports, tmp_path):
    """A second export into the same folder with other options replaces it whole (the user's
    README kept); a folder of another kind, ours or the user's, is refused and left as it was."""
    out = tmp_path / "pipe"
    assert main(["export", exports["generator"], str(out), "--format", "diffusers",
                 "--scheduler", "heun"]) == 0  # fmt: skip
    (out / "README.md").write_text("my notes")
    assert main(["export", exports["generator"], str(out), "--format", "diffusers"]) == 0
    pipe = OpenVision3DiTPipeline.from_pretrained(str(out))
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)  # the second run's
    assert (out / "README.md").read_text() == "my notes"
    assert [p.name for p in tmp_path.iterdir()] == ["pipe"]  # no temporary folder left
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(["export", exports["tokenizer"], str(out), "--format", "diffusers"]) != 0
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert main(["export", exports["generator"], str(mine), "--format", "diffusers"]) != 0
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
