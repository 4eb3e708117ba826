"""Saved folders explain themselves: every export (tokenizer, generator, VLM) records its kind and
carries a Hub model card (``README.md``) whose lines load it as written; files that travel with a
folder hold hub ids and folder names, never the builder's absolute paths; and every loader names a
folder of another kind in one line, fast and without a large allocation (a subprocess under an
address-space limit)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from openvision3.artefacts import (
    GENERATOR,
    TOKENIZER,
    VLM,
    WrongFolderError,
    folder_kind,
    portable_name,
    require_kind,
)
from openvision3.errors import USER_ERRORS
from openvision3.pretrained import save_pretrained

NUM_CLASSES = 3


def _tokenizer(out: Path) -> Path:
    """A random ``ov3-mu`` export (encoder, decoder, text towers) with a tiny random VAE."""
    from openvision3.models.openvision3 import OpenVision3
    from openvision3.models.presets import model_config
    from openvision3.models.vae import TINY_VAE_ARCH, VAEConfig

    torch.manual_seed(0)
    cfg = dataclasses.replace(
        model_config("ov3-mu"), vae=VAEConfig(pretrained="", arch=dict(TINY_VAE_ARCH))
    )
    card = {"experiment": "demo_smoke", "steps": 3, "data": "synthetic"}
    save_pretrained(OpenVision3(cfg).eval(), str(out), card=card, resolution=32)
    return out


def _generator(out: Path, decoder: Path, cache: Path) -> Path:
    """A random DiT-DH on the tokenizer's (32, 2, 2) tokens, exported by its task."""
    from openvision3.generation.presets import PRESETS

    cfg = PRESETS["demo_generation_smoke"]()
    cfg.model.in_channels, cfg.model.input_size = 32, 2
    cfg.model.num_classes = NUM_CLASSES
    cfg.data.cache, cfg.decoder = str(cache), str(decoder)  # absolute: the builder's machine
    cfg.run_dir = str(out.parent / "run")
    task = cfg.build_task()
    task._stats = {"mean": torch.zeros(32, 2, 2), "var": torch.ones(32, 2, 2)}
    card = {"experiment": cfg.name, "steps": 4, "samples_seen": 16, "weights": "ema"}
    task.export(task.build_model(), str(out), card, cfg.train.stages[-1])
    return out


def _vlm(out: Path, vision: Path) -> Path:
    """``ov3 vlm build`` with ``--vision`` typed as an absolute path and a tiny random LLM."""
    from openvision3.understanding.assemble import BuildArgs, build_vlm

    build_vlm(BuildArgs(vision=str(vision), llm="tiny", out=str(out), template="vicuna_v1"))
    return out


def _wrong_kinds(root: Path) -> dict[str, Path]:
    """Folders a user may pass by mistake."""
    from PIL import Image
    from transformers import LlamaConfig, LlamaForCausalLM

    folders = {k: root / k for k in ("checkpoint", "run", "empty", "images", "llama")}
    for folder in folders.values():
        folder.mkdir()
    (folders["checkpoint"] / "state.json").write_text(json.dumps({"step": 3}))
    (folders["run"] / "config.json").write_text(json.dumps({"run_dir": "x", "train": {}}))
    (folders["run"] / "checkpoints").mkdir()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(folders["images"] / "red.png")
    llama = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2,
    )  # fmt: skip
    LlamaForCausalLM(llama).save_pretrained(folders["llama"])  # a bare LM, as a user would
    return folders


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("builder-machine")
    tok = _tokenizer(root / "runs" / "demo" / "final")
    out = {
        "tokenizer": tok,
        "generator": _generator(root / "runs" / "dit" / "final", tok, root / "caches" / "tokens"),
        "vlm": _vlm(root / "vlm", tok),
    }
    return out | _wrong_kinds(root)


# ---------------------------------------------------------------------- kinds and cards
def test_each_export_records_its_kind(folders):
    kinds = {name: folder_kind(path).name for name, path in folders.items()}
    assert kinds == {
        "tokenizer": TOKENIZER,
        "generator": GENERATOR,
        "vlm": VLM,
        "checkpoint": "checkpoint",
        "run": "run",
        "empty": "empty",
        "images": "images",
        "llama": "transformers",
    }
    # the key is in our own files, readable without this package
    assert json.loads((folders["tokenizer"] / "config.json").read_text())["task"] == TOKENIZER
    assert json.loads((folders["generator"] / "config.json").read_text())["task"] == GENERATOR
    assert json.loads((folders["vlm"] / "model_card.json").read_text())["task"] == VLM


def _front_matter(text: str) -> dict[str, str]:
    match = re.match(r"---\n(.*?)\n---\n", text, re.S)
    assert match, text[:200]
    return dict(line.split(": ", 1) for line in match.group(1).splitlines() if ": " in line)


@pytest.mark.parametrize(
    "name, library, pipeline_tag, needed",
    [
        ("tokenizer", "openvision3", "image-feature-extraction",
         ["openvision3.load(", "ov3 encode ", "ov3 vlm build --vision", "demo_smoke"]),
        ("generator", "openvision3", "unconditional-image-generation",
         ["load_generator(", "ov3 sample ", "--generator", "tokens"]),
        ("vlm", "transformers", "image-text-to-text",
         ["import openvision3.understanding", "LlavaForConditionalGeneration.from_pretrained(",
          "AutoProcessor.from_pretrained(", "ov3 vlm chat ", "--vlm", "Unrecognized model type"]),
    ],
)  # fmt: skip
def test_model_card_says_what_it_is_and_how_to_load_it(
    folders, name, library, pipeline_tag, needed
):
    text = (folders[name] / "README.md").read_text()
    front = _front_matter(text)
    assert json.loads(front["library_name"]) == library
    assert json.loads(front["pipeline_tag"]) == pipeline_tag
    for phrase in needed:
        assert phrase in text, (name, phrase)
    if name == "vlm":  # the registering import comes before transformers' loader
        assert text.index("import openvision3.understanding") < text.index("from_pretrained(")


def test_no_file_that_travels_with_a_folder_holds_the_builders_paths(folders):
    root = str(folders["empty"].parent)  # every absolute path of the builder starts here
    for name in ("tokenizer", "generator", "vlm"):
        for path in folders[name].rglob("*"):
            if path.suffix in (".json", ".md", ".jinja", ".txt", ".model"):
                assert root not in path.read_text(errors="replace"), path
    card = json.loads((folders["vlm"] / "model_card.json").read_text())
    assert card["vision"] == "demo/final" and card["llm"] == "tiny"
    gen = json.loads((folders["generator"] / "config.json").read_text())
    assert gen["decoder"] == "../../demo/final"  # relative to the export: it still loads
    assert gen["card"]["decoder"] == "demo/final"
    assert gen["config"]["data"]["cache"] == "../../../caches/tokens"


def test_card_of_the_users_readme_is_kept(tmp_path):
    (tmp_path / "README.md").write_text("my notes")
    _tokenizer(tmp_path)
    assert (tmp_path / "README.md").read_text() == "my notes"


def test_portable_name():
    assert portable_name("UCSC-VLAA/openvision3-vit-base-patch2-32") == (
        "UCSC-VLAA/openvision3-vit-base-patch2-32"
    )
    assert portable_name("runs/demo/final") == "runs/demo/final"
    assert portable_name("/home/me/runs/demo/final") == "demo/final"
    assert portable_name("/home/me/models/vicuna-7b") == "vicuna-7b"


def test_require_kind_names_the_folder_and_the_command(folders):
    with pytest.raises(WrongFolderError, match=r"OpenVision 3 model export .*ov3 serve"):
        require_kind(str(folders["tokenizer"]), VLM)
    with pytest.raises(WrongFolderError, match=r"training checkpoint.*ov3 export"):
        require_kind(str(folders["checkpoint"]), GENERATOR)
    with pytest.raises(FileNotFoundError, match="empty folder"):
        require_kind(str(folders["empty"]), TOKENIZER)
    assert require_kind(str(folders["vlm"]), VLM).name == VLM


# ---------------------------------------------------------------------- loaders, bounded
# The child imports every loader's module, measures its address space, then caps it at that plus
# LIMIT_MARGIN: a loader that built LLaVA's default 7B config (28 GB in fp32) or any large model
# would fail with MemoryError instead of the one-line message.
LIMIT_MARGIN = 2 << 30
CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    import openvision3.understanding  # transformers and the tower
    from openvision3.generation.pipeline import load_generator
    from openvision3.pretrained import load_pretrained
    from openvision3.understanding import load_vlm

    def vm_kib(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1])

    base = vm_kib("VmSize") * 1024
    limit = base + int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    loaders = {"load_pretrained": load_pretrained, "load_generator": load_generator,
               "load_vlm": load_vlm}
    rows = []
    for loader, folder in json.loads(sys.argv[2]):
        t0 = time.perf_counter()
        try:
            loaders[loader](folder)
            kind, message = "loaded", ""
        except BaseException as err:
            kind, message = type(err).__name__, str(err)
        rows.append({"loader": loader, "folder": folder, "error": kind, "message": message,
                     "seconds": time.perf_counter() - t0})
    print(json.dumps({"base": base, "limit": limit, "peak_rss_kib": vm_kib("VmHWM"),
                      "rows": rows}))
    """
)
RIGHT = {"load_pretrained": "tokenizer", "load_generator": "generator", "load_vlm": "vlm"}
PHRASES = {
    "tokenizer": "OpenVision 3 model export",
    "generator": "generator export",
    "vlm": "LLaVA (VLM) folder",
    "checkpoint": "training checkpoint",
    "run": "training run folder",
    "empty": "empty folder",
    "images": "folder of images",
    "llama": "transformers model (LlamaForCausalLM)",
}


def test_every_loader_names_every_wrong_folder_in_one_line_with_bounded_memory(folders):
    cases = [(loader, str(folders[name])) for loader in RIGHT for name in PHRASES]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(LIMIT_MARGIN), json.dumps(cases)],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    user_errors = {cls.__name__ for cls in USER_ERRORS} | {"WrongFolderError"}
    for row, (loader, _) in zip(report["rows"], cases, strict=True):
        name = next(k for k, v in folders.items() if str(v) == row["folder"])
        if RIGHT[loader] == name:  # the control: the right folder loads under the same limit
            assert row["error"] == "loaded", row
            continue
        assert row["error"] in user_errors, row
        assert "\n" not in row["message"] and PHRASES[name] in row["message"], row
        assert row["seconds"] < 1.0, row


@pytest.mark.parametrize(
    "argv, folder, says",
    [
        (["sample", "{f}", "--out", "{tmp}/samples"], "vlm", "LLaVA (VLM) folder, not"),
        (["vlm", "chat", "{f}", "{img}", "hi"], "tokenizer", "`ov3 vlm build --vision"),
        (["encode", "{f}", "{tmp}", "--output", "{tmp}/t"], "generator", "`ov3 sample "),
        (["export", "{f}", "{tmp}/out"], "empty", "empty folder, not a checkpoint"),
    ],
)
def test_commands_end_in_one_line_on_a_wrong_folder(folders, tmp_path, capsys, argv, folder, says):
    from openvision3.cli import main

    img = folders["images"] / "red.png"
    argv = [a.format(f=folders[folder], tmp=tmp_path, img=img) for a in argv]
    assert main(argv) in (1, 2)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err, err


@pytest.mark.parametrize("preset", ["demo_generation_smoke", "llava15_ov3_b2_stage1_smoke"])
def test_model_preset_outside_openvision3_presets_is_one_line(preset):
    from openvision3.cli import main
    from openvision3.configs import get_preset
    from openvision3.errors import ConfigError

    with pytest.raises(ConfigError, match="--model-preset swaps the model of an OpenVision 3"):
        get_preset(preset, "ov3-mu")
    assert main(["train", preset, "--model-preset", "ov3-mu"]) == 2


# ---------------------------------------------------------------------- the card's own lines
CARD_RUNNER = textwrap.dedent(
    """
    import re, sys
    from pathlib import Path
    import PIL.Image
    PIL.Image.new("RGB", (32, 32), (90, 120, 200)).save("cat.jpg")
    for folder in sys.argv[1:]:
        text = Path(folder, "README.md").read_text()
        code = re.search(r"```python\\n(.*?)```", text, re.S).group(1)
        scope = {"PIL": PIL}
        exec(code, scope)
        print(folder, "ok")
    """
)


@pytest.mark.slow
def test_card_python_lines_load_each_export_as_written(folders):
    """Each card's Python block, run as written from the folder's parent (the card names the
    folder by its name): transformers' own loaders for the VLM, after the registering import."""
    runs = [
        (folders["tokenizer"].parent.parent, ["demo/final"]),
        (folders["generator"].parent.parent, ["dit/final"]),
        (folders["vlm"].parent, ["vlm"]),
    ]
    for cwd, args in runs:
        proc = subprocess.run(
            [sys.executable, "-c", CARD_RUNNER, *args],
            capture_output=True, text=True, timeout=300, cwd=cwd,
            env=dict(os.environ, HF_HUB_OFFLINE="1"),
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]


def test_relative_paths_rewrites_only_absolute_paths():
    from openvision3.artefacts import relative_paths

    cfg = {
        "run_dir": "/home/me/runs/llava/stage2",
        "data": {"json_path": "/data/llava/mix665k.json", "source": "llava_json"},
        "model": "runs/llava/stage1/final",
        "stages": [{"init": "/home/me/runs/ov3/final"}],
    }
    out = relative_paths(cfg, "/home/me/runs/llava/stage2/final")
    assert out == {
        "run_dir": "..",
        "data": {"json_path": "../../../../../../data/llava/mix665k.json", "source": "llava_json"},
        "model": "runs/llava/stage1/final",
        "stages": [{"init": "../../../ov3/final"}],
    }
