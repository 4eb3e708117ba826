"""2 ranks holding an UNEVEN share of 7 images (4/3, and 7/0) give the 1-rank metrics."""

import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pycocoevalcap.bleu.bleu import Bleu

from openvision3.evaluation import (
    CaptionEvaluator,
    ReconstructionEvaluator,
    RetrievalEvaluator,
    ZeroShotEvaluator,
)
from tests.dist_utils import free_port
from tests.evaluation._eval_fakes import (
    ClassTokenizer,
    NoisyReconstructor,
    ScriptedCaptioner,
    TableModel,
    index_images,
    textured_images,
)

N, K, E = 7, 4, 6
CLASSES = [f"c{k}" for k in range(K)]
TEMPLATES = ["a {}", "the {}"]
SCRIPT = [f"a {c} {s} on a plain background" for c, s in zip("rgbyrgb", "xyzxyzx")]
# Two references per image, 8 and 6 words around the 7-word captions: a tie for BLEU's closest
# reference length (COCO's scorer takes the shorter, wherever it is listed).
REFS = [
    [f"a {c} {s} on a plain grey background", f"one {c} {s} on plain background"]
    for c, s in zip("rgbbrgb", "xyzxyzz")
]
SPLITS = {"4/3": [range(0, 4), range(4, 7)], "7/0": [range(0, 7), range(0)]}


def _models():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(N, E, generator=g)
    texts = images + 1.2 * torch.randn(N, E, generator=g)  # captions near their images
    return {
        "table": TableModel(images, texts),
        "classes": TableModel(images, torch.randn(K, E, generator=g)),
        "recon": NoisyReconstructor(),
        "caption": ScriptedCaptioner(SCRIPT),
    }


def _batches(indices, size=2):
    idx, labels = torch.tensor(list(indices), dtype=torch.long), torch.arange(N) % K
    pixels = textured_images(N)
    for i in range(0, len(idx), size):
        rows = idx[i : i + size]
        yield {
            "images": index_images(rows, size=32),
            "pixels": pixels[rows],
            "text": rows[:, None],
            "label": labels[rows],
            "key": [f"k{j}" for j in rows.tolist()],
            "caption_text": [REFS[j] for j in rows.tolist()],
        }


def _pixels(batches):
    for b in batches:
        yield {"images": b["pixels"], "key": b["key"]}


def _evaluate(indices, tmp_dir, tag):
    m = _models()
    recon = ReconstructionEvaluator(keep=2)
    out = {
        "recon": recon.run(m["recon"], _pixels(_batches(indices))),
        "recon_cap": ReconstructionEvaluator().run(
            m["recon"], _pixels(_batches(indices)), max_images=5
        ),
        "zero_shot": ZeroShotEvaluator(
            CLASSES, TEMPLATES, topk=(1, 2), tokenizer=ClassTokenizer(TEMPLATES)
        ).run(m["classes"], _batches(indices)),
        "retrieval": RetrievalEvaluator(ks=(1, 2, 5)).run(m["table"], _batches(indices)),
    }
    caption = CaptionEvaluator(
        num_samples=5, attributes={"exact": lambda text, row: SCRIPT[int(row["label"])] == text}
    )
    out["caption"] = caption.run(m["caption"], _batches(indices))
    out["samples"] = [s["key"] for s in caption.samples]
    recon.write_csv(f"{tmp_dir}/{tag}.csv")
    recon.save_grid(f"{tmp_dir}/{tag}.png", n=2)
    out["best"] = [t[1] for t in recon.best]
    return out


def _worker(rank, world, port, tmp_dir):
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        for tag, split in SPLITS.items():
            out = _evaluate(split[rank], tmp_dir, f"{tag.replace('/', '-')}")
            with open(f"{tmp_dir}/rank{rank}_{tag.replace('/', '-')}.json", "w") as f:
                json.dump(out, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.dist
def test_uneven_ranks_match_one_rank(tmp_path):
    single = _evaluate(range(N), tmp_path, "single")
    assert single["recon"]["count"] == N and single["recon_cap"]["count"] == 5
    assert 0 < single["zero_shot"]["top1"] < 1  # non-trivial cases
    assert 0 < single["retrieval"]["t2i_r1"] < 1 and 0 < single["caption"]["bleu4"] < 1
    gts = {i: REFS[i] for i in range(N)}
    coco = Bleu(4).compute_score(gts, {i: [SCRIPT[i]] for i in range(N)}, verbose=0)[0][3]
    assert single["caption"]["bleu4"] == pytest.approx(coco, abs=1e-12)
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    single_csv = (tmp_path / "single.csv").read_text()
    for tag in ("4-3", "7-0"):
        for rank in (0, 1):
            out = json.loads((tmp_path / f"rank{rank}_{tag}.json").read_text())
            for name in ("recon", "zero_shot", "retrieval", "caption"):
                assert out[name] == pytest.approx(single[name], rel=1e-9, abs=1e-12), (tag, name)
            # max_images is a global cap split evenly between ranks: exact when each rank has
            # its share, fewer when one rank runs short (7/0).
            assert out["recon_cap"]["count"] == (5 if tag == "4-3" else 3)
        rank0 = json.loads((tmp_path / f"rank0_{tag}.json").read_text())
        assert rank0["samples"] == single["samples"]
        assert (tmp_path / f"{tag}.csv").read_text() == single_csv  # gathered to rank 0
        assert (tmp_path / f"{tag}.png").is_file()
