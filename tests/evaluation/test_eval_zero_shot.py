import pytest
import torch
import torch.nn.functional as F

from openvision3.evaluation import ZeroShotEvaluator, build_classifier, imagenet_metadata
from tests.evaluation._eval_fakes import ClassTokenizer, TableModel, index_images

K = 10
CLASSES = [f"c{k}" for k in range(K)]
TEMPLATES = ["a photo of a {}", "a drawing of a {}"]


def _text_table():
    # Prompt (class k, template t) -> e_k + 0.5 e_{K + t}: each template adds its own direction,
    # so the classifier is the average of two different unit vectors, renormalised.
    table = torch.zeros(K, 2, K + 2)
    for k in range(K):
        table[k, :, k] = 1.0
        table[k, 0, K] = 0.5
        table[k, 1, K + 1] = 0.5
    return table


class PromptModel(TableModel):
    def embed_text(self, ids, normalize=True):
        z = self.text_table[ids[:, 0], ids[:, 1]]
        return F.normalize(z, dim=-1) if normalize else z


def test_build_classifier_is_renormalised_mean_of_normalised_prompts():
    model = PromptModel(torch.eye(K + 2), _text_table())
    w = build_classifier(model, ClassTokenizer(TEMPLATES), CLASSES, TEMPLATES, batch_size=3)
    assert w.shape == (K, K + 2)
    # mean of (e_k + 0.5 e_K)/|.| and (e_k + 0.5 e_K+1)/|.| = (e_k + 0.25 e_K + 0.25 e_K+1)/1.118
    expected = torch.zeros(K, K + 2)
    expected[:, :K] = torch.eye(K)
    expected[:, K:] = 0.25
    torch.testing.assert_close(w, F.normalize(expected, dim=-1))


def test_zero_shot_exact_accuracy():
    image_table = torch.eye(K + 2)[:K].clone()  # image i -> e_i (class i)
    # Image 9: class 0 first, its own class second -> top-1 miss, top-5 hit.
    image_table[9] = 0.8 * torch.eye(K + 2)[0] + 0.6 * torch.eye(K + 2)[9]
    # Image 8: five other classes ahead, its own class below every other -> top-5 miss.
    image_table[8] = torch.tensor([0, 1.0, 0.9, 0.8, 0.7, 0.6, 0, 0, -0.1, 0, 0, 0])
    model = PromptModel(image_table, _text_table())
    ev = ZeroShotEvaluator(CLASSES, TEMPLATES, topk=(1, 5), tokenizer=ClassTokenizer(TEMPLATES))
    labels = torch.arange(K)
    batches = [
        {"images": index_images(labels[:4]), "label": labels[:4]},
        {"images": index_images(labels[4:]), "label": labels[4:]},
    ]
    out = ev.run(model, batches)
    assert out == {"top1": 0.8, "top5": 0.9, "count": 10}


def test_topk_must_not_exceed_classes():
    with pytest.raises(ValueError, match="topk"):
        ZeroShotEvaluator(["a", "b"], ["{}"], topk=(1, 5))


def test_imagenet_metadata():
    names, templates = imagenet_metadata()
    assert len(names) == 1000 and len(templates) == 80
    assert names[0] == "tench" and "tench" in templates[0](names[0])
