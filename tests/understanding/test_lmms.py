"""lmms-eval 0.7.3: the ``openvision3`` entry point resolves to our ``lmms`` model, and
``simple_evaluate`` runs a tiny synthetic VQA task offline (a ``load_from_disk`` dataset and a
task YAML passed through ``include_path``). Needs the ``lmms`` extra (``.ci/run`` installs it)."""

import textwrap

import pytest

pytest.importorskip("lmms_eval")
pytestmark = pytest.mark.lmms

from openvision3.understanding.assemble import save_vlm  # noqa: E402
from tests.understanding._vlm_fakes import tiny  # noqa: E402

TASK_YAML = """\
dataset_path: {data}
dataset_kwargs:
  load_from_disk: true
task: ov3_synthetic_vqa
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 3
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""
UTILS = """\
def doc_to_visual(doc):
    return [doc["image"].convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def process_results(doc, results):
    # lmms-eval 0.7.3's evaluator hands the model's (loglik, is_greedy) pair over as its str()
    # (api/instance.py: unwrap_generation_output), which its built-in loglikelihood scoring
    # cannot unpack; read it back.
    import ast

    loglik, _ = ast.literal_eval(results[0])
    return {"loglik": loglik}
"""


def test_entry_point_resolves():
    from lmms_eval.models import get_model

    from openvision3.understanding.lmms import OV3Llava

    cls = get_model("openvision3")
    assert cls is OV3Llava and cls.is_simple


def test_simple_evaluate_offline(tmp_path):
    import datasets
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from openvision3.data.synthetic.world import SyntheticWorld
    from openvision3.understanding.lmms import OV3Llava
    from openvision3.understanding.synthetic_vqa import scene_questions

    vlm, processor, _ = tiny()
    save_vlm(vlm, processor, str(tmp_path / "vlm"))
    world, rows = SyntheticWorld(0), {"image": [], "question": [], "answer": []}
    for i in range(4):
        scene = world.scene("val", i)
        from PIL import Image

        rows["image"].append(Image.fromarray(world.render(scene, 32)))
        _, q, a = scene_questions(scene, "val", i)[0]
        rows["question"].append(q)
        rows["answer"].append(a)
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "question": datasets.Value("string"),
            "answer": datasets.Value("string"),
        }
    )
    data = datasets.DatasetDict({"test": datasets.Dataset.from_dict(rows, features=features)})
    data.save_to_disk(str(tmp_path / "data"))
    task_dir = tmp_path / "task"
    task_dir.mkdir()
    (task_dir / "ov3_synthetic_vqa.yaml").write_text(TASK_YAML.format(data=tmp_path / "data"))
    (task_dir / "utils.py").write_text(textwrap.dedent(UTILS))

    model = OV3Llava(pretrained=str(tmp_path / "vlm"), device="cpu")
    results = simple_evaluate(
        model=model,
        tasks=["ov3_synthetic_vqa"],
        task_manager=TaskManager(include_path=str(task_dir)),
        log_samples=False,
    )
    metrics = results["results"]["ov3_synthetic_vqa"]
    score = metrics["exact_match,none"]
    assert 0.0 <= score <= 1.0
    # the same answers as the model's own generate (greedy, one image each)
    answers = model.vlm.generate(rows["image"], rows["question"], max_new_tokens=3)
    assert score == pytest.approx(sum(a == b for a, b in zip(answers, rows["answer"])) / 4)


LOGLIK_YAML = """\
dataset_path: {data}
dataset_kwargs:
  load_from_disk: true
task: ov3_synthetic_loglik
test_split: test
output_type: loglikelihood
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
process_results: !function utils.process_results
metric_list:
  - metric: loglik
    aggregation: mean
    higher_is_better: true
"""


class _Request:
    def __init__(self, *args):
        self.args = args


def _direct_answer_logprob(path, image, question, answer):
    """The answer's log-probability computed with transformers alone: the conversation through
    ``AutoProcessor.apply_chat_template`` with the assistant mask (the answer's tokens, its EOS
    left out), summed from ``LlavaForConditionalGeneration``'s logits."""
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    processor = AutoProcessor.from_pretrained(path)
    model = LlavaForConditionalGeneration.from_pretrained(path).eval()
    msgs = [
        {
            "role": "user",
            "content": [{"type": "image", "image": image}, {"type": "text", "text": question}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
    ]
    inputs = processor.apply_chat_template(
        msgs,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
        return_tensors="pt",
    )
    mask = inputs.pop("assistant_masks")[0].bool()
    ids = inputs["input_ids"][0]
    positions = mask.nonzero()[:-1, 0]  # the answer's tokens, not its EOS
    with torch.no_grad():
        logp = torch.log_softmax(model(**inputs).logits[0].float(), -1)
    return float(logp[positions - 1, ids[positions]].sum()), len(positions)


def test_loglikelihood_scores_the_continuation_lmms_eval_means(tmp_path):
    """multiple_choice passes " yes" (its delimiter included), a loglikelihood task passes
    doc_to_target ("yes"): both score exactly the answer tokens of the chat template, as
    transformers computes them, with a Llama-style SentencePiece tokenizer."""
    from PIL import Image

    from openvision3.understanding.lmms import OV3Llava
    from tests.understanding._vlm_fakes import tiny_sentencepiece_vlm

    vlm, processor = tiny_sentencepiece_vlm(template="vicuna_v1")
    save_vlm(vlm, processor, str(tmp_path / "vlm"))
    model = OV3Llava(pretrained=str(tmp_path / "vlm"), device="cpu")
    image = Image.new("RGB", (45, 30), (200, 30, 30))
    doc = {"image": image, "question": "is there a red object?", "answer": "yes"}
    model.task_dict = {"t": {"test": [doc]}}
    visual = lambda d: [d["image"]]  # noqa: E731
    question = doc["question"]
    mc = model.loglikelihood([_Request(question, " yes", visual, 0, "t", "test")])
    ll = model.loglikelihood([_Request(question, lambda d: d["answer"], visual, 0, "t", "test")])
    direct, n = _direct_answer_logprob(str(tmp_path / "vlm"), image, question, "yes")
    assert mc[0][0] == pytest.approx(direct, abs=1e-5) and ll[0][0] == pytest.approx(
        direct, abs=1e-5
    )
    assert n == 1  # "▁yes"; an added space would score "▁", "▁yes"
    print(f"lmms loglikelihood {mc[0][0]:.6f} vs transformers {direct:.6f} over {n} tokens")


def test_simple_evaluate_loglikelihood_task_offline(tmp_path):
    """lmms-eval's evaluator on a local ``loglikelihood`` task (it passes ``doc_to_target``, the
    answer without its delimiter): the mean log-likelihood equals transformers' own, computed
    directly."""
    import datasets
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager
    from PIL import Image

    from openvision3.understanding.lmms import OV3Llava

    vlm, processor, _ = tiny(template="vicuna_v1_short")
    save_vlm(vlm, processor, str(tmp_path / "vlm"))
    rows = {
        "image": [
            Image.new("RGB", s, c)
            for s, c in [((40, 24), (200, 30, 30)), ((24, 40), (30, 30, 200))]
        ],
        "question": ["what colour is the large object?", "is there a blue object?"],
        "answer": ["red", "yes"],
    }
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "question": datasets.Value("string"),
            "answer": datasets.Value("string"),
        }
    )
    datasets.DatasetDict(
        {"test": datasets.Dataset.from_dict(rows, features=features)}
    ).save_to_disk(str(tmp_path / "data"))
    task_dir = tmp_path / "task"
    task_dir.mkdir()
    (task_dir / "ov3_synthetic_loglik.yaml").write_text(LOGLIK_YAML.format(data=tmp_path / "data"))
    (task_dir / "utils.py").write_text(textwrap.dedent(UTILS))
    model = OV3Llava(pretrained=str(tmp_path / "vlm"), device="cpu")
    results = simple_evaluate(
        model=model,
        tasks=["ov3_synthetic_loglik"],
        task_manager=TaskManager(include_path=str(task_dir)),
        log_samples=False,
    )
    mean = results["results"]["ov3_synthetic_loglik"]["loglik,none"]
    direct = [
        _direct_answer_logprob(str(tmp_path / "vlm"), im.convert("RGB"), q, a)[0]
        for im, q, a in zip(rows["image"], rows["question"], rows["answer"])
    ]
    assert mean == pytest.approx(sum(direct) / len(direct), abs=1e-5)
