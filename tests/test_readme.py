"""Every command and Python example in README.md and docs/*.md runs, as a user would copy it.

Each fenced ``bash`` line (``&&`` chains split, ``\\`` continuations joined, comments dropped)
and each ``python`` block is run verbatim in one working folder, in document order, with:
  - PLACEHOLDERS: the documented stand-ins (``MODEL``, ``/data/...``, ``/models/flux-vae``,
    ``...``) swapped for small fixtures: real photos from scikit-image in every documented data
    layout, tiny webdataset shards, the packaged demo VAE as a diffusers folder, a tiny model
    trained and exported from the photos;
  - SHRINK: a suffix per command kind that makes it small (a tiny model, 2 steps, a few images);
    later flags override earlier ones, so the verbatim flags are all parsed;
  - UNRUN: the lines not run, each with its reason (at most five).
The fast test checks that every command is covered by exactly one rule; the slow one runs them
(``.ci/run`` runs it: ``pytest -m slow tests/test_readme.py``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Lines not run, with the reason (at most five).
UNRUN = {
    'pip install -e ".[dev]"': "the install itself: .ci/run runs it before the tests",
    "pytest": "the test suite itself: .ci/run runs it",
    "pytest -m dist": "the 2-process tests: .ci/run runs them",
    "torchrun --nnodes 4": "multi-node: needs 4 hosts and a rendezvous server",
    "sbatch --nodes 4": "multi-node: needs a Slurm cluster",
}
# `pytest && pytest -m dist` is one README line: the two entries count as one of the five.
UNRUN_LINES = 5

_TRAIN1 = (
    "--model-preset ov3-mu --data.num-workers 2 --train.stages.0.steps 2 "
    "--train.stages.0.batch-size 4 --train.stages.0.warmup-steps 1 "
    "--eval.num-images 8 --eval.batch-size 4"
)
_TRAIN2 = (
    f"{_TRAIN1} --train.stages.1.steps 2 --train.stages.1.batch-size 4 "
    "--train.stages.1.warmup-steps 1"
)
_INFER = "--batch-size 4 --num-workers 0 --resolution 64"
_EVAL = "--batch-size 4 --num-images 8 --linear-probe.train-images 8"
_STUDY = (
    "--model-preset ov3-mu --base.train.stages.0.steps 2 --base.train.stages.0.batch-size 4 "
    "--base.train.stages.0.warmup-steps 1 --base.train.stages.0.resolution 32 --seeds 0 1 "
    "--eval.num-images 4 --eval.batch-size 2 --eval.every 1 --realism.train-images 32 "
    "--realism.epochs 1"
)
# A DiT-DH for the tiny model's 16x16x32 tokens at 256 px (shift 1: RAE's is for s >= 1).
_DIT = (
    "--model.in-channels 32 --model.input-size 16 --model.width 32 --model.depth 1 "
    "--model.heads 2 --model.head-width 32 --model.head-depth 1 --model.head-heads 2 "
    "--flow.shift 1 --train.stages.0.steps 2 --train.stages.0.batch-size 4 --train.device cpu "
    "--data.num-workers 0 --data.hflip 0.5"
)
_GEN_DEMO = "--steps 2 --train-size 64 --val-size 16 --per-class 1 --sample-steps 3"
_VLM_TRAIN = (
    "--data.source synthetic --data.synthetic-size 16 --train.stages.0.steps 2 "
    "--train.stages.0.batch-size 2 --train.stages.0.warmup-steps 1 --train.precision fp32 "
    "--train.parallel auto --train.no-activation-checkpointing --train.device cpu"
)
_VLM_DEMO = (
    "--train-size 32 --val-size 8 --stage1-steps 2 --stage2-steps 2 --batch-size 4 "
    "--warmup-steps 1 --eval-batch 8 --hidden 32 --layers 1 --examples 2"
)
# (regex on the command as written, suffix). The first match wins; every command needs one.
SHRINK = [
    (r"^ov3 demo$", "--preset demo_smoke --run-dir runs/demo"),
    (r"^ov3 (encode|reconstruct|caption|classify|latent-stats) ", _INFER),
    (r"^ov3 bench encode ", "--preset ov3-mu --batch-size 2 --steps 1 --warmup 0"),
    (r"^ov3 presets$", ""),
    (r"^ov3 train demo_smoke$", ""),
    (r"^ov3 train \w+ --data\.latents ", f"{_TRAIN1} --run-dir runs/from-cache"),
    (r"^ov3 train (pretrain|finetune|decoder)_\w+ ", _TRAIN1),
    # The FSDP2 line is an alternative to the DDP one, not its continuation: its own run.
    (r"^torchrun .* --train\.parallel fsdp", f"{_TRAIN2} --run-dir runs/ov3_b2_fsdp"),
    (r"^(ov3 train|torchrun .* train) ov3_\w+ ", _TRAIN2),
    (r"^ov3 cache-latents ", "--model-preset ov3-mu --batch-size 8"),
    (r"^ov3 export ", ""),
    (
        r"^ov3 bench train ",
        "--preset ov3-mu --batch-size 2 --steps 1 --warmup 0 --component-steps 1",
    ),
    (r"^ov3 train dit_dh_\w+ ", _DIT),
    (r"^ov3 sample ", "--num 4 --per-class 2 --steps 3 --batch-size 2"),
    (r"^ov3 eval generation ", "--batch-size 2"),
    (r"^ov3 demo --generation ", _GEN_DEMO),
    (r"^ov3 vlm build ", "--llm tiny --image-size 64"),
    (r"^ov3 train llava15_ov3_b2_stage1 ", f"{_VLM_TRAIN} --data.questions describe"),
    (r"^ov3 train llava15_ov3_b2_stage2$", _VLM_TRAIN),
    (r"^ov3 train llava15_ov3_b2_stage2_lora$", f"{_VLM_TRAIN} --lora.r 4"),
    (r"^ov3 vlm (chat|answer) ", "--max-new-tokens 4"),
    (r"^echo .* > questions\.jsonl$", ""),
    (r"^ov3 eval vqa ", "--batch-size 2 --max-new-tokens 4"),
    (r"^ov3 demo --understanding ", _VLM_DEMO),
    (r"^ov3 eval ", _EVAL),
    (r"^ov3 study paper-small$", f"{_STUDY} --realism.kind features --run-dir runs/study"),
    (r"^torchrun .* study ", f"{_STUDY} --realism.kind none --base.data.num-workers 0"),
    # start the server, fetch the page, wait for the model, stop; any free port (CI may hold 7860)
    (r"^ov3 serve", "--check --port None"),
    (r"^python:", ""),
]


@dataclass
class Command:
    doc: str
    line: int
    text: str  # as written (python blocks: "python:" + the code)

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


def _strip_comment(line: str) -> str:
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def extract_commands(path: Path) -> list[Command]:
    """The ``bash`` lines and ``python`` blocks of one markdown file, in order."""
    out, lines = [], path.read_text().splitlines()
    doc = path.relative_to(ROOT).as_posix()
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        lang, start, i = m.group(1), i + 1, i + 1
        while not lines[i].startswith("```"):
            i += 1
        block = lines[start:i]
        i += 1
        if lang == "python":
            out.append(Command(doc, start, "python:" + "\n".join(block)))
        elif lang == "bash":
            j = 0
            while j < len(block):
                first, text = j, _strip_comment(block[j])
                while text.endswith("\\"):
                    j += 1
                    text = text[:-1].rstrip() + " " + _strip_comment(block[j]).strip()
                j += 1
                for part in (p.strip() for p in text.split("&&")):
                    if part:
                        out.append(Command(doc, start + first + 1, part))
    return out


def all_commands() -> list[Command]:
    return [c for path in DOCS for c in extract_commands(path)]


def unrun_reason(cmd: Command) -> str | None:
    return next((why for key, why in UNRUN.items() if cmd.text.startswith(key)), None)


def shrink_suffix(cmd: Command) -> str | None:
    return next((suffix for pat, suffix in SHRINK if re.search(pat, cmd.text)), None)


# ----------------------------------------------------------------------------- fast checks
def test_every_command_is_run_or_listed():
    commands = all_commands()
    assert len(commands) >= 30, "the extractor lost commands"
    uncovered = [
        f"{c.id} {c.text}" for c in commands if not unrun_reason(c) and shrink_suffix(c) is None
    ]
    assert not uncovered, "commands with no SHRINK rule and not in UNRUN:\n" + "\n".join(uncovered)
    unrun_lines = {(c.doc, c.line) for c in commands if unrun_reason(c)}
    assert len(unrun_lines) <= UNRUN_LINES, unrun_lines
    for key in UNRUN:  # no stale entries
        assert any(c.text.startswith(key) for c in commands), f"UNRUN entry not in docs: {key}"


def test_extractor_joins_continuations_and_drops_comments(tmp_path, monkeypatch):
    doc = tmp_path / "x.md"
    doc.write_text(
        "```bash\n# only a comment\nov3 a --x '#not' \\\n    --y 1   # note\n"
        "pip install . && ov3 b\n```\n```\nnot a command\n```\n```python\nprint(1)\n```\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    texts = [c.text for c in extract_commands(doc)]
    assert texts == ["ov3 a --x '#not' --y 1", "pip install .", "ov3 b", "python:print(1)"]


# ----------------------------------------------------------------------------- running them
@pytest.fixture(scope="module")
def workspace(tmp_path_factory, photo_data, photo_run, fake_torch_home):
    """The folder the commands run in, with the placeholders' fixtures and environment."""
    from tests.fake_weights import write_released_in_hub_cache

    ws = tmp_path_factory.mktemp("readme")
    for name in ("images", "imagenet"):
        (ws / name).symlink_to(photo_data / name)
    shutil.copy(photo_data / "images" / "chelsea.jpg", ws / "cat.jpg")  # a real cat
    shutil.copytree(photo_data / "vae", ws / "flux" / "vae")
    hub = ws / ".hub"
    write_released_in_hub_cache(hub, "UCSC-VLAA/openvision3-vit-base-patch2-32")
    env = dict(
        os.environ,
        TORCH_HOME=str(fake_torch_home),
        HF_HUB_CACHE=str(hub),
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    shards = str(photo_data / "shards" / "{000000..000002}.tar")
    placeholders = [  # (regex, replacement), applied in order
        (r"/data/recap-datacomp/\{000000\.\.009999\}\.tar|/data/\{000000\.\.009999\}\.tar", shards),
        (r"shards/train-\{000000\.\.000999\}\.tar", shards),
        (r"--data\.path \.\.\.", f"--data.path '{shards}'"),
        (r" \.\.\.$", ""),
        (r"/data/imagenet", str(photo_data / "imagenet")),
        (r"/data/coco", str(photo_data / "coco")),
        (r"/models/flux-vae", str(photo_data / "vae")),
        (r"\bMODEL\b", str(photo_run / "final")),
        (r'"path-or-hub-id"', repr(str(photo_run / "final"))),
        (r'device="cuda"', 'device="cpu"'),
        (r"VIRTUAL_imagenet256_labeled\.npz", "samples/samples.npz"),  # ADM's reference file
        (r"--nproc[-_]per[-_]node 8", "--nproc-per-node 2"),
        (r"step_000[12]0000", "step_00000004"),  # the shrunk run's last checkpoint
    ]
    return ws, env, placeholders


def _render(cmd: Command, placeholders) -> str:
    text = cmd.text
    for pat, repl in placeholders:
        text = re.sub(pat, lambda m, r=repl: r, text, flags=re.M)
    if text.startswith("python:"):
        return text
    suffix = shrink_suffix(cmd)
    return f"{text} {suffix}".strip()


RUNNABLE = [c for c in all_commands() if not unrun_reason(c)]


@pytest.mark.slow
@pytest.mark.parametrize("cmd", RUNNABLE, ids=[c.id for c in RUNNABLE])
def test_readme_command_runs(cmd, workspace):
    ws, env, placeholders = workspace
    text = _render(cmd, placeholders)
    if text.startswith("python:"):
        args = [sys.executable, "-c", text[len("python:") :]]
    else:
        args = ["bash", "-c", text]
    proc = subprocess.run(args, cwd=ws, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{cmd.id}: {text}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
