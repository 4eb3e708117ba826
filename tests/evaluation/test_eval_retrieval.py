import pytest
import torch
import torch.nn.functional as F

from openvision3.evaluation import RetrievalEvaluator, retrieval_recall
from tests.evaluation._eval_fakes import TableModel, index_images


def test_recall_with_several_captions_per_image():
    e = torch.eye(4)
    images = e.clone()  # image i -> e_i
    texts = torch.stack(
        [
            0.6 * e[0] + 0.8 * e[1],  # T0, of I0: I1 scores higher          -> t2i rank 1
            0.6 * e[2] + 0.8 * e[3],  # T1, of I0: I3 and I2 score higher     -> t2i rank 2
            e[1],  # T2, of I1                                               -> t2i rank 0
            e[2],  # T3, of I2                                               -> t2i rank 0
            0.8 * e[2] + 0.6 * e[3],  # T4, of I3: I2 scores higher          -> t2i rank 1
            e[0],  # T5, of I3: I0 scores higher (ties at 0 do not count)   -> t2i rank 1
        ]
    )
    text_to_image = torch.tensor([0, 0, 1, 2, 3, 3])
    # i2t ranks (texts strictly above the image's best caption): I0 best T0 0.6, T5 scores 1 -> 1;
    # I1 T2 -> 0; I2 T3 -> 0; I3 best T4 0.6, T1 scores 0.8 -> 1.
    out = retrieval_recall(images, texts, text_to_image, ks=(1, 2, 3))
    assert out == pytest.approx(
        {
            "i2t_r1": 2 / 4,
            "i2t_r2": 1.0,
            "i2t_r3": 1.0,
            "t2i_r1": 2 / 6,
            "t2i_r2": 5 / 6,
            "t2i_r3": 1.0,
        },
        abs=1e-12,
    )
    # Chunking the queries changes nothing.
    assert retrieval_recall(images, texts, text_to_image, ks=(1, 2, 3), chunk=1) == out


def test_every_image_needs_a_caption():
    with pytest.raises(ValueError, match="caption"):
        retrieval_recall(torch.eye(3), torch.eye(3)[:2], torch.tensor([0, 1]), ks=(1,))


def _one_wrong_caption_model(n: int) -> TableModel:
    e = torch.eye(n)
    text_table = e.clone()
    text_table[n - 1] = F.normalize(e[0] + 0.5 * e[n - 1], dim=0)  # last caption leans to image 0
    return TableModel(e, text_table)


def test_evaluator_exact_recalls():
    n = 10
    model = _one_wrong_caption_model(n)
    idx = torch.arange(n)
    batches = [
        {"images": index_images(idx[i : i + 3]), "text": idx[i : i + 3, None]}
        for i in range(0, n, 3)
    ]
    out = RetrievalEvaluator(ks=(1, 5)).run(model, batches)
    # Image 9 still finds its caption first (0.45 vs 0); caption 9 finds image 0 first.
    assert out == pytest.approx(
        {"i2t_r1": 1.0, "i2t_r5": 1.0, "t2i_r1": 0.9, "t2i_r5": 1.0, "count": 10}, abs=1e-12
    )
