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

    from openvision3.demo.synthetic import SyntheticWorld
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
