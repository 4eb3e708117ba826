"""``ov3 vlm build | chat | answer`` and ``ov3 eval vqa``.

    ov3 vlm build --vision runs/demo/final --llm lmsys/vicuna-7b-v1.5 --out runs/vlm
    ov3 vlm chat runs/vlm image.jpg "what is in the image?"
    ov3 vlm answer runs/vlm questions.jsonl --out answers.jsonl
    ov3 eval vqa runs/vlm questions.jsonl
    ov3 vlm upgrade runs/old-vlm   # an older folder's processor files, rewritten

A question file is JSONL, one ``{"image": path, "question": str}`` per line (``id`` and, for
``eval vqa``, ``answer``: a string or a list of reference answers, optional); image paths are
relative to the file's folder unless ``--image-root`` is given.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import Annotated

from tyro.conf import arg

from openvision3.errors import ConfigError, require

USAGE = "usage: ov3 vlm {build,chat,answer,upgrade} [--help]"


Model = Annotated[str, arg(metavar="MODEL")]
Questions = Annotated[str, arg(metavar="QUESTIONS")]


@dataclass
class ChatArgs:
    """Answer one question about one image with a LLaVA model."""

    model: Model  # a LLaVA folder written by `ov3 vlm build` or trained by `ov3 train`
    image: Annotated[str, arg(metavar="IMAGE")]  # an image file
    question: Annotated[str, arg(metavar="QUESTION")]  # the question, in quotes
    max_new_tokens: int = 64  # longest answer in tokens
    device: str = "cpu"  # cpu | cuda | cuda:N


@dataclass
class AnswerArgs:
    """Batched answers of a LLaVA model to a JSONL of questions ({"image", "question"} a line),
    written as JSONL."""

    model: Model  # a LLaVA folder written by `ov3 vlm build` or trained by `ov3 train`
    questions: Questions  # a JSONL file, one {"image": path, "question": text} a line
    out: str = ""  # "" = print the JSONL to stdout
    image_root: str = ""  # folder the image paths are relative to ("" = the file's folder)
    batch_size: int = 16  # questions per generate call
    max_new_tokens: int = 32  # longest answer in tokens
    device: str = "cpu"  # cpu | cuda | cuda:N


@dataclass
class VQAArgs:
    """Exact match and VQA accuracy of a LLaVA model over a JSONL of questions with answers
    ({"image", "question", "answer"} a line; "answer" a string or a list of references)."""

    model: Model  # a LLaVA folder written by `ov3 vlm build` or trained by `ov3 train`
    questions: Questions  # a JSONL file, one {"image", "question", "answer"} a line
    out: str = ""  # "" = print the metrics; else also write the answers here (JSONL)
    image_root: str = ""  # folder the image paths are relative to ("" = the file's folder)
    batch_size: int = 16  # questions per generate call
    max_new_tokens: int = 16  # longest answer in tokens
    device: str = "cpu"  # cpu | cuda | cuda:N


@dataclass
class UpgradeArgs:
    """Rewrite the processor of a VLM folder saved by an older version (a centre-cropping
    CLIPImageProcessor, the fixed vicuna_v1 chat template) as `load_vlm` converts it:
    LlavaImageProcessor(do_pad=True), the template the model was trained with, a tokenizer that
    adds its BOS. The weights are not touched."""

    model: Model  # the VLM folder to rewrite in place


def cmd_upgrade(args: UpgradeArgs) -> int:
    import tempfile

    from openvision3.artefacts import VLM as VLM_KIND
    from openvision3.artefacts import require_kind
    from openvision3.understanding.assemble import TEMPLATE_KEY, load_processor

    require_kind(args.model, VLM_KIND)
    with open(os.path.join(args.model, "config.json")) as f:
        template = json.load(f).get(TEMPLATE_KEY, "vicuna_v1")
    processor = load_processor(args.model, template)
    # Written beside the folder's files, then each moved into place: a reader never sees a
    # half-written processor file.
    with tempfile.TemporaryDirectory(dir=args.model, prefix=".upgrade-") as tmp:
        processor.save_pretrained(tmp)
        for name in os.listdir(tmp):
            os.replace(os.path.join(tmp, name), os.path.join(args.model, name))
    print(
        f"{args.model}: processor saved (LlavaImageProcessor with padding, {template!r} template)"
    )
    return 0


def read_questions(path: str, image_root: str = "") -> list[dict]:
    if not os.path.isfile(path):
        raise ConfigError(f"questions file {path!r} does not exist")
    root = image_root or os.path.dirname(os.path.abspath(path))
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if "image" not in row or "question" not in row:
                raise ConfigError(f"{path}:{n}: each line needs 'image' and 'question'")
            row["image_path"] = os.path.join(root, row["image"])
            if not os.path.isfile(row["image_path"]):
                raise ConfigError(f"{path}:{n}: image {row['image_path']!r} does not exist")
            rows.append(row)
    return rows


def answer_all(vlm, rows: list[dict], batch_size: int, max_new_tokens: int) -> list[str]:
    from openvision3.data.images import UnreadableImageError

    out = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        images = [r["image_path"] for r in chunk]  # decoded by the VLM (inputs.py)
        try:
            out += vlm.generate(images, [r["question"] for r in chunk], max_new_tokens)
        except UnreadableImageError as err:
            raise ConfigError(str(err)) from None
    return out


def normalize(text: str) -> str:
    """Lower case, punctuation and articles removed, whitespace collapsed (VQA's normalisation,
    simplified: no number-word or contraction mapping)."""
    import re

    text = re.sub(r"[^\w\s]", " ", text.lower())
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


def vqa_scores(prediction: str, references: list[str]) -> tuple[float, float]:
    """(exact match against the first reference, VQA accuracy min(#matching / 3, 1))."""
    p = normalize(prediction)
    refs = [normalize(r) for r in references]
    return float(p == refs[0]), min(sum(p == r for r in refs) / 3.0, 1.0)


def _vlm(model: str, device: str):
    require("transformers", "understanding", "ov3 vlm")
    from openvision3.understanding import load_vlm

    return load_vlm(model, device=device)


def cmd_chat(args: ChatArgs) -> int:
    from openvision3.data.images import UnreadableImageError, decode_image

    if not os.path.isfile(args.image):
        raise ConfigError(f"image {args.image!r} does not exist")
    try:
        image = decode_image(args.image)  # before the model loads: a bad file fails at once
    except UnreadableImageError as err:
        raise ConfigError(str(err)) from None
    vlm = _vlm(args.model, args.device)
    print(vlm.generate([image], [args.question], args.max_new_tokens)[0])
    return 0


def cmd_answer(args: AnswerArgs) -> int:
    rows = read_questions(args.questions, args.image_root)
    vlm = _vlm(args.model, args.device)
    answers = answer_all(vlm, rows, args.batch_size, args.max_new_tokens)
    lines = [
        json.dumps({"id": r.get("id", i), "question": r["question"], "answer": a})
        for i, (r, a) in enumerate(zip(rows, answers))
    ]
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")
        print(f"{len(lines)} answers -> {args.out}")
    else:
        print("\n".join(lines))
    return 0


def eval_vqa(args: VQAArgs) -> dict:
    rows = read_questions(args.questions, args.image_root)
    if not all("answer" in r for r in rows):
        raise ConfigError(f"{args.questions}: every line needs 'answer' for ov3 eval vqa")
    vlm = _vlm(args.model, args.device)
    answers = answer_all(vlm, rows, args.batch_size, args.max_new_tokens)
    em = vqa = 0.0
    for r, a in zip(rows, answers):
        refs = r["answer"] if isinstance(r["answer"], list) else [r["answer"]]
        e, v = vqa_scores(a, refs)
        em, vqa = em + e, vqa + v
    if args.out:
        with open(args.out, "w") as f:
            for i, (r, a) in enumerate(zip(rows, answers)):
                f.write(
                    json.dumps({"id": r.get("id", i), "answer": a, "reference": r["answer"]}) + "\n"
                )
    n = max(len(rows), 1)
    return {"task": "vqa", "count": len(rows), "exact_match": em / n, "vqa_accuracy": vqa / n}


def main_eval_vqa(argv: list[str]) -> int:
    import tyro

    args = tyro.cli(
        VQAArgs, args=argv, prog="ov3 eval vqa", config=(tyro.conf.PositionalRequiredArgs,)
    )
    print(json.dumps(eval_vqa(args), indent=2))
    return 0


def main(argv: list[str]) -> int:
    import tyro

    sub = argv[0] if argv else ""
    conf = (tyro.conf.PositionalRequiredArgs,)
    if sub == "build":
        require("transformers", "understanding", "ov3 vlm build")
        from openvision3.understanding.assemble import BuildArgs, build_vlm

        args = tyro.cli(BuildArgs, args=argv[1:], prog="ov3 vlm build")
        print(build_vlm(args))
        return 0
    if sub == "chat":
        return cmd_chat(tyro.cli(ChatArgs, args=argv[1:], prog="ov3 vlm chat", config=conf))
    if sub == "answer":
        return cmd_answer(tyro.cli(AnswerArgs, args=argv[1:], prog="ov3 vlm answer", config=conf))
    if sub == "upgrade":
        require("transformers", "understanding", "ov3 vlm upgrade")
        return cmd_upgrade(
            tyro.cli(UpgradeArgs, args=argv[1:], prog="ov3 vlm upgrade", config=conf)
        )
    print(USAGE, file=sys.stderr if sub not in ("-h", "--help") else sys.stdout)
    return 0 if sub in ("-h", "--help") else 2


DEMO_HELP = (
    "A tiny LLaVA on the frozen tokens of an `ov3 demo` run: stage 1 trains the projector on "
    "captions, stage 2 the projector and LM on questions about synthetic scenes; writes "
    "RUN/understanding/report.md with the accuracy of each question type against its gate."
    "\n\n--understanding selects this mode. With --run DIR it starts from that finished demo "
    "run; without it, `ov3 demo` runs first (the other flags are then its preset's) and these "
    "options keep their defaults."
)


def demo_main(argv: list[str]) -> int:
    """``ov3 demo --understanding --run DIR``: on a finished demo run (without ``--run``,
    ``cli.cmd_demo`` runs ``ov3 demo`` first). Other flags are ``UnderstandingDemoConfig`` fields
    (``--stage2-steps 600``)."""
    import tyro

    require("transformers", "understanding", "ov3 demo --understanding")
    from openvision3.understanding.demo import UnderstandingDemoConfig, run_understanding_demo

    cfg = tyro.cli(
        UnderstandingDemoConfig, args=argv, prog="ov3 demo --understanding", description=DEMO_HELP
    )
    report = run_understanding_demo(cfg)
    print(f"report: {report}")
    return 0
